"""A hostile virtio driver, bounds-checked: the cases of tests/engine/virtio (loops, lengths past guest memory,
indices beyond the ring, nested indirect tables, too many pieces) and rings of random bytes, each notified
through the PCI bus. Every case ends with the device served or in DEVICE_NEEDS_RESET, no kernel index out of
bounds (NUMBA_BOUNDSCHECK=1), host memory outside the guest's unchanged byte for byte, and a read-only image
unchanged."""
import random
import struct

import numpy as np
import pytest

from tests.engine.virtio.test_virtio_blk import (AVAIL, DESC, HOSTILE, QSIZE, SLOT, USED, Driver)
from engine.virtio import pci as T

MEM = 4 << 20


@pytest.fixture
def machine(hv, tmp_path):
    image = tmp_path / "ro.img"
    image.write_bytes(bytes(range(256)) * 256)
    vm = hv.create_vm("hostile-virtio", mem_mb=4, slots=["%d,virtio-blk,%s,ro" % (SLOT, image)])
    for gpa in range(0, MEM, 4096):                    # every page backed: the EPT stays as it is from here
        vm.pmap.hold(gpa)
    yield vm, image
    vm.destroy()


def outside_guest(vm):
    seg = vm.segments[0]
    mem = vm.hypervisor.memory
    return np.concatenate((mem[:seg.hpa], mem[seg.hpa + seg.size:])).copy()


@pytest.mark.parametrize("case", sorted(HOSTILE) + ["random rings"])
def test_hostile_rings_stay_inside_the_guest(machine, case):
    vm, image = machine
    before_image, rng = image.read_bytes(), random.Random(case)
    rounds = 60 if case == "random rings" else 1
    for _ in range(rounds):
        d = Driver(vm)
        d.setup()
        outside = outside_guest(vm)
        if case in HOSTILE:
            HOSTILE[case](d)
            d.submit(0)
        else:
            for gpa, n in ((DESC, 16 * QSIZE), (DESC + 16 * QSIZE, 64)):
                d.write(gpa, bytes(rng.randrange(256) for _ in range(n)))
            for i in range(QSIZE):                      # addresses near the end of memory and beyond, some sane
                addr = rng.choice((rng.randrange(MEM), MEM - rng.randrange(1, 64), rng.randrange(1 << 64)))
                d.write(DESC + 16 * i, struct.pack("<Q", addr))
            d.write(AVAIL, bytes(rng.randrange(256) for _ in range(4 + 2 * QSIZE + 2)))
            vm.pci.mmio_write(d.bar(T.VIRTIO_BAR) + T.NOTIFY, 0, 2)
        status = d.common("device_status")
        assert status & T.DRIVER_OK
        if case in HOSTILE:
            assert status & T.NEEDS_RESET, case
        assert (outside_guest(vm) == outside).all(), case
        assert image.read_bytes() == before_image
        d.common("device_status", 0)
        for gpa in (AVAIL, USED):
            d.write(gpa, bytes(4096))
