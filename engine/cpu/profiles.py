"""Modeled CPU profiles: CPUID leaves and MSRs the guest sees, declared as data.

The base leaves are what Unicorn 2.1.4's own Haswell model answers, so every feature a guest is told
about is one the emulator really executes. bhyve's additions follow x86_emulate_cpuid: the hypervisor
bit (CPUID.1:ECX[31]), VMX hidden, the vCPU's APIC ID in CPUID.1:EBX[31:24] and leaf 0x40000000 with
the "bhyve bhyve " signature.
"""
from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError

ANY = 0xFFFFFFFF          # subleaf wildcard

# MSR kinds for the in-kernel RDMSR/WRMSR handlers.
MSR_NATIVE = 0        # Unicorn keeps the register (EFER, FS/GS base, STAR...): the instruction runs natively
MSR_VALUE = 1         # a modeled value; writes store it
MSR_READONLY = 2      # reads give the value; writes raise #GP
MSR_WRITEONLY = 3     # command MSRs (IA32_FLUSH_CMD, IA32_PRED_CMD): writes accepted, reads raise #GP

MSR_NAMES = {
    0x10: "IA32_TIME_STAMP_COUNTER", 0x17: "IA32_PLATFORM_ID", 0x1B: "IA32_APIC_BASE",
    0x3A: "IA32_FEATURE_CONTROL", 0x48: "IA32_SPEC_CTRL", 0x49: "IA32_PRED_CMD", 0x8B: "IA32_BIOS_SIGN_ID",
    0xFE: "IA32_MTRRCAP", 0x10A: "IA32_ARCH_CAPABILITIES", 0x10B: "IA32_FLUSH_CMD",
    0x174: "IA32_SYSENTER_CS", 0x175: "IA32_SYSENTER_ESP", 0x176: "IA32_SYSENTER_EIP",
    0x1A0: "IA32_MISC_ENABLE", 0x277: "IA32_PAT", 0x2FF: "IA32_MTRR_DEF_TYPE",
    0xC0000080: "IA32_EFER", 0xC0000081: "IA32_STAR", 0xC0000082: "IA32_LSTAR", 0xC0000083: "IA32_CSTAR",
    0xC0000084: "IA32_FMASK", 0xC0000100: "IA32_FS_BASE", 0xC0000101: "IA32_GS_BASE",
    0xC0000102: "IA32_KERNEL_GS_BASE", 0xC0000103: "IA32_TSC_AUX",
}

# CPUID.80000008H:EAX: linear-address width 48 in bits 15:8, MAXPHYADDR in bits 7:0. The walks enforce the
# same number (mmu/pmap.py reads it back through CpuProfile.maxphyaddr): an i7-4770 or i7-6700 has 39 bits,
# a Xeon Gold 6230 46.
def _address_sizes(maxphyaddr):
    return (48 << 8 | maxphyaddr, 0, 0, 0)


CPUID_80000001_EDX_PAGE1GB = 1 << 26     # 1-GByte pages in 4-level paging (SDM 4.1.4)

_HASWELL_CPUID = {
    (0x0, ANY): (0xD, 0x756E6547, 0x6C65746E, 0x49656E69),               # "GenuineIntel"
    (0x1, ANY): (0x306C4, 0x800, 0xCED82203 | 1 << 31, 0x78BFBFD),       # + hypervisor present
    (0x2, ANY): (0x1, 0x0, 0x0, 0x2C307D),
    (0x4, 0): (0x121, 0x1C0003F, 0x3F, 0x1),
    (0x6, ANY): (0x4, 0, 0, 0),
    (0x7, 0): (0x0, 0x389, 0x0, 0x0),
    (0xD, 0): (0x7, 0x240, 0x340, 0x0),
    (0x40000000, ANY): (0x40000000, 0x76796862, 0x68622065, 0x20657679),   # "bhyve bhyve "
    (0x80000000, ANY): (0x80000008, 0, 0, 0),
    # Unicorn's Haswell lacks Page1GB; the walk that translates for it here (mmu/walk.py) has 1 GiB pages,
    # as a real i7-4770 does
    (0x80000001, ANY): (0x306C4, 0x0, 0x21, 0x28100800 | CPUID_80000001_EDX_PAGE1GB),
    (0x80000008, ANY): _address_sizes(39),
}

_COMMON_MSRS = {
    0x10: (MSR_NATIVE, 0), 0x174: (MSR_NATIVE, 0), 0x175: (MSR_NATIVE, 0), 0x176: (MSR_NATIVE, 0),
    0x277: (MSR_NATIVE, 0), 0xC0000080: (MSR_NATIVE, 0), 0xC0000081: (MSR_NATIVE, 0),
    0xC0000082: (MSR_NATIVE, 0), 0xC0000083: (MSR_NATIVE, 0), 0xC0000084: (MSR_NATIVE, 0),
    0xC0000100: (MSR_NATIVE, 0), 0xC0000101: (MSR_NATIVE, 0), 0xC0000102: (MSR_NATIVE, 0),
    0xC0000103: (MSR_NATIVE, 0),
    0x17: (MSR_READONLY, 0), 0x1B: (MSR_VALUE, 0xFEE00900), 0x3A: (MSR_READONLY, 0x1),   # FEATURE_CONTROL locked, VMX off
    0x8B: (MSR_VALUE, 0), 0xFE: (MSR_READONLY, 0x508), 0x1A0: (MSR_VALUE, 0x1), 0x2FF: (MSR_VALUE, 0x6),
}


# MSR_VMX_EPT_VPID_CAP of a Haswell: execute-only, 4-level walk, WB, 2 MiB and 1 GiB pages, INVEPT (all
# types), EPT A/D, INVVPID (all types)
_HASWELL_EPT_VPID_CAP = 0xF0106334141


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
    msrs: dict
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

    def msr_table(self):
        """Rows [index, kind, value] for the in-kernel RDMSR/WRMSR handlers (a vCPU's own copy)."""
        rows = [(index, kind, value) for index, (kind, value) in sorted(self.msrs.items())]
        return np.array(rows, np.uint64).reshape(-1, 3)


# The bits that decide the L1TF mitigation (SDM vol. 2 CPUID leaf 7; vol. 4 table 2-2).
CPUID7_EDX_L1D_FLUSH = 1 << 28        # IA32_FLUSH_CMD (MSR 0x10B) exists
CPUID7_EDX_ARCH_CAPABILITIES = 1 << 29
MSR_ARCH_CAPABILITIES, MSR_FLUSH_CMD = 0x10A, 0x10B
ARCH_CAP_RDCL_NO = 1 << 0             # not susceptible to rogue data cache load (Meltdown, L1TF)
ARCH_CAP_IBRS_ALL = 1 << 1
ARCH_CAP_SKIP_L1DFL_VMENTRY = 1 << 3  # the hypervisor need not flush the L1D on VM entry
FLUSH_CMD_L1D = 1                     # IA32_FLUSH_CMD bit 0


def _variant(family_model, edx7, brand, arch_caps=None, tlb=(128, 12), maxphyaddr=39):
    """Haswell's leaves (what Unicorn executes) with another signature, leaf-7 EDX, brand and physical-address
    width; the same EPT and VPID capabilities; `tlb` is the second-level TLB's (sets, ways) (Skylake's: 1536
    entries, 12-way)."""
    cpuid = dict(_HASWELL_CPUID)
    cpuid[(0x80000008, ANY)] = _address_sizes(maxphyaddr)
    eax, ebx, ecx, edx = cpuid[(0x1, ANY)]
    cpuid[(0x1, ANY)] = (family_model, ebx, ecx, edx)
    a, b, c, _ = cpuid[(0x7, 0)]
    cpuid[(0x7, 0)] = (a, b, c, edx7)
    msrs = dict(_COMMON_MSRS)
    if edx7 & CPUID7_EDX_L1D_FLUSH:
        msrs[MSR_FLUSH_CMD] = (MSR_WRITEONLY, 0)
    if arch_caps is not None:
        msrs[MSR_ARCH_CAPABILITIES] = (MSR_READONLY, arch_caps)
    facts = {"ept_vpid_cap": _HASWELL_EPT_VPID_CAP, "tlb_sets": tlb[0], "tlb_ways": tlb[1]}
    return {**cpuid, **_brand(brand)}, msrs, facts


PROFILES = {
    "haswell": CpuProfile(
        "haswell", "Intel Haswell (Unicorn's own model), no L1D_FLUSH, no ARCH_CAPABILITIES: L1TF-vulnerable, "
        "flushed by software",
        {**_HASWELL_CPUID, **_brand("webhyve modeled Intel(R) Core(TM) i7-4770 (Haswell)")},
        dict(_COMMON_MSRS),
        {"ept_vpid_cap": _HASWELL_EPT_VPID_CAP, "tlb_sets": 128, "tlb_ways": 8}),   # STLB: 1024 entries, 8-way
    "skylake": CpuProfile(
        "skylake", "Intel Skylake with the 2018 microcode: L1D_FLUSH (CPUID.7.0:EDX[28]), ARCH_CAPABILITIES "
        "without RDCL_NO: L1TF-vulnerable, flushed through IA32_FLUSH_CMD",
        *_variant(0x506E3, CPUID7_EDX_L1D_FLUSH | CPUID7_EDX_ARCH_CAPABILITIES,
                  "webhyve modeled Intel(R) Core(TM) i7-6700 (Skylake)", arch_caps=0)),
    "cascadelake": CpuProfile(
        "cascadelake", "Intel Cascade Lake: ARCH_CAPABILITIES reports RDCL_NO and SKIP_L1DFL_VMENTRY: "
        "not L1TF-vulnerable, no flush needed",
        *_variant(0x50657, CPUID7_EDX_L1D_FLUSH | CPUID7_EDX_ARCH_CAPABILITIES,
                  "webhyve modeled Intel(R) Xeon(R) Gold 6230 (Cascade Lake)",
                  arch_caps=ARCH_CAP_RDCL_NO | ARCH_CAP_IBRS_ALL | ARCH_CAP_SKIP_L1DFL_VMENTRY, maxphyaddr=46)),
}
DEFAULT = "haswell"


def get(name):
    try:
        return PROFILES[name]
    except KeyError:
        raise ConfigError("unknown CPU profile %r (known: %s)" % (name, ", ".join(sorted(PROFILES)))) from None
