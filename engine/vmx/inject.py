"""Event delivery as VM entry performs it, in Python: through the IVT (real mode), 8-byte IDT gates (protected
mode) or 16-byte gates with IST (long mode), with privilege-changing stack switches and error codes where the
architecture pushes them (SDM §6.12, §6.14; vol. 2A INT n).

The kernel delivers every event it can (vmx/deliver.py); this is its plain-Python twin and what it leaves to
userspace: real mode, NMIs, task and 16-bit gates (UnsupportedByModel), a triple fault, a guest-physical address
outside memory. Delivery is all-or-nothing: the CPU state is saved first and restored if any step faults, and a
frame is written only once all its pages translate. A fault while delivering becomes a double fault, and a
fault while delivering that is a triple fault: the VM suspends (SDM Table 6-5). The CPU's own accesses go
through deliver.cpu_access, the kernel's walk: implicit supervisor accesses that set A/D bits (SDM 4.6, 4.8).
Each delivery is written to the VMCS entry-interruption-information fields the way VM entry reads them
(SDM §24.8.3).
"""
import struct

import numpy as np

from unicorn import x86_const as X

from ..core import ctx as C
from ..errors import UnsupportedByModel
from ..mmu import ept as EPT
from ..mmu import walk as W
from ..mmu.access import u64
from ..native import load_real_mode_segment
from . import deliver as D
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
GATE_INTR32, GATE_TRAP32, GATE_TASK, GATE_INTR16, GATE_TRAP16 = 0xE, 0xF, 0x5, 0x6, 0x7


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
    vcpu.ctx[C.DELIVERED_USER] += 1
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
    else:
        S.delivered(vcpu.uc)                     # no exception in flight for QEMU (vmx/cpuctx.py)
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


# -- the CPU's own accesses, through the kernel's walk (vmx/deliver.py cpu_translate) ----------------------
def _wrap(vcpu, linear):
    return linear & ((1 << 64) - 1 if vcpu.efer() & W.EFER_LMA else 0xFFFFFFFF)


def _page(vcpu, linear, write, user, vector, code):
    """The host address of one byte: a guest #PF, `vector`(`code`) when non-canonical, the pool refilled."""
    for _ in range(3):
        status, hpa, detail = D.cpu_access(vcpu.ctx, u64(linear), write, user)
        if status == D.T_OK:
            return int(hpa)
        if status == D.T_PF:
            raise DeliveryFault(PF, int(detail), cr2=linear)
        if status == D.T_NONCANONICAL:
            raise DeliveryFault(vector, code)
        if int(detail) != EPT.NO_POOL:
            break
        vcpu.vm.pmap.refill(vcpu.pool)
    raise DeliveryFault(PF, 0, cr2=linear)           # outside guest memory


def _pieces(vcpu, linear, size, write, user, vector, code):
    """[(host address, length)] page by page, every page translated before anything is written."""
    pieces, done = [], 0
    while done < size:
        at = _wrap(vcpu, linear + done)
        chunk = min(size - done, 0x1000 - (at & 0xFFF))
        pieces.append((_page(vcpu, at, write, user, vector, code), chunk))
        done += chunk
    return pieces


def _cpu_read(vcpu, linear, size, vector, code):
    """A descriptor-table or TSS read (an implicit supervisor access)."""
    mem = vcpu.vm.hypervisor.memory
    return b"".join(mem[hpa:hpa + n].tobytes() for hpa, n in _pieces(vcpu, linear, size, False, False, vector, code))


def _cpu_write(vcpu, linear, data, user, vector, code):
    """The frame's pushes, at the new CPL."""
    mem, done = vcpu.vm.hypervisor.memory, 0
    for hpa, n in _pieces(vcpu, linear, len(data), True, user, vector, code):
        mem[hpa:hpa + n] = np.frombuffer(data[done:done + n], np.uint8)
        done += n


def _idt_entry(vcpu, size, event):
    _, base, limit, _ = vcpu.uc.reg_read(X.UC_X86_REG_IDTR)
    code = event.vector * 8 + 2 + event.external
    if event.vector * size + size - 1 > limit:
        raise DeliveryFault(GP, code)
    return _cpu_read(vcpu, base + event.vector * size, size, GP, code)


def _deliver_real(vcpu, event):
    """Real mode: push FLAGS, CS, IP; clear IF, TF and AC; load CS:IP from the IVT."""
    uc = vcpu.uc
    _, base, limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
    if event.vector * 4 + 3 > limit:
        raise DeliveryFault(GP, 0)
    ip, cs = struct.unpack("<HH", _cpu_read(vcpu, base + event.vector * 4, 4, GP, 0))
    flags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    old_cs, old_ip = uc.reg_read(X.UC_X86_REG_CS), uc.reg_read(X.UC_X86_REG_RIP)
    ss, sp = uc.reg_read(X.UC_X86_REG_SS), uc.reg_read(X.UC_X86_REG_SP)
    sp = (sp - 6) & 0xFFFF
    _cpu_write(vcpu, (ss << 4) + sp, struct.pack("<HHH", old_ip & 0xFFFF, old_cs, flags & 0xFFFF), False, SS_, 0)
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
    return S.Descriptor(_cpu_read(vcpu, base + (selector & ~7), 8, fault, code))


def _gate(vcpu, event, size):
    """The IDT entry, checked: a type other than an interrupt or trap gate (32-bit or 64-bit), INT n through a gate
    whose DPL is below CPL: #GP(vector*8+2+EXT); not present: #NP(same) (SDM 6.12.1.1, INT n)."""
    raw = _idt_entry(vcpu, size, event)
    hi = struct.unpack_from("<I", raw, 4)[0]
    gate_type, dpl, present = (hi >> 8) & 0xF, (hi >> 13) & 3, hi & 0x8000
    code = event.vector * 8 + 2 + event.external
    if size == 8 and gate_type in (GATE_TASK, GATE_INTR16, GATE_TRAP16):
        raise UnsupportedByModel("delivery of %r through a %s gate" % (event, "task" if gate_type == GATE_TASK
                                                                        else "16-bit"))
    if gate_type not in (GATE_INTR32, GATE_TRAP32):
        raise DeliveryFault(GP, code)
    if event.software and dpl < vcpu.cpl():
        raise DeliveryFault(GP, code)
    if not present:
        raise DeliveryFault(NP_, code)
    return raw, gate_type


def _target_code(vcpu, event, selector, long_mode):
    """The handler's code segment (SDM §6.12.1.1): its DPL decides whether the privilege level changes. In
    IA-32e mode it must be 64-bit code: L set, D clear."""
    code = (selector & ~3) + event.external
    if selector & ~3 == 0:
        raise DeliveryFault(GP, event.external)
    desc = _descriptor(vcpu, selector, event)
    cpl = vcpu.cpl()
    if desc.system or not desc.code or desc.dpl > cpl or (long_mode and (not desc.long or desc.flags & S.DESC_B)):
        raise DeliveryFault(GP, code)
    if not desc.present:
        raise DeliveryFault(NP_, code)
    new_cpl = cpl if desc.conforming else desc.dpl
    return desc, new_cpl


def _tss(vcpu, offset, size):
    """A stack pointer from the current TSS; past its limit (or unreadable) is #TS(TSS selector)."""
    selector, base, limit, _ = vcpu.uc.reg_read(X.UC_X86_REG_TR)
    if offset + size - 1 > limit:
        raise DeliveryFault(TS, selector & ~3)
    return _cpu_read(vcpu, base + offset, size, TS, selector & ~3)


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
    raw, gate_type = _gate(vcpu, event, 8)
    lo, hi = struct.unpack("<II", raw)
    selector = lo >> 16
    code_desc, new_cpl = _target_code(vcpu, event, selector, long_mode=False)
    flags, new_flags = _frame_flags(vcpu, gate_type == GATE_TRAP32)
    old_ss, old_esp = uc.reg_read(X.UC_X86_REG_SS), uc.reg_read(X.UC_X86_REG_ESP)
    frame = [uc.reg_read(X.UC_X86_REG_EIP), uc.reg_read(X.UC_X86_REG_CS), flags & 0xFFFFFFFF]
    loads = _cs_load(uc, selector, new_cpl, code_desc)
    stack_base = S.base(uc, S.SS)
    if new_cpl < vcpu.cpl():
        ss, esp, ss_desc = _inner_stack32(vcpu, event, new_cpl)
        frame += [old_esp, old_ss]
        loads.insert(0, (S.SS, ss, ss_desc.base, ss_desc.limit, ss_desc.flags | S.DESC_A))
        stack_base = ss_desc.base
    else:
        esp = old_esp
    target = (hi & 0xFFFF0000) | (lo & 0xFFFF)
    if target > code_desc.limit:
        raise DeliveryFault(GP, event.external)
    if event.error_code is not None:
        frame.insert(0, event.error_code)
    esp = (esp - 4 * len(frame)) & 0xFFFFFFFF
    _cpu_write(vcpu, (stack_base + esp) & 0xFFFFFFFF, struct.pack("<%dI" % len(frame), *frame), new_cpl == 3, SS_,
               event.external)
    if loads:
        S.load(uc, loads)
    uc.reg_write(X.UC_X86_REG_ESP, esp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, new_flags)
    uc.reg_write(X.UC_X86_REG_RIP, target)


def _deliver_long(vcpu, event):
    """64-bit gates: SS:RSP, RFLAGS, CS, RIP and the error code, on a 16-byte-aligned stack: the current one, the
    gate's IST stack, or RSPn from the TSS on a privilege change; a non-canonical handler is #GP(EXT), a
    non-canonical stack #SS(EXT)."""
    uc = vcpu.uc
    raw, gate_type = _gate(vcpu, event, 16)
    w0, w1, w2, _ = struct.unpack("<IIII", raw)
    ist = w1 & 7
    selector = w0 >> 16
    code_desc, new_cpl = _target_code(vcpu, event, selector, long_mode=True)
    flags, new_flags = _frame_flags(vcpu, gate_type == GATE_TRAP32)
    rsp = uc.reg_read(X.UC_X86_REG_RSP)
    frame = [uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_CS), flags, rsp, uc.reg_read(X.UC_X86_REG_SS)]
    loads = _cs_load(uc, selector, new_cpl, code_desc)
    inner = new_cpl < vcpu.cpl()
    if inner:
        loads.insert(0, (S.SS, new_cpl, 0, 0, new_cpl << 13))   # SS is NULL with RPL = new CPL
    if ist:
        rsp = struct.unpack("<Q", _tss(vcpu, 0x24 + 8 * (ist - 1), 8))[0]
    elif inner:
        rsp = struct.unpack("<Q", _tss(vcpu, 4 + 8 * new_cpl, 8))[0]
    target = (w2 << 32) | (w1 & 0xFFFF0000) | (w0 & 0xFFFF)
    if ((target + (1 << 47)) & ((1 << 64) - 1)) >> 48:   # not canonical (SDM 3.3.7.1)
        raise DeliveryFault(GP, event.external)
    if event.error_code is not None:
        frame.insert(0, event.error_code)
    rsp = (rsp & ~0xF) - 8 * len(frame)
    _cpu_write(vcpu, rsp & ((1 << 64) - 1), struct.pack("<%dQ" % len(frame), *frame), new_cpl == 3, SS_,
               event.external)
    if loads:
        S.load(uc, loads)
    uc.reg_write(X.UC_X86_REG_RSP, rsp & ((1 << 64) - 1))
    uc.reg_write(X.UC_X86_REG_EFLAGS, new_flags)
    uc.reg_write(X.UC_X86_REG_RIP, target)


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
