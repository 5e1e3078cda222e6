"""The debugger's hooks as numba cfuncs: software breakpoints, single-step (MTF) and watchpoints (#DB traps).

A breakpoint is a code hook limited to one address; emu_stop there is precise, so RIP stays on the
instruction and guest memory is never patched (no 0xCC to hide from reads). Single-step and watchpoints
share one code hook over every address, present only while a step or a watchpoint needs it: it stops
before the next instruction, after the stepped instruction or the watched access completed, as the
monitor trap flag and a data breakpoint's #DB trap do. Memory hooks see host-physical addresses
(reference/unicorn.md §1), so watchpoints are rows of host-physical ranges. Every hook stops the vCPU
the way a device does (X_USER_STOP); DBG_STOP tells the vCPU's thread it was the debugger.
"""
import numpy as np
from numba import carray, njit, types

from ..core import ctx as C
from ..core.regs import stop
from ..native import INLINE, NUMBA, hook, u64_ptr

U64P = types.CPointer(types.uint64)
STOP_BREAKPOINT, STOP_STEP, STOP_WATCH = 1, 2, 3
WATCH_READ, WATCH_WRITE = 1, 2               # access kinds of a watchpoint row (bits)
UC_MEM_READ, UC_MEM_WRITE = 16, 17


@njit(**INLINE)
def debug_stop(c, why, address):
    """Leave emulation before this instruction, telling the vCPU's thread why."""
    c[C.DBG_STOP] = why
    c[C.DBG_ADDR] = address
    c[C.EXIT] = C.X_USER_STOP
    stop(c)


@hook(types.void(types.voidptr, types.uint64, types.uint32, U64P))
def breakpoint_hook(uc, address, size, ud):
    """A code hook on one breakpoint address: stop before the instruction (bhyve's VM_EXITCODE_BPT)."""
    c = carray(ud, C.SIZE)
    if c[C.DBG_STOP] != 0:
        return
    if c[C.DBG_SKIP] == address + np.uint64(1):      # resuming from this breakpoint: run it once
        c[C.DBG_SKIP] = 0
        return
    debug_stop(c, STOP_BREAKPOINT, address)


@hook(types.void(types.voidptr, types.uint64, types.uint32, U64P))
def trace_hook(uc, address, size, ud):
    """Every instruction: stop at the boundary after a watched access or after the stepped instruction."""
    c = carray(ud, C.SIZE)
    if c[C.DBG_STOP] != 0:
        return
    if c[C.DBG_WATCH_HIT] != 0:
        debug_stop(c, STOP_WATCH, c[C.DBG_ADDR])
    elif c[C.DBG_STEP] == 1:
        c[C.DBG_STEP] = 2
    elif c[C.DBG_STEP] == 2:
        c[C.DBG_STEP] = 0
        debug_stop(c, STOP_STEP, address)


@njit(**NUMBA)
def watch_row(rows, n, kind, address, size):
    """The first watchpoint row [first, end, kinds] that a `kind` access of `size` bytes overlaps, or -1."""
    want = np.uint64(WATCH_WRITE if kind == UC_MEM_WRITE else WATCH_READ)
    first, end = np.uint64(address), np.uint64(address) + np.uint64(size)
    for i in range(np.int64(n)):
        if rows[3 * i + 2] & want and first < rows[3 * i + 1] and end > rows[3 * i]:
            return i
    return np.int64(-1)


@hook(types.void(types.voidptr, types.int32, types.uint64, types.int32, types.int64, U64P))
def watch_hook(uc, kind, address, size, value, ud):
    """A read or write near a watched range: note the row it overlaps; trace_hook stops after the access."""
    c = carray(ud, C.SIZE)
    if c[C.DBG_WATCH_HIT] != 0:
        return
    rows = carray(u64_ptr(c[C.DBG_WATCHES]), 3 * np.int64(c[C.DBG_NWATCH]))
    row = watch_row(rows, c[C.DBG_NWATCH], kind, address, size)
    if row >= 0:
        c[C.DBG_WATCH_HIT] = np.uint64(row + 1)
        c[C.DBG_ADDR] = address
