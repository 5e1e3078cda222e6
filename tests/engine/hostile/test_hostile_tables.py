"""The kernels' own tables under hostile load: the exec-scan table with colliding and too many pages, the exit
log past its size, and a check that the kernels really run bounds-checked here.

Each table is compared with a plain-Python twin of what it must hold; with NUMBA_BOUNDSCHECK=1 an index
past a table raises IndexError instead of reading the memory after it.
"""
import collections

import numpy as np
import pytest

from engine.core import ctx as C
from engine.mmu import access
from engine.vcpu import paging
from engine.vmx import hooks
from tests.engine.conftest import assemble


def test_the_engines_kernels_are_bounds_checked():
    """A kernel handed a table smaller than its mask says raises IndexError: the checks are compiled in."""
    with pytest.raises(IndexError):
        access.xtab_find(np.zeros(4, np.uint64), 1023, 0x1000)


def xtab_slot(page, mask):
    """Where a linear page's search starts in the exec-scan table (the kernel's hash, restated)."""
    return (((page >> 12) * 0x9E3779B97F4A7C15) & (2**64 - 1)) >> 40 & mask


def colliding_pages(mask, slot, count):
    """`count` linear pages whose search starts at the same slot."""
    pages, page = [], 0
    while len(pages) < count:
        page += 0x1000
        if xtab_slot(page, mask) == slot:
            pages.append(page)
    return pages


def test_xtab_with_colliding_pages_and_full():
    """Pages that all hash to one slot take the slots after it in turn (wrapping at the end); each is found
    again where it went; once every slot is taken a new page gets -1, an old one still its slot."""
    mask = 15
    xtab = np.zeros(2 * (mask + 1), np.uint64)
    pages = colliding_pages(mask, mask - 2, mask + 1)
    twin = {}
    for page in pages:
        slot = int(access.xtab_find(xtab, mask, page))
        assert slot == (xtab_slot(page, mask) + len(twin)) % (mask + 1)
        xtab[2 * slot], xtab[2 * slot + 1] = page | 1, page
        twin[page] = slot
    for page, slot in twin.items():
        assert access.xtab_find(xtab, mask, page) == slot
    assert access.xtab_find(xtab, mask, pages[-1] + 0x1000 * (mask + 1) * 97) == -1


def test_code_pages_sharing_a_slot_translate_each_to_its_own(hv, tmp_path):
    """code_to_hpa for linear pages that collide in the exec-scan table and map to different guest pages:
    each gives its own page's host address, whichever was looked up last (the one-page cache)."""
    vm = hv.create_vm("xtab", mem_mb=16)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    v = vm.vcpus[0]
    mask = int(v.ctx[C.XMASK])
    pages = colliding_pages(mask, 7, 6)
    gpas = [0x400000 + 0x3000 * i for i in range(len(pages))]
    hpas = [vm.pmap.hold(gpa) for gpa in gpas]                # scanned pages are backed pages
    for page, gpa in zip(pages, gpas):
        slot = int(access.xtab_find(v.xtab, mask, page))
        v.xtab[2 * slot], v.xtab[2 * slot + 1] = page | 1, gpa
    for _ in range(2):
        for page, hpa in zip(pages, hpas):
            for offset in (0, 0x7FF, 0xFFF):
                assert access.code_to_hpa(v.ctx, page + offset) == hpa + offset


def test_exec_scan_of_more_pages_than_the_table_holds(hv, tmp_path):
    """Scanning 5,000 linear pages (aliases of one guest page) into a 4,096-pair table: it starts over when
    full, never holds more than it has room for, and the last pages scanned are always found."""
    vm = hv.create_vm("scan", mem_mb=16)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    v = vm.vcpus[0]
    mask = int(v.ctx[C.XMASK])
    recent = collections.deque(maxlen=16)
    for i in range(5000):
        page = 0x40000000 + 0x1000 * i
        paging.scan_page(v, page, 0x200000)
        recent.append(page)
        assert np.count_nonzero(v.xtab[0::2]) <= mask + 1
    for page in recent:
        slot = int(access.xtab_find(v.xtab, mask, page))
        assert slot >= 0 and v.xtab[2 * slot] == page | 1


def test_exit_log_ring_past_its_size(hv, tmp_path):
    """Thousands of exits into a ring of RING_ROWS rows, from exit 0 and from a head near 2^40: the log
    keeps exactly the last RING_ROWS exits, oldest first, as a deque of that size does."""
    vm = hv.create_vm("ring", mem_mb=16)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    v = vm.vcpus[0]
    for start in (0, (1 << 40) - 7):
        v.ctx[C.RING_HEAD] = start
        v.ring[:] = 0
        twin = collections.deque(maxlen=C.RING_ROWS)
        for i in range(3 * C.RING_ROWS + 5):
            row = (i % 60, (i * 0x9E3779B9) & 0xFFFFFFFF, i % 16, 0x200000 + i)
            hooks.log_exit(v.ctx, *row)
            twin.append(row)
        got = [(e["reason"], e["qualification"], e["length"], e["rip"]) for e in v.exit_log()]
        assert got == list(twin)
        assert int(v.ctx[C.RING_HEAD]) == start + 3 * C.RING_ROWS + 5
