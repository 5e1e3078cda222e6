"""Event delivery in the kernel: exceptions, software and external interrupts through the guest's IDT in
protected and long mode, as VM entry delivers them (SDM vol. 3 §6.12-6.15, §26.6; vol. 2A INT n).

32-bit interrupt and trap gates (the stack switch to SS0:ESP0 from the TSS on a privilege change) and
64-bit gates (RSPn or an IST stack from the TSS, SS a NULL selector with the new RPL, the frame on a 16-byte
boundary); error codes with the EXT bit (§6.13); CR2 for #PF. A fault while delivering folds into the next
event by SDM Table 6-5: contributory then contributory, or #PF then contributory or #PF, is #DF; anything
else is delivered in turn, a fault of INT n saving the INT's own RIP. Delivery is all or nothing: every
check and every translation is done before anything changes. The CPU's own accesses (IDT, GDT/LDT, TSS, the
frame) go through the guest's paging as implicit supervisor accesses, or at CPL 3 for a frame pushed at CPL
3 (SDM 4.6), setting accessed and dirty bits (4.8), then through the EPT, backing a first touch.

What this kernel leaves to vmx/inject.py, changing nothing: real mode, virtual-8086 mode, NMIs, task gates and
16-bit gates, a triple fault (#DF whose delivery faults: the VM's shutdown exit), and a guest-physical address
the host has to look at (outside memory, the pool to refill). inject.py is the plain-Python twin:
tests/engine/test_deliver.py runs both on the same CPU states and compares registers, VMCS and memory.
"""
import numpy as np
from numba import carray, njit
from unicorn import x86_const as X

from .. import stats as S
from ..core import ctx as C
from ..core import vmcs as V
from ..core.regs import rd, wr
from ..mmu import ept as EPT
from ..mmu import walk as W
from ..mmu.access import canonical, ept_views, views
from ..native import NUMBA, u64_ptr, u8_ptr
from . import cpuctx as K
from . import exits as E
from .hooks import ept_qualification, nested_fault, walk_qualification

OK, FALLBACK = 0, 1                         # deliver_event's answer
STEP_OK, STEP_FAULT, STEP_FALLBACK = 0, 1, 2
T_OK, T_PF, T_NONCANONICAL, T_HOST = 0, 1, 2, 3          # cpu_translate's answer
# An event in a uint64[8]: vector, interruption type (E.TYPE_*), error code (valid flag, value), CR2 for #PF
# (valid flag, value), and the length of the INT n, INT3 or INTO that raised it (RIP is already past it)
EV_VECTOR, EV_KIND, EV_HAS_ERR, EV_ERR, EV_HAS_CR2, EV_CR2, EV_LENGTH, EV_SIZE = 0, 1, 2, 3, 4, 5, 6, 8
DF, TS, NP, SS, GP, PF = 8, 10, 11, 12, 13, 14
GATE_TASK, GATE_INTR16, GATE_TRAP16, GATE_INTR32, GATE_TRAP32 = 0x5, 0x6, 0x7, 0xE, 0xF
RFLAGS_TF, RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_VM = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17
CR0_PE = 1
U = np.uint64


@njit(**NUMBA)
def has_error_code(vector):
    """The exceptions that push an error code (SDM Table 6-1): #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP."""
    return vector == 8 or 10 <= vector <= 14 or vector == 17 or vector == 21


@njit(**NUMBA)
def contributory(vector):
    """SDM Table 6-4: #DE, #TS, #NP, #SS, #GP."""
    return vector == 0 or 10 <= vector <= 13


@njit(**NUMBA)
def software(kind):
    """INT n, INT3, INTO: the gate's DPL is checked against CPL, RIP is past the instruction."""
    return kind == E.TYPE_SWINTR or kind == E.TYPE_SWEXC or kind == E.TYPE_PRIV_SWEXC


@njit(**NUMBA)
def ext_bit(kind):
    """The EXT bit of the error code of a fault while delivering (SDM 6.13): events from outside the program."""
    return U(1) if kind == E.TYPE_EXTINT or kind == E.TYPE_NMI or kind == E.TYPE_HWEXC else U(0)


@njit(**NUMBA)
def info(ev):
    """The interruption-information format (SDM 24.8.3)."""
    return U(E.INTR_VALID) | (ev[EV_KIND] << U(8)) | (U(E.INTR_ERRCODE) if ev[EV_HAS_ERR] else U(0)) | \
        (ev[EV_VECTOR] & U(0xFF))


# -- the CPU's own accesses ---------------------------------------------------------------------------
@njit(**NUMBA)
def cpu_translate(c, raw, linear, write, user):
    """(T_*, host address, detail) of a byte the CPU reads or writes while delivering: the guest walk at CPL 3
    (`user`) or as an implicit supervisor access, setting A/D, then the EPT, a first touch backed and counted
    as the TLB fill counts it. detail is the #PF error code for T_PF, the EPT status for T_HOST."""
    mem8, mem64, mem32, segs = views(c)
    st, pool = ept_views(c)
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    efer = raw[K.EFER // 8]
    if efer & U(W.EFER_LMA):
        if not canonical(linear):
            return T_NONCANONICAL, np.int64(-1), U(0)
    else:
        linear = U(linear) & U(0xFFFFFFFF)
    kind = W.ACCESS_WRITE if write else W.ACCESS_READ
    touched, emulated = st[EPT.S_FIRST_TOUCH], st[EPT.S_AD_FAULTS]
    cr = K.CR // 8
    code, gpa, perms, err, fault_gpa, faults, status, walk_rwx = W.walk(
        mem64, mem32, st, pool, segs, c[C.NSEGS], raw[cr], raw[cr + 3], raw[cr + 4], efer, 3 if user else 0,
        U(linear), kind, True)
    if faults:
        nested_fault(c, fault_gpa, linear, walk_qualification(st, walk_rwx), faults)
    if code == W.GUEST_PF:
        return T_PF, np.int64(-1), U(err)
    if code == W.EPT_FAULT:
        return T_HOST, np.int64(-1), U(status)
    status, hpa, rwx, faults, q_rwx = EPT.translate(mem64, st, pool, segs, c[C.NSEGS], gpa,
                                                    EPT.WRITE if write else EPT.READ, 4)
    if faults:
        nested_fault(c, gpa, linear, ept_qualification(kind, q_rwx, True), faults)
    counters[S.EPT_FIRST_TOUCH] += st[EPT.S_FIRST_TOUCH] - touched
    counters[S.EPT_AD_EMUL] += st[EPT.S_AD_FAULTS] - emulated
    if status != EPT.HANDLED or hpa | U(0xFFF) >= U(c[C.MEMSIZE]):
        return T_HOST, np.int64(-1), U(status)
    return T_OK, np.int64(hpa), U(0)


@njit(**NUMBA)
def cpu_access(c, linear, write, user):
    """cpu_translate for the Python twin (vmx/inject.py): the same walk, from the CPU's state now."""
    return cpu_translate(c, K.save(c), U(linear), write, user)


@njit(**NUMBA)
def _wrap(raw, linear):
    return U(linear) if raw[K.EFER // 8] & U(W.EFER_LMA) else U(linear) & U(0xFFFFFFFF)


@njit(**NUMBA)
def cpu_read(c, raw, linear, size, out):
    """Read `size` bytes page by page: (T_*, detail, linear address of the page that failed)."""
    mem8 = carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])
    n = 0
    while n < size:
        at = _wrap(raw, U(linear) + U(n))
        chunk = min(size - n, 0x1000 - np.int64(at & U(0xFFF)))
        status, hpa, detail = cpu_translate(c, raw, at, False, False)
        if status != T_OK:
            return status, detail, at
        out[n:n + chunk] = mem8[hpa:hpa + chunk]
        n += chunk
    return T_OK, U(0), U(0)


@njit(**NUMBA)
def cpu_write(c, raw, linear, data, user):
    """Write a frame: every page translated first, then the bytes (nothing is written if a page faults)."""
    mem8 = carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])
    size = data.size
    hpas = np.zeros(3, np.int64)
    chunks = np.zeros(3, np.int64)
    n, pages = 0, 0
    while n < size:
        at = _wrap(raw, U(linear) + U(n))
        chunk = min(size - n, 0x1000 - np.int64(at & U(0xFFF)))
        status, hpa, detail = cpu_translate(c, raw, at, True, user)
        if status != T_OK:
            return status, detail, at
        hpas[pages], chunks[pages] = hpa, chunk
        pages += 1
        n += chunk
    n = 0
    for p in range(pages):
        mem8[hpas[p]:hpas[p] + chunks[p]] = data[n:n + chunks[p]]
        n += chunks[p]
    return T_OK, U(0), U(0)


@njit(**NUMBA)
def _fault(f, vector, code):
    f[:] = 0
    f[EV_VECTOR], f[EV_KIND], f[EV_HAS_ERR], f[EV_ERR] = U(vector), U(E.TYPE_HWEXC), U(1), U(code)
    return STEP_FAULT


@njit(**NUMBA)
def _access_fault(f, status, detail, at, vector, code):
    """A CPU access that failed: #PF with its error code and CR2, `vector`(`code`) for a non-canonical address,
    or something for the host to look at (userspace)."""
    if status == T_PF:
        _fault(f, PF, detail)
        f[EV_HAS_CR2], f[EV_CR2] = U(1), U(at)
        return STEP_FAULT
    if status == T_NONCANONICAL:
        return _fault(f, vector, code)
    return STEP_FALLBACK


@njit(**NUMBA)
def _le(buf, at, size):
    value = U(0)
    for i in range(size):
        value |= U(buf[at + i]) << U(8 * i)
    return value


# -- descriptors and the TSS -------------------------------------------------------------------------
@njit(**NUMBA)
def descriptor(c, raw, selector, ext, vector, f):
    """(step, low dword, high dword) of a GDT or LDT descriptor; past the table's limit is `vector` with the
    selector as error code (SDM 6.13)."""
    code = (U(selector) & ~U(3)) + ext
    _, base, limit, _ = K.seg(raw, K.LDT if U(selector) & U(4) else K.GDT)
    if (U(selector) & ~U(7)) + U(7) > limit:
        return _fault(f, vector, code), U(0), U(0)
    buf = np.zeros(8, np.uint8)
    status, detail, at = cpu_read(c, raw, base + (U(selector) & ~U(7)), 8, buf)
    if status != T_OK:
        return _access_fault(f, status, detail, at, vector, code), U(0), U(0)
    return STEP_OK, _le(buf, 0, 4), _le(buf, 4, 4)


@njit(**NUMBA)
def desc_base(lo, hi):
    return (lo >> U(16)) | ((hi & U(0xFF)) << U(16)) | (hi & U(0xFF000000))


@njit(**NUMBA)
def desc_limit(lo, hi):
    limit = (lo & U(0xFFFF)) | (hi & U(0xF0000))
    return (limit << U(12)) | U(0xFFF) if hi & U(1 << 23) else limit


@njit(**NUMBA)
def target_code(c, raw, selector, ext, cpl, long_mode, f):
    """The handler's code segment (SDM 6.12.1.1): (step, new CPL, base, limit, cache flags)."""
    code = (U(selector) & ~U(3)) + ext
    if U(selector) & ~U(3) == 0:
        return _fault(f, GP, ext), U(0), U(0), U(0), U(0)
    step, lo, hi = descriptor(c, raw, selector, ext, GP, f)
    if step != STEP_OK:
        return step, U(0), U(0), U(0), U(0)
    dpl = (hi >> U(13)) & U(3)
    system, is_code = not hi & U(0x1000), hi & U(0x800)
    if system or not is_code or dpl > cpl or (long_mode and (not hi & U(K.DESC_L) or hi & U(K.DESC_B))):
        return _fault(f, GP, code), U(0), U(0), U(0), U(0)
    if not hi & U(0x8000):
        return _fault(f, NP, code), U(0), U(0), U(0), U(0)
    new_cpl = U(cpl) if hi & U(0x400) else dpl               # a conforming segment keeps the CPL
    return STEP_OK, new_cpl, desc_base(lo, hi), desc_limit(lo, hi), hi & U(0x00F0FF00)


@njit(**NUMBA)
def tss_read(c, raw, offset, size, f):
    """(step, value) of a stack pointer in the current TSS; past its limit is #TS(TSS selector)."""
    tr, base, limit, _ = K.seg(raw, K.TR)
    code = tr & ~U(3)
    if U(offset + size - 1) > limit:
        return _fault(f, TS, code), U(0)
    buf = np.zeros(8, np.uint8)
    status, detail, at = cpu_read(c, raw, base + U(offset), size, buf)
    if status != T_OK:
        return _access_fault(f, status, detail, at, TS, code), U(0)
    return STEP_OK, _le(buf, 0, size)


@njit(**NUMBA)
def gate(c, raw, ev, size, cpl, f):
    """(step, gate bytes) of the IDT entry, checked as SDM 6.12.1.1 and INT n do: past the IDT limit, a type
    that is not an interrupt or trap gate, INT n through a gate with DPL < CPL: #GP(vector*8+2+EXT); not
    present: #NP(same)."""
    vector = ev[EV_VECTOR]
    ext = ext_bit(ev[EV_KIND])
    code = vector * U(8) + U(2) + ext
    buf = np.zeros(16, np.uint8)
    _, base, limit, _ = K.seg(raw, K.IDT)
    if vector * U(size) + U(size - 1) > limit:
        return _fault(f, GP, code), buf
    status, detail, at = cpu_read(c, raw, base + vector * U(size), size, buf[:size])
    if status != T_OK:
        return _access_fault(f, status, detail, at, GP, code), buf
    hi = _le(buf, 4, 4)
    kind = (hi >> U(8)) & U(0xF)
    if size == 8 and (kind == GATE_TASK or kind == GATE_INTR16 or kind == GATE_TRAP16):
        return STEP_FALLBACK, buf                               # not modeled here (inject.py says so)
    if kind != GATE_INTR32 and kind != GATE_TRAP32:
        return _fault(f, GP, code), buf
    if software(ev[EV_KIND]) and (hi >> U(13)) & U(3) < cpl:
        return _fault(f, GP, code), buf
    if not hi & U(0x8000):
        return _fault(f, NP, code), buf
    return STEP_OK, buf


# -- the two frames -----------------------------------------------------------------------------------
@njit(**NUMBA)
def commit(c, raw, ev, target, rflags):
    """The state after delivery: CR2 for #PF, RIP, no exception in flight for QEMU (vmx/cpuctx.py), the restored
    context, RFLAGS (through Unicorn, which keeps the arithmetic flags apart)."""
    if ev[EV_HAS_CR2]:
        raw[K.CR // 8 + 2] = ev[EV_CR2]
    raw[K.EIP // 8] = target
    K.delivered(raw)
    K.restore(c)
    wr(c, X.UC_X86_REG_EFLAGS, rflags)
    wr(c, X.UC_X86_REG_RIP, target)


@njit(**NUMBA)
def new_flags(rflags, trap_gate):
    flags = U(rflags) & ~U(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
    return flags if trap_gate else flags & ~U(RFLAGS_IF)


@njit(**NUMBA)
def deliver_long(c, raw, ev, rip, rflags, f):
    """A 64-bit gate: SS, RSP, RFLAGS, CS, RIP and the error code, on a 16-byte-aligned stack: the current one,
    RSPn from the TSS on a privilege change, or the gate's IST stack (SDM 6.14.2-6.14.5)."""
    ext = ext_bit(ev[EV_KIND])
    cs, _, _, _ = K.seg(raw, K.CS)
    ss, _, _, _ = K.seg(raw, K.SS)
    cpl = cs & U(3)
    step, g = gate(c, raw, ev, 16, cpl, f)
    if step != STEP_OK:
        return step
    w0, w1, w2 = _le(g, 0, 4), _le(g, 4, 4), _le(g, 8, 4)
    selector, ist = w0 >> U(16), w1 & U(7)
    step, new_cpl, base, limit, flags = target_code(c, raw, selector, ext, cpl, True, f)
    if step != STEP_OK:
        return step
    old_rsp = raw[K.RSP // 8]
    rsp = old_rsp
    inner = new_cpl < cpl
    if ist:
        step, rsp = tss_read(c, raw, 0x24 + 8 * np.int64(ist - U(1)), 8, f)
    elif inner:
        step, rsp = tss_read(c, raw, 4 + 8 * np.int64(new_cpl), 8, f)
    if step != STEP_OK:
        return step
    target = (w2 << U(32)) | (w1 & U(0xFFFF0000)) | (w0 & U(0xFFFF))
    if not canonical(target):
        return _fault(f, GP, ext)
    n = 6 if ev[EV_HAS_ERR] else 5
    frame = np.zeros(n, np.uint64)
    frame[n - 5], frame[n - 4], frame[n - 3], frame[n - 2], frame[n - 1] = rip, cs, rflags, old_rsp, ss
    if ev[EV_HAS_ERR]:
        frame[0] = ev[EV_ERR]
    rsp = (rsp & ~U(0xF)) - U(8 * n)
    status, detail, at = cpu_write(c, raw, rsp, frame.view(np.uint8), new_cpl == 3)
    if status != T_OK:
        return _access_fault(f, status, detail, at, SS, ext)
    if inner:
        K.load_segment(raw, K.SS, new_cpl, 0, 0, new_cpl << U(K.DPL_SHIFT))   # NULL, RPL = new CPL
    if (selector & ~U(3)) | new_cpl != cs:
        K.load_segment(raw, K.CS, (selector & ~U(3)) | new_cpl, base, limit, flags | U(K.DESC_A))
    raw[K.RSP // 8] = rsp
    commit(c, raw, ev, target, new_flags(rflags, (w1 >> U(8)) & U(0xF) == GATE_TRAP32))
    return STEP_OK


@njit(**NUMBA)
def deliver_protected(c, raw, ev, rip, rflags, f):
    """A 32-bit gate: EFLAGS, CS, EIP and the error code, after SS and ESP on a privilege change, which loads
    SS:ESP for the new level from the TSS with the checks that raise #TS and #SS (SDM 6.12.1)."""
    ext = ext_bit(ev[EV_KIND])
    cs, _, _, _ = K.seg(raw, K.CS)
    ss, ss_base, _, _ = K.seg(raw, K.SS)
    cpl = cs & U(3)
    step, g = gate(c, raw, ev, 8, cpl, f)
    if step != STEP_OK:
        return step
    lo, hi = _le(g, 0, 4), _le(g, 4, 4)
    selector = lo >> U(16)
    step, new_cpl, base, limit, flags = target_code(c, raw, selector, ext, cpl, False, f)
    if step != STEP_OK:
        return step
    old_esp = raw[K.RSP // 8] & U(0xFFFFFFFF)
    esp = old_esp
    inner = new_cpl < cpl
    new_ss = ss_lo = ss_hi = U(0)
    if inner:
        step, value = tss_read(c, raw, 4 + 8 * np.int64(new_cpl), 6, f)
        if step != STEP_OK:
            return step
        esp, new_ss = value & U(0xFFFFFFFF), value >> U(32)
        code = (new_ss & ~U(3)) + ext
        if new_ss & ~U(3) == 0 or new_ss & U(3) != new_cpl:
            return _fault(f, TS, code)
        step, ss_lo, ss_hi = descriptor(c, raw, new_ss, ext, TS, f)
        if step != STEP_OK:
            return step
        if not ss_hi & U(0x1000) or ss_hi & U(0x800) or not ss_hi & U(0x200) or (ss_hi >> U(13)) & U(3) != new_cpl:
            return _fault(f, TS, code)
        if not ss_hi & U(0x8000):
            return _fault(f, SS, code)
        ss_base = desc_base(ss_lo, ss_hi)
    target = (hi & U(0xFFFF0000)) | (lo & U(0xFFFF))
    if target > limit:
        return _fault(f, GP, ext)
    first = 1 if ev[EV_HAS_ERR] else 0
    n = first + (5 if inner else 3)
    frame = np.zeros(n, np.uint32)
    if first:
        frame[0] = np.uint32(ev[EV_ERR] & U(0xFFFFFFFF))
    frame[first], frame[first + 1] = np.uint32(rip & U(0xFFFFFFFF)), np.uint32(cs)
    frame[first + 2] = np.uint32(rflags & U(0xFFFFFFFF))
    if inner:
        frame[first + 3], frame[first + 4] = np.uint32(old_esp), np.uint32(ss)
    esp = (esp - U(4 * n)) & U(0xFFFFFFFF)
    status, detail, at = cpu_write(c, raw, (ss_base + esp) & U(0xFFFFFFFF), frame.view(np.uint8), new_cpl == 3)
    if status != T_OK:
        return _access_fault(f, status, detail, at, SS, ext)
    if inner:
        K.load_segment(raw, K.SS, new_ss, ss_base, desc_limit(ss_lo, ss_hi), (ss_hi & U(0x00F0FF00)) | U(K.DESC_A))
    if (selector & ~U(3)) | new_cpl != cs:
        K.load_segment(raw, K.CS, (selector & ~U(3)) | new_cpl, base, limit, flags | U(K.DESC_A))
    raw[K.RSP // 8] = (raw[K.RSP // 8] & ~U(0xFFFFFFFF)) | esp
    commit(c, raw, ev, target, new_flags(rflags, (hi >> U(8)) & U(0xF) == GATE_TRAP32))
    return STEP_OK


# -- one event, with the faults it meets ---------------------------------------------------------------
@njit(**NUMBA)
def double_fault(first, second_vector):
    """SDM Table 6-5: contributory then contributory, or #PF then contributory or #PF."""
    if first[EV_KIND] != E.TYPE_HWEXC:
        return False
    v = np.int64(first[EV_VECTOR])
    s = np.int64(second_vector)
    return (contributory(v) and contributory(s)) or (v == PF and (contributory(s) or s == PF))


@njit(**NUMBA)
def attempts(c, raw, ev, rflags, long_mode):
    """Deliver `ev` and the faults its delivery raises, as VM entry does, with ENTRY_INTR_INFO/ERROR for what was
    delivered and IDT_VECTORING_INFO/ERROR for an event whose delivery faulted; OK or FALLBACK."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    f = np.zeros(EV_SIZE, np.uint64)
    rip = raw[K.EIP // 8]
    for _ in range(8):                          # the longest chain: INT n, #GP, #PF, #DF, then shutdown
        vmcs[V.ENTRY_INTR_INFO] = info(ev)
        vmcs[V.ENTRY_EXCEPTION_ERROR] = ev[EV_ERR] if ev[EV_HAS_ERR] else U(0)
        if long_mode:
            step = deliver_long(c, raw, ev, rip, rflags, f)
        else:
            step = deliver_protected(c, raw, ev, rip, rflags, f)
        if step == STEP_OK:
            return OK
        if step == STEP_FALLBACK:
            return FALLBACK
        rip -= ev[EV_LENGTH]                   # a fault of the INT n itself: its own RIP (SDM 6.5)
        vmcs[V.IDT_VECTORING_INFO] = info(ev)
        vmcs[V.IDT_VECTORING_ERROR] = ev[EV_ERR] if ev[EV_HAS_ERR] else U(0)
        if ev[EV_VECTOR] == DF and ev[EV_KIND] == E.TYPE_HWEXC:
            return FALLBACK                    # shutdown: userspace reports the triple fault
        if double_fault(ev, f[EV_VECTOR]):
            ev[:] = 0
            ev[EV_VECTOR], ev[EV_KIND], ev[EV_HAS_ERR] = U(DF), U(E.TYPE_HWEXC), U(1)
        else:
            ev[:] = f
    return FALLBACK


@njit(**NUMBA)
def deliver_event(c, vector, kind, has_err, err, has_cr2, cr2, length):
    """Deliver one event through the guest's IDT: OK, or FALLBACK with the CPU and the VMCS unchanged (only
    accessed and dirty bits the walks set, and pages backed, stay: the CPU leaves those too)."""
    raw = K.save(c)
    if not raw[K.CR // 8] & U(CR0_PE) or kind == E.TYPE_NMI:
        return FALLBACK
    rflags = rd(c, X.UC_X86_REG_EFLAGS)
    if rflags & U(RFLAGS_VM):
        return FALLBACK
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    before = np.array([vmcs[V.ENTRY_INTR_INFO], vmcs[V.ENTRY_EXCEPTION_ERROR], vmcs[V.IDT_VECTORING_INFO],
                       vmcs[V.IDT_VECTORING_ERROR]])
    ev = np.zeros(EV_SIZE, np.uint64)
    ev[EV_VECTOR], ev[EV_KIND], ev[EV_HAS_ERR], ev[EV_ERR] = U(vector), U(kind), U(1 if has_err else 0), U(err)
    ev[EV_HAS_CR2], ev[EV_CR2], ev[EV_LENGTH] = U(1 if has_cr2 else 0), U(cr2), U(length)
    if attempts(c, raw, ev, rflags, (raw[K.EFER // 8] & U(W.EFER_LMA)) != 0) == OK:
        c[C.DELIVERED_KERNEL] += 1
        return OK
    vmcs[V.ENTRY_INTR_INFO], vmcs[V.ENTRY_EXCEPTION_ERROR] = before[0], before[1]
    vmcs[V.IDT_VECTORING_INFO], vmcs[V.IDT_VECTORING_ERROR] = before[2], before[3]
    return FALLBACK


@njit(**NUMBA)
def external(c, vector):
    """External interrupt `vector` through the guest's IDT; False when userspace must deliver it (changed nothing)."""
    return deliver_event(c, vector, E.TYPE_EXTINT, False, U(0), False, U(0), 0) == OK
