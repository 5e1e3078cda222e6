"""virtio-blk behind the virtio 1.x modern PCI transport, driven as a guest driver drives it (virtio 1.1 §3.1.1,
§4.1.5.1) through configuration cycles and BAR accesses on the VM's PCI bus, with rings written into guest memory:
the PCI header and capabilities, BAR sizing, feature negotiation, reads, writes, flushes, discards, read-only,
MSI-X and INTx, device reset, and a hostile driver's rings, which set DEVICE_NEEDS_RESET and touch nothing outside
the guest. The numba data path is compared with its plain-Python twin on the same memory (vring.PyRing)."""
import os
import random
import struct

import numpy as np
import pytest

from engine import Hypervisor
from engine.errors import ConfigError
from engine.pci import config as P
from engine.pci.host import ENABLE
from engine.virtio import blk as B
from engine.virtio import pci as T
from engine.virtio import vring as R

SLOT = 3
DESC, AVAIL, USED, DATA = 0x10000, 0x11000, 0x12000, 0x20000
QSIZE = 16


@pytest.fixture(scope="module")
def hv():
    return Hypervisor(host_mem_mb=128)


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(bytes(random.Random(7).randrange(256) for _ in range(64 * 1024)))
    return path


class Driver:
    """A guest driver in miniature: configuration cycles through 0xCF8/0xCFC, BAR accesses as the MMIO exits make
    them, rings in guest memory."""

    def __init__(self, vm):
        self.vm, self.pci = vm, vm.pci
        self.device = vm.pci.functions[SLOT, 0]
        self.msis = []
        self.device.msi = lambda address, data: self.msis.append((address, data))
        self.intx = []
        self.device.intx = self.intx.append
        self.avail_idx = 0
        self.used_seen = 0

    def cfg(self, offset, size=4, value=None):
        self.pci.address_write(0, ENABLE | SLOT << 11 | offset & 0xFC, 4)
        if value is None:
            return self.pci.data_read(offset & 3, size)
        self.pci.data_write(offset & 3, value, size)

    def caps(self):
        found, at = [], self.cfg(P.CAPABILITIES, 1)
        while at:
            found.append((at, self.cfg(at, 1)))
            at = self.cfg(at + 1, 1)
        return found

    def bar(self, n):
        return self.cfg(P.BAR0 + 4 * n) & ~0xF

    def common(self, name, value=None):
        at, size = T.FIELDS[name]
        base = self.bar(T.VIRTIO_BAR) + T.COMMON
        if value is None:
            return self.pci.mmio_read(base + at, size)
        self.pci.mmio_write(base + at, value, size)

    def setup(self, features=T.F_VERSION_1 | T.F_INDIRECT_DESC | T.F_EVENT_IDX, msix=True):
        self.cfg(P.COMMAND, 2, P.CMD_MEMORY | P.CMD_MASTER)
        self.common("device_status", 0)
        self.common("device_status", T.ACKNOWLEDGE | T.DRIVER)
        offered = 0
        for half in (0, 1):
            self.common("device_feature_select", half)
            offered |= self.common("device_feature") << 32 * half
        take = features & offered
        for half in (0, 1):
            self.common("driver_feature_select", half)
            self.common("driver_feature", take >> 32 * half & 0xFFFFFFFF)
        self.common("device_status", T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK)
        assert self.common("device_status") & T.FEATURES_OK
        if msix:
            self.msix_entry(0, 0xFEE00000, 0x31)
            self.msix_entry(1, 0xFEE00000, 0x32)
            control = self.device.msix_cap + 2
            self.cfg(control, 2, self.cfg(control, 2) | 0x8000)
            self.common("msix_config", 0)
        self.common("queue_select", 0)
        self.common("queue_size", QSIZE)
        self.common("queue_msix_vector", 1)
        for name, gpa in (("queue_desc", DESC), ("queue_driver", AVAIL), ("queue_device", USED)):
            self.common(name, gpa)
        self.common("queue_enable", 1)
        self.common("device_status", T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK | T.DRIVER_OK)
        return take

    def msix_entry(self, n, address, data, masked=False):
        base = self.bar(T.MSIX_BAR) + 16 * n
        for at, value in ((0, address), (4, 0), (8, data), (12, int(masked))):
            self.pci.mmio_write(base + at, value, 4)

    def write(self, gpa, data):
        self.vm.memory_access.write(gpa, data)

    def read(self, gpa, n):
        return self.vm.memory_access.read(gpa, n)

    def desc(self, index, addr, length, flags, nxt=0, table=DESC):
        self.write(table + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))

    def submit(self, head, event=None):
        self.write(AVAIL + 4 + 2 * (self.avail_idx % QSIZE), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.write(AVAIL + 2, struct.pack("<H", self.avail_idx))
        if event is not None:
            self.write(AVAIL + 4 + 2 * QSIZE, struct.pack("<H", event))
        self.pci.mmio_write(self.bar(T.VIRTIO_BAR) + T.NOTIFY, 0, 2)

    def used(self):
        idx = struct.unpack("<H", self.read(USED + 2, 2))[0]
        out = []
        while self.used_seen != idx:
            out.append(struct.unpack("<II", self.read(USED + 4 + 8 * (self.used_seen % QSIZE), 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def request(self, kind, sector, data_len=0, data=b"", head=0, status_at=DATA + 0x8000):
        """A three-descriptor request: header, data, status."""
        self.write(DATA, struct.pack("<IIQ", kind, 0, sector))
        write_data = kind in (B.T_IN, B.T_GET_ID)
        if data:
            self.write(DATA + 0x1000, data)
        self.desc(head, DATA, 16, R.DESC_NEXT, head + 1)
        self.desc(head + 1, DATA + 0x1000, data_len or len(data), R.DESC_NEXT | (R.DESC_WRITE if write_data else 0),
                  head + 2)
        self.desc(head + 2, status_at, 1, R.DESC_WRITE)
        self.write(status_at, b"\xEE")
        self.submit(head)
        return self.read(status_at, 1)[0]


@pytest.fixture
def vm(hv, image):
    machine = hv.create_vm("blk%d" % random.randrange(1 << 30), mem_mb=4, slots=["%d,virtio-blk,%s" % (SLOT, image)])
    yield machine
    machine.destroy()
    hv.vms.pop(machine.name, None)


def test_pci_header_capabilities_and_bars(vm):
    d = Driver(vm)
    assert d.cfg(P.VENDOR_ID, 2) == 0x1AF4 and d.cfg(P.DEVICE_ID, 2) == 0x1042
    assert d.cfg(P.REVISION_ID, 1) == 1 and d.cfg(P.CLASS, 1) == 0x01
    assert d.cfg(P.SUBSYSTEM_VENDOR_ID, 2) == 0x1AF4 and d.cfg(P.SUBSYSTEM_ID, 2) >= 0x40
    assert d.cfg(P.STATUS, 2) & 0x10 and d.cfg(P.INTERRUPT_PIN, 1) == 1
    assert d.cfg(P.INTERRUPT_LINE, 1) == 16 + (SLOT + 0) % 8
    kinds = [(d.cfg(at + 3, 1) if cap == 0x09 else "msix") for at, cap in d.caps()]
    assert kinds == [T.CAP_COMMON, T.CAP_ISR, T.CAP_DEVICE, T.CAP_NOTIFY, "msix"]
    notify_cap = [at for at, cap in d.caps() if cap == 0x09 and d.cfg(at + 3, 1) == T.CAP_NOTIFY][0]
    assert d.cfg(notify_cap + 2, 1) == 20 and d.cfg(notify_cap + 16) == T.NOTIFY_MULTIPLIER
    for n, size in ((T.MSIX_BAR, T.MSIX_BAR_SIZE), (T.VIRTIO_BAR, T.VIRTIO_BAR_SIZE)):
        placed = d.cfg(P.BAR0 + 4 * n)
        assert placed and placed % size == 0 and 0xC0000000 <= placed < 0xC0040000
        d.cfg(P.BAR0 + 4 * n, 4, 0xFFFFFFFF)                     # sizing (§6.2.5.1)
        assert d.cfg(P.BAR0 + 4 * n) == (~(size - 1)) & 0xFFFFFFFF
        d.cfg(P.BAR0 + 4 * n, 4, placed)
    for n in (0, 2, 3, 5):
        d.cfg(P.BAR0 + 4 * n, 4, 0xFFFFFFFF)
        assert d.cfg(P.BAR0 + 4 * n) == 0                        # unimplemented BARs read 0
    base = d.bar(T.VIRTIO_BAR)
    assert vm.pci.mmio_read(base, 4) == 0xFFFFFFFF               # memory space disabled: a master abort
    d.cfg(P.COMMAND, 2, P.CMD_MEMORY)
    assert d.common("num_queues") == 1
    d.cfg(P.BAR0 + 4 * T.VIRTIO_BAR, 4, 0xC0030000)              # moved by the guest: answers there only
    assert vm.pci.mmio_read(0xC0030000 + T.COMMON + 18, 2) == 1 and vm.pci.mmio_read(base + 18, 2) == 0xFFFF
    capacity = vm.pci.mmio_read(0xC0030000 + T.DEVICE, 8)
    assert capacity == 64 * 1024 // 512
    assert vm.pci.mmio_read(0xC0030000 + T.DEVICE + 20, 4) == 512      # blk_size


def test_feature_negotiation_and_reset(vm):
    d = Driver(vm)
    d.cfg(P.COMMAND, 2, P.CMD_MEMORY)
    d.common("device_feature_select", 1)
    assert d.common("device_feature") & 1                              # VIRTIO_F_VERSION_1
    d.common("device_feature_select", 0)
    offered = d.common("device_feature")
    assert offered & B.F_FLUSH and offered & B.F_DISCARD and offered & T.F_INDIRECT_DESC and not offered & B.F_RO
    d.common("device_status", T.ACKNOWLEDGE | T.DRIVER)
    d.common("driver_feature_select", 0)
    d.common("driver_feature", B.F_FLUSH)                              # no VERSION_1: refused (§2.2.2)
    d.common("device_status", T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK)
    assert not d.common("device_status") & T.FEATURES_OK
    d.common("driver_feature_select", 1)
    d.common("driver_feature", 1 | 1 << 20)                            # a bit never offered: refused
    d.common("device_status", T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK)
    assert not d.common("device_status") & T.FEATURES_OK
    d.common("device_status", 0)                                       # reset: everything forgotten
    assert d.common("device_status") == 0 and d.common("driver_feature") == 0
    take = d.setup()
    assert take & T.F_VERSION_1 and d.common("queue_enable") == 1
    d.common("device_status", 0)
    d.common("queue_select", 0)
    assert d.common("queue_enable") == 0 and d.common("queue_size") == 256 and d.common("queue_desc") == 0


def test_read_write_flush_get_id_and_discard(vm, image):
    d = Driver(vm)
    d.setup()
    original = image.read_bytes()
    assert d.request(B.T_IN, 3, 1024) == B.S_OK
    assert d.read(DATA + 0x1000, 1024) == original[3 * 512:5 * 512]
    assert d.used() == [(0, 1025)]
    assert d.msis == [(0xFEE00000, 0x32)]                              # the queue's vector
    payload = bytes(range(256)) * 4
    assert d.request(B.T_OUT, 10, data=payload) == B.S_OK
    assert d.request(B.T_FLUSH, 0, 0, head=4) == B.S_OK
    assert image.read_bytes()[10 * 512:12 * 512] == payload
    assert d.request(B.T_GET_ID, 0, 20) == B.S_OK and d.read(DATA + 0x1000, 3) == b"WH-"
    assert d.request(B.T_IN, 127, 1024) == B.S_IOERR                   # past the capacity
    assert d.request(B.T_IN, 0, 100) == B.S_IOERR                      # not whole sectors
    assert d.request(99, 0, 512) == B.S_UNSUPP
    discard = struct.pack("<QII", 0, 8, 0)
    assert d.request(B.T_DISCARD, 0, data=discard) == B.S_OK
    assert image.read_bytes()[:4096] == bytes(4096) and len(image.read_bytes()) == 64 * 1024
    assert vm.pci.functions[SLOT, 0].counts["flush"] == 1 and not vm.pci.functions[SLOT, 0].broken


def test_read_only_images_refuse_writes(hv, image):
    vm = hv.create_vm("ro", mem_mb=4, slots=["%d,virtio-blk,%s,ro" % (SLOT, image)])
    try:
        d = Driver(vm)
        d.cfg(P.COMMAND, 2, P.CMD_MEMORY)
        assert d.common("device_feature") & B.F_RO
        d.setup(features=T.F_VERSION_1 | B.F_RO)
        before = image.read_bytes()
        assert d.request(B.T_OUT, 0, data=bytes(512)) == B.S_IOERR
        assert d.request(B.T_IN, 0, 512) == B.S_OK and image.read_bytes() == before
    finally:
        vm.destroy()
        hv.vms.pop("ro", None)


def test_indirect_descriptors_and_event_index(vm, image):
    d = Driver(vm)
    d.setup()
    table = DATA + 0x3000
    d.write(DATA, struct.pack("<IIQ", B.T_IN, 0, 1))
    d.desc(0, DATA, 16, R.DESC_NEXT, 1, table=table)
    d.desc(1, DATA + 0x1FF0, 512, R.DESC_WRITE | R.DESC_NEXT, 2, table=table)     # across a page boundary
    d.desc(2, DATA + 0x2800, 1, R.DESC_WRITE, table=table)
    d.desc(5, table, 48, R.DESC_INDIRECT)
    d.submit(5, event=5)                                           # used_event 5: no interrupt for the first
    assert d.read(DATA + 0x2800, 1)[0] == B.S_OK
    assert d.read(DATA + 0x1FF0, 512) == image.read_bytes()[512:1024]
    assert d.used() == [(5, 513)] and d.msis == []
    assert struct.unpack("<H", d.read(USED + 4 + 8 * QSIZE, 2))[0] == 1      # avail_event
    d.submit(5, event=1)                                           # used_event 1: crossing it interrupts
    assert d.used() == [(5, 513)] and d.msis == [(0xFEE00000, 0x32)]


def test_msix_masking_pending_and_intx(vm):
    d = Driver(vm)
    d.setup()
    d.msix_entry(1, 0xFEE00000, 0x32, masked=True)
    d.request(B.T_IN, 0, 512)
    assert d.msis == [] and vm.pci.mmio_read(d.bar(T.MSIX_BAR) + T.MSIX_PBA, 8) == 0b10     # pending
    d.msix_entry(1, 0xFEE00000, 0x32, masked=False)
    assert d.msis == [(0xFEE00000, 0x32)] and vm.pci.mmio_read(d.bar(T.MSIX_BAR) + T.MSIX_PBA, 8) == 0
    control = d.device.msix_cap + 2
    d.cfg(control, 2, 0)                                            # MSI-X off: INTx and the ISR
    d.write(AVAIL + 4 + 2 * QSIZE, struct.pack("<H", 1))            # used_event: the next one interrupts
    d.request(B.T_IN, 0, 512)
    assert d.intx[-1] is True and d.cfg(P.STATUS, 2) & 0x08
    assert vm.pci.mmio_read(d.bar(T.VIRTIO_BAR) + T.ISR, 1) == T.ISR_QUEUE
    assert d.intx[-1] is False and vm.pci.mmio_read(d.bar(T.VIRTIO_BAR) + T.ISR, 1) == 0


def test_msi_reaches_the_local_apic(vm):
    """The platform's message write: vector 0x45 to APIC ID 0 lands in vCPU 0's IRR (its APIC software-enabled,
    as a guest's is; a disabled one drops fixed interrupts, SDM §11.4.7.2), and one elsewhere is a memory write."""
    vm.vcpus[0].lapic.regs[0xF0 >> 2] |= 0x100
    vm._msi(0xFEE00000, 0x45)
    vm._msi(0x5000, 0x12345678)
    assert vm.memory_access.read(0x5000, 4) == bytes((0x78, 0x56, 0x34, 0x12))
    lapic = vm.vcpus[0].lapic
    irr = sum(int(lapic.regs[(0x200 + 0x10 * i) >> 2]) << 32 * i for i in range(8))
    pir = int.from_bytes(vm.hypervisor.memory[lapic.pir_hpa:lapic.pir_hpa + 32].tobytes(), "little")  # posted
    assert (irr | pir) >> 0x45 & 1


HOSTILE = {
    "loop": lambda d: (d.desc(0, DATA, 16, R.DESC_NEXT, 1), d.desc(1, DATA + 0x1000, 512, R.DESC_NEXT, 0)),
    "beyond memory": lambda d: d.desc(0, 4 * 1024 * 1024 - 8, 16, 0),
    "wrapping length": lambda d: d.desc(0, 0xFFFFFFFFFFFFFFF0, 0x20, 0),
    "next beyond table": lambda d: d.desc(0, DATA, 16, R.DESC_NEXT, QSIZE),
    "indirect in indirect": lambda d: (d.desc(0, DATA + 0x3000, 16, R.DESC_INDIRECT),
                                       d.desc(0, DATA + 0x3000, 16, R.DESC_INDIRECT, table=DATA + 0x3000)),
    "indirect with next": lambda d: d.desc(0, DATA + 0x3000, 16, R.DESC_INDIRECT | R.DESC_NEXT, 1),
    "indirect odd length": lambda d: d.desc(0, DATA + 0x3000, 17, R.DESC_INDIRECT),
    "indirect table beyond memory": lambda d: d.desc(0, 4 * 1024 * 1024 - 16, 32, R.DESC_INDIRECT),
    "readable after writable": lambda d: (d.desc(0, DATA, 16, R.DESC_WRITE | R.DESC_NEXT, 1),
                                          d.desc(1, DATA + 0x1000, 16, 0)),
}


@pytest.mark.parametrize("case", sorted(HOSTILE) + ["head beyond ring", "avail ahead", "huge chain"])
def test_hostile_rings_need_reset_and_touch_nothing(vm, image, case):
    d = Driver(vm)
    d.setup()
    before_image = image.read_bytes()
    if case in HOSTILE:
        HOSTILE[case](d)
        d.submit(0)
    elif case == "head beyond ring":
        d.submit(QSIZE + 3)
    elif case == "avail ahead":
        d.write(AVAIL + 2, struct.pack("<H", QSIZE + 1))
        vm.pci.mmio_write(d.bar(T.VIRTIO_BAR) + T.NOTIFY, 0, 2)
    else:
        table = DATA + 0x4000                                      # 4096 descriptors of one page each
        for i in range(256):
            d.write(table + 16 * i, struct.pack("<QIHH", DATA, 0x11000, R.DESC_NEXT, i + 1))
        d.write(table + 16 * 255, struct.pack("<QIHH", DATA, 0x11000, 0, 0))
        d.desc(0, table, 16 * 256, R.DESC_INDIRECT)
        d.submit(0)
    used_before = d.read(USED, 8 + 8 * QSIZE)
    assert d.common("device_status") & T.NEEDS_RESET, case
    assert d.msis == [(0xFEE00000, 0x31)]                          # the configuration vector
    assert image.read_bytes() == before_image
    assert d.used() == []
    vm.pci.mmio_write(d.bar(T.VIRTIO_BAR) + T.NOTIFY, 0, 2)       # rung again: the device stays away
    assert d.read(USED, 8 + 8 * QSIZE) == used_before
    d.setup()                                                      # a reset brings it back
    assert not d.common("device_status") & T.NEEDS_RESET
    d.avail_idx = d.used_seen = 0
    assert d.request(B.T_IN, 0, 512) == B.S_OK


def test_queue_enable_checks_size_and_rings(vm):
    d = Driver(vm)
    d.cfg(P.COMMAND, 2, P.CMD_MEMORY | P.CMD_MASTER)
    d.common("device_status", T.ACKNOWLEDGE | T.DRIVER)
    d.common("driver_feature_select", 1)
    d.common("driver_feature", 1)
    d.common("device_status", T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK)
    d.common("queue_size", 12)                                      # not a power of two
    d.common("queue_enable", 1)
    assert d.common("device_status") & T.NEEDS_RESET and d.common("queue_enable") == 0


def twin_compare(hv, vm, seed, seen):
    """Random chains (some of them broken) popped by the kernel and by the twin from copies of one queue state."""
    rng = random.Random(seed)
    ram = T.GuestRam(vm)
    mem = vm.memory_access
    mem.write(USED, bytes(8 + 8 * QSIZE))                          # the used ring's page backed (MISSING: pop's cases)
    for round_ in range(40):
        q = R.new_queue()
        q[R.Q_DESC], q[R.Q_AVAIL], q[R.Q_USED], q[R.Q_SIZE] = DESC, AVAIL, USED, QSIZE
        q[R.Q_MEMSIZE], q[R.Q_FLAGS] = vm.mem_size, rng.choice((0, 1, 3))
        q[R.Q_LAST_AVAIL] = rng.randrange(1 << 16)
        mem.write(AVAIL + 2, struct.pack("<H", (int(q[R.Q_LAST_AVAIL]) + rng.choice((0, 1, 2, QSIZE + 1))) & 0xFFFF))
        mem.write(AVAIL + 4 + 2 * (int(q[R.Q_LAST_AVAIL]) % QSIZE), struct.pack("<H", rng.choice((0, 1, 5, QSIZE, 99))))
        for table in (DESC, DATA + 0x3000):
            for i in range(QSIZE):
                flags = rng.choice((0, 1, 1, 2, 3, 3, 4, 5))
                addr = rng.choice((DATA + rng.randrange(0x8000), vm.mem_size - rng.randrange(64), 1 << 63,
                                   DATA + 0x3000))
                mem.write(table + 16 * i, struct.pack("<QIHH", addr, rng.choice((0, 1, 16, 48, 4096, 70000)), flags,
                                                      rng.randrange(QSIZE + 2)))
        twin_q = q.copy()
        out = np.zeros((64, 4), np.int64)
        got = R.pop(ram.mem8, ram.mem64, ram.st, q, out)
        twin = R.PyRing(ram.mem8, ram.lookup, 64).pop(twin_q)
        assert got[0] == twin[0] and (q == twin_q).all(), (round_, got, twin[:2])
        seen.add(int(got[0]) if got[0] != R.BROKEN else -100 - int(q[R.Q_ERROR]))
        if got[0] == R.OK:
            assert got[1:2] + got[3:] == (twin[1],) + twin[3:]
            assert [tuple(row) for row in out[:got[2]].tolist()] == [tuple(r) for r in twin[2]]
            written = rng.randrange(100)
            for _ in range(2):
                a, b = q.copy(), twin_q.copy()
                mem.write(AVAIL + 4 + 2 * QSIZE, struct.pack("<H", rng.randrange(1 << 16)))
                mem.write(AVAIL, struct.pack("<H", rng.randrange(2)))
                r1 = R.push_used(ram.mem8, ram.mem64, ram.st, q, got[1], written)
                after = mem.read(USED, 8 + 8 * QSIZE)
                r2 = R.PyRing(ram.mem8, ram.lookup, 64).push_used(twin_q, got[1], written)
                assert r1 == r2 and (q == twin_q).all() and a[R.Q_USED_IDX] == b[R.Q_USED_IDX]
                assert mem.read(USED, 8 + 8 * QSIZE)[:4] == after[:4]


def test_the_numba_ring_matches_its_python_twin(vm, hv):
    seen = set()
    for seed in range(6):
        twin_compare(hv, vm, seed, seen)
    assert {R.OK, R.EMPTY, R.MISSING} <= seen and len(seen) >= 8, seen     # every outcome, most kinds of breakage


def test_slot_options_are_checked_before_the_vm_is_built(hv, image, tmp_path):
    for bad, says in (("x", "expected slot"), ("2,virtio-blk", "needs an image"), ("2,ahci,%s" % image, "unknown emulation"),
                      ("2,virtio-blk,%s" % (tmp_path / "none.img"), "no image file"),
                      ("0,virtio-blk,%s" % image, "already taken by hostbridge"),
                      ("32,virtio-blk,%s" % image, "slot '32'"), ("1:8,virtio-blk,%s" % image, "function '8'"),
                      ("1:0:0,virtio-blk,%s" % image, "bus 0 is the only"),
                      ("2,virtio-blk,%s,rw" % image, "unknown option")):
        with pytest.raises(ConfigError, match=says):
            hv.create_vm("bad", mem_mb=4, slots=[bad])
    with pytest.raises(ConfigError, match="already taken"):
        hv.create_vm("bad", mem_mb=4, slots=["2,virtio-blk,%s" % image, "2:0,virtio-blk,%s" % image])
    assert "bad" not in hv.vms


def test_a_host_io_error_is_the_guests_ioerr(vm, image):
    """The host refusing a write (here a descriptor opened read-only: EBADF) is VIRTIO_BLK_S_IOERR for that request,
    not a device failure: the next request is served."""
    d = Driver(vm)
    d.setup()
    device = d.device
    writable, device.fd = device.fd, os.open(image, os.O_RDONLY)
    try:
        assert d.request(B.T_OUT, 0, data=bytes(512)) == B.S_IOERR
    finally:
        os.close(device.fd)
        device.fd = writable
    assert d.request(B.T_OUT, 0, data=bytes(512)) == B.S_OK and device.broken is None
