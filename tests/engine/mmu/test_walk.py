"""The numba two-stage walk against its plain-Python twin (engine/mmu/explain.py) on random tables.

Guest paging structures are random, some entries with reserved bits set; the EPT maps most guest pages,
scattered over host memory, and leaves some unmapped or read-protected, so every outcome — translation,
guest #PF (RSVD too), EPT fault on a paging-structure read — is exercised in every paging mode, for
several physical-address widths, with and without EFER.NXE and 1-GByte pages.
"""
import random

import numpy as np
import pytest

from engine.mmu import ept as E
from engine.mmu import explain
from engine.mmu import walk as W

from tests.engine.mmu.conftest import new_pool, new_state

HOST = 16 << 20
SEG_HPA = 0x200000            # guest-physical 0..2 MiB is backed here
POOL_BASE = 0x600000          # EPT table pages
MOVED = 0x800000              # pages moved elsewhere, to scatter the mapping
PTP = 0x700000                # saved page-table slots


def ept_for(rng, host, guest_image, hw_ad=True, phys=39):
    """EPT state mapping ~90% of the 512 guest pages (a tenth moved to scattered host pages, a few read-
    protected), with guest_image's bytes in them. Returns (st, pool, segtab)."""
    mem64 = host.view(np.uint64)
    pool = new_pool(POOL_BASE, 64)
    st = new_state(mem64, pool, E.F_HW_AD if hw_ad else 0, 1 << 20, PTP, 1, phys)
    segtab = np.array([0, 2 << 20, SEG_HPA], np.uint64)
    for page in range(512):
        if rng.random() < 0.1:
            continue
        assert E.populate(mem64, st, pool, segtab, 1, page << 12, 0) == E.HANDLED
        level, ea, e, rwx = E.walk(mem64, st, page << 12, False)
        hpa = int(E.leaf_hpa(level, e, page << 12))
        if rng.random() < 0.1:
            hpa = MOVED + page * 0x1000
            mem64[int(ea) >> 3] = np.uint64(hpa) | (e & ~np.uint64(E.ADDR))
        if rng.random() < 0.05:
            mem64[int(ea) >> 3] &= ~np.uint64(E.EPT_R | E.EPT_W)        # execute-only
        host[hpa:hpa + 0x1000] = guest_image[page << 12:(page + 1) << 12]
    return st, pool, segtab


def random_tables(rng, mem, mode):
    """Fill the first MiB of guest memory with random entries pointing inside it (and sometimes outside),
    a tenth of them with one more bit that is reserved somewhere (address bits up to 62, 20:13, 8:5, 2:1)."""
    words = mem.view(np.uint64) if mode != "32" else mem.view(np.uint32)
    n = (1 << 20) // words.itemsize
    for i in range(n):
        page = rng.randrange(0, 256) << 12 if rng.random() < 0.95 else rng.randrange(0x400, 0x800) << 20
        bits = rng.choice([0, 1, 3, 7, 0x27, 0x67, 0x83, 0xE7, 5, 1, 0x163]) | (rng.choice([0, 1 << 63]) if mode != "32" else 0)
        if rng.random() < 0.1:
            bits |= 1 << rng.choice([rng.randrange(13, 63), rng.randrange(13, 22), rng.randrange(5, 9), 1, 2])
        words[i] = (page | bits) & (0xFFFFFFFF if mode == "32" else 0xFFFFFFFFFFFFFFFF)


@pytest.mark.parametrize("mode,phys,nxe,page1gb", [("off", 39, True, True), ("32", 39, True, True),
                                                  ("32", 36, True, True), ("pae", 39, True, True),
                                                  ("pae", 46, False, True), ("long", 39, True, True),
                                                  ("long", 46, False, False), ("long", 36, True, True)])
def test_walk_matches_twin(mode, phys, nxe, page1gb):
    """For random tables, addresses, access kinds and CPLs the kernel and the twin agree on the outcome,
    the guest-physical address, the permissions and the error code (RSVD included) — and so do the EPT
    walks."""
    rng = random.Random(hash((mode, phys, nxe)) & 0xFFFF)
    image = np.zeros(2 << 20, np.uint8)
    random_tables(rng, image, mode)
    host = np.zeros(HOST, np.uint8)
    st, pool, segtab = ept_for(rng, host, image, phys=phys)
    if not page1gb:
        st[E.S_FLAGS] &= ~np.uint64(E.F_PAGE1GB)
    mem64, mem32 = host.view(np.uint64), host.view(np.uint32)
    cr0 = 0x11 if mode == "off" else 0x80010011
    cr4 = {"off": 0, "32": W.CR4_PSE, "pae": W.CR4_PAE, "long": W.CR4_PAE}[mode]
    efer = (W.EFER_NXE if nxe else 0) | (W.EFER_LMA if mode == "long" else 0)
    outcomes, errors = set(), set()
    for _ in range(3000):
        cr3 = rng.randrange(0, 256) << 12
        va = rng.getrandbits(48 if mode == "long" else 32)
        access, cpl = rng.randrange(3), rng.choice([0, 3])
        code, gpa, perms, err, fault_gpa, faults, status, _ = W.walk(mem64, mem32, st, pool, segtab, 1, cr0, cr3, cr4,
                                                                  efer, cpl, va, access, False)
        read = lambda g, wide: _read(mem64, st, g, wide)
        t_steps, t_code, t_gpa, t_perms, t_err = explain.guest_walk(read, cr0, cr3, cr4, efer, cpl, va, access,
                                                                    phys, page1gb)
        got = (int(code), int(fault_gpa if code == W.EPT_FAULT else gpa), int(perms) & 7, int(err))
        assert got == (t_code, t_gpa, t_perms, t_err), (mode, hex(cr3), hex(va), access, cpl)
        assert faults == 0
        outcomes.add(t_code)
        errors.add(t_err & (W.PF_P | W.PF_RSVD))
        if code == W.OK:
            assert gpa >> phys == 0
            level, ea, e, rwx = E.walk(mem64, st, gpa, False)
            t_ept, t_hpa, t_rwx, why = explain.ept_walk(mem64, st, int(gpa))
            assert (int(E.leaf_hpa(level, e, gpa)) if level > 0 else None, int(rwx)) == (t_hpa, t_rwx)
    if mode != "off":
        assert outcomes == {W.OK, W.GUEST_PF, W.EPT_FAULT}
        assert W.PF_P | W.PF_RSVD in errors and W.PF_P in errors and 0 in errors


def _read(mem64, st, gpa, wide):
    steps, hpa, rwx, why = explain.ept_walk(mem64, st, gpa)
    if hpa is None or not rwx & E.EPT_R:
        return None
    value = int(mem64[hpa >> 3])
    return value if wide else (value >> (32 * ((hpa >> 2) & 1))) & 0xFFFFFFFF


def test_guest_walk_sets_accessed_and_dirty_and_backs_tables_on_first_touch():
    """A write through 4-level tables sets A in every entry and D in the last; the data page, never
    touched before, is backed by the walk's caller — the walk itself backs nothing but table pages."""
    image = np.zeros(2 << 20, np.uint8)
    q = image.view(np.uint64)
    q[0x1000 >> 3], q[0x2000 >> 3], q[0x3000 >> 3], q[0x4000 >> 3] = 0x2003, 0x3003, 0x4003, 0x5003
    host = np.zeros(HOST, np.uint8)
    st, pool, segtab = ept_for(random.Random(7), host, image)
    mem64 = host.view(np.uint64)
    for page in (1, 2, 3, 4):                      # the table pages: mapped, readable, holding the image
        E.populate(mem64, st, pool, segtab, 1, page << 12, 0)
        level, ea, e, rwx = E.walk(mem64, st, page << 12, False)
        mem64[int(ea) >> 3] |= np.uint64(E.EPT_RWX)
        hpa = int(E.leaf_hpa(level, e, page << 12))
        host[hpa:hpa + 0x1000] = image[page << 12:(page + 1) << 12]
    E.change(mem64, st, pool, 0x5000, 0x1000, 0, True)
    code, gpa, perms, _, _, faults, _, _ = W.walk(mem64, host.view(np.uint32), st, pool, segtab, 1, 0x80010011, 0x1000,
                                               W.CR4_PAE, W.EFER_LMA, 0, 0x123, W.ACCESS_WRITE, True)
    assert (code, gpa) == (W.OK, 0x5123) and perms & W.PROT_W
    entries = [_read(mem64, st, a, True) for a in (0x1000, 0x2000, 0x3000, 0x4000)]
    assert all(e & W.PG_A for e in entries)
    assert entries[3] & W.PG_D and not entries[2] & W.PG_D
    assert faults == 0 and E.walk(mem64, st, 0x5000, False)[0] < 0     # the data page: not backed yet
