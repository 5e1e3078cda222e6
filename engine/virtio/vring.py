"""Split virtqueues, the device's side (Virtual I/O Device (VIRTIO) Version 1.1, §2.6 "Split Virtqueues"): taking a
descriptor chain from the available ring (§2.6.5, direct and indirect descriptors, §2.6.5.3) and returning it
through the used ring (§2.6.8), with the event index suppression of §2.6.7 (VIRTIO_F_EVENT_IDX).

The data path is numba (`pop`, `push_used`); `PyRing` is their plain-Python twin, which the tests run on the same
guest memory and compare. Everything in the rings is the guest driver's, so every value is checked before use and
a driver error is the device's "needs reset", never an access outside the guest:
- an available index more than the queue size ahead of the device's (§2.6.6: the driver adds at most size entries),
- a head or a next index at or beyond the (indirect) table's size,
- a chain longer than its table (a loop: §2.6.5.3.1 "the device MUST ... not loop"), an indirect descriptor inside
  an indirect table, with NEXT set, of a length that is 0 or not a multiple of 16, or without VIRTIO_F_INDIRECT_DESC,
- a readable descriptor after a writable one (§2.6.4.2: device-writable ones come last),
- a buffer or ring not entirely inside guest memory (address plus length beyond it, or wrapping),
- more host pieces than the caller's table holds.
Guest-physical addresses are translated page by page through the VM's EPT (mmu/ept.py), the same walk vCPUs use:
a page the guest has never touched is not mapped yet, and `pop` answers MISSING with its address, which the
caller backs (vm_gpa_hold) before it asks again. The result is a list of host ranges (address, length, device
writes it) that the device reads or writes directly.
"""
import numpy as np
from numba import njit

from ..core.sync import fence
from ..mmu import ept as EPT
from ..native import NUMBA

# the queue's state, one uint64 array per queue
Q_DESC, Q_AVAIL, Q_USED, Q_SIZE, Q_LAST_AVAIL, Q_USED_IDX, Q_FLAGS, Q_MEMSIZE, Q_FAULT, Q_ERROR = range(10)
Q_FIELDS = 10
F_INDIRECT, F_EVENT_IDX = 1, 2                 # Q_FLAGS: the negotiated VIRTIO_F_INDIRECT_DESC and VIRTIO_F_EVENT_IDX
# descriptor flags (§2.6.5)
DESC_NEXT, DESC_WRITE, DESC_INDIRECT = 1, 2, 4
AVAIL_NO_INTERRUPT = 1                         # §2.6.7.1
USED_NO_NOTIFY = 1
# pop's status
EMPTY, OK, BROKEN, MISSING = 0, 1, -1, -2
# why a ring is broken (Q_ERROR)
E_AVAIL_AHEAD, E_HEAD, E_NEXT, E_LOOP, E_INDIRECT, E_ORDER, E_RANGE, E_ROWS, E_RING = range(1, 10)
ERRORS = {E_AVAIL_AHEAD: "available index more than the queue size ahead", E_HEAD: "head index beyond the ring",
          E_NEXT: "next index beyond the table", E_LOOP: "a loop in a descriptor chain",
          E_INDIRECT: "a bad indirect descriptor", E_ORDER: "a readable descriptor after a writable one",
          E_RANGE: "a buffer outside guest memory", E_ROWS: "a chain of too many pieces",
          E_RING: "a ring outside guest memory"}
PAGE = 4096
U = np.uint64


@njit(**NUMBA)
def hpa_of(mem8, mem64, st, gpa):
    """The host-physical address of guest-physical `gpa` through the EPT, or -1 when its page is not mapped."""
    level, ea, e, rwx = EPT.walk(mem64, st, U(gpa), False)
    leaf = EPT.mapped_level(level, e)
    if leaf <= 0:
        return np.int64(-1)
    hpa = np.int64(EPT.leaf_hpa(leaf, e, U(gpa)))
    if hpa < 0 or hpa + 8 > mem8.size:
        return np.int64(-1)
    return hpa


@njit(**NUMBA)
def load(mem8, mem64, st, q, gpa, n):
    """`n` (1-8) little-endian bytes at guest-physical `gpa`, byte pages translated one by one; (ok, value). A
    page not mapped: not ok, its address in Q_FAULT. The caller has checked gpa+n against guest memory."""
    value = U(0)
    for i in range(n):
        hpa = hpa_of(mem8, mem64, st, U(gpa) + U(i))
        if hpa < 0:
            q[Q_FAULT] = U(gpa) + U(i)
            return False, U(0)
        value |= U(mem8[hpa]) << U(8 * i)
    return True, value


@njit(**NUMBA)
def store(mem8, mem64, st, q, gpa, n, value):
    for i in range(n):
        hpa = hpa_of(mem8, mem64, st, U(gpa) + U(i))
        if hpa < 0:
            q[Q_FAULT] = U(gpa) + U(i)
            return False
        mem8[hpa] = np.uint8((U(value) >> U(8 * i)) & U(0xFF))
    return True


@njit(**NUMBA)
def inside(q, gpa, length):
    """gpa..gpa+length-1 lies in guest memory (no wrap)."""
    return U(gpa) <= q[Q_MEMSIZE] and U(length) <= q[Q_MEMSIZE] - U(gpa)


@njit(**NUMBA)
def broken(q, why):
    q[Q_ERROR] = U(why)
    return np.int64(BROKEN), np.int64(0), np.int64(0), np.int64(0), np.int64(0)


@njit(**NUMBA)
def pop(mem8, mem64, st, q, out):
    """The next available chain: (status, head, rows, readable bytes, writable bytes); rows of `out` (int64
    [n, 4]) hold host address, length, 1 for device-writable and guest-physical address, split at guest pages. EMPTY: nothing available;
    MISSING: Q_FAULT's page must be backed first (nothing consumed); BROKEN: Q_ERROR says why. Only OK consumes the
    entry (Q_LAST_AVAIL advances). A row's fourth column is the piece's guest-physical address."""
    z = np.int64(0)
    size = np.int64(q[Q_SIZE])
    ok, avail_idx = load(mem8, mem64, st, q, q[Q_AVAIL] + U(2), 2)
    if not ok:
        return np.int64(MISSING), z, z, z, z
    pending = np.int64((avail_idx - q[Q_LAST_AVAIL]) & U(0xFFFF))
    if pending == 0:
        return np.int64(EMPTY), z, z, z, z
    if pending > size:
        return broken(q, E_AVAIL_AHEAD)
    ok, head = load(mem8, mem64, st, q, q[Q_AVAIL] + U(4) + U(2) * (q[Q_LAST_AVAIL] % U(size)), 2)
    if not ok:
        return np.int64(MISSING), z, z, z, z
    if np.int64(head) >= size:
        return broken(q, E_HEAD)
    table, tsize, i, count, indirect = q[Q_DESC], size, np.int64(head), np.int64(0), False
    rows, readable, writable, seen_write = np.int64(0), np.int64(0), np.int64(0), False
    while True:
        if count >= tsize:
            return broken(q, E_LOOP)
        d = table + U(16) * U(i)
        ok, addr = load(mem8, mem64, st, q, d, 8)
        ok2, length = load(mem8, mem64, st, q, d + U(8), 4)
        ok3, flags = load(mem8, mem64, st, q, d + U(12), 2)
        ok4, nxt = load(mem8, mem64, st, q, d + U(14), 2)
        if not (ok and ok2 and ok3 and ok4):
            return np.int64(MISSING), z, z, z, z
        if flags & U(DESC_INDIRECT):
            if indirect or not q[Q_FLAGS] & U(F_INDIRECT) or flags & U(DESC_NEXT) or length == U(0) \
                    or length % U(16) != U(0):
                return broken(q, E_INDIRECT)
            if not inside(q, addr, length):
                return broken(q, E_RANGE)
            table, tsize, i, count, indirect = addr, np.int64(length // U(16)), np.int64(0), np.int64(0), True
            continue
        if not inside(q, addr, length):
            return broken(q, E_RANGE)
        write = flags & U(DESC_WRITE) != U(0)
        if write:
            seen_write = True
            writable += np.int64(length)
        elif seen_write:
            return broken(q, E_ORDER)
        else:
            readable += np.int64(length)
        at, left = addr, np.int64(length)
        while left > 0:
            piece = min(left, np.int64(PAGE) - np.int64(at & U(PAGE - 1)))
            hpa = hpa_of(mem8, mem64, st, at)
            if hpa < 0:
                q[Q_FAULT] = at
                return np.int64(MISSING), z, z, z, z
            if rows >= out.shape[0]:
                return broken(q, E_ROWS)
            out[rows, 0], out[rows, 1], out[rows, 2], out[rows, 3] = hpa, piece, np.int64(write), np.int64(at)
            rows += 1
            at += U(piece)
            left -= piece
        count += 1
        if not flags & U(DESC_NEXT):
            break
        i = np.int64(nxt)
        if i >= tsize:
            return broken(q, E_NEXT)
    q[Q_LAST_AVAIL] = (q[Q_LAST_AVAIL] + U(1)) & U(0xFFFF)
    return np.int64(OK), np.int64(head), rows, readable, writable


@njit(**NUMBA)
def need_event(event, new, old):
    """vring_need_event (§2.6.7.2): whether `event` lies in old+1..new, modulo 2^16."""
    return ((new - event - U(1)) & U(0xFFFF)) < ((new - old) & U(0xFFFF))


@njit(**NUMBA)
def push_used(mem8, mem64, st, q, head, written):
    """Return chain `head` with `written` bytes through the used ring: the element, then (after a barrier) the
    index (§2.6.8.2). Returns 1 when the driver wants an interrupt, 0 when not, MISSING or BROKEN (Q_ERROR)."""
    size = q[Q_SIZE]
    old = q[Q_USED_IDX]
    elem = q[Q_USED] + U(4) + U(8) * (old % size)
    if not store(mem8, mem64, st, q, elem, 4, U(head)) or not store(mem8, mem64, st, q, elem + U(4), 4, U(written)):
        return np.int64(MISSING)
    fence()                                            # the element before the index (§2.6.8.2)
    new = (old + U(1)) & U(0xFFFF)
    if not store(mem8, mem64, st, q, q[Q_USED] + U(2), 2, new):
        return np.int64(MISSING)
    q[Q_USED_IDX] = new
    if q[Q_FLAGS] & U(F_EVENT_IDX):
        store(mem8, mem64, st, q, q[Q_USED] + U(4) + U(8) * size, 2, q[Q_LAST_AVAIL])   # avail_event
        fence()                                        # our index before the driver's used_event (§2.6.7.2)
        ok, event = load(mem8, mem64, st, q, q[Q_AVAIL] + U(4) + U(2) * size, 2)
        if not ok:
            return np.int64(MISSING)
        return np.int64(1) if need_event(event, new, old) else np.int64(0)
    fence()
    ok, flags = load(mem8, mem64, st, q, q[Q_AVAIL], 2)
    if not ok:
        return np.int64(MISSING)
    return np.int64(0) if flags & U(AVAIL_NO_INTERRUPT) else np.int64(1)


def ring_bytes(size):
    """(descriptor table, available ring, used ring) sizes in bytes for a queue of `size` with event index room."""
    return 16 * size, 6 + 2 * size, 6 + 8 * size


def rings_inside(q):
    """The three rings lie in guest memory and are aligned as §2.6 requires (16, 2 and 4 bytes)."""
    desc, avail, used = ring_bytes(int(q[Q_SIZE]))
    mem = int(q[Q_MEMSIZE])
    return all(int(q[at]) % align == 0 and int(q[at]) + n <= mem
               for at, n, align in ((Q_DESC, desc, 16), (Q_AVAIL, avail, 2), (Q_USED, used, 4)))


class PyRing:
    """The plain-Python twin of `pop` and `push_used`: the same checks in the same order, through `translate(gpa)`
    (host address or None) and the host memory array."""

    def __init__(self, mem8, translate, max_rows):
        self.mem8, self.translate, self.max_rows = mem8, translate, max_rows

    def load(self, q, gpa, n):
        value = 0
        for i in range(n):
            hpa = self.translate(gpa + i)
            if hpa is None:
                q[Q_FAULT] = gpa + i
                return None
            value |= int(self.mem8[hpa]) << 8 * i
        return value

    def store(self, q, gpa, n, value):
        for i in range(n):
            hpa = self.translate(gpa + i)
            if hpa is None:
                q[Q_FAULT] = gpa + i
                return False
            self.mem8[hpa] = value >> 8 * i & 0xFF
        return True

    def pop(self, q):
        """(status, head, rows as [(hpa, length, write)], readable, writable)."""
        size, mem = int(q[Q_SIZE]), int(q[Q_MEMSIZE])
        inside = lambda gpa, n: gpa <= mem and n <= mem - gpa       # noqa: E731

        def broken(why):
            q[Q_ERROR] = why
            return BROKEN, 0, [], 0, 0
        missing = (MISSING, 0, [], 0, 0)
        avail_idx = self.load(q, int(q[Q_AVAIL]) + 2, 2)
        if avail_idx is None:
            return missing
        pending = (avail_idx - int(q[Q_LAST_AVAIL])) & 0xFFFF
        if pending == 0:
            return EMPTY, 0, [], 0, 0
        if pending > size:
            return broken(E_AVAIL_AHEAD)
        head = self.load(q, int(q[Q_AVAIL]) + 4 + 2 * (int(q[Q_LAST_AVAIL]) % size), 2)
        if head is None:
            return missing
        if head >= size:
            return broken(E_HEAD)
        table, tsize, i, count, indirect = int(q[Q_DESC]), size, head, 0, False
        rows, readable, writable, seen_write = [], 0, 0, False
        while True:
            if count >= tsize:
                return broken(E_LOOP)
            d = table + 16 * i
            fields = [self.load(q, d + o, n) for o, n in ((0, 8), (8, 4), (12, 2), (14, 2))]
            if None in fields:
                return missing
            addr, length, flags, nxt = fields
            if flags & DESC_INDIRECT:
                if indirect or not int(q[Q_FLAGS]) & F_INDIRECT or flags & DESC_NEXT or length == 0 or length % 16:
                    return broken(E_INDIRECT)
                if not inside(addr, length):
                    return broken(E_RANGE)
                table, tsize, i, count, indirect = addr, length // 16, 0, 0, True
                continue
            if not inside(addr, length):
                return broken(E_RANGE)
            write = bool(flags & DESC_WRITE)
            if write:
                seen_write, writable = True, writable + length
            elif seen_write:
                return broken(E_ORDER)
            else:
                readable += length
            at, left = addr, length
            while left > 0:
                piece = min(left, PAGE - (at & (PAGE - 1)))
                hpa = self.translate(at)
                if hpa is None:
                    q[Q_FAULT] = at
                    return missing
                if len(rows) >= self.max_rows:
                    return broken(E_ROWS)
                rows.append((hpa, piece, int(write), at))
                at, left = at + piece, left - piece
            count += 1
            if not flags & DESC_NEXT:
                break
            i = nxt
            if i >= tsize:
                return broken(E_NEXT)
        q[Q_LAST_AVAIL] = (int(q[Q_LAST_AVAIL]) + 1) & 0xFFFF
        return OK, head, rows, readable, writable

    def push_used(self, q, head, written):
        size, old = int(q[Q_SIZE]), int(q[Q_USED_IDX])
        elem = int(q[Q_USED]) + 4 + 8 * (old % size)
        if not self.store(q, elem, 4, head) or not self.store(q, elem + 4, 4, written):
            return MISSING
        new = (old + 1) & 0xFFFF
        if not self.store(q, int(q[Q_USED]) + 2, 2, new):
            return MISSING
        q[Q_USED_IDX] = new
        if int(q[Q_FLAGS]) & F_EVENT_IDX:
            self.store(q, int(q[Q_USED]) + 4 + 8 * size, 2, int(q[Q_LAST_AVAIL]))
            event = self.load(q, int(q[Q_AVAIL]) + 4 + 2 * size, 2)
            if event is None:
                return MISSING
            return int((new - event - 1) & 0xFFFF < (new - old) & 0xFFFF)
        flags = self.load(q, int(q[Q_AVAIL]), 2)
        if flags is None:
            return MISSING
        return 0 if flags & AVAIL_NO_INTERRUPT else 1


def new_queue():
    return np.zeros(Q_FIELDS, np.uint64)
