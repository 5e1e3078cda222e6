"""This server as a node of the cluster: the one object the web app asks "is this VM here, elsewhere, or lost?".

A VM is local (the fleet holds it: the app serves it as without a cluster), remote (its node is up: forward to
it), lost (its node is down, or restarted since, so the VM is gone with it: shown as lost, never dropped
silently), or unknown (404 as today). Every Redis failure on these paths is a 503 that says Redis is the problem;
the node's own VMs are served from the fleet and never need Redis.
"""
import functools
import logging
import secrets
import threading
import time

import redis

from ..sessions.errors import ApiError
from . import failover
from .forwarding import Forwarder
from .heartbeat import Heartbeat
from .migration import Migrations
from .placement import clock
from .registry import Registry, connect, shown_url
from .security import Signer

log = logging.getLogger("webhyve.cluster")
FOLLOW, UNFOLLOW = ("console.attach", "inspect.watch"), ("console.detach", "inspect.unwatch")


class Lost:
    """A VM whose node is down or has restarted: its last known summary and why it is lost."""

    def __init__(self, name, record, node):
        self.name, self.record, self.node = name, record, node
        if node is None or node.get("incarnation") == record["incarnation"]:
            self.reason = "its node %r is down (no heartbeat since %s)" % (
                record["node"], clock(node.get("heartbeat") if node else None))
        else:
            self.reason = "its node %r restarted at %s and the VM did not survive it" % (
                record["node"], clock(node.get("started")))

    def summary(self):
        return {**self.record["summary"], "node": self.record["node"], "state": "lost", "status": "lost",
                "status_detail": "VM %r is lost: %s; DELETE removes it from the list" % (self.name, self.reason),
                "actions": [], "uptime_s": None}

    def refusal(self):
        return ApiError(409, "VM %r is lost: %s; it can only be removed (DELETE /api/v1/vms/%s)" % (
            self.name, self.reason, self.name))


class ClusterNode:
    """Legend: `ops` (Socket.IO operations other nodes may run here) and `forget_hooks` are filled once at start-up
    by the namespaces; `problem` is the heartbeat's (None while Redis answers); `visitors` (the sid of a browser on
    another node that follows a VM here → that node) is guarded by `lock`."""

    def __init__(self, name, redis_url, secret, url, fleet, host_mem_mb, emit, tokens):
        self.name, self.url, self.fleet, self.host_mem_mb, self.emit = name, url.rstrip("/"), fleet, host_mem_mb, emit
        self.tokens = tokens                # () → (control, viewer): put back into a Redis that restarted empty
        self.redis_shown = shown_url(redis_url)
        self.incarnation = secrets.token_hex(8)
        self.started = time.time()
        self.registry = Registry(connect(redis_url))
        self.signer = Signer(secret, name)
        self.forwarder = Forwarder(self.signer)
        self.heartbeat = Heartbeat(self, self._node_down)
        self.ops, self.forget_hooks = {"vm.restart": functools.partial(failover.restart_here, self)}, []
        self.checkpointer = None            # failover.Checkpointer with --restart-on-failure
        self.problem = None
        self.visitors = {}
        self.lock = threading.Lock()
        self.beat_lock = threading.Lock()   # a heartbeat's list-and-write, against a migration's handover
        self.migrations = Migrations(self, secret)
        fleet.listeners.append(self._vm_changed)

    def start(self):
        self.heartbeat.start()
        if self.checkpointer is not None:
            self.checkpointer.start()

    def stop(self):
        self.heartbeat.stop()
        if self.checkpointer is not None:
            self.checkpointer.stop()

    # -- the question the app asks -------------------------------------------------------------------------
    def locate(self, name):
        """None when the VM is here or nowhere; the node view of its node when it is elsewhere; a Lost."""
        if name in {s.name for s in self.fleet.list()}:
            return None
        try:
            self._redis_known_away()
            record = self.registry.vm(name)
            node = None if record is None else self.registry.node(record["node"])
        except redis.RedisError:
            raise ApiError(503, "no VM named %r on node %s, and the cluster registry is unreachable: %s" % (
                name, self.name, self.problem or "Redis at %s does not answer" % self.redis_shown)) from None
        if record is None:
            return None
        if node is not None and node["up"] and node["incarnation"] == record["incarnation"]:
            return None if record["node"] == self.name else node
        return Lost(name, record, node)

    def knows(self, name):
        """True for a VM on another node or lost (its page exists); False when Redis does not answer."""
        try:
            return self.locate(name) is not None
        except ApiError:
            return False

    def dispatch(self, op, sid, role, payload, local):
        """A Socket.IO operation on payload["vm"]: run here, forwarded to the VM's node, or refused for a lost VM."""
        where = self.locate(payload["vm"])
        if where is None:
            return local(sid, role, payload)
        if isinstance(where, Lost):
            raise where.refusal()
        return self.forwarder.op(where, op, sid, role, payload)

    # -- browsers on other nodes -------------------------------------------------------------------------------
    def serve_op(self, op, origin, sid, role, payload):
        """Run a Socket.IO operation another node forwarded, remembering which node each following sid is on."""
        handler = self.ops.get(op)
        if handler is None:
            raise ApiError(404, "no cluster operation %r" % op)
        answer = handler(sid, role, payload)
        with self.lock:
            if op in FOLLOW:
                self.visitors[sid] = origin
            elif op in UNFOLLOW:
                self.visitors.pop(sid, None)
        return answer

    def forget_orphans(self, nodes):
        """Drop the viewers and watchers whose browser's node is no longer up (kill -9 sent no detach): the pump
        would go on publishing their output to Redis for nobody. `nodes`: the registry's node views."""
        with self.lock:
            orphans = [sid for sid, origin in self.visitors.items() if not nodes.get(origin, {}).get("up")]
            for sid in orphans:
                del self.visitors[sid]
        for sid in orphans:
            for hook in self.forget_hooks:
                hook(sid)
        return orphans

    # -- what the list shows --------------------------------------------------------------------------------
    def listing(self, local):
        """GET /vms in cluster mode: `local` summaries with this node's name, every other node's VMs from the
        registry (lost ones as lost), the nodes with their load, and the cluster's state."""
        own = [{**summary, "node": self.name} for summary in local]
        here = {s["name"] for s in local}
        try:
            self._redis_known_away()
            nodes, records = self.registry.nodes(), self.registry.vms()
        except redis.RedisError:
            return {"vms": own, "nodes": [], "cluster": self.state()}
        others = []
        for name, record in sorted(records.items()):
            if name in here:
                continue
            node = nodes.get(record["node"])
            if node is not None and node["up"] and node["incarnation"] == record["incarnation"]:
                if record["node"] != self.name:
                    others.append({**record["summary"], "node": record["node"]})
            else:
                others.append(Lost(name, record, node).summary())
        return {"vms": own + others, "nodes": [node_row(n) for n in nodes.values()], "cluster": self.state()}

    def _redis_known_away(self):
        """While the heartbeat knows Redis is away, a request does not wait for a connection to time out as well."""
        if self.problem is not None:
            raise redis.ConnectionError(self.problem)

    def state(self):
        problem = self.problem
        return {"node": self.name, "redis": self.redis_shown, "ok": problem is None,
                "message": problem or "node %s of the cluster on %s" % (self.name, self.redis_shown)}

    def forget(self, lost):
        """DELETE of a lost VM: remove its record (nothing else is left of it)."""
        self.registry.drop_vm(lost.name)
        return {"destroyed": lost.name, "lost": True}

    # -- events ------------------------------------------------------------------------------------------------
    def _vm_changed(self, name, session):
        """The fleet created, changed or destroyed a VM: tell Redis now rather than at the next heartbeat."""
        try:
            self._redis_known_away()
            if session is None:
                self.registry.drop_vm(name)
            else:
                self.registry.put_vm(self.name, self.incarnation, name, session.summary())
        except redis.RedisError:
            pass                                    # the heartbeat reports it and re-registers later

    def _node_down(self, name):
        """The sweeper saw `name` stop: say which VMs are lost, in the log and to every console watching them."""
        lost = [vm for vm, record in self.registry.vms().items() if record["node"] == name]
        log.warning("webhyve cluster: node %s is down (no heartbeat for a few seconds); its VMs are lost: %s",
                    name, ", ".join(sorted(lost)) or "none")
        for vm in lost:
            self.emit("vm_state", {"vm": vm, "state": "lost", "node": name}, "vm:" + vm, "/console")
        threading.Thread(target=self._restart, args=(name, lost), name="cluster-restart", daemon=True).start()

    def _restart(self, dead, lost):
        """--restart-on-failure: the dead node's VMs with a checkpoint start again elsewhere (off the heartbeat's
        thread: a restore takes longer than a heartbeat may wait)."""
        try:
            failover.restart_lost(self, dead, lost)
        except (redis.RedisError, ApiError) as problem:
            log.warning("webhyve cluster: restarting node %s's VMs failed: %s", dead, problem)


def node_row(node):
    """A node as the list shows it."""
    return {"name": node["name"], "state": "up" if node["up"] else "down", "url": node.get("url"),
            "cpus": node.get("cpus"), "mem_total_mb": node.get("mem_total_mb"), "mem_free_mb": node.get("mem_free_mb"),
            "vms": node.get("vms"), "vcpus": node.get("vcpus"), "load": node.get("load"),
            "heartbeat_age_s": None if "heartbeat" not in node else round(max(0.0, time.time() - node["heartbeat"]), 1)}
