"""A console backend: device output kept in a ring that any number of readers follow; input from one writer.

This is what bhyve's `-l com1,stdio` backend is, turned inside out so that a terminal, a browser and a
recorder can all watch the same UART. Readers never slow the device down: a reader that falls further
behind than the ring holds skips ahead and is told how many bytes it lost.
"""
import threading


class ConsoleReader:
    """One follower of a console's output, from the oldest byte still held (late joiners see scrollback)."""

    def __init__(self, console, position):
        self._console = console
        self.position = position
        self.lost = 0

    def read(self, timeout=None):
        """The bytes written since the last read; blocks up to `timeout` seconds (None: forever) for some."""
        return self._console._read_from(self, timeout)


class Console:
    """Serial console backend: `output()` from the device, `reader()` to follow, `send_input()` to type."""

    def __init__(self, history=1 << 20):
        self._history = history
        self._ring = bytearray()
        self._start = 0                 # absolute position of self._ring[0]
        self._input = bytearray()
        self._cond = threading.Condition()
        self._writer = None
        self._input_listeners = []
        self._output_listeners = []

    # -- device side ----------------------------------------------------------------------------
    def output(self, data):
        """Append what the device sent; wakes every reader."""
        if not data:
            return
        with self._cond:
            self._ring += data
            excess = len(self._ring) - self._history
            if excess > 0:
                del self._ring[:excess]
                self._start += excess
            self._cond.notify_all()
        for callback in self._output_listeners:
            callback(data)

    def on_output(self, callback):
        """Call `callback(data)` (from the device's thread) with every output, after readers can see it."""
        self._output_listeners.append(callback)

    def has_input(self):
        with self._cond:
            return bool(self._input)

    def take_input(self, limit):
        """Up to `limit` typed bytes, oldest first, removed from the input queue."""
        with self._cond:
            data = bytes(self._input[:limit])
            del self._input[:limit]
            return data

    def on_input(self, callback):
        """Call `callback()` (from the typing thread) whenever input arrives: a UART raises its interrupt."""
        self._input_listeners.append(callback)

    # -- viewer side ----------------------------------------------------------------------------
    @property
    def end(self):
        """Absolute position one past the newest output byte."""
        with self._cond:
            return self._start + len(self._ring)

    def reader(self, from_start=True):
        """A new follower; from the oldest byte still held, or from now."""
        with self._cond:
            return ConsoleReader(self, self._start if from_start else self._start + len(self._ring))

    def reader_at(self, position):
        """A follower from absolute `position`; one the ring no longer holds skips ahead, counting `lost`."""
        return ConsoleReader(self, position)

    def contents(self):
        """Everything still held, oldest first (scrollback for a late joiner or a screenshot)."""
        with self._cond:
            return bytes(self._ring)

    def _read_from(self, reader, timeout):
        with self._cond:
            end = self._start + len(self._ring)
            if reader.position >= end and timeout != 0:
                self._cond.wait_for(lambda: reader.position < self._start + len(self._ring), timeout)
                end = self._start + len(self._ring)
            if reader.position < self._start:
                reader.lost += self._start - reader.position
                reader.position = self._start
            data = bytes(self._ring[reader.position - self._start:end - self._start])
            reader.position = end
            return data

    # -- moving to another host (a live migration) ------------------------------------------------------
    def state(self):
        """{start, output, input}: the ring with its absolute position, and typed bytes the device has not taken."""
        with self._cond:
            return {"start": self._start, "output": bytes(self._ring), "input": bytes(self._input)}

    def load_state(self, state):
        """Go on from another console's state: the same absolute positions, so a viewer's `since` still holds."""
        with self._cond:
            self._ring = bytearray(state["output"][-self._history:])
            self._start = state["start"] + len(state["output"]) - len(self._ring)
            self._input = bytearray(state["input"])
            self._cond.notify_all()

    # -- the one writer -------------------------------------------------------------------------
    def claim_writer(self, owner):
        """Make `owner` the one who may type; False if someone else holds it."""
        with self._cond:
            if self._writer not in (None, owner):
                return False
            self._writer = owner
            return True

    def release_writer(self, owner):
        with self._cond:
            if self._writer == owner:
                self._writer = None

    def send_input(self, data, owner=None):
        """Queue typed bytes for the device. With a writer claimed, only that writer may type."""
        with self._cond:
            if self._writer is not None and owner != self._writer:
                return False
            self._input += data
        for callback in self._input_listeners:
            callback()
        return True
