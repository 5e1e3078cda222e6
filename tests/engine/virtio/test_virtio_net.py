"""virtio-net on a switch port, driven as a guest driver drives it (virtio 1.1 §5.1.5, §5.1.6) through
configuration cycles and BAR accesses, with rings in guest memory: the PCI identity, the configuration (MAC, link
up), transmitted frames reaching the switch, received frames landing in a buffer behind their header, drops when
no buffer waits, two VMs on one switch, hostile rings (DEVICE_NEEDS_RESET, nothing written), the -s options; and
the numba copies (gather, scatter) against their plain-Python twins on random host ranges and crafted rings."""
import random
import socket
import struct

import numpy as np
import pytest

from engine import Hypervisor
from engine.errors import ConfigError
from engine.net.switch import Port, host_switch
from engine.pci import config as P
from engine.virtio import net as N
from engine.virtio import pci as T
from engine.virtio import vring as R
from tests.engine.virtio.test_virtio_blk import DATA, HOSTILE, SLOT, Driver

QSIZE = 16
RINGS = {N.RX: (0x10000, 0x11000, 0x12000), N.TX: (0x13000, 0x14000, 0x15000)}
BROADCAST, PEER = b"\xff" * 6, b"\x02\x00\x00\x00\x00\x99"
FEATURES = T.F_VERSION_1 | T.F_INDIRECT_DESC | T.F_EVENT_IDX | N.F_MAC | N.F_STATUS


@pytest.fixture(scope="module")
def hv():
    return Hypervisor(host_mem_mb=128)


class Sink:
    """The test's own port on the switch: what it is sent, and a way to send."""

    def __init__(self, switch):
        self.frames = []
        self.port = switch.attach(Port("test", lambda f: self.frames.append(bytes(f)) or True))


@pytest.fixture
def switch(hv):
    name = "switch%d" % random.randrange(10000)
    yield host_switch(hv, name)


def make_vm(hv, switch, name=None, options=""):
    name = name or "net%d" % random.randrange(1 << 30)
    return hv.create_vm(name, mem_mb=4, slots=["%d,virtio-net,%s%s" % (SLOT, switch.name, options)])


@pytest.fixture
def vm(hv, switch):
    machine = make_vm(hv, switch)
    yield machine
    machine.destroy()
    hv.vms.pop(machine.name, None)


class NetDriver(Driver):
    """The blk tests' driver with two queues: receive (vector 1) and transmit (vector 2)."""

    def __init__(self, vm):
        super().__init__(vm)
        self.avail, self.seen = [0, 0], [0, 0]

    def setup(self, features=FEATURES, msix=True):
        self.cfg(P.COMMAND, 2, P.CMD_MEMORY | P.CMD_MASTER)
        self.common("device_status", 0)
        self.common("device_status", T.ACKNOWLEDGE | T.DRIVER)
        for half in (0, 1):
            self.common("driver_feature_select", half)
            self.common("driver_feature", features >> 32 * half & 0xFFFFFFFF)
        self.common("device_status", T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK)
        assert self.common("device_status") & T.FEATURES_OK
        for n in range(3):
            self.msix_entry(n, 0xFEE00000, 0x30 + n)
        control = self.device.msix_cap + 2
        self.cfg(control, 2, self.cfg(control, 2) | 0x8000)
        self.common("msix_config", 0)
        for q, (desc, avail, used) in RINGS.items():
            self.write(avail, bytes(6 + 2 * QSIZE))
            self.write(used, bytes(6 + 8 * QSIZE))
            self.common("queue_select", q)
            self.common("queue_size", QSIZE)
            self.common("queue_msix_vector", q + 1)
            for name, gpa in (("queue_desc", desc), ("queue_driver", avail), ("queue_device", used)):
                self.common(name, gpa)
            self.common("queue_enable", 1)
        self.common("device_status", T.ACKNOWLEDGE | T.DRIVER | T.FEATURES_OK | T.DRIVER_OK)
        self.avail, self.seen = [0, 0], [0, 0]

    def qdesc(self, q, index, addr, length, flags, nxt=0):
        self.desc(index, addr, length, flags, nxt, table=RINGS[q][0])

    def post(self, q, head, event=None):
        """Make chain `head` available on queue q and ring its doorbell."""
        avail = RINGS[q][1]
        self.write(avail + 4 + 2 * (self.avail[q] % QSIZE), struct.pack("<H", head))
        self.avail[q] = (self.avail[q] + 1) & 0xFFFF
        self.write(avail + 2, struct.pack("<H", self.avail[q]))
        if event is not None:
            self.write(avail + 4 + 2 * QSIZE, struct.pack("<H", event))
        self.pci.mmio_write(self.bar(T.VIRTIO_BAR) + T.NOTIFY + 4 * q, q, 2)

    def qused(self, q):
        used = RINGS[q][2]
        idx = struct.unpack("<H", self.read(used + 2, 2))[0]
        out = []
        while self.seen[q] != idx:
            out.append(struct.unpack("<II", self.read(used + 4 + 8 * (self.seen[q] % QSIZE), 8)))
            self.seen[q] = (self.seen[q] + 1) & 0xFFFF
        return out


def eth(dst, src, payload):
    return dst + src + b"\x08\x00" + payload


def test_pci_identity_configuration_and_features(vm):
    d = NetDriver(vm)
    assert d.cfg(P.VENDOR_ID, 2) == 0x1AF4 and d.cfg(P.DEVICE_ID, 2) == 0x1041      # 0x1040 + device ID 1
    assert d.cfg(P.CLASS, 1) == 0x02 and d.cfg(P.REVISION_ID, 1) == 1
    d.cfg(P.COMMAND, 2, P.CMD_MEMORY)
    assert d.common("num_queues") == 2
    offered = 0
    for half in (0, 1):
        d.common("device_feature_select", half)
        offered |= d.common("device_feature") << 32 * half
    assert offered == FEATURES                      # no offloads: whole frames, header fields 0
    config = d.bar(T.VIRTIO_BAR) + T.DEVICE
    mac = bytes(vm.pci.mmio_read(config + i, 1) for i in range(6))
    assert mac == N.genmac(SLOT, 0, vm.name) and mac[:3] == b"\x00\xa0\x98"
    assert vm.pci.mmio_read(config + 6, 2) == N.S_LINK_UP


def test_transmitted_frames_reach_the_switch(vm, switch):
    d = NetDriver(vm)
    d.setup()
    sink = Sink(switch)
    mac = N.genmac(SLOT, 0, vm.name)
    payload = bytes(range(256)) * 4
    frame = eth(BROADCAST, mac, payload)
    d.write(DATA + 0xFF8, bytes(12) + frame[:100])              # header and the start, across a page boundary
    d.write(DATA + 0x3000, frame[100:])
    d.qdesc(N.TX, 0, DATA + 0xFF8, 112, R.DESC_NEXT, 1)
    d.qdesc(N.TX, 1, DATA + 0x3000, len(frame) - 100, 0)
    d.post(N.TX, 0)
    assert sink.frames == [frame] and d.qused(N.TX) == [(0, 0)]
    assert d.msis == [(0xFEE00000, 0x32)]                       # the transmit queue's vector
    table = DATA + 0x5000                                       # the same through an indirect table
    d.desc(0, DATA + 0xFF8, 112, R.DESC_NEXT, 1, table=table)
    d.desc(1, DATA + 0x3000, len(frame) - 100, 0, table=table)
    d.qdesc(N.TX, 3, table, 32, R.DESC_INDIRECT)
    d.post(N.TX, 3)
    d.qdesc(N.TX, 4, DATA, 12 + 10, 0)                          # shorter than an Ethernet header: dropped
    d.post(N.TX, 4)
    assert sink.frames == [frame, frame] and d.qused(N.TX) == [(3, 0), (4, 0)]
    device = vm.pci.functions[SLOT, 0]
    assert device.counts["tx_frames"] == 2 and device.counts["tx_bad"] == 1
    assert device.port.counts["rx_packets"] == 2 and device.port.counts["rx_bytes"] == 2 * len(frame)
    assert switch.lookup(mac) is device.port


def test_received_frames_land_behind_their_header_and_are_dropped_without_a_buffer(vm, switch):
    d = NetDriver(vm)
    d.setup()
    sink = Sink(switch)
    mac = N.genmac(SLOT, 0, vm.name)
    for i in range(2):
        d.qdesc(N.RX, i, DATA + 0x1000 * i + 0x800, 1526, R.DESC_WRITE)
        d.post(N.RX, i)
    assert d.qused(N.RX) == [] and d.msis == []                 # buffers wait for frames
    frames = [eth(mac, PEER, bytes([n]) * 60) for n in (1, 2, 3)]
    for frame in frames:
        sink.port.send(frame)
    assert d.qused(N.RX) == [(0, 12 + 74), (1, 12 + 74)]
    for i in range(2):
        header = d.read(DATA + 0x1000 * i + 0x800, 12)
        assert header == bytes(10) + b"\x01\x00"                # num_buffers 1, nothing else (§5.1.6.4)
        assert d.read(DATA + 0x1000 * i + 0x800 + 12, 74) == frames[i]
    assert d.msis == [(0xFEE00000, 0x31)]                       # used_event 0: the first one only (§2.6.7.2)
    device = vm.pci.functions[SLOT, 0]
    assert device.counts["rx_no_buffer"] == 1 and device.port.counts["tx_dropped"] == 1
    assert device.port.counts["tx_packets"] == 2
    d.qdesc(N.RX, 2, DATA + 0x4000, 40, R.DESC_WRITE)           # a buffer too small: returned empty
    d.post(N.RX, 2)
    d.write(DATA + 0x4000, b"\xEE" * 40)
    sink.port.send(frames[2])
    assert d.qused(N.RX) == [(2, 0)] and d.read(DATA + 0x4000, 40) == b"\xEE" * 40
    assert device.counts["rx_small_buffer"] == 1


def test_two_vms_on_one_switch_reach_each_other(hv, switch, vm):
    other = make_vm(hv, switch)
    try:
        a, b = NetDriver(vm), NetDriver(other)
        a.setup()
        b.setup()
        b_mac = N.genmac(SLOT, 0, other.name)
        assert b_mac != N.genmac(SLOT, 0, vm.name)
        b.qdesc(N.RX, 0, DATA, 1526, R.DESC_WRITE)
        b.post(N.RX, 0)
        frame = eth(b_mac, N.genmac(SLOT, 0, vm.name), b"ping" * 20)
        a.write(DATA, bytes(12) + frame)
        a.qdesc(N.TX, 0, DATA, 12 + len(frame), 0)
        a.post(N.TX, 0)
        assert b.qused(N.RX) == [(0, 12 + len(frame))] and b.read(DATA + 12, len(frame)) == frame
        assert len(switch.ports) == 2
    finally:
        other.destroy()
        hv.vms.pop(other.name, None)
    assert len(switch.ports) == 1                               # a destroyed VM's port leaves the switch


@pytest.mark.parametrize("case", sorted(HOSTILE) + ["avail ahead"])
def test_a_hostile_receive_ring_needs_reset_and_nothing_is_written(vm, switch, case):
    d = NetDriver(vm)
    d.setup()
    sink = Sink(switch)
    d.write(DATA, b"\xAA" * 0x2000)
    if case == "avail ahead":
        d.write(RINGS[N.RX][1] + 2, struct.pack("<H", QSIZE + 1))
    else:
        HOSTILE[case](d)                                        # queue 0's table is the blk tests' DESC
        d.post(N.RX, 0)
    used_before = d.read(RINGS[N.RX][2], 8 + 8 * QSIZE)
    sink.port.send(eth(BROADCAST, PEER, b"z" * 100))
    assert d.common("device_status") & T.NEEDS_RESET, case
    assert d.msis == [(0xFEE00000, 0x30)]                       # the configuration vector
    assert d.read(DATA, 0x2000) == b"\xAA" * 0x2000 and d.read(RINGS[N.RX][2], 8 + 8 * QSIZE) == used_before
    sink.port.send(eth(BROADCAST, PEER, b"z" * 100))            # the device stays away until reset
    assert d.read(RINGS[N.RX][2], 8 + 8 * QSIZE) == used_before
    d.setup()
    d.qdesc(N.RX, 0, DATA, 1526, R.DESC_WRITE)
    d.post(N.RX, 0)
    sink.port.send(eth(BROADCAST, PEER, b"z" * 100))
    assert d.qused(N.RX) == [(0, 12 + 114)]


def test_a_hostile_transmit_ring_needs_reset_and_sends_nothing(vm, switch):
    d = NetDriver(vm)
    d.setup()
    sink = Sink(switch)
    d.qdesc(N.TX, 0, vm.mem_size - 8, 64, 0)                    # a buffer running off the end of guest memory
    d.post(N.TX, 0)
    assert d.common("device_status") & T.NEEDS_RESET and sink.frames == [] and d.qused(N.TX) == []


def gather_twin(mem8, rows, skip, size):
    """Plain Python: the readable ranges' bytes from `skip` on; (count or failure, bytes)."""
    out = b""
    for hpa, length, write, _ in rows:
        if write:
            break
        if hpa < 0 or length < 0 or hpa + length > len(mem8):
            return N.OUT_OF_MEMORY, b""
        start = min(skip, length)
        skip -= start
        piece = bytes(mem8[hpa + start:hpa + length])
        if len(out) + len(piece) > size:
            return N.TOO_BIG, b""
        out += piece
    return len(out), out


def scatter_twin(mem8, rows, data):
    """Plain Python: `data` across the writable ranges; the count or the failure, memory untouched on failure."""
    writable = [(hpa, length) for hpa, length, write, _ in rows if write]
    if any(hpa < 0 or length < 0 or hpa + length > len(mem8) for hpa, length in writable):
        return N.OUT_OF_MEMORY
    if sum(length for _, length in writable) < len(data):
        return N.TOO_BIG
    at = 0
    for hpa, length in writable:
        piece = data[at:at + length]
        mem8[hpa:hpa + len(piece)] = np.frombuffer(piece, np.uint8)
        at += len(piece)
    return len(data)


def random_rows(rng, size):
    rows = []
    for _ in range(rng.randrange(1, 6)):
        length = rng.choice((0, 1, 7, 12, 100, 600))
        hpa = rng.choice((rng.randrange(size - 700), size - rng.randrange(1, 50), -rng.randrange(1, 9), 1 << 40))
        rows.append((hpa, length, rng.random() < 0.5, 0))
    return sorted(rows, key=lambda r: r[2])                     # readable ones first, as pop gives them


def test_gather_and_scatter_match_their_python_twins_on_random_ranges():
    rng = random.Random(18)
    outcomes = set()
    for round_ in range(400):
        mem = np.frombuffer(rng.randbytes(4096), np.uint8).copy()
        rows = random_rows(rng, len(mem))
        table = np.array(rows, np.int64).reshape(-1, 4)
        skip, size = rng.choice((0, 12, 50)), rng.choice((64, 2000))
        buf = np.zeros(size, np.uint8)
        got = N.gather(mem, table, len(rows), skip, buf)
        want, data = gather_twin(mem, rows, skip, size)
        assert got == want and (got < 0 or buf[:got].tobytes() == data), (round_, rows)
        hdr = np.frombuffer(rng.randbytes(12), np.uint8)
        frame = rng.randbytes(rng.choice((0, 20, 300)))
        twin_mem = mem.copy()
        got = N.scatter(mem, table, len(rows), hdr, np.frombuffer(frame, np.uint8), len(frame))
        assert got == scatter_twin(twin_mem, rows, hdr.tobytes() + frame), (round_, rows)
        assert (mem == twin_mem).all(), round_
        outcomes.add(np.sign(got) if got >= 0 else got)
    assert {1, N.OUT_OF_MEMORY, N.TOO_BIG} <= outcomes, outcomes           # copies, and both failures


def test_gather_and_scatter_match_their_twins_on_crafted_rings(vm):
    """Chains written as a driver would (direct, split at pages, indirect), popped by vring.pop: the copies agree
    with the twins on the host ranges pop gives and with what the driver wrote."""
    rng = random.Random(5)
    ram = T.GuestRam(vm)
    desc, avail, used = RINGS[N.TX]
    for round_ in range(30):
        q = R.new_queue()
        q[R.Q_DESC], q[R.Q_AVAIL], q[R.Q_USED], q[R.Q_SIZE], q[R.Q_MEMSIZE] = desc, avail, used, QSIZE, vm.mem_size
        q[R.Q_FLAGS] = R.F_INDIRECT
        pieces = [rng.randrange(1, 3000) for _ in range(rng.randrange(1, 4))]
        data = rng.randbytes(sum(pieces))
        at, gpa = 0, DATA + rng.randrange(4096)
        for i, n in enumerate(pieces):
            vm.memory_access.write(gpa, data[at:at + n])
            last = i == len(pieces) - 1
            vm.memory_access.write(desc + 16 * i, struct.pack("<QIHH", gpa, n, 0 if last else R.DESC_NEXT, i + 1))
            at, gpa = at + n, gpa + n + rng.randrange(64)
        writable = DATA + 0x8000 + rng.randrange(4096)
        vm.memory_access.write(writable, bytes(3000))              # touched, as a driver's buffer is
        vm.memory_access.write(desc + 16 * len(pieces) - 4, struct.pack("<HH", R.DESC_NEXT, len(pieces)))
        vm.memory_access.write(desc + 16 * len(pieces), struct.pack("<QIHH", writable, 3000, R.DESC_WRITE, 0))
        vm.memory_access.write(avail + 2, struct.pack("<H", 1))
        vm.memory_access.write(avail + 4, struct.pack("<H", 0))
        out = np.zeros((64, 4), np.int64)
        status, _, nrows, readable, _ = R.pop(ram.mem8, ram.mem64, ram.st, q, out)
        assert status == R.OK and readable == len(data)
        rows = [tuple(r) for r in out[:nrows].tolist()]
        skip = rng.choice((0, 12))
        buf = np.zeros(8192, np.uint8)
        n = N.gather(ram.mem8, out, nrows, skip, buf)
        assert (n, buf[:n].tobytes()) == gather_twin(ram.mem8, rows, skip, 8192) and buf[:n].tobytes() == data[skip:]
        hdr, frame = np.zeros(12, np.uint8), rng.randbytes(rng.choice((60, 1514, 2990, 3000)))
        twin = ram.mem8.copy()
        got = N.scatter(ram.mem8, out, nrows, hdr, np.frombuffer(frame, np.uint8), len(frame))
        assert got == scatter_twin(twin, rows, hdr.tobytes() + frame) and (twin == ram.mem8).all()
        if got > 0:
            assert vm.memory_access.read(writable, got) == bytes(12) + frame


def test_slot_options_are_checked_before_the_vm_is_built(hv, switch):
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        for bad, says in (("3,virtio-net", "needs a switch"), ("3,virtio-net,tap0", "not a switch name"),
                          ("3,virtio-net,switch0,mac=zz", "six hex bytes"),
                          ("3,virtio-net,switch0,mac=01:00:5e:00:00:01", "group"),
                          ("3,virtio-net,switch0,vlan=3", "unknown option"),
                          ("3,virtio-net,switch0,listen=5555", "HOST:PORT"),
                          ("3,virtio-net,%s,listen=127.0.0.1:%d" % (switch.name, taken.getsockname()[1]),
                           "cannot listen")):
            with pytest.raises(ConfigError, match=says):
                hv.create_vm("bad", mem_mb=4, slots=[bad])
    finally:
        taken.close()
    assert "bad" not in hv.vms and switch.ports == []
    vm = make_vm(hv, switch, options=",mac=52:54:00:ab:cd:ef,listen=127.0.0.1:0")
    try:
        device = vm.pci.functions[SLOT, 0]
        assert device.mac == bytes.fromhex("525400abcdef") and device.endpoints[0].address[1] > 0
    finally:
        vm.destroy()
        hv.vms.pop(vm.name, None)
    assert switch.ports == []
