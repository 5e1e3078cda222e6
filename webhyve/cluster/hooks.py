"""Where the REST API meets the cluster: run after the token and schema checks of every /api/v1 request.

A request for a VM on another node is forwarded there and its answer relayed (route()); a create is placed
(place()); a request another node forwarded is served here and never forwarded again. Without a cluster none of
this runs.
"""
import redis
from flask import current_app, g, request

from ..sessions.errors import ApiError
from . import placement
from .forwarding import is_forwarded, received_path
from .node import Lost

DEFAULT_MEM_MB, LINUX_MEM_MB = 64, 256       # what api.create_vm gives a VM that names no size
# The engine's own refusal when its host memory is short (engine/hypervisor.py): a refusal like ours.
ENGINE_FULL = "the modeled host cannot give"


def cluster():
    return current_app.extensions.get("webhyve.cluster")


def forwarded_role(node):
    """The role of a request another node forwarded (signature checked), or None for a request from a user."""
    if not is_forwarded():
        return None
    g.forwarded = True
    return node.signer.verify(request.method, received_path(), request.headers, request.get_data(cache=True))


def route(node, vm_arg):
    """None to serve the request here; else the Response of the VM's node. `vm_arg`: the path argument naming a
    VM in this route, or None."""
    if g.get("forwarded"):
        return capacity_check(node) if request.endpoint == "api.create_vm" else None
    if request.endpoint == "api.create_vm":
        return place(node)
    if vm_arg is None:
        return None
    where = node.locate(request.view_args[vm_arg])
    if where is None:
        return None
    if isinstance(where, Lost):
        return lost(node, where)
    return node.forwarder.rest(where, g.role)


def lost(node, where):
    if request.endpoint == "api.get_vm":
        return {**where.summary(), "events": []}
    if request.endpoint == "api.destroy_vm":
        return node.forget(where)
    raise where.refusal()


def wanted_mem(body):
    return body.get("mem_mb") or (LINUX_MEM_MB if body.get("guest") == "linux" else DEFAULT_MEM_MB)


def capacity_check(node):
    """On the node placement chose: refuse (503, with why) a VM that does not fit, so the next node is tried."""
    used = sum(s.vm.mem_mb for s in node.fleet.list())
    why = placement.refusal(node.name, node.host_mem_mb, used, wanted_mem(g.body), g.body["name"])
    if why is not None:
        raise ApiError(503, why)
    return None


def place(node):
    """Create on the best node that takes the VM (or on the one asked for): each candidate, this node included,
    gets the request signed as placed and creates or refuses; a refusal sends it on to the next."""
    body = g.body
    name = body["name"]
    if name in {s.name for s in node.fleet.list()}:
        return None                         # here already: the view answers as it does without a cluster
    try:
        where, nodes = node.locate(name), node.registry.nodes()
    except (ApiError, redis.RedisError):
        if body.get("node") in (None, node.name):
            return None                     # Redis is away: create here; the heartbeat registers it when it returns
        raise ApiError(503, "cannot place VM %r on node %r: %s" % (
            name, body["node"], node.problem or "Redis does not answer")) from None
    if where is not None:
        raise ApiError(409, "a VM named %r exists on node %r%s" % (
            name, where.record["node"] if isinstance(where, Lost) else where["name"],
            " (lost; DELETE it first)" if isinstance(where, Lost) else ""))
    reasons = []
    for candidate in placement.order(nodes, body.get("node")):
        answer = node.forwarder.rest(candidate, g.role)
        refused = answer.status_code in (502, 503) or (answer.status_code == 400 and ENGINE_FULL in answer.get_data(as_text=True))
        if not refused:
            return answer
        reasons.append((answer.get_json(silent=True) or {}).get("error") or "node %r refused" % candidate["name"])
    raise ApiError(503, "no node can take VM %r: %s" % (name, "; ".join(reasons)))

