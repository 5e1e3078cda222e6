"""vmx_set_ctlreg against the SDM's rules (Appendix A.2/A.3), and vmx_modinit/vmx_vcpu_init's control words for
the modeled CPUs' capability MSRs, bit by bit as sys/amd64/vmm/intel/vmx.c asks for them."""
import random

import pytest

from engine.core import ctx as C
from engine.core.vmcs import Vmcs
from engine.cpu import profiles as P
from engine.vmx import controls as K

TRUE_ON = 1 << 55
U32 = 0xFFFFFFFF


def msrs_with(ctl=0, true_ctl=None, basic=K.BASIC_INS_OUTS_INFO):
    """Capability MSRs where only the primary processor-based pair matters."""
    m = {K.VMX_BASIC: basic | (TRUE_ON if true_ctl is not None else 0), K.VMX_PROCBASED_CTLS: ctl}
    if true_ctl is not None:
        m[K.VMX_TRUE_PROCBASED_CTLS] = true_ctl
    return m


def ctlreg(m, ones=0, zeros=0):
    return K.set_ctlreg(m, K.VMX_PROCBASED_CTLS, K.VMX_TRUE_PROCBASED_CTLS, ones, zeros)


def test_a_bit_whose_allowed_0_setting_is_1_is_fixed_to_1():
    m = msrs_with(ctl=(0xFFFF << 32) | 0x12)
    assert ctlreg(m) == 0x12
    with pytest.raises(K.ControlError):
        ctlreg(m, zeros=0x10)


def test_a_bit_whose_allowed_1_setting_is_0_is_fixed_to_0():
    m = msrs_with(ctl=0xFF << 32)
    assert ctlreg(m, ones=0x80) == 0x80
    with pytest.raises(K.ControlError):
        ctlreg(m, ones=0x100)


def test_a_free_bit_takes_what_is_asked_else_0_without_true_msrs():
    m = msrs_with(ctl=0xF << 32)
    assert ctlreg(m, ones=0x3, zeros=0x4) == 0x3


def test_with_true_msrs_a_free_default1_bit_stays_1_and_a_default0_bit_0():
    # bit 0 reserved-to-1 in the old MSR but free in the TRUE one (a default1 control): 1 unless asked 0;
    # bit 1 free in both (default0): 0 unless asked
    m = msrs_with(ctl=(0x3 << 32) | 0x1, true_ctl=0x3 << 32)
    assert ctlreg(m) == 0x1
    assert ctlreg(m, zeros=0x1) == 0x0
    assert ctlreg(m, ones=0x2) == 0x3


def test_asking_one_bit_both_ways_is_refused():
    with pytest.raises(K.ControlError):
        ctlreg(msrs_with(ctl=U32 << 32), ones=0x4, zeros=0x4)


def test_random_capabilities_every_result_is_one_vm_entry_allows():
    """The SDM's entry check (A.3): allowed-0 bits of the TRUE MSR set, nothing outside its allowed-1 bits;
    every bit asked for and allowed comes out as asked."""
    rng = random.Random(17)
    for _ in range(300):
        must = rng.getrandbits(32)
        may = must | rng.getrandbits(32)
        true_must = must & rng.getrandbits(32)
        m = msrs_with(ctl=(may << 32) | must, true_ctl=(may << 32) | true_must)
        ones = rng.getrandbits(32) & may
        zeros = rng.getrandbits(32) & ~ones & ~true_must
        got = ctlreg(m, ones=ones, zeros=zeros)
        assert got & true_must == true_must and got & ~may == 0
        assert got & ones == ones and got & zeros == 0
        free = may & ~true_must & ~ones & ~zeros
        assert got & free == must & free                     # defaults from the non-TRUE MSR


HASWELL = P.get("haswell").facts["vmx_msrs"]
SKYLAKE = P.get("skylake").facts["vmx_msrs"]


@pytest.mark.parametrize("msrs", [HASWELL, SKYLAKE], ids=["i7-5600U", "i7-6700K"])
def test_vmx_modinit_words_for_the_modeled_cpus(msrs):
    """What bhyve's vmx_modinit computes on these CPUs (VirtualBox's dumps): the default1 bits of the TRUE MSRs
    plus vmx.c's ONE_SETTINGs, the window bits cleared (set on demand), CR8 exiting traded for the TPR shadow."""
    caps = K.modinit(msrs)
    assert caps.pinbased == 0x16 | K.PINBASED_EXTINT_EXITING | K.PINBASED_NMI_EXITING | K.PINBASED_VIRTUAL_NMI
    assert caps.procbased == (0x04006172 | K.PROCBASED_SECONDARY_CONTROLS | K.PROCBASED_MWAIT_EXITING |
                              K.PROCBASED_MONITOR_EXITING | K.PROCBASED_IO_EXITING | K.PROCBASED_MSR_BITMAPS |
                              K.PROCBASED_USE_TPR_SHADOW)
    assert not caps.procbased & (K.PROCBASED_CR3_LOAD_EXITING | K.PROCBASED_CR3_STORE_EXITING |
                                 K.PROCBASED_IO_BITMAPS | K.PROCBASED_CR8_LOAD_EXITING | K.PROCBASED_HLT_EXITING)
    assert caps.procbased2 == K.PROCBASED2_ENABLE_EPT | K.PROCBASED2_ENABLE_VPID
    assert caps.exit == 0x36DFB | K.VM_EXIT_SAVE_DEBUG_CONTROLS | K.VM_EXIT_HOST_LMA | K.VM_EXIT_ACKNOWLEDGE_INTERRUPT | \
        K.VM_EXIT_SAVE_EFER | K.VM_EXIT_LOAD_EFER
    assert caps.entry == 0x11FB | K.VM_ENTRY_LOAD_DEBUG_CONTROLS | K.VM_ENTRY_LOAD_EFER
    assert (caps.cap_halt_exit, caps.cap_pause_exit, caps.cap_monitor_trap, caps.cap_unrestricted_guest,
            caps.cap_invpcid) == (True,) * 5
    # client parts: no APIC-register virtualization, no virtual-interrupt delivery, no posted interrupts
    assert (caps.tpr_shadowing, caps.virtual_interrupt_delivery, caps.posted_interrupts) == (True, False, False)
    # vmx_setup_cr_shadow: CR0.NE fixed to 1 (PE, PG freed by unrestricted guest), CD, NW and 63:32 to 0
    assert caps.cr0_mask == 0xFFFFFFFF60000020
    assert caps.cr4_mask == 0x2000 | (~msrs[K.VMX_CR4_FIXED1] & (1 << 64) - 1)


def test_without_the_tpr_shadow_cr8_accesses_exit():
    caps = K.modinit(HASWELL, use_tpr_shadowing=False)
    assert not caps.procbased & K.PROCBASED_USE_TPR_SHADOW
    assert caps.procbased & K.PROCBASED_CR8_LOAD_EXITING and caps.procbased & K.PROCBASED_CR8_STORE_EXITING


APICV = dict(SKYLAKE)
APICV[K.VMX_PROCBASED_CTLS2] |= (K.PROCBASED2_APIC_REGISTER_VIRTUALIZATION | K.PROCBASED2_VIRTUAL_INTERRUPT_DELIVERY) << 32
APICV[K.VMX_TRUE_PINBASED_CTLS] |= K.PINBASED_POSTED_INTERRUPT << 32
APICV[K.VMX_PINBASED_CTLS] |= K.PINBASED_POSTED_INTERRUPT << 32


def test_a_cpu_with_apicv_gets_virtual_interrupt_delivery_and_posted_interrupts_unless_turned_off():
    caps = K.modinit(APICV)
    assert caps.virtual_interrupt_delivery and caps.posted_interrupts
    assert caps.procbased2 & K.PROCBASED2_VID_BITS == K.PROCBASED2_VID_BITS & ~K.PROCBASED2_VIRTUALIZE_X2APIC_MODE
    assert caps.pinbased & K.PINBASED_POSTED_INTERRUPT
    vmcs = Vmcs()
    K.apic_init(vmcs, caps, 0x5000, 0x6000, 0xF2)
    assert (vmcs["VIRTUAL_APIC"], vmcs["APIC_ACCESS"], vmcs["PIR_DESC"], vmcs["PIR_VECTOR"]) == \
        (0x5000, 0xFFFFF000, 0x6000, 0xF2)
    assert not K.modinit(APICV, use_apic_pir=False).pinbased & K.PINBASED_POSTED_INTERRUPT
    no_vid = K.modinit(APICV, use_apic_vid=False)
    assert not no_vid.procbased2 & K.PROCBASED2_VIRTUAL_INTERRUPT_DELIVERY and not no_vid.posted_interrupts
    # virtual interrupt delivery needs the TPR shadow (vmx_modinit: "error == 0 && tpr_shadowing")
    assert not K.modinit(APICV, use_tpr_shadowing=False).virtual_interrupt_delivery


def test_of_the_profiles_only_cascadelake_allows_apicv_and_posting_follows_the_vmcs():
    """The Xeon profile gets virtual-interrupt delivery and posted interrupts, the client parts neither; the
    local APIC's APICv bits are read from the VMCS, and set_posted changes the control where the CPU allows it."""
    for name, want in (("haswell", False), ("skylake", False), ("cascadelake", True)):
        caps = K.modinit(P.get(name).facts["vmx_msrs"])
        assert caps.virtual_interrupt_delivery == caps.posted_interrupts == caps.can_post == want, name
        vmcs = Vmcs()
        K.vcpu_init(vmcs, caps, 1, 0, 0, False)
        K.apic_init(vmcs, caps, 0x5000, 0x6000, 0xF2)
        assert K.apicv(vmcs, caps) == (C.APICV_VID | C.APICV_POSTED if want else 0), name
        K.set_posted(vmcs, caps, False, 0x6000, 0xF2)
        assert not vmcs["PIN_BASED_CTLS"] & K.PINBASED_POSTED_INTERRUPT
        assert (vmcs["PIR_DESC"], vmcs["PIR_VECTOR"]) == (0, 0)
        assert K.apicv(vmcs, caps) == (C.APICV_VID if want else 0), name
        K.set_posted(vmcs, caps, True, 0x6000, 0xF2)
        assert bool(vmcs["PIN_BASED_CTLS"] & K.PINBASED_POSTED_INTERRUPT) == want, name
        assert (vmcs["PIR_DESC"], vmcs["PIR_VECTOR"]) == ((0x6000, 0xF2) if want else (0, 0)), name
    off = K.modinit(P.get("cascadelake").facts["vmx_msrs"], use_apic_pir=False)
    assert off.can_post and not off.posted_interrupts and not off.pinbased & K.PINBASED_POSTED_INTERRUPT


def test_client_cpus_leave_the_apic_fields_zero():
    vmcs = Vmcs()
    K.apic_init(vmcs, K.modinit(HASWELL), 0x5000, 0x6000, 0xF2)
    assert vmcs["VIRTUAL_APIC"] == 0x5000
    assert (vmcs["APIC_ACCESS"], vmcs["PIR_DESC"], vmcs["PIR_VECTOR"]) == (0, 0, 0)


def test_bhyve_refuses_a_cpu_without_ins_outs_information():
    m = dict(HASWELL)
    m[K.VMX_BASIC] &= ~K.BASIC_INS_OUTS_INFO
    with pytest.raises(K.ControlError):
        K.modinit(m)


def test_setcap_flips_the_control_bit_and_getcap_reads_it():
    caps = K.modinit(HASWELL)
    vmcs = Vmcs()
    K.vcpu_init(vmcs, caps, 17, 0x1000, 0, trace_exceptions=False)
    assert vmcs["EXCEPTION_BITMAP"] == 1 << 18 and vmcs["VPID"] == 17 and vmcs["CR0_SHADOW"] == 0x60000010
    assert K.getcap(vmcs, caps, "mtrap_exit") == 0
    assert K.setcap(vmcs, caps, "mtrap_exit", 1)
    assert vmcs["PRI_PROC_BASED_CTLS"] & K.PROCBASED_MTF and K.getcap(vmcs, caps, "mtrap_exit") == 1
    assert K.setcap(vmcs, caps, "bpt_exit", 1) and vmcs["EXCEPTION_BITMAP"] == 1 << 18 | 1 << 3
    assert K.getcap(vmcs, caps, "rdtscp") is None and not K.setcap(vmcs, caps, "rdtscp", 1)
    no_mtf = dict(HASWELL)
    no_mtf[K.VMX_PROCBASED_CTLS] &= ~(K.PROCBASED_MTF << 32)
    assert K.getcap(vmcs, K.modinit(no_mtf), "mtrap_exit") is None


def test_tracing_every_exception_leaves_the_bitmap_to_bpt_exit_alone():
    caps = K.modinit(HASWELL)
    vmcs = Vmcs()
    K.vcpu_init(vmcs, caps, 1, 0, 0, trace_exceptions=True)
    assert K.setcap(vmcs, caps, "bpt_exit", 0) and vmcs["EXCEPTION_BITMAP"] == 0xFFFFFFFF
