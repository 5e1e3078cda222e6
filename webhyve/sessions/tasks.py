"""The task log: what was started on this server (create, snapshot, restore, demo, migrate, …), by whom, when,
for how long, with what result, and how far a long one has got; Proxmox VE's task log (its UPIDs and "Tasks" panel).

A Task is running until it ends "OK" or with the error it answered. The log keeps the last LIMIT tasks in memory,
newest last; `listener(task_dict)` hears every change (the web side pushes it to the pages as it happens).
"""
import collections
import itertools
import os
import threading
import time

LIMIT = 500
RUNNING, OK = "running", "OK"


class Task:
    """One piece of work. Legend: every field but `id`, `kind` and `started` changes under `log.lock`."""

    def __init__(self, log, ident, kind, vm, description, who, node):
        self.log, self.id, self.kind, self.vm = log, ident, kind, vm
        self.description, self.who, self.node = description, who, node
        self.started, self._t0 = time.time(), time.monotonic()
        self.ended, self.duration_s = None, None
        self.status, self.http_status = RUNNING, None
        self.fraction, self.step = None, ""          # progress: 0..1 (None: indeterminate) and a short text
        self.detached = False                        # ended by a thread of its own, not by the request that began it

    def detach(self):
        self.detached = True
        return self

    def progress(self, fraction, text):
        """How far it has got: `fraction` 0..1, or None when the work cannot say (a snapshot being written)."""
        self.log.update(self, fraction=None if fraction is None else min(max(float(fraction), 0.0), 1.0), step=text)

    def finish(self, http_status=None):
        self._end(OK, http_status)

    def fail(self, message, http_status=500):
        self._end(message or "failed", http_status)

    def _end(self, status, http_status):
        if self.status != RUNNING:
            return                                   # ended already (a worker and its view both report)
        self.log.update(self, status=status, http_status=http_status, ended=time.time(),
                        duration_s=round(time.monotonic() - self._t0, 3))

    def as_dict(self):
        running = self.status == RUNNING
        return {"id": self.id, "kind": self.kind, "vm": self.vm, "description": self.description, "who": self.who,
                "node": self.node, "started": round(self.started, 3),
                "ended": None if self.ended is None else round(self.ended, 3),
                "duration_s": round(time.monotonic() - self._t0, 3) if running else self.duration_s,
                "state": "running" if running else "ok" if self.status == OK else "error",
                "status": self.status, "http_status": self.http_status,
                "progress": {"fraction": self.fraction, "text": self.step} if running else None}


class TaskLog:
    """The last `limit` tasks of this server. Legend: `tasks` (oldest first) and every Task's fields are guarded by
    `lock`; `listeners` are called, outside the lock, with the task's dict after each change."""

    def __init__(self, node, limit=LIMIT):
        self.node, self.limit = node, limit
        self.tasks = collections.deque()
        self.lock = threading.Lock()
        self.listeners = []
        self._serial = itertools.count(1)

    def start(self, kind, vm, description, who):
        """A new running task; its id is a UPID as Proxmox writes them (node, pid, serial, start time in hex)."""
        serial = next(self._serial)
        ident = "UPID:%s:%08X:%08X:%08X:%s:%s:%s:" % (self.node, os.getpid(), serial, int(time.time()), kind,
                                                      vm or "", who)
        task = Task(self, ident, kind, vm, description, who, self.node)
        with self.lock:
            self.tasks.append(task)
            while len(self.tasks) > self.limit:
                self.tasks.popleft()
        self._tell(task.as_dict())
        return task

    def update(self, task, **changes):
        with self.lock:
            for key, value in changes.items():
                setattr(task, key, value)
            snapshot = task.as_dict()
        self._tell(snapshot)

    def list(self, vm=None, limit=LIMIT):
        """Newest first; only VM `vm`'s when given."""
        with self.lock:
            chosen = [t.as_dict() for t in reversed(self.tasks) if vm is None or t.vm == vm]
        return chosen[:limit]

    def _tell(self, snapshot):
        for listener in self.listeners:
            listener(snapshot)


def migration_progress(figures):
    """(fraction, text) from live migration's figures (engine/migration/source.py): the pages sent against those
    sent plus the dirty ones still to send, which the pre-copy rounds shrink."""
    phase, rounds, sent, dirty = figures.get("phase", "?"), len(figures.get("rounds", ())), \
        figures.get("pages_sent", 0), figures.get("dirty")
    if phase == "pre-copy" and dirty is not None:
        return sent / max(sent + dirty, 1), "pre-copy round %d: %d pages sent, %d dirty left" % (rounds, sent, dirty)
    if phase == "done":
        return 1.0, "done: %d pages sent" % sent
    return (None if phase == "connecting" else sent / max(sent + (dirty or 0), 1)), phase
