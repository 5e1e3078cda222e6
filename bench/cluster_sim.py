"""The cluster registry at scale: 100 simulated nodes x 50 VMs heartbeating into one real redis-server.

Each simulated node runs the real heartbeat writes (webhyve/cluster/registry.py: the node's record, its liveness
key, its 50 VM summaries in one pipeline, then the sweeper lease) once a second, as a node does, from a thread of
its own. The bench prints Redis's commands per second (INFO's total_commands_processed over the window) and the
network traffic and Redis's CPU, then stops one node's heartbeats, as kill -9 would, and prints how long after its last heartbeat
the cluster saw it down (its liveness key gone) and the sweeper recorded it down (state=down in its record).

    .venv/bin/python bench/cluster_sim.py [--nodes 100] [--vms 50] [--seconds 10]
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

import redis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from webhyve.cluster.registry import DOWN_AFTER, HEARTBEAT, Registry, connect, key  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(name):
    """A VM summary as a real node sends it (webhyve/sessions/fleet.py VmSession.summary)."""
    return {"name": name, "state": "halted", "mem_mb": 64, "cpus": 1, "profile": "haswell", "image": "shell.elf",
            "kind": "multiboot", "exits": 123456, "suspend_reason": None, "suspend_message": None,
            "status": "idle in HLT", "status_detail": "every vCPU waits in HLT with interrupts on (an idle shell or "
            "kernel); a key or a timer wakes it", "actions": ["pause", "reset", "poweroff"], "uptime_s": 812.4,
            "recording": None}


class SimNode(threading.Thread):
    def __init__(self, url, index, vms, stop):
        super().__init__(daemon=True)
        self.name_ = "node%03d" % index
        self.registry = Registry(connect(url))
        self.vms = {"%s-vm%02d" % (self.name_, i): summary("%s-vm%02d" % (self.name_, i)) for i in range(vms)}
        self.info = {"url": "http://10.0.%d.%d:8080" % (index // 250, index % 250), "cpus": 32, "mem_total_mb": 262144,
                     "mem_used_mb": 64 * vms, "vcpus": vms, "vms": vms, "load": "3.20", "started": "%.3f" % time.time()}
        self.stop, self.killed, self.last_beat, self.downs = stop, threading.Event(), None, []

    def run(self):
        next_beat = time.monotonic()
        while not self.stop.is_set() and not self.killed.is_set():
            self.registry.heartbeat(self.name_, "inc-" + self.name_, self.info, self.vms)
            self.last_beat = time.monotonic()
            if self.registry.sweeper_lease(self.name_):
                for name in self.registry.sweep():
                    self.downs.append((name, time.monotonic()))
            next_beat += HEARTBEAT
            self.stop.wait(max(0.0, next_beat - time.monotonic()))


def counters(client):
    """(commands processed, bytes received, CPU seconds used) by the Redis server so far."""
    stats, cpu = client.info("stats"), client.info("cpu")
    return (stats["total_commands_processed"], stats["total_net_input_bytes"],
            cpu["used_cpu_sys"] + cpu["used_cpu_user"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="the measured window, after a 3 s warm-up")
    args = parser.parse_args(argv)
    server = shutil.which("redis-server") or sys.exit("redis-server is not installed (make deps)")
    workdir, port = tempfile.mkdtemp(prefix="cluster-sim-"), free_port()
    redis_process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = "redis://127.0.0.1:%d/0" % port
    stop, nodes = threading.Event(), []
    try:
        client = connect(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        run(client, url, args, stop, nodes)
    finally:
        stop.set()
        for node in nodes:                   # every heartbeat thread ends before Redis goes
            node.join(10)
        redis_process.kill()
        redis_process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def run(client, url, args, stop, nodes):
    nodes += [SimNode(url, i, args.vms, stop) for i in range(args.nodes)]
    for node in nodes:
        node.start()
    time.sleep(3.0)                                             # warm-up: every node has beaten a few times
    start_cmds, start_bytes, start_cpu = counters(client)
    started = time.monotonic()
    time.sleep(args.seconds)
    end_cmds, end_bytes, end_cpu = counters(client)
    elapsed = time.monotonic() - started
    print("cluster_sim: %d nodes x %d VMs, heartbeat every %.1f s, down after %.1f s without one" % (
        args.nodes, args.vms, HEARTBEAT, DOWN_AFTER))
    print("  Redis commands per second: %.0f (%.0f per node per heartbeat), input %.1f MB/s, Redis CPU %.0f%%" % (
        (end_cmds - start_cmds) / elapsed, (end_cmds - start_cmds) / elapsed / args.nodes * HEARTBEAT,
        (end_bytes - start_bytes) / elapsed / 1e6, 100 * (end_cpu - start_cpu) / elapsed))
    print("  registry: %d VM records, %d bytes used by Redis" % (client.hlen(key("vms")), client.info("memory")["used_memory"]))
    victim = nodes[len(nodes) // 2]
    victim.killed.set()
    victim.join(5)
    last = victim.last_beat
    seen = recorded = None
    while recorded is None and time.monotonic() - last < 30:
        if seen is None and client.get(key("alive", victim.name_)) is None:
            seen = time.monotonic()
        if client.hget(key("node", victim.name_), "state") == "down":
            recorded = time.monotonic()
        time.sleep(0.01)
    print("  %s stopped heartbeating: seen down (liveness key gone) %.2f s after its last heartbeat, recorded down "
          "by the sweeper %.2f s after it" % (victim.name_, (seen or float("nan")) - last, (recorded or float("nan")) - last))


if __name__ == "__main__":
    main()
