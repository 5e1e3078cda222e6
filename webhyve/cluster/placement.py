"""Where a new VM goes: the up nodes ordered by free memory, then free CPUs; a node that cannot take it says why.

Ordering is the whole policy, as Proxmox's HA manager's "static" scheduler ranks nodes by their free resources:
the first node tries, and a node that refuses (not enough memory, by its own count at that moment) sends the
request on to the next one. Asking for a node (`node` in the create request) tries that node only.
"""
import time

from ..sessions.errors import ApiError


def free_cpus(node):
    """CPUs not claimed by the node's vCPUs nor busy by its load average, whichever is less free."""
    return node["cpus"] - max(node.get("vcpus", 0), node.get("load", 0.0))


def order(nodes, asked=None):
    """The nodes to try, best first. `nodes`: {name: node view}; `asked`: a node name or None."""
    if asked is not None:
        node = nodes.get(asked)
        if node is None:
            raise ApiError(400, "no node named %r in the cluster (nodes: %s)" % (asked, ", ".join(sorted(nodes)) or "none"))
        if not node["up"]:
            raise ApiError(409, "node %r is down (no heartbeat since %s): it cannot take a VM" % (
                asked, clock(node.get("heartbeat"))))
        return [node]
    up = [n for n in nodes.values() if n["up"]]
    if not up:
        raise ApiError(503, "no node of the cluster is up")
    return sorted(up, key=lambda n: (-n["mem_free_mb"], -free_cpus(n), n["name"]))


def refusal(node_name, mem_total_mb, mem_used_mb, mem_mb, vm):
    """Why this node cannot take a VM of `mem_mb`, or None when it can."""
    free = mem_total_mb - mem_used_mb
    if mem_mb > free:
        return "node %r cannot take VM %r: it needs %d MiB and %d MiB of the node's %d MiB are free" % (
            node_name, vm, mem_mb, free, mem_total_mb)
    return None


def clock(stamp):
    return "never" if stamp is None else time.strftime("%H:%M:%S UTC", time.gmtime(stamp))
