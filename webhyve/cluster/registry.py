"""The cluster's registry in Redis: the nodes, their liveness, every VM with its node, and the shared access tokens.

Keys (all under PREFIX):
  nodes              set   every node name ever registered (a down node stays, shown as down)
  node:NAME          hash  url, incarnation, cpus, mem_total_mb, mem_used_mb, vcpus, vms, load, heartbeat,
                           started, state (up/down) and down_at once the sweeper saw it stop
  alive:NAME         str   the node's incarnation, with a TTL of DOWN_AFTER: a node is up while this key exists
  vms                hash  VM name → JSON {node, incarnation, summary}; a VM whose node is down, or whose
                           node restarted since (another incarnation), is lost, and stays listed as lost
  config             hash  control_token, viewer_token: the first node's tokens, adopted by every later one
  sweeper            str   the node that records downs (a lease renewed with each heartbeat)
Liveness is Redis's own TTL, not clocks compared across machines: a node that stops heartbeating (kill -9, a cut
cable) is down DOWN_AFTER seconds after its last heartbeat, whoever looks.
"""
import json
import time
from urllib.parse import urlparse

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PREFIX = "webhyve:"
HEARTBEAT = 1.0              # seconds between a node's heartbeats
DOWN_AFTER = 3.0             # seconds without one before the node is down


def connect(url):
    """A client that fails fast (1 s) instead of retrying with backoff: the heartbeat reports Redis gone at once."""
    return redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 1),
                                decode_responses=True, health_check_interval=5)


def shown_url(url):
    """The Redis URL without its password, for logs and pages."""
    parts = urlparse(url)
    host = parts.hostname or "localhost"
    return "%s://%s:%s%s" % (parts.scheme, host, parts.port or 6379, parts.path or "/0")


def key(*parts):
    return PREFIX + ":".join(parts)


class Registry:
    """Reads and writes of the keys above; every call may raise redis.RedisError (the caller decides)."""

    def __init__(self, client):
        self.redis = client

    # -- this node -----------------------------------------------------------------------------------------
    def heartbeat(self, name, incarnation, info, vms):
        """One heartbeat: the node's record, its liveness key and its VMs (`vms`: name → summary), in one round
        trip; then drop records this incarnation wrote for VMs it no longer has (destroyed while Redis was away)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(key("nodes"), name)
        pipe.hset(key("node", name), mapping={**info, "incarnation": incarnation, "heartbeat": "%.3f" % time.time(),
                                              "state": "up"})
        pipe.hdel(key("node", name), "down_at")
        pipe.set(key("alive", name), incarnation, px=int(DOWN_AFTER * 1000))
        for vm, summary in vms.items():
            pipe.hset(key("vms"), vm, record(name, incarnation, summary))
        pipe.execute()

    def put_vm(self, node, incarnation, vm, summary):
        self.redis.hset(key("vms"), vm, record(node, incarnation, summary))

    def drop_vm(self, vm):
        self.redis.hdel(key("vms"), vm)

    def prune(self, name, incarnation, local):
        """Remove this incarnation's records of VMs it no longer holds (`local`: the names it holds)."""
        gone = [vm for vm, rec in self.vms().items()
                if rec["node"] == name and rec["incarnation"] == incarnation and vm not in local]
        if gone:
            self.redis.hdel(key("vms"), *gone)
        return gone

    # -- everyone ------------------------------------------------------------------------------------------
    def nodes(self):
        """{name: record} with `up` from the liveness key."""
        names = sorted(self.redis.smembers(key("nodes")))
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(key("node", name))
            pipe.get(key("alive", name))
        answers = pipe.execute()
        out = {}
        for i, name in enumerate(names):
            rec, alive = answers[2 * i], answers[2 * i + 1]
            out[name] = node_view(name, rec, alive)
        return out

    def vms(self):
        return {vm: json.loads(text) for vm, text in self.redis.hgetall(key("vms")).items()}

    def vm(self, name):
        text = self.redis.hget(key("vms"), name)
        return None if text is None else json.loads(text)

    def node(self, name):
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(key("node", name))
        pipe.get(key("alive", name))
        rec, alive = pipe.execute()
        return node_view(name, rec, alive) if rec else None

    # -- the sweeper: records when a node went down ----------------------------------------------------------
    def sweeper_lease(self, name):
        """True if this node is the one that records downs now (a lease of DOWN_AFTER, renewed each heartbeat)."""
        lease = int(DOWN_AFTER * 1000)
        if self.redis.set(key("sweeper"), name, nx=True, px=lease):
            return True
        if self.redis.get(key("sweeper")) == name:
            self.redis.pexpire(key("sweeper"), lease)
            return True
        return False

    def sweep(self):
        """Mark down every node whose liveness key has expired and that is still recorded up; their names."""
        newly = []
        for name, node in self.nodes().items():
            if not node["up"] and node.get("state") == "up":
                self.redis.hset(key("node", name), mapping={"state": "down", "down_at": "%.3f" % time.time()})
                newly.append(name)
        return newly

    # -- shared configuration ---------------------------------------------------------------------------------
    def shared_tokens(self, control, viewer):
        """The cluster's (control, viewer) tokens: those already in Redis, else these, stored for the nodes after."""
        self.redis.hsetnx(key("config"), "control_token", control)
        self.redis.hsetnx(key("config"), "viewer_token", viewer)
        stored = self.redis.hmget(key("config"), "control_token", "viewer_token")
        return stored[0], stored[1]


def record(node, incarnation, summary):
    return json.dumps({"node": node, "incarnation": incarnation, "summary": summary}, sort_keys=True)


INTS = ("cpus", "mem_total_mb", "mem_used_mb", "vcpus", "vms")
FLOATS = ("load", "heartbeat", "started", "down_at")


def node_view(name, rec, alive):
    """A node's hash as typed values, `up` from its liveness key (alive and of the same incarnation)."""
    out = {"name": name, **rec}
    for field in INTS:
        if field in out:
            out[field] = int(out[field])
    for field in FLOATS:
        if field in out:
            out[field] = float(out[field])
    out["up"] = alive is not None and alive == rec.get("incarnation")
    if "mem_total_mb" in out:
        out["mem_free_mb"] = out["mem_total_mb"] - out.get("mem_used_mb", 0)
    return out
