"""The /inspect Socket.IO namespace: state panels pushed at a fixed tick, only the panels that changed.

  watch   {vm}  join the VM's inspect room; the ack carries every panel now
  unwatch {vm}
Server → browser: update {vm, panels: {name: value}} with the panels that differ from the last tick.
One ticker thread serves every watched VM; it also samples each VM's counters (the graphs, the exit histogram and
the stats' rates). The watch ack adds `graphs`: the counter history of the last minutes; each update's `rates` is
its newest tick.
In cluster mode a watch of a VM on another node runs there; its ticker's updates to the VM's room reach this
node's browsers through the Redis message queue.

An integer beyond 2^53 travels as its decimal text: a browser parses JSON numbers into doubles, and a kernel's
addresses (0xffffffff8ec5907b) came out rounded to 2 KiB, every disassembled line at the same address.
"""
import json
import threading
import time

from flask import request
from flask_socketio import disconnect, join_room, leave_room

from . import panels, policy
from ..cluster.migration import Handoff
from ..sessions.errors import ApiError
from .access import still_valid
from .events import CheckedNamespace, handler


SAFE = 1 << 53                    # JavaScript's Number.MAX_SAFE_INTEGER + 1


def exact(value):
    """`value` with every integer a double cannot hold exactly replaced by its decimal text."""
    if isinstance(value, dict):
        return {k: exact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [exact(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and not -SAFE < value < SAFE:
        return str(value)
    return value


def snapshot(session, host, node=None, sample=False):
    """Every panel of one VM as plain JSON values; each vCPU's from one visit to its thread. `node`: in cluster mode,
    this node's name, which the summary carries as GET /vms/NAME does. `sample`: the ticker's call, which samples
    the VM's counters from these visits first (webhyve/sessions/counters.py)."""
    vm = session.vm
    summary = {**session.summary(), **({"node": node} if node else {})}
    t, clock = time.time(), time.monotonic()
    vcpus = [panels.vcpu_panels(vm, i) for i in range(vm.cpus)]
    if sample:
        session.stat_history.sample(t, None, [p["stats"]["by_id"] for p in vcpus], clock)
    out = {"summary": summary, "tunables": host.tunables(), "caches": panels.caches(vm),
           "ept": panels.ept(vm), "vga": panels.vga(vm), "exits": session.exit_history[-60:],
           "devices": panels.devices(vm), "rates": session.stat_history.latest()}
    for i, vcpu in enumerate(vcpus):
        panels.add_rates(vcpu["stats"], session.stat_history.vcpu_rates(i))
        for name, value in vcpu.items():
            out["%s/%d" % (name, i)] = value
    return exact(out)


class InspectNamespace(CheckedNamespace):
    """Legend: `watchers` (VM name → sids) and `last` (VM name → panel JSON) are guarded by `lock`."""

    def __init__(self, fleet, socketio, interval=0.5, namespace="/inspect", cluster=None):
        super().__init__(namespace)
        self.fleet, self.socketio, self.interval, self.cluster = fleet, socketio, interval, cluster
        self.watchers, self.last = {}, {}
        self.watching = {}                # sid → names of the VMs it watches, wherever they run (cluster mode)
        if cluster is not None:
            cluster.ops.update({"inspect.watch": self.watch, "inspect.unwatch": self.unwatch})
            cluster.forget_hooks.append(self.forget)
            cluster.migrations.handoffs.append(Handoff(self.watchers_of, self.add_watchers, self.release,
                                                       "inspect.unwatch"))
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    def start_ticker(self):
        self._thread = threading.Thread(target=self._tick_loop, name="inspect-ticker", daemon=True)
        self._thread.start()

    def stop_ticker(self):
        self._stop.set()

    def disconnected(self, sid):
        """Forget the browser here, and on the node of every VM it watched: one it watched here may have migrated
        since, its watchers with it."""
        self.forget(sid)
        for name in self.watching.pop(sid, ()):
            try:
                self.cluster.dispatch("inspect.unwatch", sid, "view", {"vm": name}, self.unwatch)
            except ApiError:
                pass                              # the VM is gone, or its node

    @handler
    def on_watch(self, payload):
        name = payload["vm"]
        try:
            principal = still_valid(self.principals[request.sid])
        except ApiError:
            disconnect()                          # a deleted user or a changed password: its streams end too
            raise
        policy.visible_session(principal, self.fleet, name)      # another user's VM: 404
        answer = self.run("inspect.watch", payload, self.watch)
        join_room("inspect:" + name)
        if self.cluster is not None:
            self.watching.setdefault(request.sid, set()).add(name)
        return answer

    @handler
    def on_unwatch(self, payload):
        name = payload["vm"]
        leave_room("inspect:" + name)
        self.watching.get(request.sid, set()).discard(name)
        if self.cluster is not None:
            try:
                self.run("inspect.unwatch", payload, self.unwatch)
            except ApiError:
                pass                              # unwatching a VM that is gone or lost is done
        else:
            self.unwatch(request.sid, None, payload)

    def run(self, op, payload, local):
        if self.cluster is None:
            return local(request.sid, None, payload)
        return self.cluster.dispatch(op, request.sid, "view", payload, local)

    # -- on the VM's node (sid: the browser's, wherever it is connected) ---------------------------------------
    def watch(self, sid, role, payload):
        name = payload["vm"]
        session = self.fleet.get(name)
        with self.lock:
            self.watchers.setdefault(name, set()).add(sid)
        answer = snapshot(session, self.fleet.host, self.cluster and self.cluster.name)
        answer["graphs"] = session.stat_history.history()           # the last minutes, so the graphs start full
        return {"panels": answer}

    def watchers_of(self, name):
        """The sids watching VM `name` (a live migration takes them along)."""
        with self.lock:
            return sorted(self.watchers.get(name, ()))

    def add_watchers(self, name, sids):
        with self.lock:
            self.watchers.setdefault(name, set()).update(s for s in sids if isinstance(s, str))

    def release(self, name):
        """VM `name` has migrated away: its watchers went with it (and must not come back with it later)."""
        with self.lock:
            self.watchers.pop(name, None)
            self.last.pop(name, None)

    def forget(self, sid):
        with self.lock:
            for sids in self.watchers.values():
                sids.discard(sid)

    def unwatch(self, sid, role, payload):
        with self.lock:
            self.watchers.get(payload["vm"], set()).discard(sid)

    def _tick_loop(self):
        while not self._stop.wait(self.interval):
            try:
                self.tick()
            except Exception as problem:        # a panel bug must not stop the other panels
                self.socketio.server.logger.warning("inspect tick failed: %r", problem)

    def tick(self):
        """Sample the counters of every VM, then send each watched VM's changed panels to its room."""
        for session in self.fleet.list():
            with self.lock:
                watched = bool(self.watchers.get(session.name))
            if not watched:
                session.stat_history.sample(time.time(), session.vm.counter_totals(), clock=time.monotonic())
                self.last.pop(session.name, None)
                continue
            panels = snapshot(session, self.fleet.host, self.cluster and self.cluster.name, sample=True)
            current = {k: json.dumps(v, sort_keys=True) for k, v in panels.items()}
            previous = self.last.get(session.name, {})
            changed = {k: panels[k] for k, v in current.items() if previous.get(k) != v}
            self.last[session.name] = current
            if changed:
                self.socketio.emit("update", {"vm": session.name, "panels": changed}, to="inspect:" + session.name,
                                   namespace=self.namespace)
