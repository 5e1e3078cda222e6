"""The checks a VM entry makes on the guest-state area (Intel SDM Vol. 3C 26.3.1), over a VMCS snapshot.

A failed check makes a real VM entry fail with exit reason 33, "VM-entry failure due to invalid guest state",
bit 31 of the exit reason set (SDM 27.8): the guest never ran. The engine's VMCS guest-state area is what
vcpu/guest.py sync_vmcs saves from Unicorn, so these checks say whether the state the engine runs a guest in
is one VT-x would have entered at all. They run before every entry from userspace when the webhyve tunable
hw.vmm.vmx.check_guest_state is set (tests set it), never on the kernel loop's own re-entries.

Plain Python over {field: value}: `violations` returns every rule broken, each naming its SDM section.
"""
from . import controls as K

ENTRY_FAILURE = 1 << 31                 # the exit reason's "VM-entry failure" bit
INVALID_GUEST_STATE = 33

CR0_PE, CR0_PG, CR4_PAE, CR4_PCIDE = 1 << 0, 1 << 31, 1 << 5, 1 << 17
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
EFER_RESERVED = ~(1 | EFER_LME | EFER_LMA | 1 << 11) & (1 << 64) - 1      # SCE, LME, LMA, NXE
RFLAGS_RESERVED = ~0x3F7FD7 & (1 << 64) - 1          # 63:22, 15, 5, 3 are reserved (0); bit 1 is 1
RFLAGS_IF, RFLAGS_VM = 1 << 9, 1 << 17
AR_UNUSABLE = 1 << 16
ACTIVITY_HLT = 1
SEGS = ("CS", "SS", "DS", "ES", "FS", "GS")


def canonical(address):
    top = address >> 47
    return top == 0 or top == (1 << 17) - 1


def _field(ar, shift, bits):
    return (ar >> shift) & ((1 << bits) - 1)


def _granularity_ok(limit, ar):
    """SDM 26.3.1.2: limit bits 11:0 not all 1 → G = 0; any of 31:20 set → G = 1."""
    g = ar >> 15 & 1
    return not ((limit & 0xFFF) != 0xFFF and g) and not (limit >> 20 and not g)


def violations(vmcs, msrs):
    """Every guest-state rule the snapshot `vmcs` breaks, as "SDM section: what" strings, for a CPU whose
    VMX capability MSRs are `msrs`."""
    out = []
    out += _control_registers(vmcs, msrs)
    out += _segments(vmcs)
    out += _tables_rip_rflags(vmcs)
    out += _non_register(vmcs)
    return out


def _control_registers(vmcs, msrs):
    """26.3.1.1: CR0/CR4 fixed bits, PG without PE, IA-32e mode against CR0.PG/CR4.PAE/EFER."""
    out = []
    unrestricted = vmcs["SEC_PROC_BASED_CTLS"] & K.PROCBASED2_UNRESTRICTED_GUEST
    ia32e = bool(vmcs["ENTRY_CTLS"] & K.VM_ENTRY_GUEST_LMA)
    cr0, cr4, efer = vmcs["GUEST_CR0"], vmcs["GUEST_CR4"], vmcs["GUEST_IA32_EFER"]
    fixed0 = msrs[K.VMX_CR0_FIXED0] & ~((CR0_PE | CR0_PG) if unrestricted else 0)
    if cr0 & fixed0 != fixed0 or cr0 & ~msrs[K.VMX_CR0_FIXED1] & 0xFFFFFFFF:
        out.append("26.3.1.1: CR0 %#x breaks IA32_VMX_CR0_FIXED0/1" % cr0)
    if cr0 >> 32:
        out.append("26.3.1.1: CR0 bits 63:32 are not 0")
    if cr0 & CR0_PG and not cr0 & CR0_PE:
        out.append("26.3.1.1: CR0.PG is set without CR0.PE")
    f0, f1 = msrs[K.VMX_CR4_FIXED0], msrs[K.VMX_CR4_FIXED1]
    if cr4 & f0 != f0 or cr4 & ~f1:
        out.append("26.3.1.1: CR4 %#x breaks IA32_VMX_CR4_FIXED0/1" % cr4)
    if ia32e and not (cr0 & CR0_PG and cr4 & CR4_PAE):
        out.append("26.3.1.1: an IA-32e mode guest needs CR0.PG and CR4.PAE")
    if not ia32e and cr4 & CR4_PCIDE:
        out.append("26.3.1.1: CR4.PCIDE outside IA-32e mode")
    if vmcs["ENTRY_CTLS"] & K.VM_ENTRY_LOAD_DEBUG_CONTROLS and vmcs["GUEST_DR7"] >> 32:
        out.append("26.3.1.1: DR7 bits 63:32 are not 0")
    for name in ("GUEST_IA32_SYSENTER_ESP", "GUEST_IA32_SYSENTER_EIP"):
        if not canonical(vmcs[name]):
            out.append("26.3.1.1: %s is not canonical" % name)
    if vmcs["ENTRY_CTLS"] & K.VM_ENTRY_LOAD_EFER:
        if efer & EFER_RESERVED:
            out.append("26.3.1.1: IA32_EFER %#x has reserved bits set" % efer)
        if bool(efer & EFER_LMA) != ia32e:
            out.append("26.3.1.1: IA32_EFER.LMA differs from the IA-32e mode guest control")
        if cr0 & CR0_PG and bool(efer & EFER_LMA) != bool(efer & EFER_LME):
            out.append("26.3.1.1: with CR0.PG, IA32_EFER.LMA must equal LME")
    return out


def _segments(vmcs):
    """26.3.1.2 outside virtual-8086 mode: selectors, bases, and the access rights of CS, SS, DS..GS, TR, LDTR."""
    out = []
    if vmcs["GUEST_RFLAGS"] & RFLAGS_VM:
        return ["26.3.1.2: virtual-8086 mode is not modeled"]
    unrestricted = vmcs["SEC_PROC_BASED_CTLS"] & K.PROCBASED2_UNRESTRICTED_GUEST
    ia32e = bool(vmcs["ENTRY_CTLS"] & K.VM_ENTRY_GUEST_LMA)
    ar = {s: vmcs["GUEST_%s_ACCESS_RIGHTS" % s] for s in SEGS + ("TR", "LDTR")}
    sel = {s: vmcs["GUEST_%s_SELECTOR" % s] for s in SEGS + ("TR", "LDTR")}
    usable = {s: not ar[s] & AR_UNUSABLE for s in ar}
    if sel["TR"] & 4:
        out.append("26.3.1.2: TR.TI is set")
    if usable["LDTR"] and sel["LDTR"] & 4:
        out.append("26.3.1.2: LDTR.TI is set")
    if not unrestricted and sel["SS"] & 3 != sel["CS"] & 3:
        out.append("26.3.1.2: SS.RPL differs from CS.RPL")
    for s in ("TR", "FS", "GS") + (("LDTR",) if usable["LDTR"] else ()):
        if not canonical(vmcs["GUEST_%s_BASE" % s]):
            out.append("26.3.1.2: %s base is not canonical" % s)
    for s in ("CS", "SS", "DS", "ES"):
        if (s == "CS" or usable[s]) and vmcs["GUEST_%s_BASE" % s] >> 32:
            out.append("26.3.1.2: %s base bits 63:32 are not 0" % s)
    cs_type, ss_dpl = _field(ar["CS"], 0, 4), _field(ar["SS"], 5, 2)
    if cs_type not in ((3, 9, 11, 13, 15) if unrestricted else (9, 11, 13, 15)):
        out.append("26.3.1.2: CS type %d" % cs_type)
    cs_dpl = _field(ar["CS"], 5, 2)
    if cs_type == 3 and cs_dpl != 0 or cs_type in (9, 11) and cs_dpl != ss_dpl or cs_type in (13, 15) and cs_dpl > ss_dpl:
        out.append("26.3.1.2: CS.DPL %d against SS.DPL %d for CS type %d" % (cs_dpl, ss_dpl, cs_type))
    if usable["SS"] and _field(ar["SS"], 0, 4) not in (3, 7):
        out.append("26.3.1.2: SS type %d" % _field(ar["SS"], 0, 4))
    if not unrestricted and ss_dpl != sel["SS"] & 3:
        out.append("26.3.1.2: SS.DPL differs from SS.RPL")
    if (cs_type == 3 or not vmcs["GUEST_CR0"] & CR0_PE) and ss_dpl != 0:
        out.append("26.3.1.2: SS.DPL must be 0 in real mode (or with a CS of type 3)")
    if ia32e and ar["CS"] >> 13 & 1 and ar["CS"] >> 14 & 1:
        out.append("26.3.1.2: CS.L and CS.D both set")
    for s in SEGS:
        if s != "CS" and not usable[s]:
            continue
        a = ar[s]
        if s in ("DS", "ES", "FS", "GS") and (not a & 1 or a & 8 and not a & 2):
            out.append("26.3.1.2: %s type %d (not accessed, or an unreadable code segment)" % (s, a & 15))
        if s in ("DS", "ES", "FS", "GS") and not unrestricted and (a & 15) < 12 and _field(a, 5, 2) < sel[s] & 3:
            out.append("26.3.1.2: %s.DPL below its RPL" % s)
        if not a & 0x10 or not a & 0x80:
            out.append("26.3.1.2: %s is a system segment or not present" % s)
        if a & 0xF00 or a >> 17:
            out.append("26.3.1.2: %s access rights have reserved bits set" % s)
        if not _granularity_ok(vmcs["GUEST_%s_LIMIT" % s], a):
            out.append("26.3.1.2: %s limit %#x against its G bit" % (s, vmcs["GUEST_%s_LIMIT" % s]))
    out += _system_segment(vmcs, "TR", ar["TR"], (11,) if ia32e else (3, 11), required=True)
    if usable["LDTR"]:
        out += _system_segment(vmcs, "LDTR", ar["LDTR"], (2,), required=False)
    return out


def _system_segment(vmcs, name, a, types, required):
    out = []
    if required and a & AR_UNUSABLE:
        return ["26.3.1.2: %s is unusable" % name]
    if a & 15 not in types or a & 0x10 or not a & 0x80 or a & 0xF00 or a >> 17:
        out.append("26.3.1.2: %s access rights %#x" % (name, a))
    if not _granularity_ok(vmcs["GUEST_%s_LIMIT" % name], a):
        out.append("26.3.1.2: %s limit against its G bit" % name)
    return out


def _tables_rip_rflags(vmcs):
    """26.3.1.3 GDTR/IDTR, 26.3.1.4 RIP and RFLAGS."""
    out = []
    for t in ("GDTR", "IDTR"):
        if not canonical(vmcs["GUEST_%s_BASE" % t]):
            out.append("26.3.1.3: %s base is not canonical" % t)
        if vmcs["GUEST_%s_LIMIT" % t] >> 16:
            out.append("26.3.1.3: %s limit bits 31:16 are not 0" % t)
    ia32e = bool(vmcs["ENTRY_CTLS"] & K.VM_ENTRY_GUEST_LMA)
    long_cs = ia32e and vmcs["GUEST_CS_ACCESS_RIGHTS"] >> 13 & 1
    rip = vmcs["GUEST_RIP"]
    if not long_cs and rip >> 32:
        out.append("26.3.1.4: RIP bits 63:32 are not 0 outside 64-bit mode")
    if long_cs and not canonical(rip):
        out.append("26.3.1.4: RIP is not canonical")
    rflags = vmcs["GUEST_RFLAGS"]
    if rflags & RFLAGS_RESERVED or not rflags & 2:
        out.append("26.3.1.4: RFLAGS %#x reserved bits" % rflags)
    if (ia32e or not vmcs["GUEST_CR0"] & CR0_PE) and rflags & RFLAGS_VM:
        out.append("26.3.1.4: RFLAGS.VM in IA-32e mode or real mode")
    return out


def _non_register(vmcs):
    """26.3.1.5: activity state, interruptibility state, the VMCS link pointer."""
    out = []
    activity, gi = vmcs["GUEST_ACTIVITY"], vmcs["GUEST_INTERRUPTIBILITY"]
    if activity > 3:
        out.append("26.3.1.5: activity state %d" % activity)
    if activity == ACTIVITY_HLT and _field(vmcs["GUEST_SS_ACCESS_RIGHTS"], 5, 2) != 0:
        out.append("26.3.1.5: HLT activity state with SS.DPL != 0")
    if gi >> 5 or gi & 3 == 3:
        out.append("26.3.1.5: interruptibility state %#x" % gi)
    if gi & 1 and not vmcs["GUEST_RFLAGS"] & RFLAGS_IF:
        out.append("26.3.1.5: blocking by STI with RFLAGS.IF clear")
    if vmcs["LINK_POINTER"] != (1 << 64) - 1:
        out.append("26.3.1.5: VMCS link pointer is not all ones (no VMCS shadowing)")
    return out


def fail_entry(vmcs):
    """What a failed entry leaves (SDM 27.8): exit reason 33 with bit 31 set, qualification 0."""
    vmcs["EXIT_REASON"] = ENTRY_FAILURE | INVALID_GUEST_STATE
    vmcs["EXIT_QUALIFICATION"] = 0
