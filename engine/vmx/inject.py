"""Event delivery as VM entry performs it: through the IVT (real mode), 8-byte IDT gates (protected mode)
or 16-byte gates with IST (long mode), with error codes where the architecture pushes them (SDM §6.12).

Unicorn never consults the guest's IDT (reference/unicorn.md §3), so the engine delivers every exception
and interrupt itself. A fault while delivering becomes a double fault, and a fault while delivering
that is a triple fault: the VM suspends (vmx_inject_interrupts' nested-fault rule).
"""
import struct

from unicorn import x86_const as X

from ..mmu import walk as W
from ..native import load_real_mode_segment

ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17, 21))
CONTRIBUTORY = frozenset((0, 10, 11, 12, 13))
DF, GP, NP_, PF = 8, 13, 11, 14
NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM", 8: "#DF",
         10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM"}
RFLAGS_TF, RFLAGS_IF, RFLAGS_NT, RFLAGS_RF = 1 << 8, 1 << 9, 1 << 14, 1 << 16


class DeliveryFault(Exception):
    """Delivering an event faulted with `vector` (and `error_code`)."""

    def __init__(self, vector, error_code=0, cr2=None):
        super().__init__(NAMES.get(vector, vector))
        self.vector, self.error_code, self.cr2 = vector, error_code, cr2


class TripleFault(Exception):
    """The CPU would shut down: the VM suspends with reason triplefault."""


class Event:
    """An event to deliver: vector, whether it is a software INT n, error code, CR2 for #PF."""
    __slots__ = ("vector", "software", "error_code", "cr2")

    def __init__(self, vector, software=False, error_code=None, cr2=None):
        self.vector, self.software, self.error_code, self.cr2 = vector, software, error_code, cr2
        if self.error_code is None and not software and vector in ERROR_CODE_VECTORS:
            self.error_code = 0

    def __repr__(self):
        return "<Event %s%s>" % (NAMES.get(self.vector, "vector %d" % self.vector),
                                 "" if self.error_code is None else " error %#x" % self.error_code)


def deliver(vcpu, event):
    """Deliver `event`, folding faults during delivery into #DF and #DF faults into TripleFault."""
    try:
        _deliver(vcpu, event)
    except DeliveryFault as second:
        if event.vector == DF:
            raise TripleFault("fault %s while delivering #DF" % NAMES.get(second.vector, second.vector))
        benign = second.vector not in CONTRIBUTORY and second.vector != PF
        if benign or (event.vector not in CONTRIBUTORY and event.vector != PF):
            deliver(vcpu, Event(second.vector, error_code=second.error_code, cr2=second.cr2))
        else:
            deliver(vcpu, Event(DF, error_code=0))


def _deliver(vcpu, event):
    uc = vcpu.uc
    if event.cr2 is not None:
        uc.reg_write(X.UC_X86_REG_CR2, event.cr2)
    cr0 = uc.reg_read(X.UC_X86_REG_CR0)
    if not cr0 & W.CR0_PE:
        return _deliver_real(vcpu, event)
    if vcpu.efer() & W.EFER_LMA:
        return _deliver_long(vcpu, event)
    return _deliver_protected(vcpu, event)


def _idt_entry(vcpu, size, vector):
    _, base, limit, _ = vcpu.uc.reg_read(X.UC_X86_REG_IDTR)
    if vector * size + size - 1 > limit:
        raise DeliveryFault(GP, vector * 8 + 2)
    return vcpu.read_linear(base + vector * size, size)


def _deliver_real(vcpu, event):
    """Real mode: push FLAGS, CS, IP; clear IF and TF; load CS:IP from the IVT."""
    uc = vcpu.uc
    ip, cs = struct.unpack("<HH", _idt_entry(vcpu, 4, event.vector))
    flags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    old_cs, old_ip = uc.reg_read(X.UC_X86_REG_CS), uc.reg_read(X.UC_X86_REG_RIP)
    ss, sp = uc.reg_read(X.UC_X86_REG_SS), uc.reg_read(X.UC_X86_REG_SP)
    sp = (sp - 6) & 0xFFFF
    vcpu.write_linear((ss << 4) + sp, struct.pack("<HHH", old_ip & 0xFFFF, old_cs, flags & 0xFFFF))
    uc.reg_write(X.UC_X86_REG_SP, sp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, flags & ~(RFLAGS_IF | RFLAGS_TF))
    load_real_mode_segment(uc, X.UC_X86_REG_CS, cs)
    uc.reg_write(X.UC_X86_REG_RIP, ip)


def _gate_checks(vcpu, event, present, dpl, selector):
    if not present:
        raise DeliveryFault(NP_, event.vector * 8 + 2)
    if event.software and dpl < vcpu.cpl():
        raise DeliveryFault(GP, event.vector * 8 + 2)
    if selector & ~3 != vcpu.uc.reg_read(X.UC_X86_REG_CS) & ~3:
        raise vcpu.unsupported("delivery of %r through a gate to another code segment (selector %#x)"
                               % (event, selector))


def _frame_flags(vcpu, trap_gate):
    flags = vcpu.uc.reg_read(X.UC_X86_REG_EFLAGS)
    new = flags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF)
    return flags, new if trap_gate else new & ~RFLAGS_IF


def _deliver_protected(vcpu, event):
    """32-bit interrupt and trap gates at the current privilege level (SDM §6.12.1)."""
    uc = vcpu.uc
    lo, hi = struct.unpack("<II", _idt_entry(vcpu, 8, event.vector))
    gate_type, dpl, present = (hi >> 8) & 0xF, (hi >> 13) & 3, bool(hi & 0x8000)
    if gate_type not in (0xE, 0xF):
        raise vcpu.unsupported("IDT gate type %#x for %r" % (gate_type, event))
    _gate_checks(vcpu, event, present, dpl, lo >> 16)
    flags, new_flags = _frame_flags(vcpu, gate_type == 0xF)
    frame = [uc.reg_read(X.UC_X86_REG_EIP), uc.reg_read(X.UC_X86_REG_CS), flags & 0xFFFFFFFF]
    if event.error_code is not None:
        frame.insert(0, event.error_code)
    esp = (uc.reg_read(X.UC_X86_REG_ESP) - 4 * len(frame)) & 0xFFFFFFFF
    vcpu.write_linear(esp, struct.pack("<%dI" % len(frame), *frame))
    uc.reg_write(X.UC_X86_REG_ESP, esp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, new_flags)
    uc.reg_write(X.UC_X86_REG_RIP, (hi & 0xFFFF0000) | (lo & 0xFFFF))


def _deliver_long(vcpu, event):
    """64-bit gates: SS:RSP, RFLAGS, CS, RIP and the error code, on a 16-byte-aligned stack or an IST."""
    uc = vcpu.uc
    w0, w1, w2, _ = struct.unpack("<IIII", _idt_entry(vcpu, 16, event.vector))
    gate_type, dpl, present, ist = (w1 >> 8) & 0xF, (w1 >> 13) & 3, bool(w1 & 0x8000), w1 & 7
    if gate_type not in (0xE, 0xF):
        raise vcpu.unsupported("IDT gate type %#x for %r" % (gate_type, event))
    _gate_checks(vcpu, event, present, dpl, w0 >> 16)
    flags, new_flags = _frame_flags(vcpu, gate_type == 0xF)
    rsp = uc.reg_read(X.UC_X86_REG_RSP)
    frame = [uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_CS), flags,
             rsp, uc.reg_read(X.UC_X86_REG_SS)]
    if ist:
        _, tss, _, _ = uc.reg_read(X.UC_X86_REG_TR)
        rsp = struct.unpack("<Q", vcpu.read_linear(tss + 0x24 + 8 * (ist - 1), 8))[0]
    if event.error_code is not None:
        frame.insert(0, event.error_code)
    rsp = (rsp & ~0xF) - 8 * len(frame)
    vcpu.write_linear(rsp, struct.pack("<%dQ" % len(frame), *frame))
    uc.reg_write(X.UC_X86_REG_RSP, rsp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, new_flags)
    uc.reg_write(X.UC_X86_REG_RIP, (w2 << 32) | (w1 & 0xFFFF0000) | (w0 & 0xFFFF))
