"""The TLB model's kernels against a plain-Python twin: random fills, lookups and invalidations."""
import random

import pytest

from engine.mmu import tlb as T


class Twin:
    """Set-associative, tagged by (VPID, EPTP); a free way first, else the set's victims in turn."""

    def __init__(self, sets, ways):
        self.sets, self.ways = sets, ways
        self.rows = [[None] * ways for _ in range(sets)]
        self.victim = [0] * sets

    def _set(self, linear):
        return (linear >> 12) & (self.sets - 1)

    def lookup(self, vpid, eptp, linear):
        page = linear & ~0xFFF
        for e in self.rows[self._set(page)]:
            if e and (e["linear"], e["vpid"], e["eptp"]) == (page, vpid, eptp):
                return e
        return None

    def insert(self, vpid, eptp, linear, gpa, hpa, perms, glob):
        page, row = linear & ~0xFFF, self.rows[self._set(linear)]
        entry = {"linear": page, "vpid": vpid, "eptp": eptp, "gpa": gpa & ~0xFFF, "hpa": hpa & ~0xFFF,
                 "perms": perms, "global": glob}
        for i, e in enumerate(row):
            if e and (e["linear"], e["vpid"], e["eptp"]) == (page, vpid, eptp):
                row[i] = entry
                return
        for i, e in enumerate(row):
            if e is None:
                row[i] = entry
                return
        s = self._set(linear)
        row[self.victim[s] % self.ways] = entry
        self.victim[s] += 1

    def invalidate(self, kind, vpid, eptp, linear, by_eptp):
        n = 0
        for row in self.rows:
            for i, e in enumerate(row):
                if e is None:
                    continue
                if kind != T.INV_ALL:
                    if (by_eptp and e["eptp"] != eptp) or (not by_eptp and e["vpid"] != vpid):
                        continue
                    if kind == T.INV_ADDRESS and e["linear"] != linear & ~0xFFF:
                        continue
                    if kind == T.INV_SINGLE_KEEP_GLOBAL and e["global"]:
                        continue
                row[i] = None
                n += 1
        return n

    def entries(self):
        return sorted((e["linear"], e["vpid"], e["eptp"], e["hpa"], e["global"]) for row in self.rows for e in row if e)


@pytest.mark.parametrize("seed", range(4))
def test_tlb_matches_twin(seed):
    rng = random.Random(seed)
    sets, ways = 8, 4
    t, twin = T.new(sets, ways), Twin(sets, ways)
    for step in range(4000):
        vpid, eptp = rng.randrange(1, 4), rng.choice([0x1000 | 0x5E, 0x9000 | 0x5E])
        linear = rng.randrange(0, 64) << 12
        op = rng.random()
        if op < 0.55:
            gpa, hpa, perms, glob = rng.randrange(1 << 20) << 12, rng.randrange(1 << 20) << 12, rng.randrange(8), rng.random() < 0.2
            T.insert(t, vpid, eptp, linear, gpa, hpa, perms, glob)
            twin.insert(vpid, eptp, linear, gpa, hpa, perms, glob)
        elif op < 0.95:
            i = T.lookup(t, vpid, eptp, linear | rng.randrange(0x1000))
            want = twin.lookup(vpid, eptp, linear)
            assert (i >= 0) == (want is not None)
            if want:
                assert (int(t[i + 4]), int(t[i + 5])) == (want["hpa"], want["perms"])
        else:
            kind, by_eptp = rng.choice([T.INV_ADDRESS, T.INV_SINGLE, T.INV_ALL, T.INV_SINGLE_KEEP_GLOBAL]), rng.random() < 0.5
            gen = int(t[T.H_GEN])
            assert T.invalidate(t, kind, vpid, eptp, linear, by_eptp) == twin.invalidate(kind, vpid, eptp, linear, by_eptp)
            assert t[T.H_GEN] == gen + 1
    assert sorted((e["linear"], e["vpid"], e["eptp"], e["hpa"], e["global"]) for e in T.entries(t)) == twin.entries()
    assert int(t[T.H_ENTRIES]) == len(twin.entries())
