"""--restart-on-failure: checkpoints of a node's running VMs in shared storage, restarted elsewhere when it dies.

As Proxmox HA restarts a dead node's guests on the others (from their shared disks), a node started with
--restart-on-failure SECONDS writes a checkpoint of each running VM every SECONDS into the shared folder
(--shared-dir, the same path on every node: NFS or the like) and records it in Redis (`webhyve:checkpoints`:
VM → node, incarnation, path, time). When the sweeper records a node down, each of its VMs with a checkpoint from
that node's last incarnation is restored, started, on the best node that takes it (placement.py's order, the same
refusals); the guest resumes from the checkpoint, losing what it did after it. A VM never started, or powered
off, has no checkpoint and stays lost.
"""
import json
import logging
import os
import threading
import time

import redis

from ..sessions.errors import ApiError
from . import placement
from .registry import key

log = logging.getLogger("webhyve.cluster")
CHECKPOINTED = ("running", "halted")          # the states worth restarting; idle and powered-off VMs are not


class Checkpointer:
    """The node's checkpoint thread (only on a node started with --restart-on-failure)."""

    def __init__(self, node, interval, folder):
        self.node, self.interval, self.folder = node, interval, folder
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-checkpoints", daemon=True)
        os.makedirs(folder, exist_ok=True)
        node.fleet.listeners.append(self._vm_changed)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(5)

    def _run(self):
        while not self._stop.wait(self.interval):
            for session in self.node.fleet.list():
                try:
                    self.checkpoint(session)
                except Exception as problem:          # one VM's failure must not stop the others'
                    log.warning("webhyve cluster: checkpoint of VM %s failed: %s", session.name, problem)

    def checkpoint(self, session):
        """Write the VM's state to the shared folder (a new file renamed over the old one: a reader never sees half)
        and record it in Redis."""
        if session.vm.state not in CHECKPOINTED:
            return
        path = os.path.join(self.folder, "%s.snap" % session.name)
        session.vm.snapshot(path + ".new")
        os.replace(path + ".new", path)
        node = self.node
        node.registry.redis.hset(key("checkpoints"), session.name, json.dumps(
            {"node": node.name, "incarnation": node.incarnation, "path": path, "at": time.time()}))

    def _vm_changed(self, name, session):
        if session is None:
            try:
                self.node.registry.redis.hdel(key("checkpoints"), name)
            except redis.RedisError:
                pass



def restart_here(node, sid, role, payload):
    """The "vm.restart" operation, on the node placement chose (any node, with or without --restart-on-failure):
    restore the VM from its checkpoint and start it, or refuse (503) saying why."""
    vm = payload["vm"]
    used = sum(s.vm.mem_mb for s in node.fleet.list())
    why = placement.refusal(node.name, node.host_mem_mb, used, payload["mem_mb"], vm)
    if why is not None:
        raise ApiError(503, why)
    try:
        session = node.fleet.restore(payload["path"], name=vm, start=True)
    except Exception as problem:                        # an unreadable or missing checkpoint: say so, try the next
        raise ApiError(503, "node %r cannot restore VM %r from %s: %s" % (node.name, vm, payload["path"], problem)) from None
    return {"vm": session.name, "node": node.name}


def restart_lost(node, dead, lost):
    """Restart each VM of `lost` (the names the dead node held) that has a checkpoint from it; the VMs restarted."""
    records = node.registry.redis.hgetall(key("checkpoints"))
    incarnation = (node.registry.node(dead) or {}).get("incarnation")
    restarted = []
    for vm in lost:
        checkpoint = json.loads(records[vm]) if vm in records else None
        if checkpoint is None or checkpoint["node"] != dead or checkpoint["incarnation"] != incarnation:
            continue
        summary = (node.registry.vm(vm) or {}).get("summary", {})
        where = restart_one(node, vm, checkpoint, summary.get("mem_mb", 64))
        if where is not None:
            restarted.append(vm)
            node.emit("vm_state", {"vm": vm, "state": "restarted", "node": where}, "vm:" + vm, "/console")
            log.warning("webhyve cluster: VM %s of node %s restarted on node %s from its checkpoint of %s (%.1f s "
                        "before the failure was recorded)", vm, dead, where, placement.clock(checkpoint["at"]),
                        time.time() - checkpoint["at"])
    return restarted


def restart_one(node, vm, checkpoint, mem_mb):
    """The node that restarted `vm`, trying the up nodes best first; None (logged) when none could."""
    payload = {"vm": vm, "path": checkpoint["path"], "mem_mb": mem_mb}
    reasons = []
    for candidate in placement.order(node.registry.nodes()):
        try:
            if candidate["name"] == node.name:
                node.serve_op("vm.restart", node.name, "", "control", payload)
            else:
                node.forwarder.op(candidate, "vm.restart", "", "control", payload)
            return candidate["name"]
        except ApiError as problem:
            reasons.append(problem.message)
    log.warning("webhyve cluster: VM %s could not be restarted: %s", vm, "; ".join(reasons) or "no node is up")
    return None
