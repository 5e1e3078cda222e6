"""What the devices panel reads (VmView.devices, each function's describe()): after a miniature driver has set a
virtio-blk and a virtio-net function up and moved data through them, the view says what the guest programmed
(BARs, MSI-X entries, queue registers and indices) and counts what moved, each number from the device model."""
import struct

from engine.door import VmView
from engine.pci import config as P
from engine.virtio import blk as B
from engine.virtio import net as N
from engine.virtio import pci as T
from engine.virtio import vring as R
from tests.engine.virtio.test_virtio_blk import AVAIL, DATA, QSIZE, SLOT, Driver, hv, image, vm  # noqa: F401 (fixtures)
from tests.engine.virtio.test_virtio_net import PEER, NetDriver, Sink, eth, make_vm, switch  # noqa: F401


def function(vm, slot):
    return next(f for f in VmView(vm).devices() if f["slot"] == slot)


def test_blk_slot_bars_vectors_queue_and_counts(vm):
    d = Driver(vm)
    before = function(vm, SLOT)
    assert before["counts"] == dict.fromkeys(before["counts"], 0)
    assert [b["enabled"] for b in before["bars"]] == [False, False]            # memory space off at power-on
    d.setup()
    assert d.request(B.T_IN, 3, 1024) == B.S_OK
    assert d.request(B.T_OUT, 10, data=bytes(1536)) == B.S_OK
    assert d.request(B.T_FLUSH, 0, 0, head=4) == B.S_OK
    assert d.request(B.T_GET_ID, 0, 20) == B.S_OK
    assert d.request(B.T_IN, 0, 100) == B.S_IOERR                               # not whole sectors
    bridge, blk = VmView(vm).devices()
    assert (bridge["bdf"], bridge["vendor"], bridge["device"], bridge["class"]) == ("00:00.0", 0x1275, 0x1275, 0x060000)
    assert bridge["backend"] == {"emulation": "hostbridge"} and "bars" not in bridge
    assert (blk["bdf"], blk["vendor"], blk["device"], blk["class"]) == ("00:03.0", 0x1AF4, 0x1042, 0x010000)
    assert (blk["subsystem_vendor"], blk["interrupt_pin"], blk["interrupt_line"]) == (0x1AF4, 1, 16 + SLOT % 8)
    assert blk["command"] == P.CMD_MEMORY | P.CMD_MASTER
    bars = {b["index"]: b for b in blk["bars"]}
    assert sorted(bars) == [T.MSIX_BAR, T.VIRTIO_BAR]
    for n, size in ((T.MSIX_BAR, T.MSIX_BAR_SIZE), (T.VIRTIO_BAR, T.VIRTIO_BAR_SIZE)):
        assert bars[n] == {"index": n, "kind": "mem32", "size": size, "address": d.bar(n), "enabled": True}
    msix = blk["msix"]
    assert msix["enabled"] and not msix["function_masked"] and len(msix["vectors"]) == 2
    assert msix["vectors"][1] == {"index": 1, "address": 0xFEE00000, "data": 0x32, "masked": False, "pending": False}
    virtio = blk["virtio"]
    assert virtio["status"] & T.DRIVER_OK and virtio["negotiated"] & T.F_VERSION_1 and virtio["broken"] is None
    assert virtio["offered"] & B.F_FLUSH and virtio["config_vector"] == 0
    queue = virtio["queues"][0]
    assert (queue["size"], queue["enabled"], queue["vector"], queue["desc"]) == (QSIZE, True, 1, 0x10000)
    assert queue["avail_idx"] == queue["last_avail_idx"] == queue["used_idx"] == 5 and queue["kicks"] == 5
    assert blk["counts"] == {"read": 1, "write": 1, "flush": 1, "discard": 0, "get_id": 1, "error": 1,
                             "read_bytes": 1024, "write_bytes": 1536}
    assert blk["backend"]["emulation"] == "virtio-blk" and blk["backend"]["capacity_sectors"] == 128
    # a masked vector holds its message as pending; the view shows it
    d.msix_entry(1, 0xFEE00000, 0x32, masked=True)
    d.write(AVAIL + 4 + 2 * QSIZE, struct.pack("<H", 5))                         # used_event: the next one
    assert d.request(B.T_IN, 0, 512) == B.S_OK
    assert function(vm, SLOT)["msix"]["vectors"][1]["pending"] is True


def test_net_counts_packets_bytes_and_drops_each_way(hv, switch):  # noqa: F811
    vm = make_vm(hv, switch)
    try:
        d = NetDriver(vm)
        d.setup()
        sink = Sink(switch)
        mac = N.genmac(SLOT, 0, vm.name)
        frame = eth(b"\xff" * 6, mac, bytes(100))
        d.write(DATA, bytes(12) + frame)
        d.qdesc(N.TX, 0, DATA, 12 + len(frame), 0)
        d.post(N.TX, 0)
        d.qdesc(N.TX, 1, DATA, 12 + 4, 0)                       # too short for an Ethernet header: dropped
        d.post(N.TX, 1)
        d.qdesc(N.RX, 0, DATA + 0x1000, 1526, R.DESC_WRITE)
        d.post(N.RX, 0)
        incoming = eth(mac, PEER, bytes(60))
        sink.port.send(incoming)
        sink.port.send(incoming)                                # no buffer left: dropped
        net = function(vm, SLOT)
        assert (net["vendor"], net["device"], net["class"]) == (0x1AF4, 0x1041, 0x020000)
        assert net["counts"] == {"tx_frames": 1, "tx_bytes": len(frame), "tx_bad": 1, "rx_frames": 1,
                                 "rx_bytes": len(incoming), "rx_no_buffer": 1, "rx_small_buffer": 0}
        backend = net["backend"]
        assert backend["switch"] == switch.name and backend["mac"] == ":".join("%02x" % b for b in mac)
        assert backend["port_counts"]["rx_packets"] == 1 and backend["port_counts"]["tx_dropped"] == 1
        rx, tx = net["virtio"]["queues"]
        assert (rx["kicks"], rx["used_idx"], tx["kicks"], tx["used_idx"]) == (1, 1, 2, 2)
        assert sink.frames == [frame]
    finally:
        vm.destroy()
        hv.vms.pop(vm.name, None)
