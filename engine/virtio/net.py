"""virtio-net (Virtual I/O Device (VIRTIO) Version 1.1, §5.1 "Network Device") on a port of an in-process switch
(engine/net/switch.py), as bhyve's pci_virtio_net.c on a VALE port: receive queue 0, transmit queue 1, no control
queue; features VIRTIO_NET_F_MAC and VIRTIO_NET_F_STATUS (link up) besides the transport's VERSION_1,
INDIRECT_DESC and EVENT_IDX. No checksum offload and no segmentation offload are offered, so every frame is a whole
Ethernet frame of at most the MTU the driver chose, with a 12-byte struct virtio_net_hdr before it (§5.1.6: with
VERSION_1 it always has num_buffers) whose fields are all 0 but num_buffers = 1 on receive.

Transmit (§5.1.6.2) runs on the vCPU thread that rang queue 1's doorbell: each chain's bytes after the header are
gathered into one frame (`gather`, numba) and handed to the switch, which delivers it in this same thread. Receive
(§5.1.6.3) runs in the sender's thread (another VM's vCPU, a socket reader): a frame takes the next chain of queue
0 and is written into it with its header (`scatter`, numba), or, with no chain available or one too small, is
dropped (the port's tx_dropped; bhyve's pci_vtnet_rx drops the same way): the device holds no frame back. Both
copies check every host range against host memory again, though vring.pop has checked the chain against the
guest's; a hostile chain (vring.py's list) is DEVICE_NEEDS_RESET as for virtio-blk.

Locking: the transport's state changes under the PCI bus lock, on vCPU threads. Receive does not take that lock
(a vCPU of the sending VM holds its own bus's lock in its doorbell; two VMs sending to each other would deadlock),
but the device's `lock`, which everything touching queue 0 or the interrupt state takes too: register writes,
the ISR, interrupts. Transmit never holds `lock` while the switch delivers.

The MAC address, unless given, is bhyve's net_genmac: OUI 00:a0:98 and three bytes of the MD5 of
"slot-function-vmname".
"""
import hashlib
import threading

import numpy as np
from numba import njit

from ..errors import ConfigError
from ..native import NUMBA
from ..net.qemu_socket import QemuSocket, parse_address
from ..net.switch import ETH_HEADER, MAX_FRAME, Port, check_name, mac_text
from . import vring as R
from .pci import MAX_ROWS, VirtioPci

# feature bits (§5.1.3)
F_MAC, F_STATUS = 1 << 5, 1 << 16
S_LINK_UP = 1                                  # virtio_net_config.status (§5.1.4)
RX, TX = 0, 1
HDR = 12                                       # struct virtio_net_hdr with num_buffers (§5.1.6)
HDR_NUM_BUFFERS = 10
OUT_OF_MEMORY, TOO_BIG = -1, -2                # gather's and scatter's failures
BHYVE_OUI = b"\x00\xa0\x98"
COUNTS = ("tx_frames", "tx_bytes", "tx_bad", "rx_frames", "rx_bytes", "rx_no_buffer", "rx_small_buffer")


@njit(**NUMBA)
def gather(mem8, rows, nrows, skip, buf):
    """The device-readable bytes of a chain's host ranges (`rows` as vring.pop gives them), from byte `skip` on,
    into `buf`: their count, TOO_BIG when they do not fit, OUT_OF_MEMORY for a range outside host memory."""
    n = np.int64(0)
    for r in range(nrows):
        hpa, length = rows[r, 0], rows[r, 1]
        if rows[r, 2] != 0:
            break                                      # device-writable ranges come last (§2.6.4.2)
        if hpa < 0 or length < 0 or hpa + length > mem8.size:
            return np.int64(OUT_OF_MEMORY)
        start = min(skip, length)
        skip -= start
        take = length - start
        if n + take > buf.size:
            return np.int64(TOO_BIG)
        buf[n:n + take] = mem8[hpa + start:hpa + length]
        n += take
    return n


@njit(**NUMBA)
def scatter(mem8, rows, nrows, hdr, frame, length):
    """`hdr` then frame[:length] into the device-writable host ranges of a chain: the bytes written, TOO_BIG when
    the chain has less room, OUT_OF_MEMORY for a range outside host memory (nothing written in either case)."""
    room = np.int64(0)
    for r in range(nrows):
        if rows[r, 2] != 0:
            if rows[r, 0] < 0 or rows[r, 1] < 0 or rows[r, 0] + rows[r, 1] > mem8.size:
                return np.int64(OUT_OF_MEMORY)
            room += rows[r, 1]
    total = np.int64(hdr.size) + length
    if total > room:
        return np.int64(TOO_BIG)
    at = np.int64(0)                                   # position in hdr + frame
    for r in range(nrows):
        if rows[r, 2] == 0:
            continue
        hpa, piece = rows[r, 0], min(rows[r, 1], total - at)
        for i in range(piece):
            k = at + i
            mem8[hpa + i] = hdr[k] if k < hdr.size else frame[k - hdr.size]
        at += piece
        if at >= total:
            break
    return total


def genmac(slot, function, vm_name):
    """bhyve's net_genmac (usr.sbin/bhyve/net_utils.c): 00:a0:98 and MD5("slot-function-vmname")[0:3]."""
    digest = hashlib.md5(("%d-%d-%s" % (slot, function, vm_name)).encode()).digest()
    return BHYVE_OUI + digest[:3]


class VirtioNet(VirtioPci):
    emulation = "virtio-net"
    device_id = 1
    class_code = (0x02, 0x00)          # network controller, Ethernet (what QEMU's virtio-net-pci says)
    num_queues = 2
    queue_max = 256

    def __init__(self, ram, bar_base, mac, port_name):
        self.mac = bytes(mac)
        self.device_features = F_MAC | F_STATUS
        self.lock = threading.RLock()
        self.rx_rows = np.zeros((MAX_ROWS, 4), np.int64)   # receive's own: it runs beside a doorbell
        self.tx_buf = np.zeros(MAX_FRAME, np.uint8)
        self.rx_hdr = np.zeros(HDR, np.uint8)
        self.rx_hdr[HDR_NUM_BUFFERS] = 1
        self.counts = dict.fromkeys(COUNTS, 0)
        self.endpoints = []
        self.closed = self.paused = False
        super().__init__(ram, bar_base)
        self.port = Port(port_name, self.receive)

    def close(self):
        """Off the switch; once `lock` is ours no delivery is under way, and none comes after."""
        self.port.detach()
        for endpoint in self.endpoints:
            endpoint.close()
        self.endpoints = []
        with self.lock:
            self.closed = True

    def describe(self):
        """The transport's view, the MAC address, and the switch port with the switch's counts for it (rx: what the
        guest sent into the switch, tx: what the switch sent to the guest, as `ip -s link` shows a bridge port)."""
        out = super().describe()
        switch = self.port.switch
        out["backend"] = {"emulation": "virtio-net", "mac": mac_text(self.mac), "port": self.port.name,
                          "switch": switch.name if switch is not None else None, "port_counts": dict(self.port.counts)}
        return out

    def device_config(self):
        """struct virtio_net_config (§5.1.4): mac, status, max_virtqueue_pairs."""
        return self.mac + S_LINK_UP.to_bytes(2, "little") + (1).to_bytes(2, "little")

    # -- what touches queue 0 or the interrupt state takes `lock` ------------------------------------------------
    def common_write(self, offset, value, size):
        with self.lock:
            super().common_write(offset, value, size)

    def cfg_write(self, offset, value, size):
        with self.lock:
            super().cfg_write(offset, value, size)

    def msix_table_write(self, offset, value, size):
        with self.lock:
            super().msix_table_write(offset, value, size)

    def isr_read(self):
        with self.lock:
            return super().isr_read()

    def interrupt(self, queue):
        with self.lock:
            super().interrupt(queue)

    def reset(self):
        with self.lock:
            super().reset()

    # -- snapshots ------------------------------------------------------------------------------------------------
    def pause_device(self):
        """bhyve's pci_vtnet_pause holds the receive lock, so its backend's receive waits; here the sender (another
        VM's vCPU) must not wait for a save, so frames for a VM being saved are dropped (the port's tx_dropped)
        and queue 0 and guest memory hold still while they are written."""
        with self.lock:
            self.paused = True

    def resume_device(self):
        with self.lock:
            self.paused = False

    def device_state(self):
        """The transport's state, the MAC the driver read, and the port: its switch, name, counters and the
        addresses the switch learned on it (so unicast to the guest is not flooded after a restore)."""
        with self.lock:
            state = super().device_state()
        switch = self.port.switch
        table = [] if switch is None else switch.describe()["table"]
        learned = [entry["mac"] for entry in table if entry["port"] == self.port.name]
        state["net"] = {"mac": mac_text(self.mac), "switch": None if switch is None else switch.name,
                        "port": self.port.name, "learned": learned, "counts": dict(self.counts),
                        "port_counts": dict(self.port.counts)}
        return state

    def check_device_state(self, saved):
        super().check_device_state(saved)
        switch = self.port.switch
        if saved["net"]["switch"] != (None if switch is None else switch.name):
            raise ConfigError("net.switch %r is not the switch the slot names (%s)"
                              % (saved["net"]["switch"], None if switch is None else switch.name))
        parse_mac(saved["net"]["mac"])
        for mac in saved["net"]["learned"]:
            parse_mac(mac)

    def load_device_state(self, saved):
        """The MAC as the guest knows it (a restored VM of another name would get another from genmac), the
        counters, and the learned addresses pointing at this port again."""
        net = saved["net"]
        with self.lock:
            super().load_device_state(saved)
            self.mac = parse_mac(net["mac"])
            self.counts.update(net["counts"])
        if self.port.switch is not None:
            self.port.switch.learn(self.port, [parse_mac(mac) for mac in net["learned"]], net["port_counts"])

    # -- transmit: queue 1 ---------------------------------------------------------------------------------------
    def notify(self, index):
        if index == TX:
            super().notify(index)              # receive buffers (queue 0) wait for frames: nothing to do now

    def handle(self, queue, rows, readable, writable):
        """One transmitted chain: header, frame (§5.1.6.2). Nothing is written back."""
        n = gather(self.ram.mem8, rows, len(rows), HDR, self.tx_buf)
        if readable < HDR + ETH_HEADER or n < ETH_HEADER:
            self.counts["tx_bad"] += 1         # too short, too long for any frame, or outside memory: dropped
            return 0
        self.counts["tx_frames"] += 1
        self.counts["tx_bytes"] += n
        self.port.send(self.tx_buf[:n].tobytes())
        return 0

    # -- receive: queue 0, from the switch ------------------------------------------------------------------------
    def receive(self, frame):
        """The switch's delivery: the frame into the next receive chain; False (a drop) when there is none."""
        with self.lock:
            if self.closed or self.paused or not self.ready(RX):
                return False
            status, head, rows, _, _ = self.take(RX, self.rx_rows)
            if status != R.OK:
                if status == R.EMPTY:
                    self.counts["rx_no_buffer"] += 1
                return False
            data = np.frombuffer(frame, np.uint8)
            written = scatter(self.ram.mem8, self.rx_rows, rows, self.rx_hdr, data, len(data))
            if written < 0:
                self.counts["rx_small_buffer"] += 1
                written = 0                    # the chain goes back empty; the driver counts a length error
            else:
                for _, length, write, gpa in self.rx_rows[:rows].tolist():
                    if write:
                        self.ram.dma_written(gpa, length)
                self.counts["rx_frames"] += 1
                self.counts["rx_bytes"] += len(data)
            if self.give(RX, head, written):
                self.interrupt(RX)
            return written > 0


def parse_options(options):
    """bhyve-like virtio-net options: SWITCH[,mac=xx:xx:xx:xx:xx:xx][,listen=HOST:PORT][,connect=HOST:PORT];
    a dict with switch, mac (bytes or None), listen and connect (lists of addresses)."""
    if not options:
        raise ConfigError("virtio-net needs a switch: -s SLOT,virtio-net,switch0[,mac=...][,listen=|connect="
                          "HOST:PORT]")
    name, *rest = options.split(",")
    parsed = {"switch": check_name(name), "mac": None, "listen": [], "connect": []}
    for option in rest:
        key, sep, value = option.partition("=")
        if key == "mac" and sep:
            parsed["mac"] = parse_mac(value)
        elif key in ("listen", "connect") and sep:
            parse_address(value)
            parsed[key].append(value)
        else:
            raise ConfigError("virtio-net: unknown option %r (SWITCH[,mac=MAC][,listen=HOST:PORT]"
                              "[,connect=HOST:PORT])" % option)
    return parsed


def parse_mac(text):
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise ConfigError("virtio-net: mac=%s is not six hex bytes (52:54:00:12:34:56)" % text)
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & 1:
        raise ConfigError("virtio-net: mac=%s is a group (multicast) address" % text)
    return mac


def attach(device, switch, options):
    """Plug the device's port into `switch` and open the socket endpoints the options ask for."""
    switch.attach(device.port)
    try:
        for address in options["listen"]:
            device.endpoints.append(QemuSocket.listen(switch, address))
        for address in options["connect"]:
            device.endpoints.append(QemuSocket.connect(switch, address))
    except ConfigError:
        device.close()
        raise
