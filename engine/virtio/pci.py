"""The virtio 1.x modern PCI transport (Virtual I/O Device (VIRTIO) Version 1.1, §4.1 "Virtio Over PCI Bus"):
a PCI function with vendor 0x1AF4 and device 0x1040 + the virtio device ID, revision 1 (a modern-only device,
§4.1.2.1), whose vendor-specific capabilities (§4.1.4) point into memory BAR 4:

    0x0000  common configuration (§4.1.4.3): features, status, the queue registers of queue_select
    0x1000  ISR status (§4.1.4.5): bit 0 a queue interrupt, bit 1 a configuration change; reading clears it
    0x2000  device-specific configuration (§4.1.4.6), the device's (blk.py: struct virtio_blk_config)
    0x3000  notifications (§4.1.4.4): queue n's doorbell at n * 4 (queue_notify_off n, multiplier 4)

and the MSI-X table (one vector per queue and one for configuration changes) and PBA in memory BAR 1, as QEMU's
virtio-pci lays them out. Without MSI-X the function interrupts through INTx pin A and the ISR.

Device status (§2.1): writing 0 resets the device (§2.1.1, queues and features forgotten); FEATURES_OK stays set
only if the driver accepted a subset of what was offered that includes VIRTIO_F_VERSION_1 (§2.2.2); a driver error
found in a ring (vring.py) sets DEVICE_NEEDS_RESET and sends a configuration-change interrupt (§2.1.2), and the
device then touches no ring until reset. A queue is enabled only with a power-of-two size no larger than the
device's, and rings aligned and inside guest memory (§2.6); otherwise DEVICE_NEEDS_RESET as well.

A notification runs the device's requests on the vCPU thread that rang the doorbell, as bhyve's
vq_notify callbacks run on the vCPU thread of the exit. Not done: VIRTIO_PCI_CAP_PCI_CFG (§4.1.4.7, the
configuration-space window onto the BARs, which Linux does not use), packed virtqueues, notification data.
"""
import numpy as np

from ..errors import ConfigError
from ..pci.config import CMD_MASTER, COMMAND
from ..pci.device import BAR_MEM32, CAP_VENDOR, MsixRegion, PciDevice, Region
from . import vring as R

VENDOR_VIRTIO, DEVICE_BASE, SUBSYSTEM_VIRTIO = 0x1AF4, 0x1040, 0x40
# capability types (§4.1.4)
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE = 1, 2, 3, 4
COMMON, ISR, DEVICE, NOTIFY = 0x0000, 0x1000, 0x2000, 0x3000
COMMON_LEN, NOTIFY_MULTIPLIER = 0x38, 4
VIRTIO_BAR, MSIX_BAR = 4, 1
VIRTIO_BAR_SIZE, MSIX_BAR_SIZE, MSIX_PBA = 0x4000, 0x1000, 0x800
# device status bits (§2.1)
ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK, NEEDS_RESET, FAILED = 1, 2, 4, 8, 64, 128
# reserved feature bits (§6)
F_INDIRECT_DESC, F_EVENT_IDX, F_VERSION_1 = 1 << 28, 1 << 29, 1 << 32
NO_VECTOR = 0xFFFF
ISR_QUEUE, ISR_CONFIG = 1, 2
MAX_ROWS = 4096
# common configuration fields (§4.1.4.3): name -> (offset, size)
FIELDS = {"device_feature_select": (0, 4), "device_feature": (4, 4), "driver_feature_select": (8, 4),
          "driver_feature": (12, 4), "msix_config": (16, 2), "num_queues": (18, 2), "device_status": (20, 1),
          "config_generation": (21, 1), "queue_select": (22, 2), "queue_size": (24, 2),
          "queue_msix_vector": (26, 2), "queue_enable": (28, 2), "queue_notify_off": (30, 2),
          "queue_desc": (32, 8), "queue_driver": (40, 8), "queue_device": (48, 8)}


class GuestRam:
    """What the data path needs of the VM's memory: the host memory, the EPT to translate through, guest memory's
    size, vm_gpa_hold for a page never touched, and code_written for a DMA write over code the vCPUs run."""

    def __init__(self, vm):
        self.vm = vm
        self.mem8 = vm.hypervisor.memory
        self.view = memoryview(self.mem8)
        self.mem64, self.st, self.size = vm.pmap.mem64, vm.pmap.st, vm.mem_size

    def hold(self, gpa):
        return self.vm.pmap.hold(gpa)

    def lookup(self, gpa):
        return self.vm.pmap.lookup(gpa)

    def dma_written(self, gpa, size):
        """A device wrote guest memory: pages the exec scan has marked as code lose it (vm.code_written)."""
        first, last = gpa >> 12, (gpa + max(size, 1) - 1) >> 12
        self.vm.pmap.host_wrote(gpa, size)
        if (self.vm.code_state[first:last + 1] & 1).any():
            self.vm.code_written(gpa, size)


class Queue:
    """One virtqueue's registers and ring state; `kicks` counts its doorbells (for the devices panel), across resets."""

    def __init__(self, max_size):
        self.max_size = max_size
        self.q = R.new_queue()
        self.kicks = 0
        self.reset()

    def reset(self):
        self.q[:] = 0
        self.size = self.max_size
        self.vector = NO_VECTOR
        self.enabled = False
        self.desc = self.driver = self.device = 0

    def state(self):
        """The registers the driver wrote and the device's ring positions: last_avail (the next available entry
        it takes), used_idx (its used ring index) and the negotiated flags (event index, indirect)."""
        q = self.q
        return {"size": self.size, "vector": self.vector, "enabled": self.enabled, "desc": self.desc,
                "driver": self.driver, "device": self.device, "last_avail": int(q[R.Q_LAST_AVAIL]),
                "used_idx": int(q[R.Q_USED_IDX]), "flags": int(q[R.Q_FLAGS])}


class VirtioPci(PciDevice):
    """The transport; a device (blk.py) subclasses it with `device_id`, `class_code`, its feature bits
    (`device_features`), its configuration bytes (`device_config`) and `handle(queue, rows, readable, writable)`,
    which serves one request and returns how many bytes it wrote into the chain."""
    emulation = ""                                  # bhyve's -s name (slots.py)
    device_id = 0
    class_code = (0xFF, 0x00)
    num_queues = 1
    queue_max = 256

    def __init__(self, ram, bar_base):
        super().__init__(VENDOR_VIRTIO, DEVICE_BASE + self.device_id, self.class_code[0], self.class_code[1],
                         revision=1, subsystem_vendor=VENDOR_VIRTIO, subsystem=SUBSYSTEM_VIRTIO, interrupt_pin=1)
        self.ram = ram
        self.out = np.zeros((MAX_ROWS, 4), np.int64)
        self.queues = [Queue(self.queue_max) for _ in range(self.num_queues)]
        self.offered = self.device_features | F_VERSION_1 | F_INDIRECT_DESC | F_EVENT_IDX
        self.add_bar(MSIX_BAR, BAR_MEM32, MSIX_BAR_SIZE, MsixRegion(self), bar_base)
        self.add_bar(VIRTIO_BAR, BAR_MEM32, VIRTIO_BAR_SIZE, VirtioRegion(self), bar_base + VIRTIO_BAR_SIZE)
        for kind, offset, length in ((CAP_COMMON, COMMON, COMMON_LEN), (CAP_ISR, ISR, 1),
                                     (CAP_DEVICE, DEVICE, len(self.device_config())),
                                     (CAP_NOTIFY, NOTIFY, NOTIFY_MULTIPLIER * self.num_queues)):
            body = bytes((16 + 4 * (kind == CAP_NOTIFY), kind, VIRTIO_BAR, 0, 0, 0)) + \
                offset.to_bytes(4, "little") + length.to_bytes(4, "little")
            if kind == CAP_NOTIFY:
                body += NOTIFY_MULTIPLIER.to_bytes(4, "little")
            self.add_capability(CAP_VENDOR, body)
        self.add_msix(self.num_queues + 1, MSIX_BAR, 0, MSIX_PBA)
        self.seal()
        self.virtio_reset()

    # -- state -------------------------------------------------------------------------------------------------
    def virtio_reset(self):
        """§2.1.1 / §4.1.4.3.1: status 0, features, queues and vectors forgotten, no interrupt pending."""
        self.status = 0
        self.device_feature_select = self.driver_feature_select = 0
        self.driver_features = 0
        self.msix_config = NO_VECTOR
        self.queue_select = 0
        self.isr = 0
        self.broken = None
        for queue in self.queues:
            queue.reset()
        self.set_intx(False)
        self.device_reset()

    def reset(self):
        super().reset()
        self.virtio_reset()

    def device_reset(self):
        pass

    def negotiated(self, bit):
        return bool(self.driver_features & bit)

    # -- snapshots (engine/snapshot.py; bounds in snapshot_schema.py) ---------------------------------------------
    def device_state(self):
        """MSI-X (PciDevice) and the transport: status, features, selectors, ISR, the DEVICE_NEEDS_RESET reason and
        every queue. The rings themselves are guest memory, which the snapshot holds."""
        state = super().device_state()
        state["emulation"] = self.emulation
        state["virtio"] = {"status": self.status, "device_feature_select": self.device_feature_select,
                           "driver_feature_select": self.driver_feature_select,
                           "driver_features": self.driver_features, "msix_config": self.msix_config,
                           "queue_select": self.queue_select, "isr": self.isr, "broken": self.broken,
                           "queues": [queue.state() for queue in self.queues]}
        return state

    def check_device_state(self, saved):
        """ConfigError unless the transport state is one this device reaches: features it offered (and
        FEATURES_OK only as _set_status grants it), DEVICE_NEEDS_RESET with its reason, vectors it has, its number
        of queues, and every enabled queue passing _enable's checks with the flags its features give."""
        super().check_device_state(saved)
        v = saved["virtio"]
        features, status = v["driver_features"], v["status"]
        if features & ~self.offered:
            raise ConfigError("virtio.driver_features %#x has bits the device does not offer (%#x)"
                              % (features, self.offered))
        if status & FEATURES_OK and not features & F_VERSION_1:
            raise ConfigError("virtio.status has FEATURES_OK without VIRTIO_F_VERSION_1 negotiated")
        if bool(status & NEEDS_RESET) != (v["broken"] is not None):
            raise ConfigError("virtio.status's DEVICE_NEEDS_RESET and virtio.broken disagree")
        if len(v["queues"]) != self.num_queues:
            raise ConfigError("virtio.queues lists %d queues; the device has %d" % (len(v["queues"]), self.num_queues))
        vectors = list(range(self.msix_vectors)) + [NO_VECTOR]
        if v["msix_config"] not in vectors:
            raise ConfigError("virtio.msix_config %#x is not a vector of the device" % v["msix_config"])
        flags = (R.F_INDIRECT if features & F_INDIRECT_DESC else 0) | (R.F_EVENT_IDX if features & F_EVENT_IDX else 0)
        for n, queue in enumerate(v["queues"]):
            if queue["vector"] not in vectors:
                raise ConfigError("virtio.queues[%d].vector %#x is not a vector of the device" % (n, queue["vector"]))
            if not queue["enabled"]:
                if queue["last_avail"] or queue["used_idx"] or queue["flags"]:
                    raise ConfigError("virtio.queues[%d] is not enabled but has ring positions" % n)
                continue
            size = queue["size"]
            q = R.new_queue()
            q[R.Q_DESC], q[R.Q_AVAIL], q[R.Q_USED], q[R.Q_SIZE] = queue["desc"], queue["driver"], queue["device"], size
            q[R.Q_MEMSIZE] = self.ram.size
            if not 0 < size <= self.queue_max or size & (size - 1) or not R.rings_inside(q):
                raise ConfigError("virtio.queues[%d] is enabled with size %d or rings %#x/%#x/%#x the device refuses"
                                  % (n, size, queue["desc"], queue["driver"], queue["device"]))
            if queue["flags"] != flags:
                raise ConfigError("virtio.queues[%d].flags %#x are not the negotiated features' %#x"
                                  % (n, queue["flags"], flags))

    def load_device_state(self, saved):
        super().load_device_state(saved)
        v = saved["virtio"]
        self.status, self.driver_features, self.isr = v["status"], v["driver_features"], v["isr"]
        self.device_feature_select, self.driver_feature_select = v["device_feature_select"], v["driver_feature_select"]
        self.msix_config, self.queue_select, self.broken = v["msix_config"], v["queue_select"], v["broken"]
        for queue, q in zip(self.queues, v["queues"]):
            queue.reset()
            queue.size, queue.vector, queue.desc, queue.driver, queue.device = \
                q["size"], q["vector"], q["desc"], q["driver"], q["device"]
            if q["enabled"]:
                self._enable(queue)                      # the ring registers as the driver's QUEUE_ENABLE set them
                queue.q[R.Q_LAST_AVAIL], queue.q[R.Q_USED_IDX] = q["last_avail"], q["used_idx"]

    def pause_device(self):
        """bhyve's pe_pause before a checkpoint: nothing may change the device while it is saved. Requests run on
        the vCPU threads, which are parked; a device fed from outside the VM (virtio-net) stops taking input."""

    def resume_device(self):
        """bhyve's pe_resume."""

    # -- common configuration ------------------------------------------------------------------------------------
    def _selected(self):
        return self.queues[self.queue_select] if self.queue_select < self.num_queues else None

    def common_get(self, name):
        queue = self._selected()
        if name == "device_feature":
            return self.offered >> 32 * self.device_feature_select & 0xFFFFFFFF if self.device_feature_select < 2 else 0
        if name == "driver_feature":
            return self.driver_features >> 32 * self.driver_feature_select & 0xFFFFFFFF \
                if self.driver_feature_select < 2 else 0
        if name in ("device_feature_select", "driver_feature_select", "msix_config", "queue_select"):
            return getattr(self, name)
        if name == "num_queues":
            return self.num_queues
        if name == "device_status":
            return self.status
        if name == "config_generation":
            return 0
        if queue is None:
            return 0
        return {"queue_size": queue.size, "queue_msix_vector": queue.vector, "queue_enable": int(queue.enabled),
                "queue_notify_off": self.queue_select, "queue_desc": queue.desc, "queue_driver": queue.driver,
                "queue_device": queue.device}[name]

    def common_set(self, name, value):
        queue = self._selected()
        if name in ("device_feature_select", "driver_feature_select", "queue_select"):
            setattr(self, name, value)
        elif name == "driver_feature":
            if self.driver_feature_select < 2 and not self.status & FEATURES_OK:
                shift = 32 * self.driver_feature_select
                self.driver_features = self.driver_features & ~(0xFFFFFFFF << shift) | value << shift
        elif name == "msix_config":
            self.msix_config = value if value < self.msix_vectors else NO_VECTOR
        elif name == "device_status":
            self._set_status(value)
        elif queue is None or queue.enabled:
            return                                       # a queue's registers are fixed once it is enabled
        elif name == "queue_size":
            queue.size = value
        elif name == "queue_msix_vector":
            queue.vector = value if value < self.msix_vectors else NO_VECTOR
        elif name == "queue_enable" and value == 1:
            self._enable(queue)
        elif name in ("queue_desc", "queue_driver", "queue_device"):
            setattr(queue, name[6:], value)

    def _set_status(self, value):
        if value == 0:
            self.virtio_reset()
            return
        if value & FEATURES_OK and not self.status & FEATURES_OK:
            if self.driver_features & ~self.offered or not self.driver_features & F_VERSION_1:
                value &= ~FEATURES_OK                    # §2.2.2: the device does not accept them
        self.status = value & 0xFF | self.status & NEEDS_RESET

    def _enable(self, queue):
        q = queue.q
        q[:] = 0
        q[R.Q_DESC], q[R.Q_AVAIL], q[R.Q_USED] = queue.desc, queue.driver, queue.device
        q[R.Q_SIZE], q[R.Q_MEMSIZE] = queue.size, self.ram.size
        q[R.Q_FLAGS] = (R.F_INDIRECT if self.negotiated(F_INDIRECT_DESC) else 0) | \
            (R.F_EVENT_IDX if self.negotiated(F_EVENT_IDX) else 0)
        size = queue.size
        if not 0 < size <= queue.max_size or size & (size - 1) or not R.rings_inside(q):
            self.needs_reset("queue %d: size %d or rings %#x/%#x/%#x" % (self.queues.index(queue), size,
                                                                         queue.desc, queue.driver, queue.device))
            return
        queue.enabled = True

    def needs_reset(self, why):
        """§2.1.2: DEVICE_NEEDS_RESET and a configuration-change interrupt; the rings are left alone from now."""
        self.broken = why
        self.status |= NEEDS_RESET
        self.interrupt(None)

    def common_read(self, offset, size):
        raw = bytearray(COMMON_LEN)
        for name, (at, n) in FIELDS.items():
            raw[at:at + n] = (self.common_get(name) & (1 << 8 * n) - 1).to_bytes(n, "little")
        return int.from_bytes(raw[offset:offset + size], "little")

    def common_write(self, offset, value, size):
        raw = bytearray(COMMON_LEN)
        touched = [(name, at, n) for name, (at, n) in FIELDS.items() if at < offset + size and offset < at + n]
        for name, at, n in touched:
            raw[at:at + n] = (self.common_get(name) & (1 << 8 * n) - 1).to_bytes(n, "little")
        end = min(offset + size, COMMON_LEN)
        raw[offset:end] = value.to_bytes(size, "little")[:end - offset]
        for name, at, n in touched:
            if name not in ("device_feature", "num_queues", "config_generation", "queue_notify_off"):
                self.common_set(name, int.from_bytes(raw[at:at + n], "little"))

    # -- interrupts ----------------------------------------------------------------------------------------------
    def interrupt(self, queue):
        """A used-buffer (queue n) or configuration-change (None) notification (§4.1.5.2, §4.1.5.4)."""
        if self.msix_enabled():
            self.msix_notify(self.msix_config if queue is None else self.queues[queue].vector)
        else:
            self.isr |= ISR_CONFIG if queue is None else ISR_QUEUE
            self.set_intx(True)

    def isr_read(self):
        value, self.isr = self.isr, 0
        self.set_intx(False)
        return value

    # -- the data path --------------------------------------------------------------------------------------------
    def notify(self, index):
        """Queue `index`'s doorbell: serve every available chain, then one interrupt if the driver wants one."""
        if not self.ready(index):
            return
        wanted = False
        while True:
            status, head, rows, readable, writable = self.take(index, self.out)
            if status != R.OK:
                break
            wanted |= self.give(index, head, self.handle(index, self.out[:rows], readable, writable))
        if wanted:
            self.interrupt(index)

    def ready(self, index):
        """Whether the device may use queue `index`: DRIVER_OK, not broken, the queue enabled, bus mastering on."""
        if not 0 <= index < self.num_queues or self.broken is not None or not self.status & DRIVER_OK:
            return False
        return self.queues[index].enabled and bool(self.cfg_read(COMMAND, 2) & CMD_MASTER)

    def take(self, index, out):
        """vring.pop on queue `index` into `out`, backing pages the guest never touched; a driver error found in
        the ring is DEVICE_NEEDS_RESET (and BROKEN returned)."""
        ram, q = self.ram, self.queues[index].q
        for _ in range(MAX_ROWS):
            status, head, rows, readable, writable = R.pop(ram.mem8, ram.mem64, ram.st, q, out)
            if status != R.MISSING:
                break
            ram.hold(int(q[R.Q_FAULT]))                  # a page the guest never touched: back it, ask again
        if status not in (R.OK, R.EMPTY):
            self.needs_reset("queue %d: %s" % (index, R.ERRORS.get(int(q[R.Q_ERROR]), "guest memory")))
            return R.BROKEN, 0, 0, 0, 0
        return status, head, rows, readable, writable

    def give(self, index, head, written):
        """Return chain `head` through queue `index`'s used ring; whether the driver wants an interrupt."""
        ram, q = self.ram, self.queues[index].q
        for _ in range(3):
            used = R.push_used(ram.mem8, ram.mem64, ram.st, q, head, written)
            if used != R.MISSING:
                break
            ram.hold(int(q[R.Q_FAULT]))
        return used == 1

    def handle(self, queue, rows, readable, writable):
        return 0

    # -- what a panel shows -------------------------------------------------------------------------------------
    def describe(self):
        """The PCI view (PciDevice.describe) and the transport's: status, features offered and accepted, the
        configuration vector, why the device needs a reset if it does, each queue, and the device's counts."""
        out = super().describe()
        out["virtio"] = {"device_id": self.device_id, "status": self.status, "offered": self.offered,
                         "negotiated": self.driver_features, "config_vector": self.msix_config, "isr": self.isr,
                         "broken": self.broken, "queues": [self._describe_queue(n) for n in range(self.num_queues)]}
        out["counts"] = dict(getattr(self, "counts", {}))
        return out

    def _describe_queue(self, n):
        """A queue's registers, the driver's available index (read from its ring in guest memory, without backing
        a page: None while the ring's page is not mapped), the device's next available and used indices (§2.6)."""
        queue = self.queues[n]
        avail = None
        if queue.enabled:
            hpa = self.ram.lookup(queue.driver + 2)
            if hpa is not None and 0 <= hpa and hpa + 2 <= len(self.ram.mem8):
                avail = int(self.ram.mem8[hpa]) | int(self.ram.mem8[hpa + 1]) << 8
        return {"index": n, "size": queue.size, "enabled": queue.enabled, "vector": queue.vector,
                "desc": queue.desc, "driver": queue.driver, "device": queue.device, "avail_idx": avail,
                "last_avail_idx": int(queue.q[R.Q_LAST_AVAIL]), "used_idx": int(queue.q[R.Q_USED_IDX]),
                "kicks": queue.kicks}

    def device_config(self):
        return b""

    def device_config_write(self, offset, value, size):
        pass


class VirtioRegion(Region):
    """BAR 4: the four structures the capabilities point at."""

    def __init__(self, device):
        self.d = device

    def read(self, offset, size):
        d = self.d
        if offset < COMMON + COMMON_LEN:
            return d.common_read(offset, min(size, COMMON_LEN - offset))
        if offset == ISR:
            return d.isr_read()
        if DEVICE <= offset < NOTIFY:
            raw = d.device_config()
            return int.from_bytes(raw[offset - DEVICE:offset - DEVICE + size].ljust(size, b"\0"), "little")
        return 0

    def write(self, offset, value, size):
        d = self.d
        if offset < COMMON + COMMON_LEN:
            d.common_write(offset, value, min(size, COMMON_LEN - offset))
        elif DEVICE <= offset < NOTIFY:
            d.device_config_write(offset - DEVICE, value, size)
        elif NOTIFY <= offset < NOTIFY + NOTIFY_MULTIPLIER * d.num_queues:
            d.queues[(offset - NOTIFY) // NOTIFY_MULTIPLIER].kicks += 1
            d.notify((offset - NOTIFY) // NOTIFY_MULTIPLIER)


def ranges(rows, skip, count):
    """The host and guest-physical pieces of bytes skip..skip+count-1 of a chain's rows (host, length, write, gpa)."""
    out = []
    for hpa, length, _, gpa in rows:
        if skip >= length:
            skip -= length
            continue
        take = min(length - skip, count)
        if take <= 0:
            break
        out.append((int(hpa) + skip, take, int(gpa) + skip))
        count -= take
        skip = 0
    return out
