"""asciicast v2 recordings of a serial console: a header line, then one JSON event per line, flushed as written.

Each event is written and flushed to the OS as it happens, so a recording survives a crash of the server
up to its last event (markers and the end also fsync). Format: docs.asciinema.org/manual/asciicast/v2.
"""
import codecs
import json
import os
import re
import threading
import time

from engine.door.tables import names

NAME = re.compile(r"(?P<vm>%s)-\d{8}T\d{6}-\d+\.cast" % names.PATTERN)      # VM-YYYYmmddTHHMMSS-N.cast


class Recording:
    """One .cast file being written: output ("o") and marker ("m") events, timed from the start."""

    def __init__(self, path, vm_name, width, height, clock=time.monotonic):
        self.path, self.vm_name = path, vm_name
        self.id = os.path.basename(path)
        self._clock = clock
        self._start = clock()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._lock = threading.Lock()
        self.events = 0
        self.active = True
        self._file = open(path, "x", encoding="utf-8")
        header = {"version": 2, "width": width, "height": height, "timestamp": int(time.time()),
                  "title": "webhyve: serial console of %s" % vm_name, "env": {"TERM": "xterm-256color"}}
        self._write_line(header, sync=True)

    def _write_line(self, obj, sync=False):
        self._file.write(json.dumps(obj, ensure_ascii=False) + "\n")
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())

    def _event(self, code, data, sync=False):
        with self._lock:
            if not self.active:
                return
            self._write_line([round(self._clock() - self._start, 6), code, data], sync)
            self.events += 1

    def output(self, data):
        """Guest output bytes; a UTF-8 sequence split across batches is joined before it is written."""
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def marker(self, label):
        self._event("m", label, sync=True)

    def stop(self):
        with self._lock:
            if not self.active:
                return
            tail = self._decoder.decode(b"", final=True)
            if tail:
                self._write_line([round(self._clock() - self._start, 6), "o", tail])
            os.fsync(self._file.fileno())
            self._file.close()
            self.active = False

    def info(self):
        return {"id": self.id, "vm": self.vm_name, "active": self.active, "events": self.events,
                "bytes": os.path.getsize(self.path)}


def list_recordings(directory, active):
    """Every .cast in `directory` (newest first), with the ones still being written marked active."""
    out = []
    for name in sorted(os.listdir(directory), reverse=True):
        match = NAME.fullmatch(name)
        if match:
            path = os.path.join(directory, name)
            out.append({"id": name, "vm": match["vm"], "active": name in active, "bytes": os.path.getsize(path)})
    return out


def new_path(directory, vm_name):
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    for n in range(1000):
        path = os.path.join(directory, "%s-%s-%d.cast" % (vm_name, stamp, n))
        if not os.path.exists(path):
            return path
    raise FileExistsError("too many recordings of %s this second" % vm_name)
