"""First touch: the numba populate kernel against its plain-Python twin, then real threads racing it on the
same guest-physical pages (the vCPUs' case: every one may find the same entry empty at the same time)."""
import ctypes
import functools
import operator
import random
import threading

import numpy as np
import pytest
from numba import njit

from engine.mmu import ept as E
from engine.mmu import explain

from tests.engine.mmu.conftest import new_pool, new_state

HOST = 64 << 20
POOL = 0x100000                 # page-table pages: POOL_PAGES per pool from here
POOL_PAGES = 128
PTP = 0xF00000                  # saved page-table slots
SEG = 16 << 20                  # guest-physical 0..32 MiB lives here
SEG_SIZE = 32 << 20
REGIONS = SEG_SIZE >> 21


# -- the twin: SDM 29.3 and bhyve's vm_fault / pmap_enter / pmap_promote_pde, one step at a time -------
def twin_populate(mem, st, pool, segs, gpa, write):
    """What populate does on one vCPU, in plain Python over the same arrays."""
    gpa &= ~0xFFF
    base, size, hpa = (int(x) for x in segs)
    if not base <= gpa < base + size or gpa >> int(st[E.S_PHYS]):
        return E.NOT_MEMORY
    table, pde = int(st[E.S_ROOT]), None
    for level in (4, 3, 2):
        ea = table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8
        e = int(mem[ea >> 3])
        if not e & (E.EPT_RWX | E.ADDR | E.EMUL_V):                 # no table: a new one, present R/W/X
            page = twin_table(mem, st, pool, level, gpa)
            if page is None:
                return E.NO_POOL
            e = page | E.EPT_RWX
            mem[ea >> 3] = e
        if not e & E.EPT_RWX:
            return E.DENIED
        if explain.ept_misconfiguration(e, level, int(st[E.S_PHYS]), int(st[E.S_FLAGS])):
            return E.MISCONFIG
        if level < 4 and e & E.EPT_PS:
            return E.HANDLED
        pde = ea if level == 2 else pde
        table = e & E.ADDR
    ea = table + ((gpa >> 12) & 0x1FF) * 8
    old = int(mem[ea >> 3])
    if old & (E.EPT_RWX | E.EMUL_V):
        return E.HANDLED
    if old & E.ADDR:
        return E.DENIED                                              # the guest's page, no access
    if st[E.S_RESIDENT] >= st[E.S_CAP]:
        return E.OVER_CAP
    page = hpa + gpa - base
    mem[page >> 3:(page >> 3) + 512] = 0
    flags = int(st[E.S_FLAGS])
    if flags & E.F_HW_AD:
        bits = E.EPT_RWX
    else:                                   # PMAP_EMULATE_AD_BITS: valid/writable in 52/53, R/X = accessed, W = dirty
        bits = E.EMUL_V | E.EMUL_RW | ((E.EPT_R | E.EPT_X) if write >= 0 else 0) | (E.EPT_W if write > 0 else 0)
    mem[ea >> 3] = page | bits | E.LEAF_ATTRS
    st[E.S_RESIDENT] += 1
    st[E.S_FIRST_TOUCH] += 1
    if flags & E.F_SUPERPAGES:
        twin_promote(mem, st, pool, pde, gpa)
    return E.HANDLED


def twin_table(mem, st, pool, level, gpa):
    """A zeroed page for a new table: a PDE's region keeps its last table, else the pool's top page."""
    slot = int(st[E.S_PTP]) + (gpa >> 21) * 8
    if level == 2 and gpa >> 21 < st[E.S_NPTP] and mem[slot >> 3]:
        page, mem[slot >> 3] = int(mem[slot >> 3]), 0
    elif pool[0] == 0:
        return None
    else:
        page, pool[0] = int(pool[int(pool[0])]), pool[0] - 1
    mem[page >> 3:(page >> 3) + 512] = 0
    return page


def twin_promote(mem, st, pool, pde, gpa):
    """512 present leaves mapping one aligned 2 MiB run with the same bits (A/D aside) become one PDE."""
    e = int(mem[pde >> 3])
    if gpa >> 21 >= st[E.S_NPTP] or e & E.EPT_PS or not e & E.EPT_RWX:
        return
    table = e & E.ADDR
    leaves = [int(x) for x in mem[table >> 3:(table >> 3) + 512]]
    base = leaves[0] & E.ADDR
    ad = E.EPT_A | E.EPT_D
    if base % E.SUPERPAGE or any(not x & E.EPT_RWX or x & E.ADDR != base + i * E.PAGE or
                                 (x ^ leaves[0]) & ~ad & ~E.ADDR for i, x in enumerate(leaves)):
        return
    mem[pde >> 3] = base | (leaves[0] & ~E.ADDR & ~ad) | (functools.reduce(operator.or_, leaves) & ad) | E.EPT_PS
    slot = int(st[E.S_PTP]) + (gpa >> 21) * 8
    old, mem[slot >> 3] = int(mem[slot >> 3]), table
    if old and old != table:
        pool[int(pool[0]) + 1], pool[0] = old, pool[0] + 1
    st[E.S_SUPER] += 1
    st[E.S_PROMOTIONS] += 1


def setup(flags, cap, pools=1, phys=39):
    host = np.zeros(HOST, np.uint8)
    host[SEG:SEG + SEG_SIZE] = 0xCC                                  # stale bytes a new page must not show
    mem64 = host.view(np.uint64)
    ps = [new_pool(POOL + POOL_PAGES * 0x1000 * i, POOL_PAGES) for i in range(pools)]
    st = new_state(mem64, ps[0], flags, cap, PTP, REGIONS, phys)
    return mem64, st, ps, np.array([0, SEG_SIZE, SEG], np.uint64)


@pytest.mark.parametrize("flags", [E.F_HW_AD, 0, E.F_HW_AD | E.F_SUPERPAGES, E.F_SUPERPAGES])
def test_populate_matches_twin(flags):
    """Random first touches in the low 24 MiB and beyond memory, with host holds, protected and unmapped
    pages, a cap and a pool that run out; now and then a whole untouched region (promoted when superpages
    are on): the kernel and the twin leave the same bytes behind."""
    rng = random.Random(flags)
    mem64, st, (pool,), segs = setup(flags, cap=3000)
    mem, tst, tpool = mem64.copy(), st.copy(), pool.copy()
    results, refills = set(), 0
    for step in range(6000):
        if step % 1500 == 700:                                       # a whole region, in random order
            region = (12 + step // 1500) << 21
            gpas, writes = [region + (p << 12) for p in rng.sample(range(512), 512)], [1]
        else:
            gpas = [rng.choice([rng.randrange(0, 24 << 20), rng.randrange(SEG_SIZE, SEG_SIZE + (1 << 20))]) |
                    rng.choice([0, 0, 0, 1 << rng.randrange(39, 52)])]
            writes = [-1, 0, 1, 1]
        for gpa in gpas:
            write = rng.choice(writes)
            got = E.populate(mem64, st, pool, segs, 1, gpa, write)
            want = twin_populate(mem, tst, tpool, segs, gpa, write)
            assert got == want, (step, hex(gpa), write)
            results.add(want)
        if rng.random() < 0.02:                                      # protect or unmap something, refill
            g, size = rng.randrange(24 << 20) & ~0xFFF, rng.randrange(1, 64) << 12
            rwx, remove = rng.choice([0, 1, 3, 5, 7]), rng.random() < 0.5
            E.change(mem64, st, pool, g, size, rwx, remove)
            E.change(mem, tst, tpool, g, size, rwx, remove)
        if pool[0] < 4:                                              # fresh pages, never handed out before
            refills += 1
            assert POOL + POOL_PAGES * 0x1000 * (refills + 1) <= PTP
            pool[:] = tpool[:] = new_pool(POOL + POOL_PAGES * 0x1000 * refills, POOL_PAGES)
        assert np.array_equal(st, tst) and np.array_equal(pool, tpool)
    assert np.array_equal(mem64, mem)
    assert {E.HANDLED, E.NOT_MEMORY, E.OVER_CAP, E.DENIED} <= results
    if flags & E.F_SUPERPAGES:
        assert st[E.S_PROMOTIONS] > 0


@njit(nogil=True)
def _hammer(mem64, st, pool, segs, order, tid, failures):
    """One thread's vCPU: first-touch every page in `order`, then write its mark through the translation."""
    for gpa in order:
        result = E.populate(mem64, st, pool, segs, 1, gpa, 1)
        status, hpa, rwx, faults, q = E.translate(mem64, st, pool, segs, 1, gpa, E.WRITE, 4)
        if result != E.HANDLED or status != E.HANDLED:
            failures[0] += 1
            continue
        mem64[(hpa >> np.uint64(3)) + np.uint64(tid)] = np.uint64(gpa) | np.uint64(tid + 1)


@pytest.mark.parametrize("flags", [E.F_HW_AD, 0, E.F_HW_AD | E.F_SUPERPAGES, E.F_SUPERPAGES])
@pytest.mark.parametrize("shared", [True, False])
def test_threads_racing_populate_lose_nothing(flags, shared):
    """Four threads first-touch 8192 pages at once: shared, each thread touches every page; interleaved,
    thread i the pages i, 4+i, ... (neighbours in the same tables). Afterwards every page is mapped once,
    at its own host page, holding every mark written into it; the counters are exact and no table page is
    lost or used twice (a race's loser gave its page back)."""
    threads, pages = 4, SEG_SIZE >> 12
    mem64, st, pools, segs = setup(flags, cap=pages, pools=threads + 1)
    _hammer(mem64, st, pools[0], segs, np.zeros(0, np.uint64), 0, np.zeros(1, np.int64))
    everything = np.arange(pages, dtype=np.uint64) << np.uint64(12)
    orders = [everything if shared else everything[i::threads] for i in range(threads)]
    failures = [np.zeros(1, np.int64) for _ in range(threads)]
    workers = [threading.Thread(target=_hammer, args=(mem64, st, pools[i], segs, orders[i], i, failures[i]))
               for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert [int(f[0]) for f in failures] == [0] * threads
    assert (int(st[E.S_RESIDENT]), int(st[E.S_FIRST_TOUCH])) == (pages, pages)
    tables = set()
    for gpa in range(0, SEG_SIZE, 0x1000):
        level, ea, e, rwx = E.walk(mem64, st, gpa, False)
        assert level > 0 and int(E.leaf_hpa(level, e, gpa)) == SEG + gpa
        if level == 1:
            tables.add(int(ea) & ~0xFFF)
        marks = mem64[(SEG + gpa) >> 3:((SEG + gpa) >> 3) + threads]
        writers = range(threads) if shared else [(gpa >> 12) % threads]
        assert all(marks[t] == gpa | (t + 1) for t in writers), hex(gpa)
    saved = {int(x) for x in mem64[PTP >> 3:(PTP >> 3) + REGIONS] if x}
    in_pools = [int(p) for pool in pools for p in pool[1:int(pool[0]) + 1]]
    upper = 2                                                         # a PDPT and a PD (the root left pools[0])
    assert len(in_pools) == len(set(in_pools)) and not (tables | saved) & set(in_pools)
    assert len(in_pools) + len(tables) + len(saved) + upper == (threads + 1) * POOL_PAGES - 1
    if flags & E.F_SUPERPAGES:
        assert (int(st[E.S_SUPER]), len(tables), len(saved)) == (REGIONS, 0, REGIONS)


def test_a_leaf_being_filled_is_waited_for_and_never_filled_twice():
    """A vCPU that finds the leaf BUSY (another one is zero-filling the page) waits for the mapping and
    takes it as it is: the data the owner's guest already wrote survives, nothing is counted twice."""
    mem64, st, pools, segs = setup(E.F_HW_AD, cap=100, pools=2)
    assert E.populate(mem64, st, pools[0], segs, 1, 0x5000, 1) == E.HANDLED       # builds the tables
    level, ea, e, rwx = E.walk(mem64, st, 0x6000, False)
    assert level == -1 and e == 0
    mem64[int(ea) >> 3] = E.BUSY                                      # the owner has claimed 0x6000
    waiting = threading.Event()
    yield_hook = ctypes.CFUNCTYPE(ctypes.c_int)(lambda: waiting.set() or 0)
    st[E.S_YIELD] = ctypes.cast(yield_hook, ctypes.c_void_p).value    # the waiter's turn, made visible
    result = []
    waiter = threading.Thread(target=lambda: result.append(E.populate(mem64, st, pools[1], segs, 1, 0x6000, 1)))
    waiter.start()
    assert waiting.wait(10) and not result                            # it waits for the owner
    mem64[(SEG + 0x6000) >> 3] = 0x1234                               # the owner's page, and its guest's write
    mem64[int(ea) >> 3] = (SEG + 0x6000) | E.EPT_RWX | E.LEAF_ATTRS   # published
    waiter.join(10)
    assert result == [E.HANDLED] and mem64[(SEG + 0x6000) >> 3] == 0x1234
    assert (int(st[E.S_RESIDENT]), int(st[E.S_FIRST_TOUCH])) == (1, 1)
