"""create_app's cluster mode (docs/cluster.md): Redis as Flask-SocketIO's message queue, and this server as a node.

Without REDIS in the config both are no-ops and the app is the single server it always was.
"""
import re
import socket

import redis

from ..cluster import forwarding
from ..cluster.failover import Checkpointer
from ..cluster.node import ClusterNode
from ..cluster.queue import ClusterQueue
from ..cluster.registry import shown_url

CHANNEL = "webhyve"                  # the message queue's pub/sub channel
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def queue_options(config):
    """Flask-SocketIO's options: every emit (console output, panel updates, VM states) goes through Redis, so a
    browser on any node gets what a VM's own node sends to its sid or to the VM's room (its message_queue, as
    ClusterQueue: one that does not hold this node's own consoles up while Redis is away)."""
    return {"client_manager": ClusterQueue(config["REDIS"], CHANNEL)} if config["REDIS"] else {}


def join(app, fleet, socketio):
    """This server's ClusterNode (not yet heartbeating), or None without REDIS. SystemExit names a bad setting."""
    config = app.config
    if not config["REDIS"]:
        return None
    name = config["NODE"] or socket.gethostname().split(".")[0]
    if not NODE_NAME.fullmatch(name):
        raise SystemExit("webhyve: node name %r: use 1-63 letters, digits, '.', '_' or '-'" % name)
    if not config["REDIS"].startswith(("redis://", "rediss://", "unix://")):
        raise SystemExit("webhyve: --redis %s: use redis://[:PASSWORD@]HOST:PORT/DB (rediss:// for TLS)" %
                         shown_url(config["REDIS"]))
    try:
        node = ClusterNode(name, config["REDIS"], config["CLUSTER_SECRET"], config["NODE_URL"] or config["PUBLIC_URL"],
                           fleet, config["HOST_MEM_MB"],
                           lambda event, data, to, ns: socketio.emit(event, data, to=to, namespace=ns),
                           lambda: (config["CONTROL_TOKEN"], config["VIEWER_TOKEN"]))
    except ValueError as problem:
        raise SystemExit("webhyve: %s" % problem) from None
    own = (config["CONTROL_TOKEN"], config["VIEWER_TOKEN"])
    try:                              # the first node's tokens are the cluster's: one token works on every node
        config["CONTROL_TOKEN"], config["VIEWER_TOKEN"] = node.registry.shared_tokens(*own)
        if (config["CONTROL_TOKEN"], config["VIEWER_TOKEN"]) != own:
            app.logger.warning("webhyve cluster: node %s uses the cluster's tokens (the first node's, kept in Redis), "
                               "not the ones it was given", name)
    except redis.RedisError as problem:
        app.logger.warning("webhyve cluster: Redis at %s does not answer (%s): this node's own tokens apply until "
                           "it does", node.redis_shown, problem)
    if config["RESTART_ON_FAILURE"]:
        node.checkpointer = checkpointer(config, node)
    app.register_blueprint(forwarding.bp)
    return node


def checkpointer(config, node):
    try:
        interval = float(config["RESTART_ON_FAILURE"])
    except ValueError:
        interval = 0.0
    if not interval > 0:
        raise SystemExit("webhyve: --restart-on-failure %s: give the seconds between checkpoints, e.g. 30" %
                         config["RESTART_ON_FAILURE"])
    if not config["SHARED_DIR"]:
        raise SystemExit("webhyve: --restart-on-failure needs --shared-dir DIR, a folder at the same path on every "
                         "node (the checkpoints go there)")
    return Checkpointer(node, interval, config["SHARED_DIR"])
