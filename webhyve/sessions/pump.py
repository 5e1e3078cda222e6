"""One output pump per VM: COM1 output → server terminal, recordings and every viewer, in ~20 ms batches.

Positions are absolute byte offsets in the console stream (engine Console). Each viewer has `sent` (how
far it has been sent) and `acked` (how far its xterm.js has written): with more than HIGH_WATER bytes
in flight it is skipped, and when it catches up it gets the gap from the console ring, so a slow browser
neither stalls the others nor loses output. A viewer further behind than the ring holds gets a replay
of the server terminal instead. Batching follows python-socketio #406: no grouping on WebSocket.

Output travels as text with one character per byte (latin-1): a binary Socket.IO event is several
websocket frames, and two threads emitting to one client (the pump and an ack's catch-up) could
interleave them; a text event is one frame. The browser turns the characters back into bytes.
"""
import threading
import time

from .terminal import ServerTerminal

HIGH_WATER = 256 * 1024


def as_text(data):
    """Console bytes as one character per byte, the way they go over Socket.IO."""
    return data.decode("latin-1")


class Viewer:
    __slots__ = ("sid", "typist", "sent", "acked")

    def __init__(self, sid, typist, position):
        self.sid, self.typist, self.sent, self.acked = sid, typist, position, position


class OutputPump:
    """Legend: `position`, `viewers`, the terminal feed and `recordings` change only under `lock`."""

    def __init__(self, vm, emit, interval=0.02):
        self.vm, self._emit, self.interval = vm, emit, interval
        self.terminal = ServerTerminal()
        self.lock = threading.RLock()
        self.viewers = {}
        self.recordings = []
        self._reader = vm.console_reader()
        self.position = self._reader.position
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="%s-pump" % vm.name, daemon=True)
        self._thread.start()

    def _run(self):
        """Throttle, not debounce: a lone keystroke echo goes out at once, a burst at most every interval."""
        last = 0.0
        while not self._stop.is_set():
            data = self._reader.read(0.25)
            if not data:
                continue
            wait = last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
                data += self._reader.read(0)
            last = time.monotonic()
            self._deliver(data)

    def _deliver(self, data):
        with self.lock:
            self.position = end = self._reader.position
            start = end - len(data)                 # the reader skips ahead if it lost bytes
            self.terminal.feed(data)
            for recording in self.recordings:
                recording.output(data)
            for viewer in sorted(self.viewers.values(), key=lambda v: not v.typist):   # the typist's echo first
                self._send(viewer, start, end, data)

    def _send(self, viewer, start, end, data):
        if viewer.sent - viewer.acked > HIGH_WATER or viewer.sent >= end:
            return
        if viewer.sent < start:
            self._catch_up(viewer)
            return
        self._emit("output", {"data": as_text(data[viewer.sent - start:]), "start": viewer.sent, "end": end}, viewer.sid)
        viewer.sent = end

    def _catch_up(self, viewer):
        """Send a viewer what it missed from the ring, or a full replay if the ring has moved past it."""
        gap = self.ring_slice(viewer.sent, self.position)
        if gap is None:
            self._emit("replay", {"data": self.terminal.replay(), "position": self.position}, viewer.sid)
        elif gap:
            self._emit("output", {"data": as_text(gap), "start": viewer.sent, "end": self.position}, viewer.sid)
        viewer.sent = viewer.acked = self.position if gap is None else viewer.sent + len(gap)

    def ring_slice(self, start, end):
        """Console bytes [start, end) still held in the ring, or None if the ring no longer has `start`."""
        reader = self.vm.console_reader(start)
        data = reader.read(0)
        return None if reader.lost else data[:end - start]

    # -- viewers --------------------------------------------------------------------------------------
    def attach(self, sid, typist, since=None):
        """Register a viewer (`typist`: it may type, so its echo goes out first); returns what it needs first:
        the missed bytes (reconnect) or a replay."""
        with self.lock:
            gap = self.ring_slice(since, self.position) if isinstance(since, int) and 0 <= since <= self.position else None
            self.viewers[sid] = Viewer(sid, typist, self.position)
            if gap is not None:
                return {"mode": "resume", "data": as_text(gap), "start": since, "position": self.position}
            return {"mode": "replay", "data": self.terminal.replay(), "position": self.position}

    def add_viewer(self, sid, typist, sent, acked):
        """A viewer that followed the VM here from another node, as far as it had been sent and had written."""
        with self.lock:
            self.viewers[sid] = Viewer(sid, typist, sent)
            self.viewers[sid].acked = acked

    def detach(self, sid):
        with self.lock:
            self.viewers.pop(sid, None)

    def ack(self, sid, position):
        """The viewer's terminal has written up to `position`; a paused viewer resumes from the ring."""
        with self.lock:
            viewer = self.viewers.get(sid)
            if viewer is None:
                return False
            viewer.acked = max(viewer.acked, min(position, viewer.sent))
            if viewer.sent < self.position and viewer.sent - viewer.acked <= HIGH_WATER // 2:
                self._catch_up(viewer)
            return True

    # -- recordings -----------------------------------------------------------------------------------
    def add_recording(self, recording):
        with self.lock:
            self.recordings.append(recording)

    def remove_recording(self, recording):
        with self.lock:
            if recording in self.recordings:
                self.recordings.remove(recording)
        recording.stop()

    def marker(self, label):
        with self.lock:
            for recording in self.recordings:
                recording.marker(label)

    def stop(self):
        self._stop.set()
        self._thread.join(1)
        with self.lock:
            for recording in self.recordings:
                recording.stop()
            self.recordings = []
