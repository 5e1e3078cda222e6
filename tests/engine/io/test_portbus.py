"""The port bus's kernels against plain-Python twins: how an access is cut into pieces, the map's encoding."""
import random

import numpy as np

from engine.io import portbus as P
from engine.core import ctx as C


# -- the kernel's splitting rule, against a plain-Python twin ---------------------------------------------
def twin_piece(regions, port, remaining):
    """Width of the next piece: the widest the device at `port` takes that fits the access and the device."""
    for base, length, widths in regions:
        if base <= port < base + length:
            return max(w for w in widths if w <= remaining and port + w <= base + length)
    return 1


def random_regions(rng):
    regions, port = [], rng.randrange(0, 16)
    while port < 0x10000 and len(regions) < 40:
        length = min(rng.choice((1, 2, 3, 4, 8, 16)), 0x10000 - port)
        regions.append((port, length, rng.choice(((1,), (1, 2), (1, 4), (1, 2, 4)))))
        port += length + rng.choice((0, 0, 1, 3, 700))
    return regions


def test_piece_widths_against_twin():
    """Random device layouts (adjacent, gapped, at the top of the space): every port and width split the same."""
    rng = random.Random(15)
    for _ in range(60):
        regions = random_regions(rng)
        bus = P.PortBus()
        for i, (base, length, widths) in enumerate(regions):
            bus.attach("d%d" % i, base, length, lambda o, s=1: 0, lambda o, v, s=1: None, widths=widths)
        for base, length, _ in regions:
            for port in range(max(base - 4, 0), min(base + length + 4, 0x10000)):
                for remaining in (1, 2, 3, 4):
                    assert P.piece(bus.portmap, port, remaining) == twin_piece(regions, port, remaining)
    assert P.piece(np.zeros(65536, np.uint8), 0xFFFF, 4) == 1


def test_kernel_owner_codes_stay_the_contexts():
    """The map's owner field keeps ctx.py's PORT_* values (the contract with the exit hooks)."""
    bus = P.PortBus()
    bus.attach_kernel("POST", 0x80, 1, P.OWNER_POST)
    assert bus.portmap[0x80] & P.OWNER_MASK == C.PORT_POST == P.OWNER_POST
    assert bus.portmap[0x81] == C.PORT_NONE


def twin_access(regions, post_at, post, port, size, is_in, value):
    """An access as a PC's bus does it: pieces per twin_piece; unclaimed bytes all ones; the POST byte latch.
    Returns (what an IN reads, the userspace pieces as (port, width, is_in, part), the POST latch after)."""
    result, done, pieces = 0, 0, []
    while done < size:
        p = (port + done) & 0xFFFF
        width = twin_piece(regions, p, size - done)
        ones, part = (1 << 8 * width) - 1, (value >> 8 * done) & ((1 << 8 * width) - 1)
        if p == post_at:
            got = post
            if not is_in:
                post = part
        elif any(base <= p < base + length for base, length, _ in regions):
            pieces.append((p, width, is_in, part))
            got = (0x5A5A5A5A ^ p) & ones                      # what the recording device answers
        else:
            got = ones
        result |= (got if is_in else 0) << 8 * done
        done += width
    return result, pieces, post


def test_access_against_twin():
    """The exit hook's dispatcher on a context block with a recording callback (no Unicorn): the same value
    read, the same pieces sent to userspace, the same POST latch, for random layouts, ports, sizes, values."""
    from engine import stats
    from engine.native import HOST_CALLBACK, address
    rng = random.Random(3)
    for _ in range(40):
        regions = [r for r in random_regions(rng) if not r[0] <= 0x80 < r[0] + r[1]]
        bus = P.PortBus()
        for i, (base, length, widths) in enumerate(regions):
            bus.attach("d%d" % i, base, length, lambda o, s=1: 0, lambda o, v, s=1: None, widths=widths)
        bus.attach_kernel("post", 0x80, 1, P.OWNER_POST)
        seen = []

        def host(vcpu, how, part, _):
            p, width, is_in = how & 0xFFFF, (how >> 16) & 0xFF, bool(how >> 24 & 1)
            seen.append((p, width, is_in, part))
            return (0x5A5A5A5A ^ p) | 0xFFFFFFFF00000000       # bits above the piece must not leak in

        callback = HOST_CALLBACK(host)
        counters = np.zeros(stats.NSLOTS, np.uint64)
        c = C.new()
        c[C.PORTS], c[C.HOSTCB], c[C.STATS], c[C.POST] = bus.portmap.ctypes.data, address(callback), \
            counters.ctypes.data, 0x11
        ports = [rng.randrange(65536) for _ in range(200)] + [0x7E, 0x7F, 0x80, 0xFFFD, 0xFFFE, 0xFFFF]
        ports += [b + rng.randrange(-3, l + 1) & 0xFFFF for b, l, _ in regions]
        for port in ports:
            for size in (1, 2, 4):
                is_in, value = rng.random() < 0.5, rng.randrange(1 << 32)
                want, pieces, post = twin_access(regions, 0x80, int(c[C.POST]), port, size, is_in, value)
                seen.clear()
                got = P.access(c, port, size, is_in, value)
                assert (int(got), seen, int(c[C.POST])) == (want, pieces, post), (regions, port, size, is_in)
    bus = P.PortBus()
    bus.attach_kernel("post", 0x80, 1, P.OWNER_POST)
    c[C.PORTS], c[C.POST] = bus.portmap.ctypes.data, 0x11
    assert int(P.access(c, 0x80, 9, True, 0)) == 0xFFFFFF11         # a size Unicorn never gives: clamped to 4


def test_attach_refuses_what_a_bus_cannot_decode():
    """Overlapping devices, ranges past 0xFFFF and widths other than 1/2/4 are refused by name; attaching the same
    device again (a reset's new 8259) replaces it; a byte piece calls read(offset), a wider one read(offset, size)."""
    from engine import ConfigError
    bus = P.PortBus()
    bus.attach("pic", 0x20, 2, lambda o: 0x10 + o, lambda o, v: None)
    bus.attach("pic", 0x20, 2, lambda o: 0x20 + o, lambda o, v: None)
    assert bus.dispatch(0x21, 1, True, 0) == 0x21 and bus.device_at(0x21) == "pic"
    for args, why in ((("other", 0x21, 4), "already decoded by pic"), (("top", 0xFFFE, 4), "do not fit"),
                      (("odd", 0x300, 4, (2, 4)), "widths"), (("eight", 0x300, 8, (1, 8)), "widths")):
        name, base, length, *widths = args
        try:
            bus.attach(name, base, length, lambda o: 0, lambda o, v: None, *widths)
        except ConfigError as problem:
            assert why in str(problem) and name in str(problem)
        else:
            raise AssertionError("%s was attached" % name)
    calls = []
    bus.attach("latch", 0xCF8, 4, lambda o, s=1: calls.append(("in", o, s)) or 0x1234,
               lambda o, v, s=1: calls.append(("out", o, v, s)), widths=(1, 2, 4))
    assert bus.dispatch(0xCFA, 2, True, 0) == 0x1234 and bus.dispatch(0xCF8, 4, False, 0xAB) == 0
    assert calls == [("in", 2, 2), ("out", 0, 0xAB, 4)]
    assert bus.dispatch(0x1234, 2, True, 0) == 0xFFFF and not bus.claimed(0x1234)
