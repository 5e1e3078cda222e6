"""LOCK-prefixed instructions made atomic across vCPUs: the bus lock, modeled with a VM-wide lock word.

Unicorn runs each vCPU in its own instance and thread; it translates a LOCK prefix as a plain
read-modify-write (QEMU emits host atomics only for parallel vCPUs in one instance), so two vCPUs
doing `lock xchg` on one spinlock both win (measured: two threads doing 2M `lock inc` each lose
half the increments). The execute-permission scan hooks every 0xF0 byte; when a LOCK prefix is
executed the hook takes the VM's bus lock, and a hook on the next instruction gives it back — the
lock is held for exactly one instruction, as the LOCK# signal is. The first time a locked instruction
runs, the vCPU exits (precisely, before it) so the userspace side can hook the instruction after it.
"""
import numpy as np
from numba import carray, cfunc, njit, types

from ..core import ctx as C
from ..core.regs import stop
from ..core.sync import atomic_cas, atomic_xchg, call_void
from ..mmu.access import code_to_hpa, xtab_find
from ..native import NUMBA, u64_ptr, u8_ptr
from . import vlapic as L

TABLE_PAIRS = L.LOCK_TABLE_PAIRS
SPIN_LIMIT = 1 << 22                # a holder that never releases (a bug) does not hang the others forever
SPINS_BEFORE_YIELD = 256            # the holder's thread may be off its host CPU: give ours to it
U = np.uint64


@njit(**NUMBA)
def acquire(word_address, owner, sched_yield):
    """Spin until the VM's bus-lock word goes 0 → owner; returns False if the spin gave up."""
    for i in range(SPIN_LIMIT):
        if atomic_cas(word_address, U(0), owner) == 0:
            return True
        if i >= SPINS_BEFORE_YIELD:
            call_void(sched_yield)
    return False


@njit(**NUMBA)
def release(c):
    ib = L.block(c)
    if ib[L.IB_BUS_HELD] != 0:
        ib[L.IB_BUS_HELD] = 0
        atomic_xchg(ib[L.IB_BUS_WORD], U(0))


@njit(**NUMBA)
def on_lock_prefix(c, address, size):
    """At an instruction that starts with 0xF0: take the bus lock, or exit once to hook its successor."""
    hpa = code_to_hpa(c, address)
    if hpa < 0 or hpa >= np.int64(c[C.MEMSIZE]) or carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])[hpa] != 0xF0:
        return
    ib = L.block(c)
    table = carray(u64_ptr(ib[L.IB_LOCK_TABLE]), 2 * TABLE_PAIRS)
    after = U(address) + U(size)
    slot = xtab_find(table, TABLE_PAIRS - 1, after)
    if slot < 0 or table[2 * slot] == 0:
        c[C.EXIT], c[C.FAULT_GLA] = C.X_BUSLOCK, after
        stop(c)                                     # precise from a code hook: the instruction has not run
        return
    if acquire(ib[L.IB_BUS_WORD], U(c[C.VCPUID]) + U(1), ib[L.IB_SCHED_YIELD]):
        ib[L.IB_BUS_HELD] = 1


CODE_HOOK = types.void(types.voidptr, types.uint64, types.uint32, types.CPointer(types.uint64))


@cfunc(CODE_HOOK, **NUMBA)
def lock_hook(uc, address, size, ud):
    on_lock_prefix(carray(ud, C.SIZE), address, size)


@cfunc(CODE_HOOK, **NUMBA)
def release_hook(uc, address, size, ud):
    release(carray(ud, C.SIZE))

