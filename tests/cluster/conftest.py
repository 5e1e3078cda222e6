"""A real cluster for the tests: one redis-server with a password on a free port, three webhyve nodes (a, b, c) as
separate `python -m webhyve.web.serve --redis … --node …` processes on loopback ports, started once per module."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import redis
import requests

from tests.webhyve.live import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTROL, VIEWER = "cluster-control-token", "cluster-viewer-token"
SECRET = "cluster-test-secret"
PASSWORD = "cluster-redis-password"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
# Different modeled host memory per node, so placement by free memory has one right answer: b, then c, then a.
NODE_MEM_MB = {"a": 512, "b": 1024, "c": 768}
EXTRA_MEM_MB = {"d": 512}            # a node a test starts (and kills) itself
RESTART_ON_FAILURE = ("c",)          # c checkpoints its running VMs every second into the shared folder


def wait_for(what, check, timeout=30.0, every=0.05):
    """check()'s first truthy value within `timeout` seconds; else fail naming `what` and the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except requests.RequestException as problem:
            last = problem
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every)
    raise AssertionError("%s: not within %.0f s (last: %r)" % (what, timeout, last))


class RedisServer:
    """redis-server with its own directory, no persistence, a password; kill() and start() again on the same port."""

    def __init__(self, workdir):
        if not os.path.exists(REDIS_SERVER):
            pytest.skip("redis-server is not installed (make deps installs it)")
        self.dir, self.port, self.process = workdir, free_port(), None
        self.url = "redis://:%s@127.0.0.1:%d/0" % (PASSWORD, self.port)

    def start(self):
        log = open(os.path.join(self.dir, "redis.log"), "a")
        self.process = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                         "--save", "", "--appendonly", "no", "--requirepass", PASSWORD],
                                        stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        wait_for("redis-server answers", lambda: self._ping(client), timeout=10)

    @staticmethod
    def _ping(client):
        try:
            return client.ping()
        except redis.RedisError:
            return False

    def kill(self):
        self.process.kill()
        self.process.wait(10)


class Node:
    """One webhyve node: serve.py and its gunicorn, in a session of their own so kill() takes them all (kill -9)."""

    def __init__(self, name, redis_url, workdir):
        self.name, self.port = name, free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        env = dict(os.environ, WEBHYVE_CONTROL_TOKEN=CONTROL, WEBHYVE_VIEWER_TOKEN=VIEWER,
                   WEBHYVE_HOST_MEM_MB=str({**NODE_MEM_MB, **EXTRA_MEM_MB}[name]),
                   WEBHYVE_RECORDINGS_DIR=os.path.join(workdir, name, "recordings"),
                   WEBHYVE_SNAPSHOTS_DIR=os.path.join(workdir, name, "snapshots"))
        self.log_path = os.path.join(workdir, "node-%s.log" % name)
        self.shared = os.path.join(workdir, "shared")
        failover = ["--restart-on-failure", "1", "--shared-dir", self.shared] if name in RESTART_ON_FAILURE else []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "webhyve.web.serve", "--port", str(self.port), "--threads", "40",
             "--redis", redis_url, "--node", name, "--cluster-secret", SECRET, *failover],
            cwd=ROOT, env=env, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def api(self, method, path, token=CONTROL, **kwargs):
        return requests.request(method, self.url + "/api/v1" + path, headers={"Authorization": "Bearer " + token},
                                timeout=30, **kwargs)

    def up(self):
        if self.process.poll() is not None:
            raise AssertionError("node %s exited:\n%s" % (self.name, self.log()))
        try:
            return self.api("GET", "/session").ok
        except requests.RequestException:
            return False

    def log(self):
        with open(self.log_path) as f:
            return f.read()[-4000:]

    def kill(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


class Cluster:
    def __init__(self, workdir):
        self.workdir = workdir
        self.redis = RedisServer(workdir)
        self.redis.start()
        self.nodes = {name: Node(name, self.redis.url, workdir) for name in NODE_MEM_MB}

    def wait_ready(self):
        for node in self.nodes.values():
            wait_for("node %s answers" % node.name, node.up, timeout=120, every=0.2)
        wait_for("every node registered", lambda: len(self.up_nodes(self.nodes["a"])) == 3)

    @staticmethod
    def up_nodes(node):
        return {n["name"] for n in node.api("GET", "/vms").json()["nodes"] if n["state"] == "up"}

    def stop(self):
        for node in self.nodes.values():
            node.kill()
        self.redis.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    cluster = Cluster(str(tmp_path_factory.mktemp("cluster")))
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop()
