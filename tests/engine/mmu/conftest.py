"""EPT state for kernel tests over a bare host-memory array, laid out as GuestPmap lays it out."""
import numpy as np

from engine.core.sync import SCHED_YIELD
from engine.mmu import ept as E

ALL_CPU = E.F_XO_OK | E.F_EPT_1G | E.F_PAGE1GB      # what the modeled Haswell architecturally has


def new_pool(first_page, pages):
    """A page-table page pool [count, pages...] of `pages` pages from host-physical `first_page`, with room
    for as many again (pages other vCPUs built come back to it), as GuestPmap makes them."""
    pool = np.zeros(1 + 2 * pages, np.uint64)
    pool[1:1 + pages] = first_page + 0x1000 * np.arange(pages, dtype=np.uint64)
    pool[0] = pages
    return pool


def new_state(mem64, pool, flags, cap_pages, ptp, regions, phys=39):
    """st with its root taken from `pool` and the saved-table slots for `regions` 2 MiB regions at host-
    physical `ptp` (zeroed); `flags` are bhyve's choices, the CPU facts are added."""
    st = np.zeros(E.S_SIZE, np.uint64)
    st[E.S_FLAGS], st[E.S_CAP], st[E.S_PHYS] = flags | ALL_CPU, cap_pages, phys
    st[E.S_YIELD] = SCHED_YIELD
    mem64[ptp >> 3:(ptp >> 3) + regions] = 0
    st[E.S_PTP], st[E.S_NPTP] = ptp, regions
    st[E.S_ROOT] = E._pool_pop(mem64, pool)
    return st
