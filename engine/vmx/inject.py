"""Event delivery as VM entry performs it: through the IVT (real mode), 8-byte IDT gates (protected mode)
or 16-byte gates with IST (long mode), with privilege-changing stack switches and error codes where the
architecture pushes them (SDM §6.12, §6.14).

Unicorn never consults the guest's IDT (reference/unicorn.md §3), so the engine delivers every exception
and interrupt itself. Delivery is all-or-nothing: the CPU state is saved first and restored if any
step faults. A fault while delivering becomes a double fault, and a fault while delivering that is a
triple fault: the VM suspends (vmx_inject_interrupts' nested-fault rule, SDM Table 6-5). Each delivery
is written to the VMCS entry-interruption-information fields the way VM entry reads them (SDM §24.8.3).
"""
import struct

from unicorn import x86_const as X

from ..errors import UnsupportedByModel
from ..mmu import walk as W
from ..native import load_real_mode_segment
from . import exits as E
from . import segcache as S

ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17, 21))
CONTRIBUTORY = frozenset((0, 10, 11, 12, 13))
DF, TS, NP_, SS_, GP, PF = 8, 10, 11, 12, 13, 14
NMI = 2
NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
         10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM"}
RFLAGS_TF, RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_VM, RFLAGS_AC = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17, 1 << 18
# Guest interruptibility state (SDM Table 24-3)
BLOCKING_STI, BLOCKING_MOV_SS, BLOCKING_NMI = 1, 2, 8
GATE_INTR32, GATE_TRAP32, GATE_TASK = 0xE, 0xF, 0x5


class DeliveryFault(Exception):
    """Delivering an event faulted with `vector` (and `error_code`)."""

    def __init__(self, vector, error_code=0, cr2=None):
        super().__init__(NAMES.get(vector, vector))
        self.vector, self.error_code, self.cr2 = vector, error_code, cr2


class TripleFault(Exception):
    """The CPU would shut down: the VM suspends with reason triplefault."""


class Event:
    """An event to deliver: vector, interruption type (E.TYPE_*), error code, CR2 for #PF, and for INT n, INT3
    and INTO the instruction's length (the VM-entry instruction length, SDM 24.8.3): RIP is already past it."""
    __slots__ = ("vector", "kind", "error_code", "cr2", "length")

    def __init__(self, vector, software=False, error_code=None, cr2=None, kind=None, length=0):
        if kind is None:
            kind = (E.TYPE_SWEXC if vector in (3, 4) else E.TYPE_SWINTR) if software else \
                E.TYPE_NMI if vector == NMI else E.TYPE_HWEXC
        self.vector, self.kind, self.error_code, self.cr2, self.length = vector, kind, error_code, cr2, length
        if self.error_code is None and kind == E.TYPE_HWEXC and vector in ERROR_CODE_VECTORS:
            self.error_code = 0

    @property
    def software(self):
        """INT n, INT3, INTO: the gate's DPL is checked against CPL and RIP already points past them."""
        return self.kind in (E.TYPE_SWINTR, E.TYPE_SWEXC, E.TYPE_PRIV_SWEXC)

    @property
    def external(self):
        """The EXT bit of error codes for faults during delivery (SDM §6.13)."""
        return self.kind in (E.TYPE_EXTINT, E.TYPE_NMI, E.TYPE_HWEXC)

    def info(self):
        return E.interruption_info(self.vector, self.kind, self.error_code is not None)

    def __repr__(self):
        name = NAMES.get(self.vector, "vector %d" % self.vector) if self.kind != E.TYPE_EXTINT else \
            "interrupt %#x" % self.vector
        return "<Event %s%s>" % (name, "" if self.error_code is None else " error %#x" % self.error_code)


def external_interrupt(vector):
    return Event(vector, kind=E.TYPE_EXTINT)


def nmi():
    return Event(NMI, kind=E.TYPE_NMI)


def deliver(vcpu, event):
    """Deliver `event`, folding faults during delivery into #DF and #DF faults into TripleFault."""
    vmcs = vcpu.vmcs
    vmcs["ENTRY_INTR_INFO"] = event.info()
    vmcs["ENTRY_EXCEPTION_ERROR"] = event.error_code or 0
    saved = S.saved(vcpu.uc, "_delivery_context")
    try:
        _deliver(vcpu, event)
    except DeliveryFault as second:
        vcpu.uc.context_restore(saved)
        if event.length:                         # a fault of the INT n itself: its RIP, not the next one's
            vcpu.uc.reg_write(X.UC_X86_REG_RIP, vcpu.uc.reg_read(X.UC_X86_REG_RIP) - event.length)
        vmcs["IDT_VECTORING_INFO"] = event.info()
        vmcs["IDT_VECTORING_ERROR"] = event.error_code or 0
        if event.vector == DF and event.kind == E.TYPE_HWEXC:
            raise TripleFault("fault %s while delivering #DF" % NAMES.get(second.vector, second.vector))
        if _is_double_fault(event, second):
            deliver(vcpu, Event(DF, error_code=0))
        else:
            deliver(vcpu, Event(second.vector, error_code=second.error_code, cr2=second.cr2))
    if event.kind == E.TYPE_NMI:
        vcpu.nmi_blocked = True                  # until the next IRET (SDM §6.7.1)


def _is_double_fault(first, second):
    """SDM Table 6-5: contributory then contributory, or #PF then contributory or #PF."""
    if first.kind != E.TYPE_HWEXC:
        return False
    second_bad = second.vector in CONTRIBUTORY or second.vector == PF
    return (first.vector in CONTRIBUTORY and second.vector in CONTRIBUTORY) or (first.vector == PF and second_bad)


def _deliver(vcpu, event):
    uc = vcpu.uc
    if event.cr2 is not None:
        uc.reg_write(X.UC_X86_REG_CR2, event.cr2)
    if not uc.reg_read(X.UC_X86_REG_CR0) & W.CR0_PE:
        return _deliver_real(vcpu, event)
    if vcpu.efer() & W.EFER_LMA:
        return _deliver_long(vcpu, event)
    return _deliver_protected(vcpu, event)


def _idt_entry(vcpu, size, event):
    _, base, limit, _ = vcpu.uc.reg_read(X.UC_X86_REG_IDTR)
    if event.vector * size + size - 1 > limit:
        raise DeliveryFault(GP, event.vector * 8 + 2 + event.external)
    return vcpu.read_linear(base + event.vector * size, size)


def _deliver_real(vcpu, event):
    """Real mode: push FLAGS, CS, IP; clear IF, TF and AC; load CS:IP from the IVT."""
    uc = vcpu.uc
    _, base, limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
    if event.vector * 4 + 3 > limit:
        raise DeliveryFault(GP, 0)
    ip, cs = struct.unpack("<HH", vcpu.read_linear(base + event.vector * 4, 4))
    flags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    old_cs, old_ip = uc.reg_read(X.UC_X86_REG_CS), uc.reg_read(X.UC_X86_REG_RIP)
    ss, sp = uc.reg_read(X.UC_X86_REG_SS), uc.reg_read(X.UC_X86_REG_SP)
    sp = (sp - 6) & 0xFFFF
    vcpu.write_linear((ss << 4) + sp, struct.pack("<HHH", old_ip & 0xFFFF, old_cs, flags & 0xFFFF))
    uc.reg_write(X.UC_X86_REG_SP, sp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, flags & ~(RFLAGS_IF | RFLAGS_TF | RFLAGS_AC))
    load_real_mode_segment(uc, X.UC_X86_REG_CS, cs)
    uc.reg_write(X.UC_X86_REG_RIP, ip)


# -- protected and long mode: gates, target code segment, stack switch ------------------------------
def _descriptor(vcpu, selector, event, fault=GP):
    """Read a GDT/LDT descriptor; a selector beyond the table's limit faults with it as the error code."""
    code = (selector & ~3) + event.external
    if selector & 4:
        _, base, limit, _ = vcpu.uc.reg_read(X.UC_X86_REG_LDTR)
    else:
        _, base, limit, _ = vcpu.uc.reg_read(X.UC_X86_REG_GDTR)
    if (selector & ~7) + 7 > limit:
        raise DeliveryFault(fault, code)
    return S.Descriptor(vcpu.read_linear(base + (selector & ~7), 8))


def _gate_checks(vcpu, event, present, dpl, gate_type, allowed):
    code = event.vector * 8 + 2 + event.external
    if gate_type not in allowed:
        if gate_type == GATE_TASK:
            raise UnsupportedByModel("delivery of %r through a task gate" % event)
        raise DeliveryFault(GP, code)
    if event.software and dpl < vcpu.cpl():
        raise DeliveryFault(GP, code)
    if not present:
        raise DeliveryFault(NP_, code)


def _target_code(vcpu, event, selector, long_mode):
    """The handler's code segment (SDM §6.12.1.1): its DPL decides whether the privilege level changes."""
    code = (selector & ~3) + event.external
    if selector & ~3 == 0:
        raise DeliveryFault(GP, event.external)
    desc = _descriptor(vcpu, selector, event)
    cpl = vcpu.cpl()
    if desc.system or not desc.code or desc.dpl > cpl or (long_mode and not desc.long):
        raise DeliveryFault(GP, code)
    if not desc.present:
        raise DeliveryFault(NP_, code)
    new_cpl = cpl if desc.conforming else desc.dpl
    return desc, new_cpl


def _tss(vcpu, offset, size):
    _, base, limit, _ = vcpu.uc.reg_read(X.UC_X86_REG_TR)
    if offset + size - 1 > limit:
        raise DeliveryFault(TS, vcpu.uc.reg_read(X.UC_X86_REG_TR)[0] & ~3)
    return vcpu.read_linear(base + offset, size)


def _frame_flags(vcpu, trap_gate):
    flags = vcpu.uc.reg_read(X.UC_X86_REG_EFLAGS)
    new = flags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
    return flags, new if trap_gate else new & ~RFLAGS_IF


def _inner_stack32(vcpu, event, new_cpl):
    """SS:ESP for the inner level from the 32-bit TSS, with the checks that raise #TS/#SS (SDM §6.12.1)."""
    esp, ss = struct.unpack("<IH", _tss(vcpu, 4 + 8 * new_cpl, 6))
    code = (ss & ~3) + event.external
    if ss & ~3 == 0 or ss & 3 != new_cpl:
        raise DeliveryFault(TS, code)
    desc = _descriptor(vcpu, ss, event, fault=TS)
    if desc.system or desc.code or not desc.writable or desc.dpl != new_cpl:
        raise DeliveryFault(TS, code)
    if not desc.present:
        raise DeliveryFault(SS_, code)
    return ss, esp, desc


def _cs_load(uc, selector, new_cpl, desc):
    """The CS load delivery performs; none when CS already holds that selector (the common same-level case)."""
    new = (selector & ~3) | new_cpl
    if new == uc.reg_read(X.UC_X86_REG_CS):
        return []
    return [(S.CS, new, desc.base, desc.limit, desc.flags | S.DESC_A)]


def _deliver_protected(vcpu, event):
    """32-bit interrupt and trap gates, to the same or an inner privilege level (SDM §6.12.1)."""
    uc = vcpu.uc
    lo, hi = struct.unpack("<II", _idt_entry(vcpu, 8, event))
    gate_type = (hi >> 8) & 0xF
    _gate_checks(vcpu, event, bool(hi & 0x8000), (hi >> 13) & 3, gate_type, (GATE_INTR32, GATE_TRAP32))
    selector = lo >> 16
    code_desc, new_cpl = _target_code(vcpu, event, selector, long_mode=False)
    flags, new_flags = _frame_flags(vcpu, gate_type == GATE_TRAP32)
    old_ss, old_esp = uc.reg_read(X.UC_X86_REG_SS), uc.reg_read(X.UC_X86_REG_ESP)
    frame = [uc.reg_read(X.UC_X86_REG_EIP), uc.reg_read(X.UC_X86_REG_CS), flags & 0xFFFFFFFF]
    loads = _cs_load(uc, selector, new_cpl, code_desc)
    if new_cpl < vcpu.cpl():
        ss, esp, ss_desc = _inner_stack32(vcpu, event, new_cpl)
        frame += [old_esp, old_ss]
        loads.insert(0, (S.SS, ss, ss_desc.base, ss_desc.limit, ss_desc.flags | S.DESC_A))
    else:
        esp = old_esp
    if event.error_code is not None:
        frame.insert(0, event.error_code)
    esp = (esp - 4 * len(frame)) & 0xFFFFFFFF
    if loads:
        S.load(uc, loads)
    vcpu.write_linear(S.base(uc, S.SS) + esp, struct.pack("<%dI" % len(frame), *frame))
    uc.reg_write(X.UC_X86_REG_ESP, esp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, new_flags)
    uc.reg_write(X.UC_X86_REG_RIP, (hi & 0xFFFF0000) | (lo & 0xFFFF))


def _deliver_long(vcpu, event):
    """64-bit gates: SS:RSP, RFLAGS, CS, RIP and the error code, on a 16-byte-aligned stack, RSPn or an IST."""
    uc = vcpu.uc
    w0, w1, w2, _ = struct.unpack("<IIII", _idt_entry(vcpu, 16, event))
    gate_type, ist = (w1 >> 8) & 0xF, w1 & 7
    _gate_checks(vcpu, event, bool(w1 & 0x8000), (w1 >> 13) & 3, gate_type, (GATE_INTR32, GATE_TRAP32))
    selector = w0 >> 16
    code_desc, new_cpl = _target_code(vcpu, event, selector, long_mode=True)
    flags, new_flags = _frame_flags(vcpu, gate_type == GATE_TRAP32)
    rsp = uc.reg_read(X.UC_X86_REG_RSP)
    frame = [uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_CS), flags, rsp, uc.reg_read(X.UC_X86_REG_SS)]
    loads = _cs_load(uc, selector, new_cpl, code_desc)
    if new_cpl < vcpu.cpl():
        rsp = struct.unpack("<Q", _tss(vcpu, 4 + 8 * new_cpl, 8))[0]
        loads.insert(0, (S.SS, new_cpl, 0, 0, new_cpl << 13))   # SS is NULL with RPL = new CPL
    if ist:
        rsp = struct.unpack("<Q", _tss(vcpu, 0x24 + 8 * (ist - 1), 8))[0]
    if event.error_code is not None:
        frame.insert(0, event.error_code)
    rsp = (rsp & ~0xF) - 8 * len(frame)
    if loads:
        S.load(uc, loads)
    vcpu.write_linear(rsp, struct.pack("<%dQ" % len(frame), *frame))
    uc.reg_write(X.UC_X86_REG_RSP, rsp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, new_flags)
    uc.reg_write(X.UC_X86_REG_RIP, (w2 << 32) | (w1 & 0xFFFF0000) | (w0 & 0xFFFF))


# -- interruptibility (SDM §24.4.2) ------------------------------------------------------------------
def interruptibility(vcpu):
    """The guest-interruptibility-state field: STI / MOV-SS shadow from the CPU, NMI blocking from the vCPU.

    QEMU keeps one shadow flag for both (HF_INHIBIT_IRQ); the instruction before RIP tells which it was.
    """
    state = BLOCKING_NMI if vcpu.nmi_blocked else 0
    if S.hflags(vcpu.uc) & S.HF_INHIBIT_IRQ:
        try:
            before = vcpu.read_linear(vcpu.linear_pc() - 1, 1)
        except DeliveryFault:
            before = b""
        state |= BLOCKING_STI if before == b"\xfb" else BLOCKING_MOV_SS
    return state


def can_take_interrupt(vcpu):
    """An external interrupt can be delivered now: RFLAGS.IF set and no STI/MOV-SS shadow."""
    if not vcpu.uc.reg_read(X.UC_X86_REG_EFLAGS) & RFLAGS_IF:
        return False
    return not S.hflags(vcpu.uc) & S.HF_INHIBIT_IRQ


def can_take_nmi(vcpu):
    return not vcpu.nmi_blocked and not S.hflags(vcpu.uc) & S.HF_INHIBIT_IRQ
