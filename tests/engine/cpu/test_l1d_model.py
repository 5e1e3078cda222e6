"""The numba L1D kernels against the plain-Python twin on random access sequences."""
import random

import pytest

from engine.cpu import l1d


def random_ops(rng, n):
    """Lines drawn from a few sets (so ways overflow and LRU decides), with CLFLUSH and full flushes."""
    sets = rng.sample(range(l1d.SETS), 3)
    lines = [tag * l1d.SETS + s for s in sets for tag in rng.sample(range(1, 5000), 14)]
    ops = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.85:
            ops.append(("access", rng.choice(lines), rng.randrange(4)))
        elif roll < 0.95:
            ops.append(("evict", rng.choice(lines)))
        elif roll < 0.98:
            ops.append(("holds", rng.choice(lines)))
        else:
            ops.append(("invalidate",))
    return ops


@pytest.mark.parametrize("seed", range(6))
def test_kernel_matches_twin(seed):
    """Every access answers hit/miss as the twin does, and the sets end up with the same lines, owners and LRU order."""
    rng = random.Random(seed)
    state, twin = l1d.new_state(), l1d.Twin()
    for op in random_ops(rng, 3000):
        if op[0] == "access":
            assert l1d.access(state, op[1], op[2]) == twin.access(op[1], op[2]), op
        elif op[0] == "holds":
            assert l1d.holds(state, op[1]) == twin.holds(op[1])
        elif op[0] == "evict":
            l1d.evict(state, op[1])
            twin.evict(op[1])
        else:
            l1d.invalidate(state)
            twin.invalidate()
    assert l1d.contents(state) == twin.sets


def test_geometry_is_32k_8way_lru():
    """Eight lines of one set stay; a ninth evicts the least recently used one, not a recently touched one."""
    state = l1d.new_state()
    lines = [7 + l1d.SETS * k for k in range(9)]
    for line in lines[:8]:
        assert not l1d.access(state, line, 1)
    assert l1d.access(state, lines[0], 1)                    # lines[0] is now the most recent
    assert not l1d.access(state, lines[8], 2)                # evicts lines[1]
    assert l1d.holds(state, lines[0]) and not l1d.holds(state, lines[1]) and l1d.holds(state, lines[8])
    assert l1d.SETS * l1d.WAYS * l1d.LINE == 32 << 10
    assert ([owner for line, owner in l1d.contents(state)[7] if line == lines[8]]) == [2]


@pytest.mark.parametrize("warm", [False, True])
def test_software_flush_evicts_everything_and_costs_what_twin_says(warm):
    """64 KiB read a byte per page then per line leaves only flush-buffer lines, whatever was there before."""
    rng = random.Random(5)
    state, twin = l1d.new_state(), l1d.Twin()
    for _ in range(2000):
        line = rng.randrange(1 << 20)
        l1d.access(state, line, 3)
        twin.access(line, 3)
    buffer = 0x400000
    if warm:
        l1d.software_flush(state, buffer)
        twin.software_flush(buffer)
    assert l1d.software_flush(state, buffer) == twin.software_flush(buffer)
    held = [line for ways in l1d.contents(state) for line, owner in ways]
    assert len(held) == l1d.LINES
    assert all(buffer // 64 <= line < (buffer + l1d.FLUSH_BYTES) // 64 for line in held)
    assert all(owner == l1d.HOST for ways in l1d.contents(state) for _, owner in ways)


def test_software_flush_never_hits_in_an_lru_cache():
    """A 64 KiB sweep through a 32 KiB LRU cache misses on every read, even straight after another sweep."""
    state = l1d.new_state()
    cold = l1d.software_flush(state, 0x10000)
    assert cold == (16 + 1024) * l1d.L1_MISS_CYCLES
    assert l1d.software_flush(state, 0x10000) == cold


@pytest.mark.parametrize("seed", range(8))
def test_software_flush_matches_twin_from_any_state(seed):
    """Flushes between random traffic that re-reads some buffer lines: same cycles and sets as reading one by one."""
    rng = random.Random(seed)
    buffer = rng.choice([0x400000, 0x7F000, 0x10040])              # page-aligned or not
    state, twin = l1d.new_state(), l1d.Twin()
    buffer_lines = list(range(buffer // 64, buffer // 64 + 1024))
    for _ in range(12):
        for _ in range(rng.choice([0, 3, 40, 600])):
            line = rng.choice(buffer_lines) if rng.random() < 0.5 else rng.randrange(1 << 22)
            assert l1d.access(state, line, 2) == twin.access(line, 2)
        if rng.random() < 0.2:
            line = buffer_lines[rng.randrange(1024)]
            l1d.evict(state, line)
            twin.evict(line)
        assert l1d.software_flush(state, buffer) == twin.software_flush(buffer)
        assert l1d.contents(state) == twin.sets
