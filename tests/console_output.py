"""Console output as a python-socketio client receives it, put back in stream order.

python-engineio's client runs the handler of each message on a background thread of its own
(engineio/client.py: `_trigger_event('message', ..., run_async=True)`), so two `output` events can be handled in
either order. A browser's script handles them in the order they came, which is the order the server sent them.
Each event carries its `start` offset in the console stream: the text is the events sorted by it (a stable sort,
so output sent twice still shows twice)."""
import threading


class OutputLog:
    def __init__(self):
        self.lock, self.events = threading.Lock(), []

    def add(self, message):
        with self.lock:
            self.events.append((message["start"], message["data"]))

    def text(self):
        with self.lock:
            return "".join(data for _, data in sorted(self.events, key=lambda event: event[0]))
