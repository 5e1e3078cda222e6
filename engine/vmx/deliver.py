"""Event delivery in the kernel: an external interrupt through a gate into the code segment already running.

Timer ticks and IPIs to a kernel running at its own privilege level are the common case, and VM entry
delivers them without the userspace side. This kernel does exactly what vmx/inject.py does for that
case — a 32-bit interrupt or trap gate in protected mode, a 64-bit gate (with its IST stack) in long
mode, to the current code segment at the current privilege level — and returns False, having changed
nothing, for everything else: real mode's IVT, another code segment or privilege level (descriptor-cache
loads and stack switches), a gate, descriptor or stack it cannot reach or that would fault. Those go to
inject.py, which delivers them or turns them into #GP/#NP/#PF, #DF and triple faults.
tests/engine/test_deliver.py runs both on the same CPU states and compares registers and memory.

The segment caches, descriptor-table registers and hidden flags are read from a saved CPU context
(the layout segcache.py documents and checks against reg_read when a vCPU is created).
"""
import numpy as np
from numba import carray, njit
from unicorn import x86_const as X

from ..core import ctx as C
from ..core import vmcs as V
from ..core.regs import rd, wr
from ..core.sync import call_uc_ptr
from ..io import vlapic as L
from ..mmu.access import linear_to_hpa
from ..native import NUMBA, u64_ptr, u8_ptr
from . import exits as E

# Offsets in Unicorn 2.1.4's uc_context (segcache.py): registers, hidden flags, then segment caches
# {u32 selector; u64 base; u32 limit; u32 flags} for ES CS SS DS FS GS, LDTR, TR, GDTR, IDTR
CTX_RSP, CTX_RIP, CTX_HFLAGS, CTX_SEGS, SEG_SIZE = 40 + 8 * 4, 40 + 128, 216, 224, 24
CS, SS, TR, GDT, IDT = 1, 2, 7, 8, 9
HF_CPL_MASK, HF_LMA = 3, 1 << 14
GATE_INTR32, GATE_TRAP32 = 0xE, 0xF
RFLAGS_TF, RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_VM = 1 << 8, 1 << 9, 1 << 14, 1 << 16, 1 << 17
CR0_PE = 1
U = np.uint64


@njit(**NUMBA)
def _word(raw, offset):
    return raw[offset // 8]


@njit(**NUMBA)
def _seg(raw, seg):
    """(selector, base, limit) of a segment cache or descriptor-table register in the saved context."""
    at = CTX_SEGS + SEG_SIZE * seg
    return raw[at // 8] & U(0xFFFFFFFF), raw[at // 8 + 1], raw[at // 8 + 2] & U(0xFFFFFFFF)


@njit(**NUMBA)
def _host(c, linear, size):
    """Host address of `size` bytes at a guest-linear address on one page, or -1 (inject.py then decides)."""
    if (np.uint64(linear) & U(0xFFF)) + U(size) > U(0x1000):
        return np.int64(-1)
    hpa = linear_to_hpa(c, np.uint64(linear))
    if hpa < 0 or hpa + size > np.int64(c[C.MEMSIZE]):
        return np.int64(-1)
    return hpa


@njit(**NUMBA)
def _same_level_code(c, mem8, gdt_base, gdt_limit, selector, cpl, cs, long_mode):
    """The gate's selector is the running code segment and its descriptor keeps the privilege level."""
    if (selector & ~U(3)) | cpl != cs or selector & U(4) or (selector & ~U(7)) + U(7) > gdt_limit:
        return False
    at = _host(c, gdt_base + (selector & ~U(7)), 8)
    if at < 0:
        return False
    hi = U(mem8[at + 4]) | (U(mem8[at + 5]) << U(8)) | (U(mem8[at + 6]) << U(16)) | (U(mem8[at + 7]) << U(24))
    code, system, present = hi & U(0x800), (hi & U(0x1000)) == 0, hi & U(0x8000)
    dpl, conforming = (hi >> U(13)) & U(3), hi & U(0x400)
    if system or not code or not present or dpl > cpl or (long_mode and not hi & U(1 << 21)):
        return False
    return conforming != 0 or dpl == cpl


@njit(**NUMBA)
def external(c, vector):
    """Deliver external interrupt `vector` if it is the common case; True when delivered."""
    if not rd(c, X.UC_X86_REG_CR0) & U(CR0_PE):
        return False
    ib = L.block(c)
    call_uc_ptr(ib[L.IB_CONTEXT_SAVE], c[C.UC], ib[L.IB_CONTEXT])
    raw = carray(u64_ptr(ib[L.IB_CONTEXT]), (CTX_SEGS + SEG_SIZE * 10) // 8)
    hflags = _word(raw, CTX_HFLAGS) & U(0xFFFFFFFF)
    flags = rd(c, X.UC_X86_REG_EFLAGS)
    if flags & U(RFLAGS_VM):
        return False
    long_mode = (hflags & U(HF_LMA)) != 0
    cpl = hflags & U(HF_CPL_MASK)
    mem8 = carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])
    mem32 = mem8.view(np.uint32)
    size = U(16 if long_mode else 8)
    _, idt_base, idt_limit = _seg(raw, IDT)
    if U(vector) * size + size - U(1) > idt_limit:
        return False
    gate = _host(c, idt_base + U(vector) * size, np.int64(size))
    if gate < 0 or gate & 3:
        return False
    w0, w1 = U(mem32[gate >> 2]), U(mem32[(gate >> 2) + 1])
    kind = (w1 >> U(8)) & U(0xF)
    if (kind != GATE_INTR32 and kind != GATE_TRAP32) or not w1 & U(0x8000):
        return False
    cs, _, _ = _seg(raw, CS)
    _, gdt_base, gdt_limit = _seg(raw, GDT)
    if not _same_level_code(c, mem8, gdt_base, gdt_limit, w0 >> U(16), cpl, cs, long_mode):
        return False
    new_flags = flags & ~U(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
    if kind == GATE_INTR32:
        new_flags &= ~U(RFLAGS_IF)
    rip, rsp = _word(raw, CTX_RIP), _word(raw, CTX_RSP)
    if long_mode:
        target = (U(mem32[(gate >> 2) + 2]) << U(32)) | (w1 & U(0xFFFF0000)) | (w0 & U(0xFFFF))
        stack = rsp
        ist = w1 & U(7)
        if ist:
            _, tr_base, tr_limit = _seg(raw, TR)
            offset = U(0x24) + U(8) * (ist - U(1))
            if offset + U(7) > tr_limit:
                return False
            at = _host(c, tr_base + offset, 8)
            if at < 0 or at & 3:
                return False
            stack = U(mem32[at >> 2]) | (U(mem32[(at >> 2) + 1]) << U(32))
        stack = (stack & ~U(0xF)) - U(40)
        frame = _host(c, stack, 40)
        if frame < 0 or frame & 7:
            return False
        mem64 = mem8.view(np.uint64)
        ss, _, _ = _seg(raw, SS)
        mem64[frame >> 3], mem64[(frame >> 3) + 1], mem64[(frame >> 3) + 2] = rip, cs, flags
        mem64[(frame >> 3) + 3], mem64[(frame >> 3) + 4] = rsp, ss
        wr(c, X.UC_X86_REG_RSP, stack)
    else:
        target = (w1 & U(0xFFFF0000)) | (w0 & U(0xFFFF))
        _, ss_base, _ = _seg(raw, SS)
        stack = (rsp - U(12)) & U(0xFFFFFFFF)
        frame = _host(c, ss_base + stack, 12)
        if frame < 0 or frame & 3:
            return False
        mem32[frame >> 2], mem32[(frame >> 2) + 1] = rip & U(0xFFFFFFFF), cs
        mem32[(frame >> 2) + 2] = flags & U(0xFFFFFFFF)
        wr(c, X.UC_X86_REG_ESP, stack)
    wr(c, X.UC_X86_REG_EFLAGS, new_flags)
    wr(c, X.UC_X86_REG_RIP, target)
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    vmcs[V.ENTRY_INTR_INFO] = U(E.INTR_VALID) | (U(E.TYPE_EXTINT) << U(8)) | U(vector & 0xFF)
    vmcs[V.ENTRY_EXCEPTION_ERROR] = 0
    return True
