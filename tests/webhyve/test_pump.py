"""The output pump against a real engine Console: flow control toward a slow viewer, and falling off the ring."""
import threading
import types

from engine.devices.console import Console
from tests.webhyve.conftest import wait_for
from webhyve.sessions.pump import HIGH_WATER, OutputPump


class Inbox:
    """What the pump sent, per viewer, as the Socket.IO layer would deliver it."""

    def __init__(self):
        self.events, self.lock = [], threading.Lock()

    def __call__(self, event, data, sid):
        with self.lock:
            self.events.append((sid, event, data))

    def take(self, sid):
        with self.lock:
            mine = [e for e in self.events if e[0] == sid]
            self.events = [e for e in self.events if e[0] != sid]
        return [(event, data) for _, event, data in mine]


def make_pump(history=1 << 20):
    console = Console(history=history)
    vm = types.SimpleNamespace(name="t", console_reader=lambda position=None:         # as engine/door's VmView
                               console.reader() if position is None else console.reader_at(position))
    inbox = Inbox()
    return console, OutputPump(vm, inbox, interval=0.005), inbox


def test_slow_viewer_is_held_back_then_caught_up_without_loss():
    """A viewer that stops acknowledging gets at most HIGH_WATER more; its ack brings the rest, in order."""
    console, pump, inbox = make_pump()
    try:
        pump.attach("slow", False)
        pump.attach("fast", False)
        payload = bytes(range(256)) * 4096                       # 1 MiB, in batches the pump sees one by one
        fast, slow = bytearray(), bytearray()

        def fast_keeps_up():
            for event, data in inbox.take("fast"):
                fast.extend(data["data"].encode("latin-1"))
                pump.ack("fast", data["end"])
            return len(fast) == pump.position
        for i in range(0, len(payload), 16384):
            console.output(payload[i:i + 16384])
            assert wait_for(lambda: pump.position == console.end and fast_keeps_up(), timeout=10)
        held = inbox.take("slow")
        slow.extend(b"".join(d["data"].encode("latin-1") for _, d in held))
        assert len(slow) < len(payload) and len(slow) <= HIGH_WATER + 64 * 1024
        position = held[-1][1]["end"]
        while len(slow) < len(payload):
            pump.ack("slow", position)
            for event, data in inbox.take("slow"):
                assert event == "output" and data["start"] == position
                slow.extend(data["data"].encode("latin-1"))
                position = data["end"]
        assert bytes(slow) == payload == bytes(fast)
    finally:
        pump.stop()


def test_viewer_past_the_ring_gets_a_replay():
    """A viewer so far behind that the ring dropped its bytes gets the server terminal's screen instead."""
    console, pump, inbox = make_pump(history=4096)
    try:
        pump.attach("slow", False)
        pump.ack("slow", 0)
        for n in range(2000):
            console.output(b"line %d\r\n" % n)
        assert wait_for(lambda: pump.position == console.end)
        inbox.take("slow")
        pump.viewers["slow"].acked = pump.viewers["slow"].sent = 0      # as if it had acknowledged nothing yet
        pump.ack("slow", 0)
        (event, data), = inbox.take("slow")
        assert event == "replay" and "line 1999" in data["data"] and data["position"] == console.end
        assert pump.attach("late", False, since=10)["mode"] == "replay"   # the ring no longer has byte 10
    finally:
        pump.stop()
