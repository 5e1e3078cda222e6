"""The in-process learning switch as ports see it: a frame to an unknown or group address floods to every other
port, a learned address goes to its port only, entries age out and leave with their port, bad frames and refused
deliveries are counted drops, and counters stay exact under senders on many threads."""
import threading

import pytest

from engine import Hypervisor
from engine.errors import ConfigError
from engine.net import switch as S

A, B, C = (bytes((2, 0, 0, 0, 0, n)) for n in (0xA, 0xB, 0xC))
BROADCAST = b"\xff" * 6


def frame(dst, src, payload=b"x" * 50):
    return dst + src + b"\x08\x00" + payload


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Sink:
    """A port's far side: the frames delivered to it; `full` makes it refuse them (a full receive ring)."""

    def __init__(self, name):
        self.frames, self.full = [], False
        self.port = S.Port(name, self.deliver)

    def deliver(self, data):
        if self.full:
            return False
        self.frames.append(bytes(data))
        return True


@pytest.fixture
def net():
    clock = Clock()
    switch = S.Switch("switch9", aging=300, clock=clock)
    sinks = [Sink(name) for name in "abc"]
    for sink in sinks:
        switch.attach(sink.port)
    return switch, clock, sinks


def test_unknown_unicast_and_broadcast_flood_then_learned_addresses_go_to_one_port(net):
    switch, _, (a, b, c) = net
    a.port.send(frame(B, A))                       # B unknown: flooded to b and c, A learned on a
    assert b.frames == c.frames == [frame(B, A)] and a.frames == []
    b.port.send(frame(A, B))                       # A known: to a only; B learned on b
    assert a.frames == [frame(A, B)] and len(c.frames) == 1
    a.port.send(frame(B, A, b"again"))
    assert b.frames[-1] == frame(B, A, b"again") and len(c.frames) == 1
    c.port.send(frame(BROADCAST, C))               # broadcast: everyone but the sender
    assert a.frames[-1] == b.frames[-1] == frame(BROADCAST, C) and c.frames[-1] == frame(B, A)
    multicast = b"\x01\x00\x5e\x00\x00\x01"
    assert {p.name for p in switch.forward(a.port, frame(multicast, A))} == {"b", "c"}
    assert [row["mac"] for row in switch.describe()["table"]] == ["02:00:00:00:00:0a", "02:00:00:00:00:0b",
                                                                   "02:00:00:00:00:0c"]
    assert switch.lookup(A) is a.port and switch.lookup(C) is c.port


def test_entries_age_out_and_a_port_moving_is_learned_again(net):
    switch, clock, (a, b, c) = net
    a.port.send(frame(BROADCAST, A))
    clock.now += 299
    assert switch.lookup(A) is a.port
    b.port.send(frame(A, B))
    assert len(a.frames) == 1 and c.frames == [frame(BROADCAST, A)]
    clock.now += 1                                 # 300 s after A was last seen: forgotten, flooded again
    assert switch.lookup(A) is None
    b.port.send(frame(A, B, b"flooded"))
    assert a.frames[-1] == c.frames[-1] == frame(A, B, b"flooded")
    c.port.send(frame(B, A))                       # A moved to c: learned there
    assert switch.lookup(A) is c.port
    b.port.send(frame(A, B, b"to c"))
    assert c.frames[-1] == frame(A, B, b"to c") and a.frames[-1] == frame(A, B, b"flooded")


def test_a_detached_port_takes_its_addresses_and_frames_no_longer_reach_it(net):
    switch, _, (a, b, c) = net
    a.port.send(frame(BROADCAST, A))
    a.port.detach()
    assert switch.lookup(A) is None and a.port.switch is None
    b.port.send(frame(A, B))
    assert a.frames == [] and c.frames == [frame(BROADCAST, A), frame(A, B)]
    a.port.send(frame(B, A))                       # off the switch: goes nowhere
    assert len(b.frames) == 1
    with pytest.raises(ConfigError):
        switch.attach(b.port)                      # a port is on one switch at a time


def test_counters_and_drops(net):
    switch, _, (a, b, c) = net
    a.port.send(frame(BROADCAST, A, b"y" * 86))    # 100 bytes, to b and c
    c.full = True
    b.port.send(frame(BROADCAST, B, b"z" * 36))    # 50 bytes: a takes it, c's ring is full
    a.port.send(b"\x00" * 13)                      # shorter than an Ethernet header
    a.port.send(frame(B, b"\x01\x00\x00\x00\x00\x01"))       # a group address as source
    a.port.send(frame(B, A, b"w" * (S.MAX_FRAME)))           # longer than any frame
    ports = {row["name"]: row for row in switch.describe()["ports"]}
    assert ports["a"] == dict(name="a", rx_packets=1, rx_bytes=100, tx_packets=1, tx_bytes=50, rx_dropped=3,
                              tx_dropped=0)
    assert ports["b"] == dict(name="b", rx_packets=1, rx_bytes=50, tx_packets=1, tx_bytes=100, rx_dropped=0,
                              tx_dropped=0)
    assert ports["c"] == dict(name="c", rx_packets=0, rx_bytes=0, tx_packets=1, tx_bytes=100, rx_dropped=0,
                              tx_dropped=1)


def test_counters_stay_exact_with_senders_on_many_threads(net):
    switch, _, (a, b, c) = net
    a.port.send(frame(BROADCAST, A))
    b.port.send(frame(BROADCAST, B))
    before = {p.name: dict(p.counts) for p in switch.ports}
    rounds = 2000

    def sender(port, dst, src):
        for _ in range(rounds):
            port.send(frame(dst, src))

    threads = [threading.Thread(target=sender, args=args) for args in ((a.port, B, A), (b.port, A, B),
                                                                       (c.port, A, C))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(b.frames) == 1 + rounds and len(a.frames) == 1 + 2 * rounds
    assert a.port.counts["tx_packets"] - before["a"]["tx_packets"] == 2 * rounds
    assert c.port.counts["rx_packets"] == rounds and c.port.counts["rx_bytes"] == rounds * 64


def test_switches_are_found_by_name_on_their_host():
    hv, other = Hypervisor(host_mem_mb=16), Hypervisor(host_mem_mb=16)
    assert S.host_switch(hv, "switch0") is S.host_switch(hv, "switch0")
    assert S.host_switch(hv, "switch0") is not S.host_switch(other, "switch0")
    for bad in ("tap0", "switch", "vale0:1", "", "switch12345"):
        with pytest.raises(ConfigError, match="switch0"):
            S.host_switch(hv, bad)
