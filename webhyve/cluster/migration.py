"""Live migration between nodes: `POST /api/v1/vms/NAME/migrate {node}` (vmmctl migrate, the page's button).

On the VM's node, the request asks the target (a signed `vm.migrate_in` operation) to listen for one connection;
the target checks it can give the memory and answers with a port on its own address. The source connects and
the engine migrates the VM over it (engine/migration: pre-copy rounds over the dirty log, stop-and-copy, commit),
with a key that only nodes holding the cluster secret can derive from the migration's id. The target registers
the VM (so the registry points at it) and starts it; only then does the source drop its copy, quietly: the VM
was not destroyed, it moved. Its consoles move with it: the console ring keeps its absolute positions, and every
viewer and panel watcher goes over with how far it had been sent, so the browsers stay connected and miss no
byte. A browser that leaves while the VM is being handed over (its viewer or watcher already exported) is told to
the target once the VM is there, and the source forgets the VM's watchers: none goes stale on either node. A failure
before the handover leaves the VM running on the source, and the answer says which step failed. Progress goes to the
VM's console room as `migration` events, for the page.
"""
import collections
import hashlib
import hmac
import logging
import secrets
import socket
import threading
from urllib.parse import urlsplit

from engine.door.tables import EngineError, MigrationError

from ..sessions.errors import ApiError
from . import placement

log = logging.getLogger("webhyve.cluster")
TIMEOUT = 30                       # seconds without a frame before a side gives up
# What the web side registers for something that follows a VM to its new node (the panel watchers): export(name) →
# the sids (JSON), load(name, sids) on the target, release(name) on the source once the VM has gone, and the
# cluster operation that tells the VM's node a sid has left (run on the target for one that left during the handover)
Handoff = collections.namedtuple("Handoff", "export load release leave_op")


def migration_key(secret, ident):
    """The migration's HMAC key: derived from the cluster secret, different for every migration."""
    return hmac.new(secret.encode(), b"webhyve-migration:" + ident.encode(), hashlib.sha256).digest()


class Migrations:
    """The node's migrations in both directions. Legend: `active` (VM name → its latest figures, while it
    moves out) is guarded by `lock`; `handoffs` are the Handoffs the web side registers for what follows a VM."""

    def __init__(self, node, secret):
        self.node, self._secret = node, secret
        self.active, self.handoffs = {}, []
        self.lock = threading.Lock()
        node.ops["vm.migrate_in"] = self.prepare_in

    # -- the VM's node --------------------------------------------------------------------------------------
    def migrate(self, name, target_name, auto_converge=False, on_progress=None):
        """Move VM `name` to node `target_name`; the figures once the target runs it, or an ApiError naming the
        step that failed (the VM then runs on here). `auto_converge`: throttle a guest that dirties memory faster
        than it is sent (engine/migration/throttle.py); `on_progress(figures)` after each round (the task log)."""
        node = self.node
        session = node.fleet.get(name)
        target = self._target(name, target_name)
        with self.lock:
            if name in self.active:
                raise ApiError(409, "VM %r is already being migrated" % name)
            self.active[name] = {"vm": name, "node": target_name, "phase": "connecting"}
        try:
            return self._migrate(session, target, auto_converge, on_progress)
        finally:
            with self.lock:
                self.active.pop(name, None)

    def _target(self, name, target_name):
        node = self.node
        if target_name == node.name:
            raise ApiError(400, "VM %r already runs on node %r" % (name, target_name))
        nodes = node.registry.nodes()
        if target_name not in nodes:
            raise ApiError(400, "no node named %r in the cluster (nodes: %s)" % (target_name, ", ".join(sorted(nodes))))
        if not nodes[target_name]["up"]:
            raise ApiError(409, "node %r is down: it cannot take VM %r" % (target_name, name))
        return nodes[target_name]

    def _migrate(self, session, target, auto_converge, on_progress):
        node, name = self.node, session.name
        ident = secrets.token_hex(8)
        answer = node.forwarder.op(target, "vm.migrate_in", "", "control", {
            "vm": name, "id": ident, "mem_mb": session.vm.mem_mb, "from": node.name})
        self._progress(name, {"phase": "connecting", "node": target["name"]})
        try:
            sock = socket.create_connection((answer["host"], answer["port"]), timeout=TIMEOUT)
        except OSError as problem:
            raise ApiError(502, "node %r did not take the migration connection: %s; VM %r runs on here on node %r"
                           % (target["name"], problem, name, node.name)) from None
        taken = {}                                    # what _export sent, for _settle

        def export():
            taken.update(self._export(session))
            return taken
        try:
            figures = session.vm.migrate(sock, migration_key(self._secret, ident), peer="node %r" % target["name"],
                                         extra=export,
                                         before_commit=lambda: self._let_go(session),
                                         on_progress=lambda f: self._progress(name, {**f, "node": target["name"]},
                                                                              on_progress),
                                         auto_converge=auto_converge)
        except MigrationError as problem:
            if not problem.committed:                 # after COMMIT the target may hold it: its record stands
                session.handing_over = False
            self._progress(name, {"phase": "failed", "node": target["name"], "error": str(problem)})
            raise ApiError(502, "migration of VM %r to node %r failed: %s" % (name, target["name"], problem)) from None
        finally:
            sock.close()
        self._settle(session, target, taken)
        node.fleet.release(name)
        figures["node"] = target["name"]
        self._progress(name, figures)
        node.emit("vm_state", {"vm": name, "state": "migrated", "node": target["name"]}, "vm:" + name, "/console")
        log.warning("webhyve cluster: VM %s migrated to node %s: %d rounds, %d pages, %.1f ms down",
                    name, target["name"], len(figures["rounds"]), figures["pages_sent"], figures["downtime_ms"])
        return figures

    def _let_go(self, session):
        """Just before COMMIT: from here the heartbeat no longer writes the VM, whose record the target writes once it
        has it. The lock makes a beat already under way finish first."""
        with self.node.beat_lock:
            session.handing_over = True

    def _export(self, session):
        """What follows the VM, taken with it stopped: its console viewers and panel watchers, each with the node its
        browser is on."""
        node = self.node
        with node.lock:
            visitors = dict(node.visitors)
        with session.pump.lock:
            viewers = [[v.sid, v.typist, v.sent, v.acked, visitors.get(v.sid, node.name)]
                       for v in session.pump.viewers.values()]
        return {"viewers": viewers, "uptime_s": session.summary()["uptime_s"],
                "handoffs": [handoff.export(session.name) for handoff in self.handoffs], "from": node.name}

    def _settle(self, session, target, taken):
        """The VM runs on `target`: the browsers that left here since their viewers and watchers were exported are
        told to it (they would stay there for good otherwise), and this node forgets the VM's watchers."""
        name, forwarder = session.name, self.node.forwarder
        with session.pump.lock:
            here = set(session.pump.viewers)
        leavers = [("console.detach", sid) for sid, *_ in taken.get("viewers", []) if sid not in here]
        for handoff, then in zip(self.handoffs, taken.get("handoffs", [])):
            leavers += [(handoff.leave_op, sid) for sid in set(then) - set(handoff.export(name))]
            handoff.release(name)
        for op, sid in leavers:
            try:
                forwarder.op(target, op, sid, "view", {"vm": name})
            except ApiError as problem:
                log.warning("webhyve cluster: could not tell node %s that %s left VM %s: %s",
                            target["name"], sid, name, problem)

    def _progress(self, name, figures, also=None):
        with self.lock:
            if name in self.active:
                self.active[name] = figures
        if also is not None:
            also(figures)
        self.node.emit("migration", {"vm": name, **figures}, "vm:" + name, "/console")

    # -- the target ---------------------------------------------------------------------------------------------
    def prepare_in(self, sid, role, payload):
        """The "vm.migrate_in" operation: refuse (503, why) or listen for the source's one connection."""
        node, name = self.node, payload.get("vm")
        if not isinstance(name, str) or not isinstance(payload.get("id"), str) or not isinstance(payload.get("mem_mb"), int):
            raise ApiError(400, "vm.migrate_in takes {vm, id, mem_mb, from}")
        if name in {s.name for s in node.fleet.list()}:
            raise ApiError(409, "node %r already has a VM named %r" % (node.name, name))
        used = sum(s.vm.mem_mb for s in node.fleet.list())
        why = placement.refusal(node.name, node.host_mem_mb, used, payload["mem_mb"], name)
        if why is not None:
            raise ApiError(503, why)
        host = urlsplit(node.url).hostname or "127.0.0.1"
        listener = socket.create_server((host, 0))
        listener.settimeout(TIMEOUT)
        threading.Thread(target=self._receive, args=(listener, payload), name="migrate-in-" + name, daemon=True).start()
        return {"host": host, "port": listener.getsockname()[1]}

    def _receive(self, listener, payload):
        name, source = payload["vm"], payload.get("from", "?")
        try:
            sock, _ = listener.accept()
        except OSError as problem:
            log.warning("webhyve cluster: migration of VM %s from node %s: no connection came (%s)", name, source, problem)
            return
        finally:
            listener.close()
        sock.settimeout(TIMEOUT)
        try:
            arrival = self.node.fleet.host.receive_vm(sock, migration_key(self._secret, payload["id"]),
                                                      peer="node %r" % source, admit=lambda hello: self._admit(hello, name))
            try:
                self._import(arrival)
            except Exception as problem:
                arrival.abandon("node %r could not take VM %r: %s" % (self.node.name, name, problem))
                raise
            arrival.done()
            log.warning("webhyve cluster: VM %s arrived from node %s (%d pages)", name, source, arrival.pages)
        except (MigrationError, EngineError, ApiError) as problem:
            log.warning("webhyve cluster: migration of VM %s from node %s failed here: %s", name, source, problem)
        finally:
            sock.close()

    @staticmethod
    def _admit(hello, name):
        if hello["name"] != name:
            raise MigrationError("this connection was prepared for VM %r, not %r" % (name, hello["name"]))

    def _import(self, arrival):
        """Hold the arrived VM as a session of this node, its viewers and watchers following it; registered (the
        registry now points here) before the source is told."""
        node, extra = self.node, arrival.extra or {}
        session = node.fleet.adopt(arrival.view, uptime_s=extra.get("uptime_s"), notify=False)
        with session.pump.lock:
            for sid, typist, sent, acked, origin in extra.get("viewers", []):
                session.pump.add_viewer(sid, typist, sent, acked)
        with node.lock:
            for sid, typist, sent, acked, origin in extra.get("viewers", []):
                if origin != node.name:
                    node.visitors[sid] = origin
        for handoff, state in zip(self.handoffs, extra.get("handoffs", [])):
            handoff.load(session.name, state)
        node.fleet.notify(session.name, session)     # the registry's record now names this node
        return session

