"""LOCK-prefixed instructions made atomic across vCPUs: translated blocks for parallel vCPUs, and the bus lock.

Unicorn runs each vCPU in its own instance and thread, and translates every block as QEMU does for a single
vCPU (its `curr_cflags` is always 0): a LOCK prefix becomes a plain load, operation and store. Two vCPUs doing
`lock inc` on one word lose increments (measured: 2M each ended at 2.04M), and worse, a *failing* `lock
cmpxchg` stores back the old value it read: another vCPU's plain store in between (Linux's spin_unlock is
`movb $0`) is lost, the lock stays taken with no holder, and every vCPU spins in virt_spin_lock for ever
(seen: Debian's kernel on 2 vCPUs hung in native_queued_spin_lock_slowpath+0x2e in one boot of three).

So a VM with more than one vCPU has its blocks translated as QEMU's MTTCG does, with CF_PARALLEL: TCG then
emits host atomics (a real cmpxchg, fetch-add, 16-byte cmpxchg) for locked read-modify-writes. Unicorn takes
the flag only from `cpu->cflags_next_tb`, a one-shot request its loop reads before each block it looks up
itself: the block hook below renews it at every block start, and the entry sets it (CF_PARALLEL blocks are
then the only ones; an indirect jump, whose in-TB lookup asks for flags 0, goes through the loop instead,
measured below). Two gaps of Unicorn's parallel code remain, each handled here:

- `xchg` with memory (locked without a prefix) is a plain load and store even in a parallel block (Unicorn's
  atomic_template.h). So a VM-wide lock word, the LOCK# signal, is taken by the block hook for a block that
  holds an `xchg` or a LOCK prefix, and given back at the next block's start (or when emu_start returns):
  locked instructions of different vCPUs never interleave. Which blocks hold one comes from the
  execute-permission scan (vcpu/paging.py): for each scanned page a 256-bit map of its 16-byte chunks holding
  one, beside the vCPU's exec-scan table slot for that linear page (LOCKBITS). Not a code hook per LOCK
  prefix, as before: Unicorn walks every code hook for each hooked instruction it runs and translates.
- A misaligned locked access (or one that crosses a page) makes the atomic helper give up (QEMU's
  EXCP_ATOMIC), which QEMU answers by running that instruction alone with the other vCPUs stopped; Unicorn
  has no such step and would retry the block for ever. The hook sees that as the translator's loop looking up
  the same block twice in a row (ATOMIC_LAST) and asks for a one-instruction serial block: it runs as a plain
  read-modify-write under the bus lock (ATOMIC_SERIAL counts them).
"""
import numpy as np
from numba import carray, njit, types

from ..core import ctx as C
from ..core import kick
from ..core.sync import atomic_cas, atomic_xchg, call_void
from ..mmu.access import xtab_find
from ..native import NUMBA, hook, u32_ptr, u64_ptr
from .lapic import regs as L

SPIN_LIMIT = 1 << 22                # a holder that never releases (a bug) does not hang the others forever
SPINS_BEFORE_YIELD = 256            # the holder's thread may be off its host CPU: give ours to it
CHUNK_SHIFT = 4                     # 16-byte chunks: 256 per page, 4 words of bits beside each exec-scan slot
WORDS = 4
U = np.uint64
CF_PARALLEL = 0x80000               # QEMU's "generate code for a parallel context": host atomics
CF_ONE_INSN = 1                     # CF_COUNT 1: a block of one instruction, translated serially
CFLAGS_NONE = 0xFFFFFFFF            # cflags_next_tb when nothing is requested (-1): the loop took the last one

# What may follow a LOCK prefix (SDM vol. 2A, LOCK): ADD, OR, ADC, SBB, AND, SUB, XOR (00-31 r/m forms,
# group 1 at 80/81/83), XCHG (86/87), NOT/NEG (F6/F7), INC/DEC (FE/FF); 0F: BTS/BTR/BTC (AB/B3/BB/BA),
# CMPXCHG (B0/B1), XADD (C0/C1), CMPXCHG8B/16B (C7). All take a ModR/M byte with a memory operand (mod != 3).
# XCHG with memory (86/87) is locked with or without the prefix.
ONE_BYTE = np.zeros(256, bool)
ONE_BYTE[[0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19, 0x20, 0x21, 0x28, 0x29, 0x30, 0x31,
          0x80, 0x81, 0x83, 0x86, 0x87, 0xF6, 0xF7, 0xFE, 0xFF]] = True
TWO_BYTE = np.zeros(256, bool)
TWO_BYTE[[0xAB, 0xB3, 0xBB, 0xBA, 0xB0, 0xB1, 0xC0, 0xC1, 0xC7]] = True
OTHER_PREFIX = np.zeros(256, bool)
OTHER_PREFIX[[0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65] + list(range(0x40, 0x50))] = True


def lock_chunks(code):
    """The page's map: bit i of the 4 words is set when 16-byte chunk i holds an F0 byte that can start a
    locked instruction (other prefixes, then a lockable opcode with a memory ModR/M), or an 86/87 byte with a
    memory ModR/M (XCHG). A LOCK the page's end cuts off counts (the next page may map anywhere). Such a byte
    inside another instruction may pass: it costs a lock (on Debian's kernel text 3.9% of chunks are marked,
    1.4% for the F0 bytes alone)."""
    bits = np.zeros(WORDS, np.uint64)
    padded = np.append(code, np.zeros(8, np.uint8))
    xchg = ((code == 0x86) | (code == 0x87)) & (padded[1:code.size + 1] >> 6 != 3)
    for chunk in np.unique(np.flatnonzero(xchg) >> CHUNK_SHIFT).tolist():
        bits[chunk >> 6] |= np.uint64(1) << np.uint64(chunk & 63)
    for at in np.flatnonzero(code == 0xF0).tolist():
        i = at + 1
        while i < at + 5 and OTHER_PREFIX[padded[i]]:
            i += 1
        if i + 2 >= code.size:
            locked = True                              # too near the end to tell
        elif padded[i] == 0x0F:
            locked = TWO_BYTE[padded[i + 1]] and padded[i + 2] >> 6 != 3
        else:
            locked = ONE_BYTE[padded[i]] and padded[i + 1] >> 6 != 3
        if locked:
            chunk = at >> CHUNK_SHIFT
            bits[chunk >> 6] |= np.uint64(1) << np.uint64(chunk & 63)
    return bits


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
def page_has_lock(xtab, bits, mask, page, first, last):
    """Whether chunks first..last (0-255) of a scanned linear page hold a LOCK, as its scan found them."""
    slot = xtab_find(xtab, mask, page)
    if slot < 0 or xtab[2 * slot] != (page | U(1)):
        return False
    for w in range(first >> 6, (last >> 6) + 1):
        lo = max(first, w << 6) & 63
        hi = min(last, (w << 6) + 63) & 63
        span = (U(2) << U(hi)) - U(1) if hi < 63 else ~U(0)
        if bits[WORDS * slot + w] & span & ~((U(1) << U(lo)) - U(1)):
            return True
    return False


@njit(**NUMBA)
def block_has_lock(c, address, size):
    """Whether the translated block at `address` of `size` bytes holds a LOCK (it may cross a page)."""
    mask = np.int64(c[C.XMASK])
    xtab = carray(u64_ptr(c[C.XTAB]), 2 * (mask + 1))
    bits = carray(u64_ptr(c[C.LOCKBITS]), WORDS * (mask + 1))
    end = U(address) + U(max(np.int64(size), 1) - 1)
    page, last_page = U(address) & ~U(0xFFF), end & ~U(0xFFF)
    first = np.int64((U(address) & U(0xFFF)) >> U(CHUNK_SHIFT))
    if last_page == page:
        return page_has_lock(xtab, bits, mask, page, first, np.int64((end & U(0xFFF)) >> U(CHUNK_SHIFT)))
    return page_has_lock(xtab, bits, mask, page, first, 255) or \
        page_has_lock(xtab, bits, mask, last_page, 0, np.int64((end & U(0xFFF)) >> U(CHUNK_SHIFT)))


@njit(**NUMBA)
def entry_request(c, rescanned):
    """At a VM entry, what the translator's first lookup asks for: a parallel block on a VM with more than one
    vCPU; after an execute-scan exit (X_EXEC, `rescanned`), a block of one instruction. QEMU asks for that itself
    when a store rewrites the block it runs in (precise self-modifying code: Linux patching its alternatives
    with memcpy on memcpy's own page), but the request is taken before the translation that the exit then
    interrupts (the rewritten page must be scanned again): without it here the whole block is translated
    again, its store rewrites it again, and so on for ever. One instruction alone is never "modified" by its
    own store. No lookup has been seen yet (ATOMIC_LAST)."""
    flags = carray(u32_ptr(c[C.CFLAGS_NEXT]), 1)
    parallel = U(CF_PARALLEL) if c[C.LOCKBITS] != 0 else U(0)
    if rescanned:
        flags[0] = np.uint32(U(CF_ONE_INSN) | parallel)
    elif parallel != 0 and flags[0] == CFLAGS_NONE:
        flags[0] = CF_PARALLEL
    c[C.ATOMIC_LAST] = 0


@njit(**NUMBA)
def next_parallel(c, address):
    """Renew the request for a parallel block at the loop's next lookup, unless this block is the loop's own
    lookup of the same block again: the host atomic in it gave up (EXCP_ATOMIC), and the next lookup is of
    that instruction alone, serially (a rep-string block chained to itself can look the same once: it then
    costs one serial instruction, nothing else)."""
    flags = carray(u32_ptr(c[C.CFLAGS_NEXT]), 1)
    if flags[0] == CFLAGS_NONE:                    # the loop looked this block up (not chained to)
        if c[C.ATOMIC_LAST] == U(address) + U(1):
            flags[0] = CF_ONE_INSN
            c[C.ATOMIC_LAST] = 0
            c[C.ATOMIC_SERIAL] += 1
            return
        c[C.ATOMIC_LAST] = U(address) + U(1)
    else:
        c[C.ATOMIC_LAST] = 0
    flags[0] = CF_PARALLEL


@njit(**NUMBA)
def at_block(c, address, size):
    """At a block start on a VM with more than one vCPU: the last block's bus lock goes back, the next lookup
    asks for a parallel block, and this block's bus lock is taken if it holds a locked instruction."""
    release(c)
    next_parallel(c, address)
    if block_has_lock(c, address, size):
        ib = L.block(c)
        if acquire(ib[L.IB_BUS_WORD], U(c[C.VCPUID]) + U(1), ib[L.IB_SCHED_YIELD]):
            ib[L.IB_BUS_HELD] = 1


@hook(types.void(types.voidptr, types.uint64, types.uint32, types.CPointer(types.uint64)))
def block_hook(uc, address, size, ud):
    """Every translated block's start: a kick or an open interrupt window stops here (core/kick.py); else,
    with more than one vCPU, the bus lock (a pointer read and nothing more for one vCPU)."""
    if ud[C.KICK] != 0 and kick.at_block(ud, address):
        return
    if ud[C.LOCKBITS] != 0:
        at_block(carray(ud, C.SIZE), address, size)


def attach(vcpus):
    """A VM's vCPUs share the bus lock and run parallel blocks when there is more than one of them (the lock
    word comes from lapic/vlapic.py connect)."""
    for v in vcpus:
        v.ctx[C.LOCKBITS] = v.lockbits.ctypes.data if len(vcpus) > 1 else 0
        v.uc.ctl_flush_tb()                        # blocks translated before are serial ones
