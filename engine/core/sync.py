"""Atomic operations, a full fence and the host clock for kernels that several vCPU threads share.

Unicorn runs each vCPU in its own thread with the GIL released, so a vLAPIC register another vCPU sets
(an IPI into IRR, a posted-interrupt request bit) is written concurrently with the owner reading it.
These intrinsics are LLVM's atomicrmw/cmpxchg/fence on an integer address (the same address-as-data
scheme as engine/native.py), clock_gettime called through its address, and a futex for a vCPU that
waits in the kernel loop for an interrupt (vmx/halt.py).
"""
import ctypes

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core.extending import intrinsic

from ..native import NUMBA

_I32 = ir.IntType(32)
_I64 = ir.IntType(64)


def _rmw(op):
    def impl(typingctx, addr, value):
        def codegen(context, builder, signature, args):
            ptr = builder.inttoptr(args[0], _I64.as_pointer())
            return builder.atomic_rmw(op, ptr, args[1], "seq_cst")
        return types.uint64(types.uint64, types.uint64), codegen
    impl.__name__ = "atomic_" + op
    return intrinsic(impl)


atomic_or = _rmw("or")          # atomic_or(addr, bits) -> old value
atomic_and = _rmw("and")        # atomic_and(addr, mask) -> old value
atomic_xchg = _rmw("xchg")      # atomic_xchg(addr, new) -> old value
atomic_add = _rmw("add")        # atomic_add(addr, n) -> old value


@intrinsic
def atomic_cas(typingctx, addr, expected, new):
    """Compare-and-swap a uint64 at `addr`; returns the value found (== expected on success)."""
    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], _I64.as_pointer())
        pair = builder.cmpxchg(ptr, args[1], args[2], "seq_cst", "seq_cst")
        return builder.extract_value(pair, 0)
    return types.uint64(types.uint64, types.uint64, types.uint64), codegen


@intrinsic
def fence(typingctx):
    """A full (StoreLoad) barrier: the Dekker-style handshake between a notifier and a vCPU needs one."""
    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def call_clock(typingctx, fn, clock_id, timespec_addr):
    """clock_gettime(clock_id, &timespec) through its address."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(_I32, [_I32, _I64.as_pointer()])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [builder.trunc(args[1], _I32), builder.inttoptr(args[2], _I64.as_pointer())])
    return types.int32(types.uint64, types.int64, types.uint64), codegen


@intrinsic
def call_void(typingctx, fn):
    """An `int f(void)` such as sched_yield, through its address."""
    def codegen(context, builder, signature, args):
        f = builder.inttoptr(args[0], ir.FunctionType(_I32, []).as_pointer())
        return builder.call(f, [])
    return types.int32(types.uint64), codegen


@intrinsic
def call_uc_ptr(typingctx, fn, uc, ptr):
    """An `int f(uc_engine *, void *)` such as uc_context_save, through its address."""
    def codegen(context, builder, signature, args):
        p8 = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(_I32, [p8, p8])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [builder.inttoptr(args[1], p8), builder.inttoptr(args[2], p8)])
    return types.int32(types.uint64, types.uint64, types.uint64), codegen


@intrinsic
def call_ctl2(typingctx, fn, uc, control, a, b):
    """uc_ctl(uc, control, a, b) with two integer arguments, through its address (SysV passes variadic
    integers in the same registers as fixed ones)."""
    def codegen(context, builder, signature, args):
        p8 = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(_I32, [p8, _I32, _I64, _I64])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [builder.inttoptr(args[1], p8), builder.trunc(args[2], _I32), args[3], args[4]])
    return types.int32(types.uint64, types.uint64, types.int64, types.uint64, types.uint64), codegen


@intrinsic
def call_syscall(typingctx, fn, nr, a1, a2, a3, a4, a5, a6):
    """libc's syscall(nr, a1..a6) through its address, every argument a uint64 (libc's syscall is an
    assembly routine that only moves registers, so calling it as a fixed-argument function is safe)."""
    def codegen(context, builder, signature, args):
        f = builder.inttoptr(args[0], ir.FunctionType(_I64, [_I64] * 7).as_pointer())
        return builder.call(f, list(args[1:]))
    return types.int64(*([types.uint64] * 8)), codegen


CLOCK_MONOTONIC = 1
_libc = ctypes.CDLL(None)
CLOCK_GETTIME = ctypes.cast(_libc.clock_gettime, ctypes.c_void_p).value
SCHED_YIELD = ctypes.cast(_libc.sched_yield, ctypes.c_void_p).value
SYSCALL = ctypes.cast(_libc.syscall, ctypes.c_void_p).value
SYS_FUTEX = 202                                   # x86-64
FUTEX_WAKE_PRIVATE = 1 | 128
FUTEX_WAIT_BITSET_PRIVATE = 9 | 128               # the timeout is absolute, on CLOCK_MONOTONIC
FUTEX_BITSET_MATCH_ANY = 0xFFFFFFFF


@njit(**NUMBA)
def futex_wait(syscall, word_addr, expected, timespec_addr):
    """Sleep while the 32-bit word at word_addr still holds `expected`, until a wake or the absolute
    CLOCK_MONOTONIC time in the timespec at timespec_addr (0: no timeout)."""
    U = np.uint64
    return call_syscall(U(syscall), U(SYS_FUTEX), U(word_addr), U(FUTEX_WAIT_BITSET_PRIVATE),
                        U(expected) & U(0xFFFFFFFF), U(timespec_addr), U(0), U(FUTEX_BITSET_MATCH_ANY))


@njit(**NUMBA)
def futex_wake(syscall, word_addr):
    """Change the 64-bit word at word_addr (its low half is the futex word) and wake every sleeper on it."""
    U = np.uint64
    atomic_add(U(word_addr), U(1))
    return call_syscall(U(syscall), U(SYS_FUTEX), U(word_addr), U(FUTEX_WAKE_PRIVATE), U(0x7FFFFFFF), U(0), U(0),
                        U(0))


@njit(**NUMBA)
def full_fence():
    """The same barrier for Python callers (a halting vCPU marks itself, then looks for work)."""
    fence()
