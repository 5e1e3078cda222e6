"""The node's heartbeat thread: every HEARTBEAT seconds its load and VMs into Redis, and downs recorded by the sweeper.

Each beat writes the whole picture (the node's record, its liveness key, every VM's summary), so a Redis that
restarted empty is filled again by the next beat of each node: re-registration is not a separate path. When Redis
cannot be reached the beat says so once in the log and on the node's `problem` (shown by the list page and
GET /api/v1/vms), and keeps trying; the VMs are not touched.
"""
import logging
import os
import threading
import time

import redis

from .registry import HEARTBEAT

log = logging.getLogger("webhyve.cluster")


def host_info(node):
    """The node's record: its address, the machine's CPUs and load, the modeled host memory and what VMs use."""
    sessions = node.fleet.list()
    return {"url": node.url, "cpus": os.cpu_count() or 1, "mem_total_mb": node.host_mem_mb,
            "mem_used_mb": sum(s.vm.mem_mb for s in sessions), "vcpus": sum(s.vm.cpus for s in sessions),
            "vms": len(sessions), "load": "%.2f" % os.getloadavg()[0], "started": "%.3f" % node.started}


class Heartbeat:
    """Legend: `node.problem` is written only by this thread (None while Redis answers)."""

    def __init__(self, node, on_down):
        self.node, self.on_down = node, on_down
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cluster-heartbeat", daemon=True)
        self.beats = 0

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join(2)

    def _run(self):
        while True:
            self.beat()
            if self._stop.wait(HEARTBEAT):
                return

    def beat(self):
        node = self.node
        try:
            with node.beat_lock:                # a VM handed to another node is not written back (migration.py)
                sessions = [s for s in node.fleet.list() if not s.handing_over]
                node.registry.heartbeat(node.name, node.incarnation, host_info(node),
                                        {s.name: s.summary() for s in sessions})
            if node.problem is not None or self.beats == 0:     # first beat, or Redis back (perhaps empty)
                node.registry.prune(node.name, node.incarnation, {s.name for s in sessions})
                node.registry.shared_tokens(*node.tokens())
            if node.registry.sweeper_lease(node.name):
                for name in node.registry.sweep():
                    self.on_down(name)
            if node.visitors:
                node.forget_orphans(node.registry.nodes())
        except redis.RedisError as problem:
            self._lost(problem)
            return
        except Exception:                       # a bug must not stop the heartbeats
            log.exception("cluster heartbeat failed")
            return
        if node.problem is not None:
            log.warning("webhyve cluster: Redis at %s answers again; node %s re-registered with %d VMs",
                        node.redis_shown, node.name, len(sessions))
            node.problem = None
        self.beats += 1

    def _lost(self, problem):
        node = self.node
        if node.problem is None:
            node.problem = ("Redis at %s is unreachable since %s (%s): the cluster is off (no other node's VMs, no "
                            "forwarding, new VMs are created here); this node's VMs keep running and re-register when it returns"
                            % (node.redis_shown, time.strftime("%H:%M:%S UTC", time.gmtime()), short(problem)))
            log.warning("webhyve cluster: %s", node.problem)


def short(problem):
    text = str(problem).splitlines()[0] if str(problem) else type(problem).__name__
    return text[:160]
