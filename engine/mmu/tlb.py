"""The architectural TLB: one per host CPU, entries tagged by VPID and EPTP, as VT-x keeps them.

Unicorn's softmmu TLB is only a cache in front of this model; the TLB fill hook consults the model
before walking and inserts what it walked. Entries leave only the way hardware drops them: replacement,
guest INVLPG and CR3 writes (global pages survive a CR3 write), and the host's INVVPID and INVEPT. Every
invalidation bumps the host CPU's flush generation; each vCPU flushes Unicorn's TLB at its next entry
when the generation it saw has moved, so a missing invalidation leaves a real stale mapping behind.

Layout of one host CPU's array: HDR header words, then per set a victim counter, then SETS*WAYS entries
of ENTRY words [linear page | V | G<<1, vpid, eptp, guest-physical page, host-physical page, perms].
"""
import numpy as np
from numba import njit

from ..native import NUMBA

# header
H_GEN, H_SETS, H_WAYS, H_ENTRIES, H_OWNER = 0, 1, 2, 3, 4
HDR = 8
ENTRY = 6
VALID, GLOBAL = 1, 2
PAGE_MASK = ~np.uint64(0xFFF)

# INVVPID / INVEPT types (SDM 30.3)
INV_ADDRESS, INV_SINGLE, INV_ALL, INV_SINGLE_KEEP_GLOBAL = 0, 1, 2, 3


def new(sets, ways):
    t = np.zeros(HDR + sets + sets * ways * ENTRY, np.uint64)
    t[H_SETS], t[H_WAYS] = sets, ways
    return t


@njit(**NUMBA)
def _base(t, s):
    return np.int64(HDR) + np.int64(t[H_SETS]) + np.int64(s) * np.int64(t[H_WAYS]) * np.int64(ENTRY)


@njit(**NUMBA)
def _set_of(t, linear_page):
    return np.int64((np.uint64(linear_page) >> np.uint64(12)) & (t[H_SETS] - np.uint64(1)))


@njit(**NUMBA)
def lookup(t, vpid, eptp, linear):
    """Index of the entry translating `linear` for this VPID and EPTP, or -1."""
    u = np.uint64
    page = u(linear) & PAGE_MASK
    s = _set_of(t, page)
    base = _base(t, s)
    for w in range(np.int64(t[H_WAYS])):
        i = base + w * ENTRY
        key = t[i]
        if key & u(VALID) and key & PAGE_MASK == page and t[i + 1] == u(vpid) and t[i + 2] == u(eptp):
            return i
    return np.int64(-1)


@njit(**NUMBA)
def insert(t, vpid, eptp, linear, gpa, hpa, perms, is_global):
    """Fill an entry (a free way, else the set's next victim in turn)."""
    u = np.uint64
    page = u(linear) & PAGE_MASK
    s = _set_of(t, page)
    base = _base(t, s)
    ways = np.int64(t[H_WAYS])
    slot = np.int64(-1)
    for w in range(ways):
        i = base + w * ENTRY
        key = t[i]
        if key & u(VALID) and key & PAGE_MASK == page and t[i + 1] == u(vpid) and t[i + 2] == u(eptp):
            slot = i
            break
        if slot < 0 and not key & u(VALID):
            slot = i
    if slot < 0:
        victim = np.int64(HDR) + s
        slot = base + np.int64(t[victim] % u(ways)) * ENTRY
        t[victim] += u(1)
    else:
        if not t[slot] & u(VALID):
            t[H_ENTRIES] += u(1)
    t[slot] = page | u(VALID) | (u(GLOBAL) if is_global else u(0))
    t[slot + 1] = u(vpid)
    t[slot + 2] = u(eptp)
    t[slot + 3] = u(gpa) & PAGE_MASK
    t[slot + 4] = u(hpa) & PAGE_MASK
    t[slot + 5] = u(perms)


@njit(**NUMBA)
def _drop(t, i):
    t[i] = np.uint64(0)
    t[H_ENTRIES] -= np.uint64(1)


@njit(**NUMBA)
def invalidate(t, kind, vpid, eptp, linear, by_eptp):
    """Drop entries: by_eptp selects INVEPT (match the EPTP, every VPID) over INVVPID/INVLPG/CR3 (match the
    VPID, every EPTP). kind is INV_*. Returns how many were dropped; the generation always moves on."""
    u = np.uint64
    dropped = 0
    page = u(linear) & PAGE_MASK
    n = np.int64(t[H_SETS]) * np.int64(t[H_WAYS])
    first = np.int64(HDR) + np.int64(t[H_SETS])
    for k in range(n):
        i = first + k * ENTRY
        key = t[i]
        if not key & u(VALID):
            continue
        if kind != INV_ALL:
            if by_eptp and t[i + 2] != u(eptp):
                continue
            if not by_eptp and t[i + 1] != u(vpid):
                continue
            if kind == INV_ADDRESS and key & PAGE_MASK != page:
                continue
            if kind == INV_SINGLE_KEEP_GLOBAL and key & u(GLOBAL):
                continue
        _drop(t, i)
        dropped += 1
    t[H_GEN] += u(1)
    return dropped


def entries(t):
    """The valid entries, for the views: dicts of linear, vpid, eptp, gpa, hpa, perms, global."""
    sets, ways = int(t[H_SETS]), int(t[H_WAYS])
    rows = t[HDR + sets:].reshape(sets * ways, ENTRY)
    live = rows[(rows[:, 0] & VALID) != 0]
    return [{"linear": int(r[0]) & ~0xFFF, "global": bool(r[0] & GLOBAL), "vpid": int(r[1]), "eptp": int(r[2]),
             "gpa": int(r[3]), "hpa": int(r[4]), "perms": int(r[5])} for r in live]
