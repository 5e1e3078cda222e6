"""VM-execution, VM-exit and VM-entry controls as bhyve's vmx_modinit and vmx_vcpu_init choose them.

bhyve asks the CPU once, when vmm.ko loads (vmx_modinit in sys/amd64/vmm/intel/vmx.c): for each control word
it names the bits it requires set and clear and lets vmx_set_ctlreg (vmx_msr.c) settle every other bit from
the IA32_VMX_*_CTLS capability MSRs by the SDM's algorithm (Vol. 3D Appendix A.2, "Algorithm 3" of 26.5.1).
Optional features (HLT/PAUSE/MTF exiting, unrestricted guest, INVPCID, the TPR shadow, virtual interrupt
delivery, posted interrupts) are probed one bit at a time and, where bhyve has a loader tunable for them,
can be turned off. Every vCPU's VMCS then starts from those words (vmx_vcpu_init), and
`bhyvectl --setcap` changes single bits of it (vmx_setcap).

Plain Python: it runs when a VM is made and when a capability changes, never per guest instruction.
The modeled CPUs' MSR values are in cpu/profiles.py (VMX_MSRS), with their source.
"""
from dataclasses import dataclass

from ..core.ctx import APICV_POSTED, APICV_VID
from ..errors import ConfigError

# IA32_VMX_* capability MSRs (SDM Vol. 4 Table 2-2, Vol. 3D Appendix A)
VMX_BASIC, VMX_PINBASED_CTLS, VMX_PROCBASED_CTLS, VMX_EXIT_CTLS, VMX_ENTRY_CTLS, VMX_MISC = range(0x480, 0x486)
VMX_CR0_FIXED0, VMX_CR0_FIXED1, VMX_CR4_FIXED0, VMX_CR4_FIXED1, VMX_VMCS_ENUM = range(0x486, 0x48B)
VMX_PROCBASED_CTLS2, VMX_EPT_VPID_CAP = 0x48B, 0x48C
VMX_TRUE_PINBASED_CTLS, VMX_TRUE_PROCBASED_CTLS, VMX_TRUE_EXIT_CTLS, VMX_TRUE_ENTRY_CTLS = range(0x48D, 0x491)
VMX_VMFUNC = 0x491
BASIC_TRUE_CTLS = 1 << 55               # IA32_VMX_BASIC[55]: the TRUE_*_CTLS MSRs exist
BASIC_INS_OUTS_INFO = 1 << 54           # bhyve requires it (INS/OUTS instruction information on exits)

# Control bits, named as sys/amd64/vmm/intel/vmx_controls.h names them (SDM Vol. 3C 25.6-25.8)
PINBASED_EXTINT_EXITING, PINBASED_NMI_EXITING, PINBASED_VIRTUAL_NMI = 1 << 0, 1 << 3, 1 << 5
PINBASED_PREMPTION_TIMER, PINBASED_POSTED_INTERRUPT = 1 << 6, 1 << 7

PROCBASED_INT_WINDOW_EXITING, PROCBASED_TSC_OFFSET, PROCBASED_HLT_EXITING = 1 << 2, 1 << 3, 1 << 7
PROCBASED_INVLPG_EXITING, PROCBASED_MWAIT_EXITING, PROCBASED_RDPMC_EXITING = 1 << 9, 1 << 10, 1 << 11
PROCBASED_RDTSC_EXITING, PROCBASED_CR3_LOAD_EXITING, PROCBASED_CR3_STORE_EXITING = 1 << 12, 1 << 15, 1 << 16
PROCBASED_CR8_LOAD_EXITING, PROCBASED_CR8_STORE_EXITING, PROCBASED_USE_TPR_SHADOW = 1 << 19, 1 << 20, 1 << 21
PROCBASED_NMI_WINDOW_EXITING, PROCBASED_MOV_DR_EXITING, PROCBASED_IO_EXITING = 1 << 22, 1 << 23, 1 << 24
PROCBASED_IO_BITMAPS, PROCBASED_MTF, PROCBASED_MSR_BITMAPS = 1 << 25, 1 << 27, 1 << 28
PROCBASED_MONITOR_EXITING, PROCBASED_PAUSE_EXITING, PROCBASED_SECONDARY_CONTROLS = 1 << 29, 1 << 30, 1 << 31

PROCBASED2_VIRTUALIZE_APIC_ACCESSES, PROCBASED2_ENABLE_EPT, PROCBASED2_DESC_TABLE_EXITING = 1 << 0, 1 << 1, 1 << 2
PROCBASED2_ENABLE_RDTSCP, PROCBASED2_VIRTUALIZE_X2APIC_MODE, PROCBASED2_ENABLE_VPID = 1 << 3, 1 << 4, 1 << 5
PROCBASED2_WBINVD_EXITING, PROCBASED2_UNRESTRICTED_GUEST = 1 << 6, 1 << 7
PROCBASED2_APIC_REGISTER_VIRTUALIZATION, PROCBASED2_VIRTUAL_INTERRUPT_DELIVERY = 1 << 8, 1 << 9
PROCBASED2_PAUSE_LOOP_EXITING, PROCBASED2_ENABLE_INVPCID = 1 << 10, 1 << 12

VM_EXIT_SAVE_DEBUG_CONTROLS, VM_EXIT_HOST_LMA, VM_EXIT_LOAD_PERF_GLOBAL_CTRL = 1 << 2, 1 << 9, 1 << 12
VM_EXIT_ACKNOWLEDGE_INTERRUPT, VM_EXIT_SAVE_PAT, VM_EXIT_LOAD_PAT = 1 << 15, 1 << 18, 1 << 19
VM_EXIT_SAVE_EFER, VM_EXIT_LOAD_EFER, VM_EXIT_SAVE_PREEMPTION_TIMER = 1 << 20, 1 << 21, 1 << 22

VM_ENTRY_LOAD_DEBUG_CONTROLS, VM_ENTRY_GUEST_LMA, VM_ENTRY_INTO_SMM = 1 << 2, 1 << 9, 1 << 10
VM_ENTRY_DEACTIVATE_DUAL_MONITOR, VM_ENTRY_LOAD_PERF_GLOBAL_CTRL = 1 << 11, 1 << 13
VM_ENTRY_LOAD_PAT, VM_ENTRY_LOAD_EFER = 1 << 14, 1 << 15

# What vmx.c asks for (its PINBASED_CTLS_ONE_SETTING ... VM_ENTRY_CTLS_ZERO_SETTING)
PINBASED_ONE = PINBASED_EXTINT_EXITING | PINBASED_NMI_EXITING | PINBASED_VIRTUAL_NMI
PROCBASED_WINDOW = PROCBASED_INT_WINDOW_EXITING | PROCBASED_NMI_WINDOW_EXITING
PROCBASED_ONE = (PROCBASED_SECONDARY_CONTROLS | PROCBASED_MWAIT_EXITING | PROCBASED_MONITOR_EXITING |
                 PROCBASED_IO_EXITING | PROCBASED_MSR_BITMAPS | PROCBASED_WINDOW | PROCBASED_CR8_LOAD_EXITING |
                 PROCBASED_CR8_STORE_EXITING)
PROCBASED_ZERO = PROCBASED_CR3_LOAD_EXITING | PROCBASED_CR3_STORE_EXITING | PROCBASED_IO_BITMAPS
PROCBASED2_ONE = PROCBASED2_ENABLE_EPT
EXIT_ONE = (VM_EXIT_SAVE_DEBUG_CONTROLS | VM_EXIT_HOST_LMA | VM_EXIT_SAVE_EFER | VM_EXIT_LOAD_EFER |
            VM_EXIT_ACKNOWLEDGE_INTERRUPT)
ENTRY_ONE = VM_ENTRY_LOAD_DEBUG_CONTROLS | VM_ENTRY_LOAD_EFER
ENTRY_ZERO = VM_ENTRY_INTO_SMM | VM_ENTRY_DEACTIVATE_DUAL_MONITOR
PROCBASED2_VID_BITS = (PROCBASED2_VIRTUALIZE_APIC_ACCESSES | PROCBASED2_VIRTUALIZE_X2APIC_MODE |
                       PROCBASED2_APIC_REGISTER_VIRTUALIZATION | PROCBASED2_VIRTUAL_INTERRUPT_DELIVERY)

CR0_PE, CR0_NW, CR0_CD, CR0_PG = 1 << 0, 1 << 29, 1 << 30, 1 << 31
U64 = (1 << 64) - 1
IDT_MC = 18
APIC_ACCESS_ADDRESS = 0xFFFFF000        # vmx.c: the last page below 4 GiB, the boot firmware's


class ControlError(ConfigError):
    """vmx_set_ctlreg's EINVAL: the CPU cannot set a control the way it was asked."""


def allows_one(msr, bit):
    """vmx_ctl_allows_one_setting: bits 63:32 are the allowed 1-settings (SDM A.3.1)."""
    return bool(msr >> (bit + 32) & 1)


def allows_zero(msr, bit):
    """vmx_ctl_allows_zero_setting: a bit set in 31:0 must be 1 (SDM A.3.1)."""
    return not msr >> bit & 1


def set_ctlreg(msrs, ctl, true_ctl, ones, zeros):
    """vmx_set_ctlreg: the 32-bit control word with `ones` set and `zeros` clear, every other bit at its
    default. A bit only one way is fixed that way (and asking otherwise is a ControlError); a free bit is
    0 without TRUE MSRs (A.2 "b(iii)"), else its setting in the non-TRUE MSR: 0 where that allows 0 (a
    default0 control), 1 where it does not (a default1 control, "c(iii)/c(iv)")."""
    if ones & zeros:
        raise ControlError("a control cannot be asked both set and clear: %#x" % (ones & zeros))
    have_true = bool(msrs[VMX_BASIC] & BASIC_TRUE_CTLS)
    val = msrs[ctl]
    trueval = msrs[true_ctl] if have_true else val
    out = 0
    for i in range(32):
        one, zero = allows_one(trueval, i), allows_zero(trueval, i)
        if not one and not zero:
            raise ControlError("MSR %#x allows bit %d neither 0 nor 1" % (true_ctl, i))
        if zero and not one:
            if ones >> i & 1:
                raise ControlError("MSR %#x does not allow bit %d set" % (true_ctl, i))
        elif one and not zero:
            if zeros >> i & 1:
                raise ControlError("MSR %#x does not allow bit %d clear" % (true_ctl, i))
            out |= 1 << i
        elif ones >> i & 1:
            out |= 1 << i
        elif not zeros >> i & 1 and have_true and not allows_zero(val, i):
            out |= 1 << i
    return out


def can_set(msrs, ctl, true_ctl, bits):
    """bhyve's probe of optional features: vmx_set_ctlreg(..., bits, 0, &tmp) == 0."""
    try:
        set_ctlreg(msrs, ctl, true_ctl, bits, 0)
        return True
    except ControlError:
        return False


@dataclass
class VmxCaps:
    """What vmx_modinit leaves in its globals: the control words every vCPU starts from, the optional
    features (cap_*), the APICv choices, and the CR0/CR4 bits fixed to 1 and to 0."""
    pinbased: int
    procbased: int
    procbased2: int
    exit: int
    entry: int
    cap_halt_exit: bool
    cap_pause_exit: bool
    cap_monitor_trap: bool
    cap_unrestricted_guest: bool
    cap_invpcid: bool
    cap_wbinvd_exit: bool
    tpr_shadowing: bool
    virtual_interrupt_delivery: bool
    posted_interrupts: bool
    can_post: bool                      # the CPU allows posted interrupts with the controls chosen (tunable aside)
    cr0_ones: int
    cr0_zeros: int
    cr4_ones: int
    cr4_zeros: int

    @property
    def cr0_mask(self):
        """vmx_setup_cr_shadow: the guest/host mask is every bit fixed either way."""
        return self.cr0_ones | self.cr0_zeros

    @property
    def cr4_mask(self):
        return self.cr4_ones | self.cr4_zeros


def modinit(msrs, use_tpr_shadowing=True, use_apic_vid=True, use_apic_pir=True):
    """vmx_modinit's control words for a CPU whose capability MSRs are `msrs` ({index: value}); the use_*
    flags are the loader tunables hw.vmm.vmx.cap.tpr_shadowing, .virtual_interrupt_delivery and
    .posted_interrupts, read only where the CPU has the feature. ControlError where bhyve would refuse to load."""
    if not msrs[VMX_BASIC] & BASIC_INS_OUTS_INFO:
        raise ControlError("IA32_VMX_BASIC[54] is clear: bhyve needs INS/OUTS decoding")
    pro, tpro = VMX_PROCBASED_CTLS, VMX_TRUE_PROCBASED_CTLS
    pin, tpin = VMX_PINBASED_CTLS, VMX_TRUE_PINBASED_CTLS
    pro2 = VMX_PROCBASED_CTLS2
    procbased = set_ctlreg(msrs, pro, tpro, PROCBASED_ONE, PROCBASED_ZERO) & ~PROCBASED_WINDOW
    procbased2 = set_ctlreg(msrs, pro2, pro2, PROCBASED2_ONE, 0)
    if can_set(msrs, pro2, pro2, PROCBASED2_ENABLE_VPID):
        procbased2 |= PROCBASED2_ENABLE_VPID
    pinbased = set_ctlreg(msrs, pin, tpin, PINBASED_ONE, 0)
    exit_ctls = set_ctlreg(msrs, VMX_EXIT_CTLS, VMX_TRUE_EXIT_CTLS, EXIT_ONE, 0)
    entry_ctls = set_ctlreg(msrs, VMX_ENTRY_CTLS, VMX_TRUE_ENTRY_CTLS, ENTRY_ONE, ENTRY_ZERO)
    # RDPID/RDTSCP: bhyve enables PROCBASED2_ENABLE_RDTSCP only where the host has RDTSCP or RDPID; the modeled
    # CPUs' CPUID (Unicorn's Haswell) announces neither, so it stays clear.
    unrestricted = can_set(msrs, pro2, pro2, PROCBASED2_UNRESTRICTED_GUEST)
    tpr = can_set(msrs, pro, tpro, PROCBASED_USE_TPR_SHADOW) and use_tpr_shadowing
    if tpr:
        procbased = (procbased | PROCBASED_USE_TPR_SHADOW) & ~(PROCBASED_CR8_LOAD_EXITING | PROCBASED_CR8_STORE_EXITING)
    vid = can_set(msrs, pro2, pro2, PROCBASED2_VID_BITS) and tpr and use_apic_vid
    can_post = False
    if vid:
        procbased |= PROCBASED_USE_TPR_SHADOW
        procbased2 = (procbased2 | PROCBASED2_VID_BITS) & ~PROCBASED2_VIRTUALIZE_X2APIC_MODE
        can_post = can_set(msrs, pin, tpin, PINBASED_POSTED_INTERRUPT)
    posted = can_post and bool(use_apic_pir)
    if posted:
        pinbased |= PINBASED_POSTED_INTERRUPT
    cr0_ones = msrs[VMX_CR0_FIXED0] & msrs[VMX_CR0_FIXED1]
    cr0_zeros = ~msrs[VMX_CR0_FIXED0] & ~msrs[VMX_CR0_FIXED1] & U64
    if unrestricted:
        cr0_ones &= ~(CR0_PG | CR0_PE)
    cr0_zeros |= CR0_NW | CR0_CD                    # "Do not allow the guest to set CR0_NW or CR0_CD"
    return VmxCaps(
        pinbased=pinbased, procbased=procbased, procbased2=procbased2, exit=exit_ctls, entry=entry_ctls,
        cap_halt_exit=can_set(msrs, pro, tpro, PROCBASED_HLT_EXITING),
        cap_pause_exit=can_set(msrs, pro, tpro, PROCBASED_PAUSE_EXITING),
        cap_monitor_trap=can_set(msrs, pro, pro, PROCBASED_MTF),          # (bhyve asks the non-TRUE MSR twice)
        cap_unrestricted_guest=unrestricted, cap_invpcid=can_set(msrs, pro2, pro2, PROCBASED2_ENABLE_INVPCID),
        cap_wbinvd_exit=can_set(msrs, pro2, pro2, PROCBASED2_WBINVD_EXITING),
        tpr_shadowing=tpr, virtual_interrupt_delivery=vid, posted_interrupts=posted, can_post=can_post,
        cr0_ones=cr0_ones, cr0_zeros=cr0_zeros,
        cr4_ones=msrs[VMX_CR4_FIXED0] & msrs[VMX_CR4_FIXED1], cr4_zeros=~msrs[VMX_CR4_FIXED0] & ~msrs[VMX_CR4_FIXED1] & U64)


def vcpu_init(vmcs, caps, vpid, eptp, msr_bitmap, trace_exceptions):
    """vmx_vcpu_init's writes of the controls (the APIC pages come with the local APIC: apic_init)."""
    vmcs["PIN_BASED_CTLS"] = caps.pinbased
    vmcs["PRI_PROC_BASED_CTLS"] = caps.procbased
    vmcs["SEC_PROC_BASED_CTLS"] = caps.procbased2
    vmcs["EXIT_CTLS"], vmcs["ENTRY_CTLS"] = caps.exit, caps.entry
    vmcs["MSR_BITMAP"] = msr_bitmap
    vmcs["VPID"] = vpid if caps.procbased2 & PROCBASED2_ENABLE_VPID else 0
    vmcs["EPTP"] = eptp
    vmcs["EXCEPTION_BITMAP"] = 0xFFFFFFFF if trace_exceptions else 1 << IDT_MC
    vmcs["CR0_MASK"], vmcs["CR0_SHADOW"] = caps.cr0_mask, 0x60000010       # vmx_setup_cr0_shadow(vmcs, 0x60000010)
    vmcs["CR4_MASK"], vmcs["CR4_SHADOW"] = caps.cr4_mask, 0                 # vmx_setup_cr4_shadow(vmcs, 0)


def apic_init(vmcs, caps, apic_page, pir_desc, pir_vector):
    """vmx_vcpu_init's APIC fields: the virtual-APIC page with the TPR shadow, the APIC-access page and EOI-exit
    bitmaps with virtual interrupt delivery, the posted-interrupt vector and descriptor with posted interrupts."""
    if caps.tpr_shadowing:
        vmcs["VIRTUAL_APIC"] = apic_page
    if caps.virtual_interrupt_delivery:
        vmcs["APIC_ACCESS"] = APIC_ACCESS_ADDRESS
        for i in range(4):
            vmcs["EOI_EXIT%d" % i] = 0
    set_posted(vmcs, caps, caps.posted_interrupts, pir_desc, pir_vector)


def set_posted(vmcs, caps, on, pir_desc, pir_vector):
    """Posted interrupts on or off in one vCPU's VMCS: the pin-based control with the vector and descriptor fields
    (vmx_vcpu_init's, had vmx_modinit decided it so). bhyve reads hw.vmm.vmx.use_apic_pir once, at vmx_modinit;
    webhyve applies a change to running vCPUs at their next entry. Only where the CPU allows it (can_post)."""
    if on and caps.can_post:
        vmcs["PIN_BASED_CTLS"] = vmcs["PIN_BASED_CTLS"] | PINBASED_POSTED_INTERRUPT
        vmcs["PIR_VECTOR"], vmcs["PIR_DESC"] = pir_vector, pir_desc
    else:
        vmcs["PIN_BASED_CTLS"] = vmcs["PIN_BASED_CTLS"] & ~PINBASED_POSTED_INTERRUPT
        vmcs["PIR_VECTOR"], vmcs["PIR_DESC"] = 0, 0


def apicv(vmcs, caps):
    """The APICv controls in force in this VMCS, as the local APIC follows them (ctx APICV): virtual-interrupt
    delivery makes requests go into the PIR descriptor (vmx_set_intr_ready), the posted-interrupt control makes
    a notification need no exit (vmx_post_intr). A control the CPU does not allow counts as clear."""
    bits = 0
    if caps.virtual_interrupt_delivery and vmcs["SEC_PROC_BASED_CTLS"] & PROCBASED2_VIRTUAL_INTERRUPT_DELIVERY:
        bits |= APICV_VID
        if caps.can_post and vmcs["PIN_BASED_CTLS"] & PINBASED_POSTED_INTERRUPT:
            bits |= APICV_POSTED
    return bits


# -- capabilities (vmx_getcap / vmx_setcap): name -> (VMCS field, bit, the VmxCaps flag that makes it available)
CAPABILITIES = {
    "hlt_exit": ("PRI_PROC_BASED_CTLS", PROCBASED_HLT_EXITING, "cap_halt_exit"),
    "mtrap_exit": ("PRI_PROC_BASED_CTLS", PROCBASED_MTF, "cap_monitor_trap"),
    "pause_exit": ("PRI_PROC_BASED_CTLS", PROCBASED_PAUSE_EXITING, "cap_pause_exit"),
    "unrestricted_guest": ("SEC_PROC_BASED_CTLS", PROCBASED2_UNRESTRICTED_GUEST, "cap_unrestricted_guest"),
    "enable_invpcid": ("SEC_PROC_BASED_CTLS", PROCBASED2_ENABLE_INVPCID, "cap_invpcid"),
    "bpt_exit": ("EXCEPTION_BITMAP", 1 << 3, None),                   # #BP; always available
}
# libvmmapi's other names, which vmx_getcap does not offer on this engine (ENOENT: "not available")
UNAVAILABLE = ("rdpid", "rdtscp", "ipi_exit", "mask_hwintr", "rflags_tf")
# What bhyve's userspace turns on for every vCPU it starts (bhyverun's -H and -P, and unrestricted guest for
# the vCPUs it starts in real mode): the engine runs its guests that way.
STARTUP = ("hlt_exit", "pause_exit", "unrestricted_guest")


def available(caps, name):
    field, bit, flag = CAPABILITIES[name]
    return flag is None or getattr(caps, flag)


def getcap(vmcs, caps, name):
    """1 or 0 as the control bit stands in this vCPU's VMCS, None where vmx_getcap says ENOENT."""
    if name not in CAPABILITIES or not available(caps, name):
        return None
    field, bit, _ = CAPABILITIES[name]
    return 1 if vmcs[field] & bit else 0


def setcap(vmcs, caps, name, value):
    """vmx_setcap: set or clear the capability's control bit. False where it is not available; the exception
    bitmap is left alone while every exception is traced (0xffffffff), as bhyve does."""
    if name not in CAPABILITIES or not available(caps, name):
        return False
    field, bit, _ = CAPABILITIES[name]
    word = vmcs[field]
    if field == "EXCEPTION_BITMAP" and word == 0xFFFFFFFF:
        return True
    vmcs[field] = word | bit if value else word & ~bit
    return True
