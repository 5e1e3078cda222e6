"""Unicorn's CPU state (QEMU's CPUX86State) as kernels read and write it: registers, segment caches with the
hidden flags QEMU derives from them, the MSRs of SYSCALL/SYSENTER, and the error code of the last exception.

Unicorn has no register for a descriptor cache, the CPL or the error code of an exception it raised
(reference/unicorn.md §3). A uc_context is a 40-byte header and then a copy of CPUX86State up to
end_reset_fields (qemu/target/i386/cpu.h), so the same offsets reach the live state: the kernels work on
the vCPU's CPUX86State itself (ctx CPU_ENV, found through uc->cpu when the vCPU is built), which spares a
save and a restore of 5.6 KB per SYSCALL, SYSRET or delivery (measured: 0.63 M system calls/s with them,
see docs/interrupts.md). Where that address could not be confirmed, they save the context into the vCPU's
buffer (the interrupt block's IB_CONTEXT, io/lapic/regs.py), change it and restore it. `check()` verifies every
offset used here on a private instance, once per process, before any vCPU runs (vcpu/build.py); segcache.py
is the same for Python callers.

QEMU turns an exception it raises into #DF when the previous one it raised was contributory and never
delivered (check_exception, SDM Table 6-5), and into a triple fault (an EXCP_HLT: emu_start just returns, RIP
unmoved, forever) after a #DF; its own delivery, x86_cpu_do_interrupt, resets old_exception to -1. Unicorn
never calls that, so whoever delivers an event resets it (`delivered`): measured, a guest's second #GP from a
`mov ds` reached the interrupt hook as vector 8, and its third hung the vCPU.
"""
import ctypes
import struct

import numpy as np
from numba import carray, njit
from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_HOOK_INTR, UC_HOOK_TLB_FILL, UC_MODE_64, UC_TLB_VIRTUAL, Uc, UcError
from unicorn import x86_const as X

from ..core import ctx as C
from ..core.sync import call_uc_ptr
from ..io.lapic import regs as L
from ..io.buslock import CF_ONE_INSN, CFLAGS_NONE
from ..native import INLINE, NUMBA, address, u64_ptr

# Byte offsets in the saved context (header included)
REGS = 40                    # regs[16]: RAX RCX RDX RBX RSP RBP RSI RDI R8-R15
RSP = REGS + 8 * 4
EIP, EFLAGS = 168, 176       # EFLAGS here lacks the arithmetic flags and DF while emulating: use reg_read
HFLAGS = 216
SEGS, SEG_SIZE = 224, 24     # {u32 selector; u64 base; u32 limit; u32 flags} for ES CS SS DS FS GS, LDT, TR, GDT, IDT
CR = 464                     # cr[0..8]
EFER = 632
SYSENTER_CS, SYSENTER_ESP, SYSENTER_EIP = 4840, 4848, 4856
STAR, LSTAR, CSTAR, FMASK, KERNEL_GS_BASE = 4864, 4880, 4888, 4896, 4904
ERROR_CODE, EXCEPTION_IS_INT = 5424, 5428          # int error_code; int exception_is_int
OLD_EXCEPTION = 5536         # int old_exception: QEMU's "exception in flight", for its #DF rule (see below)
SIZE = 40 + 5568
WORDS = SIZE // 8
UC_INVALID_ADDR = 1416       # in the uc_engine itself: the whole address of the access whose TLB fill failed
UC_CPU, CPU_ENV = 440, 35408  # uc->cpu (an X86CPU), and the offset of its CPUX86State env
CFLAGS_NEXT_TB = 24          # offsetof(CPUState, cflags_next_tb): the flags of the next block the loop looks up

ES, CS, SS, DS, FS, GS, LDT, TR, GDT, IDT = range(10)
# QEMU's hflags (cpu.h HF_*) and descriptor flags (the descriptor's high dword, DESC_*)
HF_CPL_MASK, HF_INHIBIT_IRQ = 3, 1 << 3
HF_CS32, HF_SS32, HF_ADDSEG, HF_LMA, HF_CS64 = 1 << 4, 1 << 5, 1 << 6, 1 << 14, 1 << 15
DESC_A, DESC_W_R, DESC_CS, DESC_S, DESC_P = 1 << 8, 1 << 9, 1 << 11, 1 << 12, 1 << 15
DESC_L, DESC_B, DESC_G = 1 << 21, 1 << 22, 1 << 23
DPL_SHIFT = 13
CR0_PE = 1
U = np.uint64


@njit(**INLINE)
def save(c):
    """The CPU state as uint64 words at the context's offsets: the live CPUX86State (its address minus the
    header), or a copy saved into the vCPU's context buffer. Callers write only once they commit."""
    if c[C.CPU_ENV] != 0:
        return carray(u64_ptr(c[C.CPU_ENV] - U(REGS)), WORDS)
    ib = L.block(c)
    call_uc_ptr(ib[L.IB_CONTEXT_SAVE], c[C.UC], ib[L.IB_CONTEXT])
    return carray(u64_ptr(ib[L.IB_CONTEXT]), WORDS)


@njit(**INLINE)
def restore(c):
    """Put a changed copy back into the CPU (the live state needs nothing)."""
    if c[C.CPU_ENV] == 0:
        ib = L.block(c)
        call_uc_ptr(ib[L.IB_CONTEXT_RESTORE], c[C.UC], ib[L.IB_CONTEXT])


@njit(**INLINE)
def lo32(raw, offset):
    """The 32-bit field at a byte offset (the buffer is little-endian)."""
    word = raw[offset // 8]
    return (word >> U(32)) if offset % 8 else word & U(0xFFFFFFFF)


@njit(**INLINE)
def set_lo32(raw, offset, value):
    i = offset // 8
    if offset % 8:
        raw[i] = (raw[i] & U(0xFFFFFFFF)) | (U(value) << U(32))
    else:
        raw[i] = (raw[i] & ~U(0xFFFFFFFF)) | (U(value) & U(0xFFFFFFFF))


@njit(**INLINE)
def fill_failed_at(c):
    """The linear address of the access whose TLB fill just failed (the fill hook is told only its page):
    Unicorn's uc->invalid_addr, which raise_mmu_exception sets. CR2 for a guest #PF."""
    return carray(u64_ptr(U(c[C.UC]) + U(UC_INVALID_ADDR)), 1)[0]


@njit(**INLINE)
def delivered(raw):
    """An event went through the guest's IDT: no exception is in flight any more (old_exception = -1)."""
    set_lo32(raw, OLD_EXCEPTION, 0xFFFFFFFF)


@njit(**INLINE)
def seg(raw, index):
    """(selector, base, limit, flags) of a segment cache or descriptor-table register."""
    at = (SEGS + SEG_SIZE * index) // 8
    return raw[at] & U(0xFFFF), raw[at + 1], raw[at + 2] & U(0xFFFFFFFF), raw[at + 2] >> U(32)


@njit(**INLINE)
def hflags(raw):
    return lo32(raw, HFLAGS)


@njit(**NUMBA)
def load_segment(raw, index, selector, base, limit, flags):
    """Load CS or SS (or a data segment) the way QEMU's cpu_x86_load_seg_cache does: the cache, then the hidden
    flags it implies — CS32/CS64 from CS.D/L (CS64 only with EFER.LMA), the CPL from SS.DPL, SS32 from SS.B,
    ADDSEG when a data segment base may be nonzero outside 64-bit code."""
    at = (SEGS + SEG_SIZE * index) // 8
    raw[at] = U(selector) & U(0xFFFF)
    raw[at + 1] = U(base)
    raw[at + 2] = (U(limit) & U(0xFFFFFFFF)) | (U(flags) << U(32))
    hf = hflags(raw)
    if index == CS:
        if hf & U(HF_LMA) and U(flags) & U(DESC_L):
            hf |= U(HF_CS32 | HF_SS32 | HF_CS64)
        else:
            hf = (hf & ~U(HF_CS32 | HF_CS64)) | (U(HF_CS32) if U(flags) & U(DESC_B) else U(0))
    if index == SS:
        hf = (hf & ~U(HF_CPL_MASK)) | ((U(flags) >> U(DPL_SHIFT)) & U(3))
    new = U(HF_SS32) if raw[(SEGS + SEG_SIZE * SS) // 8 + 2] >> U(32) & U(DESC_B) else U(0)
    if not hf & U(HF_CS64):
        if not hf & U(HF_CS32):
            new |= U(HF_ADDSEG)
        elif seg(raw, DS)[1] | seg(raw, ES)[1] | seg(raw, SS)[1]:
            new |= U(HF_ADDSEG)
    set_lo32(raw, HFLAGS, (hf & ~U(HF_SS32 | HF_ADDSEG)) | new)


# -- the layout check --------------------------------------------------------------------------------
_checked = False
_cflags_checked = False
_PROBE = bytes.fromhex("0f0116" "8ed8")           # lgdt [rsi]; mov ds, eax


def _raw(ctx):
    return bytes((ctypes.c_uint8 * SIZE).from_address(address(ctx.context)))


def check():
    """Verify the offsets on a private instance: MSRs, control registers, RSP and RIP through reg_write, the
    CPL and LMA bits of hflags, and the error code and old_exception of a #GP Unicorn raises (mov ds with a
    selector past the GDT's limit: #GP(selector))."""
    global _checked
    if _checked:
        return
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    values = {0x174: 0x2A, 0x175: 0x175_0000_1111, 0x176: 0x176_0000_2222, 0xC0000081: 0x0023_0010_0000_0000,
              0xC0000082: 0x82_0000_3333, 0xC0000083: 0x83_0000_4444, 0xC0000084: 0x4700,
              0xC0000102: 0x102_0000_5555}
    for msr, value in values.items():
        uc.reg_write(X.UC_X86_REG_MSR, (msr, value))
    uc.reg_write(X.UC_X86_REG_RSP, 0x1234_5678_9ABC)
    uc.reg_write(X.UC_X86_REG_CR3, 0x7000)
    uc.mem_write(0x1000, _PROBE)
    uc.mem_write(0x2000, struct.pack("<HQ", 0x17, 0x3000))
    seen = []

    def intr(uc, vector, ud):
        seen.append((vector, _raw(uc.context_save())))
        uc.emu_stop()
    uc.hook_add(UC_HOOK_INTR, intr)
    uc.reg_write(X.UC_X86_REG_RSI, 0x2000)
    uc.reg_write(X.UC_X86_REG_RAX, 0x3B)
    uc.emu_start(0x1000, 0x1000 + len(_PROBE))
    raw = _raw(uc.context_save())
    q = lambda off: struct.unpack_from("<Q", raw, off)[0]            # noqa: E731
    d = lambda data, off: struct.unpack_from("<I", data, off)[0]     # noqa: E731
    got = {0x174: d(raw, SYSENTER_CS), 0x175: q(SYSENTER_ESP), 0x176: q(SYSENTER_EIP), 0xC0000081: q(STAR),
           0xC0000082: q(LSTAR), 0xC0000083: q(CSTAR), 0xC0000084: q(FMASK), 0xC0000102: q(KERNEL_GS_BASE)}
    ok = got == values and q(RSP) == 0x1234_5678_9ABC and q(CR + 24) == 0x7000 and \
        q(EFER) == uc.reg_read(X.UC_X86_REG_MSR, 0xC0000080) and q(CR) == uc.reg_read(X.UC_X86_REG_CR0) and \
        bool(d(raw, HFLAGS) & HF_LMA) == bool(q(EFER) & (1 << 10)) and \
        struct.unpack_from("<Q", raw, SEGS + SEG_SIZE * GDT + 8)[0] == 0x3000
    if ok and seen and seen[0][0] == 13:
        fault = seen[0][1]
        ok = d(fault, ERROR_CODE) == 0x38 and d(fault, EXCEPTION_IS_INT) == 0 and d(fault, OLD_EXCEPTION) == 13 and \
            q(EIP) == 0x1003
    else:
        ok = False
    if not ok or _fill_failure(0x1234_5678_9ABC) != 0x1234_5678_9ABC or _fill_failure(0x7FFF_0000_0FF9) != \
            0x7FFF_0000_0FF9:
        raise RuntimeError("unexpected Unicorn CPU context layout: vmx/cpuctx.py knows Unicorn 2.1.4's")
    _checked = True


def env_address(uc):
    """The address of `uc`'s CPUX86State (uc->cpu + CPU_ENV), or 0 when its bytes are not what context_save
    copies from it, or a register written through the API does not show there (then the kernels work on saved
    copies). Called before the vCPU has run: R13 is put back."""
    check()
    cpu = _cpu(uc)
    if not cpu:
        return 0
    env = cpu + CPU_ENV
    live = bytes((ctypes.c_uint8 * (EFER + 8 - REGS)).from_address(env))
    if live != _raw(uc.context_save())[REGS:EFER + 8]:
        return 0
    r13 = uc.reg_read(X.UC_X86_REG_R13)
    uc.reg_write(X.UC_X86_REG_R13, 0x5EED_F00D_0000_0013)
    seen = ctypes.c_uint64.from_address(env + 8 * 13).value
    uc.reg_write(X.UC_X86_REG_R13, r13)
    return env if seen == 0x5EED_F00D_0000_0013 else 0


def cflags_next_tb(uc):
    """The address of `uc`'s cpu->cflags_next_tb (io/buslock.py), verified once per process on a scratch
    instance: -1 there, and CF_COUNT 1 written there makes the next block one instruction long."""
    global _cflags_checked
    if not _cflags_checked:
        scratch = Uc(UC_ARCH_X86, UC_MODE_64)
        scratch.mem_map(0, 0x10000)
        scratch.mem_write(0x1000, b"\x90" * 4)
        sizes = []
        scratch.hook_add(UC_HOOK_BLOCK, lambda uc, address, size, ud: sizes.append(size))
        flags = ctypes.c_uint32.from_address(_cpu(scratch) + CFLAGS_NEXT_TB)
        fresh = flags.value
        flags.value = CF_ONE_INSN
        scratch.emu_start(0x1000, 0x1004)
        if fresh != CFLAGS_NONE or flags.value != CFLAGS_NONE or sizes[:1] != [1]:
            raise RuntimeError("unexpected Unicorn CPUState layout: vmx/cpuctx.py knows Unicorn 2.1.4's")
        _cflags_checked = True
    return _cpu(uc) + CFLAGS_NEXT_TB


def _cpu(uc):
    return ctypes.c_uint64.from_address(uc._uch.value + UC_CPU).value


def _fill_failure(address):
    """uc->invalid_addr after a load from `address` whose TLB fill the hook refused."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])
    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    uc.mem_map(0, 0x10000)
    uc.mem_write(0x1000, bytes.fromhex("488b03"))                   # mov rax, [rbx]

    def fill(uc, vaddr, access, entry, ud):
        entry.paddr, entry.perms = vaddr, 7
        return vaddr == 0x1000
    uc.hook_add(UC_HOOK_TLB_FILL, fill)
    uc.reg_write(X.UC_X86_REG_RBX, address)
    try:
        uc.emu_start(0x1000, 0, 0, 1)
    except UcError:
        pass
    return ctypes.c_uint64.from_address(uc._uch.value + UC_INVALID_ADDR).value
