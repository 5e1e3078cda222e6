"""An in-process learning Ethernet switch, as bhyve's VALE switches (netmap's `vale0:1`) or a netgraph bridge give VMs
on one host: ports, a MAC address table learned from source addresses and aged out (IEEE 802.1D §7.8, §7.9: 300 s
by default), known unicast forwarded to its port, broadcast, multicast and unknown unicast flooded to every other
port. Each port counts what it brought in and what went out to it, and what was dropped.

Delivery is synchronous, in the sender's thread (a vCPU thread in its transmit notification, a socket's reader),
as VALE copies in the sender's context: the switch's lock guards only the port list and the table and is released
before a frame is handed to a port. A port's `deliver(frame)` must not block and must not buffer without bound:
it returns False when it cannot take the frame now (a guest's full receive ring), which counts as a drop.

Switches belong to a modeled host: `host_switch(hypervisor, "switch0")` finds or makes one by name.
"""
import re
import threading
import time
import weakref

from ..errors import ConfigError

AGING = 300.0                          # seconds: 802.1D's default ageing time
ETH_HEADER = 14
MAX_FRAME = 65535 + ETH_HEADER         # QEMU's and the virtio header's limit; anything longer is a drop
NAME = re.compile(r"^switch[0-9]{1,4}$")
COUNTERS = ("rx_packets", "rx_bytes", "tx_packets", "tx_bytes", "rx_dropped", "tx_dropped")


def is_multicast(mac):
    """The I/G bit, the first bit on the wire: group addresses (broadcast included)."""
    return bool(mac[0] & 1)


def mac_text(mac):
    return ":".join("%02x" % b for b in mac)


class Port:
    """A switch port. Counters are the switch's view, as `ip -s link` shows a bridge port: rx is what the port
    brought into the switch, tx what the switch sent out of it; rx_dropped are frames refused on the way in (too
    short, too long, a group source address), tx_dropped frames the port could not take (a full receive ring).
    Legend: `deliver` and `name` fixed by the owner; counters bumped under the switch's lock."""

    def __init__(self, name, deliver):
        self.name, self.deliver = name, deliver
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.switch = None

    def send(self, frame):
        """A frame from this port's side into the switch (its owner's transmit)."""
        if self.switch is not None:
            self.switch.forward(self, frame)

    def detach(self):
        if self.switch is not None:
            self.switch.detach(self)


class Switch:
    """Legend: `ports` and `table` (MAC bytes -> (port, last seen)) change under `lock`; `clock` is fixed (tests
    give their own to age entries without waiting)."""

    def __init__(self, name, aging=AGING, clock=time.monotonic):
        self.name, self.aging, self.clock = name, aging, clock
        self.lock = threading.Lock()
        self.ports = []
        self.table = {}

    def attach(self, port):
        with self.lock:
            if port.switch is not None:
                raise ConfigError("port %s is on switch %s already" % (port.name, port.switch.name))
            port.switch = self
            self.ports.append(port)
        return port

    def detach(self, port):
        """The port leaves; the addresses learned on it are forgotten at once (a link down flushes them)."""
        with self.lock:
            if port in self.ports:
                self.ports.remove(port)
            self.table = {mac: entry for mac, entry in self.table.items() if entry[0] is not port}
            port.switch = None

    def learn(self, port, macs, counts):
        """A restored port (engine/snapshot.py): the addresses it had learned, as seen now, and its counters."""
        with self.lock:
            if port.switch is not self:
                return
            now = self.clock()
            for mac in macs:
                self.table[bytes(mac)] = (port, now)
            port.counts.update(counts)

    def lookup(self, mac):
        """The port `mac` was last seen on, if that was less than `aging` seconds ago."""
        with self.lock:
            return self._lookup(bytes(mac), self.clock())

    def _lookup(self, mac, now):
        entry = self.table.get(mac)
        if entry is None:
            return None
        if now - entry[1] >= self.aging:
            del self.table[mac]                         # aged out (802.1D §7.9.2)
            return None
        return entry[0]

    def forward(self, source, frame):
        """Learn the source address on `source`, then deliver to the destination's port or flood; returns the
        ports the frame went out of."""
        length = len(frame)
        with self.lock:
            counts = source.counts
            if source.switch is not self:
                return []
            if not ETH_HEADER <= length <= MAX_FRAME or is_multicast(frame[6:12]):
                counts["rx_dropped"] += 1
                return []
            counts["rx_packets"] += 1
            counts["rx_bytes"] += length
            now = self.clock()
            self.table[bytes(frame[6:12])] = (source, now)
            dest = None if is_multicast(frame[0:6]) else self._lookup(bytes(frame[0:6]), now)
            if dest is source:
                return []                               # the destination is on the port it came from: filtered
            targets = [dest] if dest is not None else [p for p in self.ports if p is not source]
        out = []
        for port in targets:
            taken = port.deliver(frame)
            with self.lock:
                if taken:
                    port.counts["tx_packets"] += 1
                    port.counts["tx_bytes"] += length
                    out.append(port)
                else:
                    port.counts["tx_dropped"] += 1
        return out

    def describe(self):
        """Ports with their counters and the live MAC table, for panels and tests."""
        with self.lock:
            now = self.clock()
            return {"name": self.name, "ports": [dict(port.counts, name=port.name) for port in self.ports],
                    "table": [{"mac": mac_text(mac), "port": entry[0].name, "age": now - entry[1]}
                              for mac, entry in sorted(self.table.items()) if now - entry[1] < self.aging]}


_switches = weakref.WeakKeyDictionary()          # hypervisor -> {name: Switch}
_registry_lock = threading.Lock()


def check_name(name):
    if not NAME.match(name or ""):
        raise ConfigError("virtio-net: %r is not a switch name: use an in-process switch, switch0-switch9999 "
                          "(tap and VALE need host privileges webhyve does not ask for)" % name)
    return name


def host_switch(hypervisor, name):
    """The modeled host's switch called `name`, made on first use."""
    check_name(name)
    with _registry_lock:
        switches = _switches.setdefault(hypervisor, {})
        if name not in switches:
            switches[name] = Switch(name)
        return switches[name]
