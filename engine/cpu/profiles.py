"""Modeled CPU profiles: CPUID leaves and MSRs the guest sees, declared as data.

The base leaves are what Unicorn 2.1.4's own Haswell model answers (its QEMU Haswell less what TCG cannot
run: AVX, AVX2, FMA, F16C, INVPCID...), so every instruction set a guest is told about is one the emulator
really executes (tests/engine/cpu/test_cpuid_features.py runs one instruction of each). Where the engine,
not Unicorn, carries a feature (the TLB fill's walk, the vLAPIC, the MSRs below), the bit follows what the
engine does: SMEP is not announced because the walk does not enforce it, TSC-deadline and TSC_ADJUST are.
bhyve's additions follow x86_emulate_cpuid: the hypervisor bit (CPUID.1:ECX[31]), VMX hidden, the vCPU's
APIC ID in CPUID.1:EBX[31:24], OSXSAVE as CR4.OSXSAVE says, leaf 0x40000000 with the "bhyve bhyve "
signature. The clocks are reported where guests look for them: leaf 0x15 (TSC/crystal ratio and the
crystal, which also drives the LAPIC timer), 0x16 (base, maximum and bus MHz) and the hypervisor leaf
0x40000010 (TSC and LAPIC bus kHz, as VMware defines it): docs/linux.md, "CPUID, MSRs and the TSC".
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from .msrs import (CHECK_CANONICAL, CHECK_MEMTYPE, CHECK_MEMTYPES8, CHECK_PAT, CHECK_RESERVED, CHECK_UNCHANGED,
                   CHECK_ZERO_OR_ONES, COLUMNS, MSR_NATIVE, MSR_READONLY, MSR_TSC, MSR_TSC_ADJUST, MSR_TSC_DEADLINE,
                   MSR_VALUE, MSR_WRITEONLY)

ANY = 0xFFFFFFFF          # subleaf wildcard
U64 = (1 << 64) - 1

MSR_NAMES = {
    0x10: "IA32_TIME_STAMP_COUNTER", 0x17: "IA32_PLATFORM_ID", 0x1B: "IA32_APIC_BASE",
    0x3A: "IA32_FEATURE_CONTROL", 0x3B: "IA32_TSC_ADJUST", 0x48: "IA32_SPEC_CTRL", 0x49: "IA32_PRED_CMD",
    0x8B: "IA32_BIOS_SIGN_ID", 0xCE: "MSR_PLATFORM_INFO", 0xFE: "IA32_MTRRCAP", 0x10A: "IA32_ARCH_CAPABILITIES",
    0x10B: "IA32_FLUSH_CMD", 0x174: "IA32_SYSENTER_CS", 0x175: "IA32_SYSENTER_ESP", 0x176: "IA32_SYSENTER_EIP",
    0x179: "IA32_MCG_CAP", 0x17A: "IA32_MCG_STATUS", 0x17B: "IA32_MCG_CTL", 0x1A0: "IA32_MISC_ENABLE",
    0x250: "IA32_MTRR_FIX64K_00000", 0x258: "IA32_MTRR_FIX16K_80000", 0x259: "IA32_MTRR_FIX16K_A0000",
    0x277: "IA32_PAT", 0x2FF: "IA32_MTRR_DEF_TYPE", 0x6E0: "IA32_TSC_DEADLINE",
    0xC0000080: "IA32_EFER", 0xC0000081: "IA32_STAR", 0xC0000082: "IA32_LSTAR", 0xC0000083: "IA32_CSTAR",
    0xC0000084: "IA32_FMASK", 0xC0000100: "IA32_FS_BASE", 0xC0000101: "IA32_GS_BASE",
    0xC0000102: "IA32_KERNEL_GS_BASE", 0xC0000103: "IA32_TSC_AUX",
}
MSR_NAMES.update({0x268 + i: "IA32_MTRR_FIX4K_%05X" % (0xC0000 + 0x8000 * i) for i in range(8)})
MTRR_VARIABLE = 10        # IA32_MTRRCAP.VCNT: variable ranges, as a Haswell has them and bhyve's VMM_MTRR_VAR_MAX
MSR_NAMES.update({0x200 + 2 * i + k: "IA32_MTRR_PHYS%s%d" % ("MASK" if k else "BASE", i)
                  for i in range(MTRR_VARIABLE) for k in (0, 1)})
MCA_BANKS_MAX = 32        # IA32_MC0_CTL (0x400) up to IA32_MC31_MISC: the architectural range
MSR_NAMES.update({0x400 + 4 * i + k: "IA32_MC%d_%s" % (i, ("CTL", "STATUS", "ADDR", "MISC")[k])
                  for i in range(MCA_BANKS_MAX) for k in range(4)})

# CPUID.80000008H:EAX: linear-address width 48 in bits 15:8, MAXPHYADDR in bits 7:0. The walks enforce the
# same number (mmu/pmap.py reads it back through CpuProfile.maxphyaddr), and so do the MTRRs' reserved bits:
# an i7-4770 or i7-6700 has 39 bits, a Xeon Gold 6230 46.
def _address_sizes(maxphyaddr):
    return (48 << 8 | maxphyaddr, 0, 0, 0)


CPUID_80000001_EDX_PAGE1GB = 1 << 26     # 1-GByte pages in 4-level paging (SDM 4.1.4)
CPUID1_ECX_TSC_DEADLINE = 1 << 24        # the LAPIC timer's TSC-deadline mode (SDM 10.5.4.1)
CPUID1_ECX_XSAVE, CPUID1_ECX_OSXSAVE = 1 << 26, 1 << 27
CPUID1_ECX_X2APIC = 1 << 21
CPUID1_ECX_HYPERVISOR = 1 << 31
CPUID7_EBX_TSC_ADJUST = 1 << 1
CPUID7_EBX_SMEP = 1 << 7
CPUID_80000007_EDX_INVARIANT_TSC = 1 << 8
CR4_OSXSAVE = 1 << 18
HV_LEAF_HIGH = 0x40000010                # the highest hypervisor leaf: 0x40000010 has the clocks

# Leaf 1: Unicorn's ECX 0xCED82203 (SSE3, PCLMULQDQ, SSSE3, CX16, SSE4.1/4.2, MOVBE, POPCNT, AES, XSAVE, OSXSAVE,
# RDRAND) with OSXSAVE computed per CR4 (hooks.emulate_cpuid), TSC-deadline and the hypervisor bit added.
# Leaf 7: Unicorn's EBX 0x389 (FSGSBASE, BMI1, SMEP, BMI2, ERMS) without SMEP (the TLB fill's walk does not
# enforce it), with TSC_ADJUST. Leaf 0xD: x87 and SSE state (XCR0 bits 0-1): Unicorn accepts XCR0.AVX but runs
# no 256-bit instruction, so the AVX state component is not announced; subleaf 1: XSAVEOPT, which it runs.
_HASWELL_CPUID = {
    (0x0, ANY): (0x16, 0x756E6547, 0x6C65746E, 0x49656E69),              # "GenuineIntel", leaves up to 0x16
    (0x1, ANY): (0x306C4, 0x800, (0xCED82203 & ~CPUID1_ECX_OSXSAVE) | CPUID1_ECX_TSC_DEADLINE | CPUID1_ECX_HYPERVISOR,
                 0x78BFBFD),
    (0x2, ANY): (0x1, 0x0, 0x0, 0x2C307D),
    (0x4, 0): (0x121, 0x1C0003F, 0x3F, 0x1),
    (0x6, ANY): (0x4, 0, 0, 0),                                            # ARAT: the APIC timer always runs
    (0x7, 0): (0x0, (0x389 & ~CPUID7_EBX_SMEP) | CPUID7_EBX_TSC_ADJUST, 0x0, 0x0),
    (0xD, 0): (0x3, 0x240, 0x240, 0x0),
    (0xD, 1): (0x1, 0x0, 0x0, 0x0),
    (0x40000000, ANY): (HV_LEAF_HIGH, 0x76796862, 0x68622065, 0x20657679),   # "bhyve bhyve "
    (0x80000000, ANY): (0x80000008, 0, 0, 0),
    # Unicorn's Haswell lacks Page1GB; the walk that translates for it here (mmu/walk.py) has 1 GiB pages,
    # as a real i7-4770 does
    (0x80000001, ANY): (0x306C4, 0x0, 0x21, 0x28100800 | CPUID_80000001_EDX_PAGE1GB),
    (0x80000007, ANY): (0, 0, 0, CPUID_80000007_EDX_INVARIANT_TSC),      # the TSC runs at one rate always (tsc.py)
    (0x80000008, ANY): _address_sizes(39),
}


def _clock_leaves(crystal_hz, numerator, denominator, base_mhz, max_mhz, bus_mhz=100):
    """Leaves 0x15, 0x16 and 0x40000010 for a TSC of crystal_hz * numerator / denominator (SDM vol. 2A CPUID
    leaves 15H and 16H; 0x40000010 as VMware defines it: EAX the TSC in kHz, EBX the LAPIC bus in kHz)."""
    tsc_hz = crystal_hz * numerator // denominator
    assert tsc_hz * denominator == crystal_hz * numerator and crystal_hz % 1000 == 0 and tsc_hz % 1000 == 0
    return {(0x15, ANY): (denominator, numerator, crystal_hz, 0), (0x16, ANY): (base_mhz, max_mhz, bus_mhz, 0),
            (0x40000010, ANY): (tsc_hz // 1000, crystal_hz // 1000, 0, 0)}


# IA32_MCG_CAP (SDM 15.3.1.1): bits 7:0 the bank count, 8 MCG_CTL_P, 10 MCG_CMCI_P, 11 MCG_TES_P. A Haswell
# (family 6 model 60) reports 0xC09: nine banks, CMCI and threshold-based status. CMCI is not modeled (no
# IA32_MCi_CTL2, no LVT CMCI interrupts): MCG_CMCI_P is cleared, as a hypervisor hides what it does not do.
MCG_CTL_P, MCG_CMCI_P, MCG_TES_P = 1 << 8, 1 << 10, 1 << 11
HASWELL_MCG_CAP = (0xC09 & ~MCG_CMCI_P)


def _mca_msrs(mcg_cap):
    """IA32_MCG_CAP/STATUS (/CTL with MCG_CTL_P) and each bank's CTL, STATUS, ADDR, MISC (SDM 15.3)."""
    banks = mcg_cap & 0xFF
    msrs = {0x179: (MSR_READONLY, mcg_cap, 0, CHECK_RESERVED),           # writing it is undefined: #GP
            0x17A: (MSR_VALUE, 0, U64 & ~0x7, CHECK_RESERVED)}            # RIPV, EIPV, MCIP; 63:3 reserved
    if mcg_cap & MCG_CTL_P:
        msrs[0x17B] = (MSR_VALUE, U64, 0, CHECK_ZERO_OR_ONES)
    for i in range(banks):
        msrs[0x400 + 4 * i] = (MSR_VALUE, 0, 0, CHECK_RESERVED)          # MCi_CTL: which errors signal #MC
        for k in (1, 2, 3):             # STATUS, ADDR, MISC: cleared by writing 0s; 1s are #GP (SDM 15.3.2.2-4)
            msrs[0x400 + 4 * i + k] = (MSR_VALUE, 0, U64, CHECK_RESERVED)
    return msrs


def _mtrr_msrs(maxphyaddr):
    """IA32_MTRRCAP, the variable and fixed ranges, IA32_MTRR_DEF_TYPE (SDM 11.11), as after power-on: every
    range zero and MTRRs disabled (firmware.program_mtrrs then sets them as a BIOS does)."""
    above = U64 & ~((1 << maxphyaddr) - 1)          # physical-address bits the CPU does not have
    msrs = {0xFE: (MSR_READONLY, 1 << 10 | 1 << 8 | MTRR_VARIABLE, 0, CHECK_RESERVED),   # WC, fixed, VCNT
            0x2FF: (MSR_VALUE, 0, U64 & ~0xCFF, CHECK_MEMTYPE)}           # type 7:0, FE 10, E 11
    for i in range(MTRR_VARIABLE):
        msrs[0x200 + 2 * i] = (MSR_VALUE, 0, above | 0xF00, CHECK_MEMTYPE)     # PHYSBASE: 11:8 reserved
        msrs[0x201 + 2 * i] = (MSR_VALUE, 0, above | 0x7FF, CHECK_RESERVED)    # PHYSMASK: 10:0 reserved, 11 V
    for index in (0x250, 0x258, 0x259) + tuple(range(0x268, 0x270)):
        msrs[index] = (MSR_VALUE, 0, 0, CHECK_MEMTYPES8)
    return msrs


EFER_SCE, EFER_LME, EFER_LMA, EFER_NXE = 1, 1 << 8, 1 << 10, 1 << 11
MISC_ENABLE = 1 << 0 | 1 << 11 | 1 << 12    # fast strings; BTS and PEBS unavailable (bhyve's mandatory bits)
MISC_ENABLE_XD_DISABLE = 1 << 34            # bhyve ignores a guest's write of it (vmx_wrmsr)


def _common_msrs(maxphyaddr, mcg_cap, platform_ratio):
    """The MSRs every profile has. NATIVE ones live in Unicorn, which checks nothing: the rule is ours."""
    msrs = {
        0x10: (MSR_TSC, 0, 0, CHECK_RESERVED),
        0x17: (MSR_READONLY, 0, 0, CHECK_RESERVED),
        # bhyve's vlapic_set_apicbase: the base, the enable and x2APIC bits cannot change (#GP with strictmsr).
        # The BSP flag (bit 8) is cleared in the APs' copies (io/lapic/vlapic.py connect).
        0x1B: (MSR_VALUE, 0xFEE00900, U64, CHECK_UNCHANGED),
        0x3A: (MSR_READONLY, 0x1, 0, CHECK_RESERVED),                      # locked, VMX off
        0x3B: (MSR_TSC_ADJUST, 0, 0, CHECK_RESERVED),
        0x8B: (MSR_VALUE, 0, 0, CHECK_RESERVED),
        # bhyve's platform_info: the maximum non-turbo and efficiency ratios (bits 15:8, 47:40); bit 32 clear:
        # no CPUID faulting
        0xCE: (MSR_READONLY, platform_ratio << 8 | platform_ratio << 40, 0, CHECK_RESERVED),
        0x174: (MSR_NATIVE, 0, 0, CHECK_RESERVED),
        0x175: (MSR_NATIVE, 0, 0, CHECK_CANONICAL), 0x176: (MSR_NATIVE, 0, 0, CHECK_CANONICAL),
        0x1A0: (MSR_VALUE, MISC_ENABLE, U64 & ~MISC_ENABLE_XD_DISABLE, CHECK_UNCHANGED),
        0x277: (MSR_NATIVE, 0, 0, CHECK_PAT),
        0x6E0: (MSR_TSC_DEADLINE, 0, 0, CHECK_RESERVED),
        0xC0000080: (MSR_NATIVE, 0, U64 & ~(EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE), CHECK_RESERVED),
        0xC0000081: (MSR_NATIVE, 0, 0, CHECK_RESERVED),
        0xC0000082: (MSR_NATIVE, 0, 0, CHECK_CANONICAL), 0xC0000083: (MSR_NATIVE, 0, 0, CHECK_CANONICAL),
        0xC0000084: (MSR_NATIVE, 0, 0, CHECK_RESERVED),
        0xC0000100: (MSR_NATIVE, 0, 0, CHECK_CANONICAL), 0xC0000101: (MSR_NATIVE, 0, 0, CHECK_CANONICAL),
        0xC0000102: (MSR_NATIVE, 0, 0, CHECK_CANONICAL),
        0xC0000103: (MSR_NATIVE, 0, U64 & ~0xFFFFFFFF, CHECK_RESERVED),   # TSC_AUX: 63:32 reserved
    }
    msrs.update(_mca_msrs(mcg_cap))
    msrs.update(_mtrr_msrs(maxphyaddr))
    return msrs


# MSR_VMX_EPT_VPID_CAP of a Haswell: execute-only, 4-level walk, WB, 2 MiB and 1 GiB pages, INVEPT (all
# types), EPT A/D, INVVPID (all types)
_HASWELL_EPT_VPID_CAP = 0xF0106334141

# The VMX capability MSRs IA32_VMX_BASIC (0x480) ... IA32_VMX_VMFUNC (0x491) as real CPUs report them, from
# VirtualBox's CPU database (src/VBox/VMM/VMMR3/cpus/*.h in github.com/VirtualBox/virtualbox, commit 4908d8d1,
# dumped by VBoxCpuReport on bare metal). It has no Haswell: the "haswell" profile takes its Broadwell sibling,
# the i7-5600U (Intel_Core_i7_5600U.h; family 6 model 61), whose EPT/VPID capabilities are the Haswell's
# _HASWELL_EPT_VPID_CAP above; "skylake" takes the i7-6700K (Intel_Core_i7_6700K.h, family 6 model 94), and
# so does "cascadelake", for want of a public dump of a Xeon Gold, with the one difference that matters here:
# a Cascade Lake Xeon allows APICv, which these client parts do not. Its allowed 1-settings add the posted-
# interrupt pin control (bit 7 of 0x481/0x48D) and APIC-register virtualization and virtual-interrupt delivery
# (secondary bits 8 and 9 of 0x48B), the three APICv controls QEMU's Cascadelake-Server model lists beyond the
# client parts' (target/i386/cpu.c: VMX_PIN_BASED_POSTED_INTR, VMX_SECONDARY_EXEC_APIC_REGISTER_VIRT,
# VMX_SECONDARY_EXEC_VIRTUAL_INTR_DELIVERY). bhyve hides VMX from its guests, so these are the modeled host's
# (vmx/controls.py reads them), not MSRs the guest can read.
_VMX_I7_5600U = {
    0x480: 0xDA040000000012, 0x481: 0x7F00000016, 0x482: 0xFFF9FFFE0401E172, 0x483: 0x7FFFFF00036DFF,
    0x484: 0xFFFF000011FF, 0x485: 0x300481E5, 0x486: 0x80000021, 0x487: 0xFFFFFFFF, 0x488: 0x2000,
    0x489: 0x3767FF, 0x48A: 0x2A, 0x48B: 0x57CFF00000000, 0x48C: _HASWELL_EPT_VPID_CAP, 0x48D: 0x7F00000016,
    0x48E: 0xFFF9FFFE04006172, 0x48F: 0x7FFFFF00036DFB, 0x490: 0xFFFF000011FB, 0x491: 0x1,
}
_VMX_I7_6700K = {
    0x480: 0xDA040000000004, 0x481: 0x7F00000016, 0x482: 0xFFF9FFFE0401E172, 0x483: 0x1FFFFFF00036DFF,
    0x484: 0x3FFFF000011FF, 0x485: 0x7004C1E7, 0x486: 0x80000021, 0x487: 0xFFFFFFFF, 0x488: 0x2000,
    0x489: 0x3727FF, 0x48A: 0x2E, 0x48B: 0x1FFCFF00000000, 0x48C: 0xF0106334141, 0x48D: 0x7F00000016,
    0x48E: 0xFFF9FFFE04006172, 0x48F: 0x1FFFFFF00036DFB, 0x490: 0x3FFFF000011FB, 0x491: 0x1,
}
_APICV_PIN, _APICV_SECONDARY = 1 << 7, 1 << 8 | 1 << 9
_VMX_XEON_CASCADE_LAKE = dict(_VMX_I7_6700K)
for _msr, _bits in ((0x481, _APICV_PIN), (0x48D, _APICV_PIN), (0x48B, _APICV_SECONDARY)):
    _VMX_XEON_CASCADE_LAKE[_msr] |= _bits << 32


def _brand(text):
    """CPUID leaves 0x80000002-4 for a brand string."""
    raw = text.encode("ascii").ljust(48, b"\0")[:48]
    words = np.frombuffer(raw, "<u4")
    return {(0x80000002 + i, ANY): tuple(int(w) for w in words[4 * i:4 * i + 4]) for i in range(3)}


@dataclass
class CpuProfile:
    name: str
    description: str
    cpuid: dict
    msrs: dict                                     # index -> (kind, value, mask, check): msrs.py
    facts: dict = field(default_factory=dict)      # what the modeled CPU has beyond CPUID (EPT/VPID caps)

    def cpuid_table(self):
        """Rows [leaf, subleaf, eax, ebx, ecx, edx] for the in-kernel CPUID handler."""
        rows = [(leaf, sub) + regs for (leaf, sub), regs in sorted(self.cpuid.items())]
        return np.array(rows, np.uint64).reshape(-1, 6)

    @property
    def maxphyaddr(self):
        """The physical-address width: CPUID.80000008H:EAX[7:0], which the guest and EPT walks enforce."""
        return self.cpuid[(0x80000008, ANY)][0] & 0xFF

    @property
    def page1gb(self):
        """CPUID.80000001H:EDX[26]: a PDPTE may map a 1-GByte page (else its PS bit is reserved)."""
        return bool(self.cpuid.get((0x80000001, ANY), (0, 0, 0, 0))[3] & CPUID_80000001_EDX_PAGE1GB)

    @property
    def has_flush_cmd(self):
        """CPUID.7.0:EDX[28]: the L1D can be flushed with IA32_FLUSH_CMD."""
        return bool(self.cpuid.get((0x7, 0), (0, 0, 0, 0))[3] & CPUID7_EDX_L1D_FLUSH)

    @property
    def arch_capabilities(self):
        """IA32_ARCH_CAPABILITIES as the CPU reports it (0 when the MSR does not exist)."""
        return self.msrs.get(MSR_ARCH_CAPABILITIES, (0, 0))[1]

    @property
    def l1tf_vulnerable(self):
        return not self.arch_capabilities & ARCH_CAP_RDCL_NO

    @property
    def crystal_hz(self):
        """The core crystal clock, CPUID.15H:ECX: what the LAPIC timer counts (SDM 10.5.4)."""
        return self.cpuid[(0x15, ANY)][2]

    @property
    def tsc_hz(self):
        """The TSC's frequency: the crystal times CPUID.15H:EBX/EAX (SDM vol. 2A CPUID leaf 15H)."""
        den, num, crystal, _ = self.cpuid[(0x15, ANY)]
        return crystal * num // den

    def msr_table(self):
        """Rows [index, kind, value, mask, check] for the in-kernel RDMSR/WRMSR handlers (a vCPU's own copy)."""
        rows = [(index,) + tuple(row) for index, row in sorted(self.msrs.items())]
        return np.array(rows, np.uint64).reshape(-1, COLUMNS)


# The bits that decide the L1TF mitigation (SDM vol. 2 CPUID leaf 7; vol. 4 table 2-2), and the speculation
# controls the 2018 microcode brought (IA32_SPEC_CTRL, IA32_PRED_CMD).
CPUID7_EDX_IBRS_IBPB = 1 << 26        # IA32_SPEC_CTRL.IBRS and IA32_PRED_CMD.IBPB
CPUID7_EDX_STIBP = 1 << 27            # IA32_SPEC_CTRL.STIBP
CPUID7_EDX_L1D_FLUSH = 1 << 28        # IA32_FLUSH_CMD (MSR 0x10B) exists
CPUID7_EDX_ARCH_CAPABILITIES = 1 << 29
CPUID7_EDX_SSBD = 1 << 31             # IA32_SPEC_CTRL.SSBD
SPECTRE_2018 = CPUID7_EDX_IBRS_IBPB | CPUID7_EDX_STIBP | CPUID7_EDX_SSBD
MSR_SPEC_CTRL, MSR_PRED_CMD, MSR_ARCH_CAPABILITIES, MSR_FLUSH_CMD = 0x48, 0x49, 0x10A, 0x10B
ARCH_CAP_RDCL_NO = 1 << 0             # not susceptible to rogue data cache load (Meltdown, L1TF)
ARCH_CAP_IBRS_ALL = 1 << 1
ARCH_CAP_SKIP_L1DFL_VMENTRY = 1 << 3  # the hypervisor need not flush the L1D on VM entry
FLUSH_CMD_L1D = 1                     # IA32_FLUSH_CMD bit 0
PRED_CMD_IBPB = 1                     # IA32_PRED_CMD bit 0


def _leaf7_msrs(edx7, arch_caps):
    """The MSRs leaf 7's EDX announces (SDM vol. 4 Table 2-2): each control bit only where its CPUID bit is."""
    msrs = {}
    if edx7 & (CPUID7_EDX_IBRS_IBPB | CPUID7_EDX_STIBP | CPUID7_EDX_SSBD):
        allowed = (1 if edx7 & CPUID7_EDX_IBRS_IBPB else 0) | (2 if edx7 & CPUID7_EDX_STIBP else 0) | \
            (4 if edx7 & CPUID7_EDX_SSBD else 0)
        msrs[MSR_SPEC_CTRL] = (MSR_VALUE, 0, U64 & ~allowed, CHECK_RESERVED)
    if edx7 & CPUID7_EDX_IBRS_IBPB:
        msrs[MSR_PRED_CMD] = (MSR_WRITEONLY, 0, U64 & ~PRED_CMD_IBPB, CHECK_RESERVED)
    if edx7 & CPUID7_EDX_L1D_FLUSH:
        msrs[MSR_FLUSH_CMD] = (MSR_WRITEONLY, 0, U64 & ~FLUSH_CMD_L1D, CHECK_RESERVED)
    if arch_caps is not None:
        msrs[MSR_ARCH_CAPABILITIES] = (MSR_READONLY, arch_caps, 0, CHECK_RESERVED)
    return msrs


def _profile(name, description, family_model, brand, clocks, edx7=0, arch_caps=None, tlb=(128, 12),
             maxphyaddr=39, mcg_cap=HASWELL_MCG_CAP, vmx_msrs=_VMX_I7_6700K):
    """Haswell's leaves (what Unicorn executes) with another signature, leaf-7 EDX, brand, clocks and
    physical-address width; the same EPT and VPID capabilities; `tlb` is the second-level TLB's (sets, ways)
    (Skylake's: 1536 entries, 12-way). `clocks`: (crystal Hz, TSC/crystal numerator, denominator, base MHz,
    maximum MHz)."""
    cpuid = dict(_HASWELL_CPUID)
    cpuid[(0x80000008, ANY)] = _address_sizes(maxphyaddr)
    eax, ebx, ecx, edx = cpuid[(0x1, ANY)]
    cpuid[(0x1, ANY)] = (family_model, ebx, ecx, edx)
    a, b, c, _ = cpuid[(0x7, 0)]
    cpuid[(0x7, 0)] = (a, b, c, edx7)
    cpuid.update(_clock_leaves(*clocks))
    cpuid.update(_brand(brand))
    tsc_hz = clocks[0] * clocks[1] // clocks[2]
    msrs = _common_msrs(maxphyaddr, mcg_cap, tsc_hz // 100000000)
    msrs.update(_leaf7_msrs(edx7, arch_caps))
    facts = {"ept_vpid_cap": _HASWELL_EPT_VPID_CAP, "tlb_sets": tlb[0], "tlb_ways": tlb[1], "vmx_msrs": vmx_msrs}
    return CpuProfile(name, description, cpuid, msrs, facts)


PROFILES = {
    # a Haswell's LAPIC timer counts the 100 MHz bus clock and its TSC runs at 34 times it; an i7-4770 reports
    # no leaf 0x15 or 0x16 (its highest is 0xD), this virtual one does: Linux 6.1 reads the TSC's frequency
    # from no hypervisor leaf, only from 0x15 (docs/linux.md)
    "haswell": _profile(
        "haswell", "Intel Haswell (Unicorn's own model), no L1D_FLUSH, no ARCH_CAPABILITIES: L1TF-vulnerable, "
        "flushed by software", 0x306C4, "webhyve modeled Intel(R) Core(TM) i7-4770 (Haswell)",
        (100000000, 34, 1, 3400, 3900), tlb=(128, 8), vmx_msrs=_VMX_I7_5600U),   # STLB: 1024 entries, 8-way
    "skylake": _profile(
        "skylake", "Intel Skylake with the 2018 microcode: L1D_FLUSH (CPUID.7.0:EDX[28]), ARCH_CAPABILITIES "
        "without RDCL_NO: L1TF-vulnerable, flushed through IA32_FLUSH_CMD", 0x506E3,
        "webhyve modeled Intel(R) Core(TM) i7-6700 (Skylake)", (24000000, 425, 3, 3400, 4000),
        edx7=SPECTRE_2018 | CPUID7_EDX_L1D_FLUSH | CPUID7_EDX_ARCH_CAPABILITIES, arch_caps=0),
    "cascadelake": _profile(
        "cascadelake", "Intel Cascade Lake: ARCH_CAPABILITIES reports RDCL_NO and SKIP_L1DFL_VMENTRY: "
        "not L1TF-vulnerable, no flush needed; APICv (posted interrupts, virtual-interrupt delivery)", 0x50657,
        "webhyve modeled Intel(R) Xeon(R) Gold 6230 (Cascade Lake)",
        (25000000, 84, 1, 2100, 3900), edx7=SPECTRE_2018 | CPUID7_EDX_L1D_FLUSH | CPUID7_EDX_ARCH_CAPABILITIES,
        arch_caps=ARCH_CAP_RDCL_NO | ARCH_CAP_IBRS_ALL | ARCH_CAP_SKIP_L1DFL_VMENTRY, maxphyaddr=46,
        vmx_msrs=_VMX_XEON_CASCADE_LAKE),
}
DEFAULT = "haswell"


def get(name):
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError("unknown CPU profile %r (known: %s)" % (name, ", ".join(sorted(PROFILES)))) from None
