"""The port bus's kernels against plain-Python twins: how an access is cut into pieces, the map's encoding."""
import random

import numpy as np

from engine.io import portbus as P
from engine.vmx import ctx as C


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
