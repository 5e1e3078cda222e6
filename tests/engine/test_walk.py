"""The numba guest walk against a plain-Python twin on random page tables, in every paging mode."""
import random

import numpy as np
import pytest

from engine.mmu import walk as W

MEM = 4 << 20


def twin(mem, segs, cr0, cr3, cr4, efer, cpl, va, access):
    """Plain Python from SDM §4.3-4.5: (code, gpa, perms, error code). No A/D side effects."""
    def entry(gpa, wide):
        for base, size, hpa in segs:
            if base <= gpa < base + size:
                off = hpa + gpa - base
                return int.from_bytes(mem[off:off + (8 if wide else 4)].tobytes(), "little")
        return None
    if not cr0 & W.CR0_PG:
        return W.OK, va, 7, 0
    write, fetch, user = access == W.ACCESS_WRITE, access == W.ACCESS_FETCH, cpl == 3
    nxe = bool(efer & W.EFER_NXE)
    if efer & W.EFER_LMA:
        levels = [(39, 0x1FF), (30, 0x1FF), (21, 0x1FF), (12, 0x1FF)]
        table, wide = cr3 & W.ADDR_MASK, True
    elif cr4 & W.CR4_PAE:
        levels, table, wide, va = [(30, 3), (21, 0x1FF), (12, 0x1FF)], cr3 & 0xFFFFFFE0, True, va & 0xFFFFFFFF
    else:
        levels, table, wide, va = [(22, 0x3FF), (12, 0x3FF)], cr3 & 0xFFFFF000, False, va & 0xFFFFFFFF
    rw = us = True
    nx = False
    pf = lambda p: (W.GUEST_PF, 0, 0, p | (2 if write else 0) | (4 if user else 0) | (16 if fetch and nxe else 0))
    for depth, (shift, mask) in enumerate(levels):
        e = entry(table + ((va >> shift) & mask) * (8 if wide else 4), wide)
        if e is None:
            return W.EPT_FAULT, 0, 0, 0
        if not e & 1:
            return pf(0)
        pdpt = len(levels) == 3 and depth == 0
        if not pdpt:
            rw, us = rw and bool(e & 2), us and bool(e & 4)
            nx = nx or (nxe and bool(e >> 63))
        last = depth == len(levels) - 1
        large = not last and not pdpt and e & 0x80 and (wide or cr4 & W.CR4_PSE)
        if last or large:
            break
        table = e & (W.ADDR_MASK if wide else 0xFFFFF000)
    writable = rw if (user or cr0 & W.CR0_WP) else True
    if (write and not writable) or (user and not us) or (fetch and nx):
        return pf(1)
    if shift == 22:
        frame = (e & 0xFFC00000) | ((e >> 13) & 0xFF) << 32
    else:
        frame = e & W.ADDR_MASK & ~((1 << shift) - 1)
    perms = 1 | (2 if writable and e & 0x40 else 0) | (0 if nx else 4)
    return W.OK, frame | (va & ((1 << shift) - 1)), perms, 0


def random_tables(rng, mem, mode):
    """Fill the first MiB of guest memory with random entries pointing inside it (and sometimes outside)."""
    words = mem.view(np.uint64) if mode != "32" else mem.view(np.uint32)
    n = (1 << 20) // words.itemsize
    for i in range(n):
        page = rng.randrange(0, 256) << 12 if rng.random() < 0.95 else rng.randrange(0x400, 0x800) << 20
        bits = rng.choice([0, 1, 3, 7, 0x27, 0x67, 0x83, 0xE7, 5, 1]) | (rng.choice([0, 1 << 63]) if mode != "32" else 0)
        words[i] = (page | bits) & (0xFFFFFFFF if mode == "32" else 0xFFFFFFFFFFFFFFFF)


@pytest.mark.parametrize("mode", ["off", "32", "pae", "long"])
def test_walk_matches_twin(mode):
    """For random tables, addresses, access kinds and CPLs the kernel and the twin agree."""
    rng = random.Random(hash(mode) & 0xFFFF)
    mem = np.zeros(MEM, np.uint8)
    random_tables(rng, mem, mode)
    segs = [(0, 2 << 20, 0x100000)]            # guest-physical 0..2 MiB lives at host 1 MiB
    host = np.zeros(MEM, np.uint8)
    host[0x100000:0x300000] = mem[:2 << 20]
    segtab = np.array([x for s in segs for x in s], np.uint64)
    cr0 = 0x11 if mode == "off" else 0x80010011
    cr4 = {"off": 0, "32": W.CR4_PSE, "pae": W.CR4_PAE, "long": W.CR4_PAE}[mode]
    efer = W.EFER_NXE | (W.EFER_LMA if mode == "long" else 0)
    for _ in range(3000):
        cr3 = rng.randrange(0, 256) << 12
        va = rng.getrandbits(48 if mode == "long" else 32)
        access, cpl = rng.randrange(3), rng.choice([0, 3])
        got = W.walk(host.view(np.uint64), host.view(np.uint32), segtab, 1, cr0, cr3, cr4, efer, cpl, va, access, False)
        want = twin(host, segs, cr0, cr3, cr4, efer, cpl, va, access)
        assert (int(got[0]), int(got[1]), int(got[2]), int(got[3])) == want, (mode, hex(cr3), hex(va), access, cpl)


def test_walk_sets_accessed_and_dirty():
    """A write through 4-level tables sets A in every entry and D in the last."""
    mem = np.zeros(1 << 20, np.uint8)
    q = mem.view(np.uint64)
    q[0x1000 >> 3], q[0x2000 >> 3], q[0x3000 >> 3], q[0x4000 >> 3] = 0x2003, 0x3003, 0x4003, 0x5003
    segtab = np.array([0, 1 << 20, 0], np.uint64)
    code, gpa, perms, _, _ = W.walk(q, mem.view(np.uint32), segtab, 1, 0x80010011, 0x1000, W.CR4_PAE,
                                    W.EFER_LMA, 0, 0x123, W.ACCESS_WRITE, True)
    assert (code, gpa) == (W.OK, 0x5123) and perms & W.PROT_W
    assert all(q[a >> 3] & W.PG_A for a in (0x1000, 0x2000, 0x3000, 0x4000))
    assert q[0x4000 >> 3] & W.PG_D and not q[0x3000 >> 3] & W.PG_D
