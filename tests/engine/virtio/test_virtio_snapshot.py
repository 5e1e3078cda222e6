"""PCI devices in snapshots (docs/devices.md, "Snapshots"): a virtio-blk disk and a virtio-net NIC saved in mid-use
come back on a fresh host with their configuration space, MSI-X table and PBA, transport and queue positions, and
the next request goes on where the last one stopped; the disk image is the user's file, not the snapshot's; a
crafted device state, a changed or missing image and a slot that no longer matches are refused, naming them."""
import json
import struct
import zipfile

import numpy as np
import pytest

from engine import Hypervisor
from engine.net import switch as SWITCH
from engine.net.switch import host_switch
from engine.pci import config as P
from engine.snapshot import SnapshotError
from engine.virtio import blk as B
from engine.virtio import net as N
from engine.virtio import pci as T
from engine.virtio import vring as R
from tests.engine.virtio.test_virtio_blk import AVAIL, DATA, QSIZE, SLOT, USED, Driver
from tests.engine.virtio.test_virtio_net import NetDriver, Sink, eth

MOVED = 0xC0030000                      # where the "guest" moves the virtio BAR to


def disk(tmp_path, size=64 * 1024):
    path = tmp_path / "disk.img"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, size, np.uint8).tobytes())
    return path


def sector(driver, n):
    """Sector n read through the device (queue 0, descriptors 0-2: requests complete before the doorbell returns)."""
    assert driver.request(B.T_IN, n, data_len=512) == B.S_OK
    return driver.read(DATA + 0x1000, 512)


@pytest.fixture
def saved_disk(tmp_path):
    """A disk in mid-use: requests served, the virtio BAR moved, vector 0 masked with a configuration interrupt
    pending, then the VM paused-idle and saved; (snapshot, image, device state when saved, driver)."""
    image = disk(tmp_path)
    hv = Hypervisor(host_mem_mb=128)
    vm = hv.create_vm("disk", mem_mb=4, slots=["%d,virtio-blk,%s" % (SLOT, image)])
    d = Driver(vm)
    d.setup()
    d.cfg(P.BAR0 + 4 * T.VIRTIO_BAR, 4, MOVED)
    assert d.request(B.T_OUT, 3, data=b"\x5A" * 512, head=0) == B.S_OK
    assert sector(d, 3) == b"\x5A" * 512
    d.msix_entry(0, 0xFEE00000, 0x31, masked=True)
    vm.pci.functions[SLOT, 0].interrupt(None)             # a configuration change while vector 0 is masked
    before = vm.pci.functions[SLOT, 0].device_state()
    assert before["virtio"]["queues"][0]["last_avail"] == 2 and before["msix_pba"][0] == 1
    path = tmp_path / "disk.snap"
    vm.snapshot(path)
    hv.destroy_vm("disk")
    return path, image, before, d


def test_a_disk_in_mid_use_comes_back_where_it_was_and_serves_the_next_request(saved_disk, tmp_path):
    path, image, before, saved = saved_disk
    copy = Hypervisor(host_mem_mb=128).restore_vm(path, name="again", start=False)
    device = copy.pci.functions[SLOT, 0]
    assert device.device_state() == before
    d = Driver(copy)
    d.avail_idx, d.used_seen = saved.avail_idx, 2          # the driver's own positions are in its memory
    assert d.bar(T.VIRTIO_BAR) == MOVED and d.common("device_status") & T.DRIVER_OK
    assert d.common("queue_enable") == 1 and copy.pci.mmio_read(MOVED + T.DEVICE, 8) == 64 * 1024 // 512
    # the next request takes avail entry 2 and goes into used slot 2: nothing replayed, nothing skipped; the
    # driver's used_event asks for an interrupt at this one (event index, §2.6.7.2)
    d.write(AVAIL + 4 + 2 * QSIZE, struct.pack("<H", 2))
    assert sector(d, 3) == b"\x5A" * 512 and d.used() == [(0, 513)]
    assert struct.unpack("<H", d.read(USED + 2, 2))[0] == 3
    assert device.counts["read"] == 2 and device.counts["write"] == 1
    assert d.msis == [(0xFEE00000, 0x32)]                      # the queue's vector; the configuration one waits
    d.msix_entry(0, 0xFEE00000, 0x31)
    assert d.msis[-1] == (0xFEE00000, 0x31)                   # pending through the snapshot, sent on unmask
    with zipfile.ZipFile(path) as z:
        assert sum(info.file_size for info in z.infolist()) < 4 << 20
        manifest = json.loads(z.read("manifest.json"))
    assert manifest["vm"]["slots"] == ["%d,virtio-blk,%s" % (SLOT, image)]   # the image by name, not its bytes
    copy.destroy()


def crafted(path, out, change):
    with zipfile.ZipFile(path) as z:
        content = {info.filename: z.read(info) for info in z.infolist()}
    doc = json.loads(content["manifest.json"])
    change(doc)
    content["manifest.json"] = json.dumps(doc).encode()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in content.items():
            z.writestr(name, data)
    return out


def device(doc):
    return doc["devices"]["pci_devices"]["00:03.0"]


def queue(doc):
    return device(doc)["virtio"]["queues"][0]


NIC = {"mac": "52:54:00:00:00:01", "switch": "switch0", "port": "x", "learned": [],
       "counts": dict.fromkeys(N.COUNTS, 0), "port_counts": dict.fromkeys(SWITCH.COUNTERS, 0)}
CRAFTED = [
    (lambda doc: queue(doc).update(last_avail=1 << 16), r"queues\[0\].last_avail = 65536 is outside 0..65535"),
    (lambda doc: queue(doc).update(desc=-1), r"queues\[0\].desc = -1 is outside"),
    (lambda doc: queue(doc).update(flags=8), r"queues\[0\].flags = 0x8 has bits outside 0x3"),
    (lambda doc: device(doc)["virtio"].update(isr=4), r"virtio.isr = 0x4 has bits outside 0x3"),
    (lambda doc: device(doc)["virtio"].update(broken="x" * 2000), r"virtio.broken is .*not a text"),
    (lambda doc: device(doc).update(msix_table=[0] * 50000), r"msix_table is .*not a list of at most"),
    (lambda doc: device(doc).update(emulation="e1000"), r"emulation is 'e1000', not one of"),
    (lambda doc: device(doc).pop("blk"), r"pci_devices\[00:03.0\] is a virtio-blk without its 'blk' state"),
    (lambda doc: device(doc)["blk"].update(capacity=1 << 60), r"blk.capacity = \d+ is outside"),
    (lambda doc: doc["vm"].update(slots="3,virtio-blk,/x"), r"vm.slots is .*not a list"),
    # what only the device the slot built can tell
    (lambda doc: queue(doc).update(desc=4 << 20), r"00:03.0 cannot be restored: virtio.queues\[0\] is enabled with"),
    (lambda doc: queue(doc).update(size=24), r"virtio.queues\[0\] is enabled with size 24"),
    (lambda doc: queue(doc).update(flags=0), r"virtio.queues\[0\].flags 0x0 are not the negotiated features' 0x3"),
    (lambda doc: device(doc)["virtio"].update(driver_features=1 << 40), r"driver_features 0x10000000000 has bits"),
    (lambda doc: device(doc)["virtio"].update(status=T.NEEDS_RESET), r"DEVICE_NEEDS_RESET and virtio.broken"),
    (lambda doc: device(doc)["virtio"].update(msix_config=7), r"msix_config 0x7 is not a vector"),
    (lambda doc: device(doc).update(msix_table=[0] * 48), r"msix_table/msix_pba are 48/8 bytes; .* 32/8"),
    (lambda doc: device(doc).update(msix_pba=[4] + [0] * 7), r"msix_pba has pending bits beyond the device's 2"),
    (lambda doc: device(doc)["msix_table"].__setitem__(13, 1), r"entry 0 has vector control 0x101"),
    (lambda doc: device(doc)["blk"].update(capacity=7), r"the guest saw a disk of 7 sectors; .* has 128 now"),
    (lambda doc: device(doc)["blk"].update(readonly=True), r"the disk was read-only when saved"),
    (lambda doc: device(doc).update(emulation="virtio-net", net=NIC) or device(doc).pop("blk"),
     r"00:03.0 is a virtio-net; its slot gives a virtio-blk"),
    (lambda doc: doc["vm"].update(slots=[]), r"has PCI function 00:03.0, which this VM's bus does not"),
    (lambda doc: doc["vm"].update(slots=["3,virtio-blk"]), r"cannot rebuild the VM's PCI devices: -s 3,virtio-blk"),
    (lambda doc: doc["devices"].pop("pci_devices"), r"lacks the state of PCI device 00:03.0"),
]


@pytest.mark.parametrize("change, named", CRAFTED)
def test_a_crafted_device_state_is_refused_naming_it(saved_disk, tmp_path, change, named):
    path = crafted(saved_disk[0], tmp_path / "crafted.snap", change)
    host = Hypervisor(host_mem_mb=128)
    free = host.allocator.free_bytes
    with pytest.raises(SnapshotError, match=named):
        host.restore_vm(path)
    assert host.vms == {} and host.allocator.free_bytes == free


def test_a_missing_or_resized_image_is_refused_naming_it(saved_disk):
    path, image, _, _ = saved_disk
    image.write_bytes(bytes(32 * 1024))
    with pytest.raises(SnapshotError, match=r"the guest saw a disk of 128 sectors; %s has 64 now" % image):
        Hypervisor(host_mem_mb=128).restore_vm(path)
    image.unlink()
    with pytest.raises(SnapshotError, match=r"cannot rebuild the VM's PCI devices: .*no image file %s" % image):
        Hypervisor(host_mem_mb=128).restore_vm(path)


def test_a_nic_comes_back_with_its_mac_its_port_and_its_queues(tmp_path):
    hv = Hypervisor(host_mem_mb=128)
    switch = host_switch(hv, "switch7")
    vm = hv.create_vm("nic", mem_mb=4, slots=["%d,virtio-net,switch7" % SLOT])
    d = NetDriver(vm)
    d.setup()
    sink = Sink(switch)
    mac = N.genmac(SLOT, 0, "nic")
    for i in range(2):
        d.qdesc(N.RX, i, DATA + 0x1000 * i, 1526, R.DESC_WRITE)
        d.post(N.RX, i)
    frame = eth(mac, b"\x52\x54\x00\x00\x00\x09", b"one" * 20)
    sink.port.send(frame)
    d.write(DATA + 0x8000, bytes(12) + eth(b"\x52\x54\x00\x00\x00\x09", mac, b"out" * 20))
    d.qdesc(N.TX, 0, DATA + 0x8000, 12 + 74, 0)
    d.post(N.TX, 0)                                            # the switch learns the NIC's MAC on its port
    assert d.qused(N.RX) == [(0, 12 + len(frame))] and len(sink.frames) == 1
    device = vm.pci.functions[SLOT, 0]
    device.pause_device()                                      # a frame for a VM being saved is dropped
    assert switch.forward(sink.port, frame) == []
    device.resume_device()
    vm.snapshot(tmp_path / "nic.snap")
    before = device.device_state()
    hv.destroy_vm("nic")
    assert switch.lookup(mac) is None                          # its port left with it
    copy = hv.restore_vm(tmp_path / "nic.snap", name="nic2", start=False)
    device = copy.pci.functions[SLOT, 0]
    after = device.device_state()
    assert after["net"].pop("port") == "nic2:00:03.0" and before["net"].pop("port") == "nic:00:03.0"
    assert after == before and device.mac == mac != N.genmac(SLOT, 0, "nic2")
    d2 = NetDriver(copy)
    assert copy.pci.mmio_read(d2.bar(T.VIRTIO_BAR) + T.DEVICE, 4) == int.from_bytes(mac[:4], "little")
    assert switch.lookup(mac) is device.port                   # unicast to it goes to its port, not flooded
    d2.avail, d2.seen = d.avail, d.seen
    second = eth(mac, b"\x52\x54\x00\x00\x00\x09", b"two" * 20)
    sink.port.send(second)                                     # into the second buffer posted before the snapshot
    assert d2.qused(N.RX) == [(1, 12 + len(second))] and d2.read(DATA + 0x1000 + 12, len(second)) == second
    copy.destroy()


def test_a_disk_interrupting_through_intx_comes_back_with_its_pin_and_isr(tmp_path):
    image = disk(tmp_path)
    hv = Hypervisor(host_mem_mb=128)
    vm = hv.create_vm("pin", mem_mb=4, slots=["%d,virtio-blk,%s" % (SLOT, image)])
    d = Driver(vm)
    d.setup(msix=False)
    assert sector(d, 1) == image.read_bytes()[512:1024] and d.intx[-1] is True
    vm.snapshot(tmp_path / "pin.snap")
    hv.destroy_vm("pin")
    copy = Hypervisor(host_mem_mb=128).restore_vm(tmp_path / "pin.snap", start=False)
    device = copy.pci.functions[SLOT, 0]
    assert device.intx_level and Driver(copy).cfg(P.STATUS, 2) & 0x08          # the status register's INTx bit
    d2 = Driver(copy)
    assert copy.pci.mmio_read(d2.bar(T.VIRTIO_BAR) + T.ISR, 1) == T.ISR_QUEUE                # read clears it
    assert d2.intx == [False] and not device.intx_level and not d2.cfg(P.STATUS, 2) & 0x08
    copy.destroy()
