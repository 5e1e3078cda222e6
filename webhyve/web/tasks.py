"""The task log on the web: `GET /api/v1/tasks`, the `recorded` mark that makes a REST view a task, and the /tasks
Socket.IO namespace that pushes every change (server → browser: task {the task's dict}).

A view marked `@recorded(kind)` runs inside a task: who asked (g.user when users are on, else the token's role),
which VM, a description from KINDS; it ends OK with the view's answer, or with the error the view answered (its
JSON "error" text and HTTP status), and the answer itself is unchanged. A view that hands its work to a thread
(a demo) calls `current().detach()` and that thread ends the task. Progress: `current().progress(fraction, text)`.
"""
import functools
import socket

import redis
from flask import Blueprint, current_app, g
from werkzeug.exceptions import HTTPException

from ..sessions.errors import ApiError
from ..sessions.fleet import LIFECYCLE
from ..sessions.tasks import TaskLog
from . import policy
from .api_schema import guard
from .events import CheckedNamespace

bp = Blueprint("tasks", __name__, url_prefix="/api/v1")
bp.before_request(guard)
NAMESPACE = "/tasks"

# kind: (what the log says, the VM it is about, from the view's path arguments and its checked body; and once
# it has answered, from its answer: a restore names its VM only then)
KINDS = {
    "create": ("create VM {vm}", lambda args, body: body.get("name"), None),
    "destroy": ("destroy VM {vm}", lambda args, body: args["name"], None),
    "lifecycle": ("{args[action]} VM {vm}", lambda args, body: args["name"], None),
    "snapshot": ("save snapshot {body[name]} of VM {vm}", lambda args, body: args["vm"], None),
    "restore": ("restore snapshot {args[name]} as VM {vm}", lambda args, body: body.get("vm"),
                lambda answer: answer["vm"]["name"]),
    "demo": ("run demo {args[name]}", lambda args, body: None, lambda answer: answer["vm"]),
    "migrate": ("migrate VM {vm} to node {body[node]}", lambda args, body: args["name"], None),
}


def log():
    return current_app.extensions["webhyve.tasks"]


def current():
    """The task of the view running now."""
    return g.task


def recorded(kind):
    """Mark a REST view as a task of `kind` (KINDS)."""
    text, vm_of, vm_after = KINDS[kind]

    def mark(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            body = g.get("body") or {}
            vm = vm_of(kwargs, body)
            action = kwargs["action"] if kind == "lifecycle" and kwargs["action"] in LIFECYCLE else kind
            task = g.task = log().start(action, vm, text.format(vm=vm or "?", body=body, args=kwargs), who())
            try:
                answer = view(*args, **kwargs)
            except ApiError as problem:
                task.fail(problem.message, problem.status)
                raise
            except HTTPException as problem:
                task.fail("%s: %s" % (problem.name, problem.description), problem.code)
                raise
            except Exception as problem:
                task.fail("internal error: %r" % problem, 500)
                raise
            if vm_after is not None and vm is None:
                vm = vm_after(answer[0] if isinstance(answer, tuple) else answer)
                log().update(task, vm=vm, description=text.format(vm=vm, body=body, args=kwargs))
            if not task.detached:
                task.finish(http_status=answer[1] if isinstance(answer, tuple) else 200)
            return answer
        return wrapper
    return mark


def who():
    """The user's name in users mode (g.user, a policy.Principal), else the quick-start token's word (control)."""
    user = g.get("user")
    if user is not None:
        return user.token or user.name
    return g.get("role") or "?"


@bp.get("/tasks")
def list_tasks():
    """The task log, newest first: what was started here, by whom, when, how long it took, its result or progress.

    `vm` keeps one VM's tasks; `limit` the newest so many. In cluster mode every node's log, merged; a node that does
    not answer is named in `unanswered`."""
    vm, limit = g.query["vm"], g.query["limit"]
    node = current_app.extensions.get("webhyve.cluster")
    if node is None:
        fleet = current_app.extensions["webhyve.fleet"]
        return {"tasks": [t for t in log().list(vm) if seen_by(g.user, t, fleet)][:limit]}
    merged, unanswered = log().list(vm, limit), []
    for other in others(node):
        try:
            merged += node.forwarder.op(other, "tasks.list", "", g.role, {"vm": vm, "limit": limit})["tasks"]
        except ApiError as problem:
            unanswered.append({"node": other["name"], "error": problem.message})
    merged.sort(key=lambda t: (t["started"], t["id"]), reverse=True)
    return {"tasks": merged[:limit], "unanswered": unanswered}


def seen_by(principal, task, fleet):
    """Whether a task is in the principal's view (policy.py): every task for who sees every VM; else the tasks it
    started and those of the VMs it may see (a VM it may not see does not exist for it, nor do its tasks)."""
    if principal.sees_all or task["who"] == principal.name:
        return True
    try:
        return task["vm"] is not None and policy.may(principal, policy.READ, fleet.get(task["vm"]))
    except ApiError:
        return False


def others(node):
    """The other nodes that are up, from the registry (none while Redis is away: this node's log is all there is)."""
    try:
        nodes = node.registry.nodes()
    except redis.RedisError:
        return []
    return [n for name, n in sorted(nodes.items()) if name != node.name and n["up"]]


def serve_list(tasks, sid, role, payload):
    """The "tasks.list" cluster operation {vm, limit}: this node's part of another node's GET /tasks."""
    vm, limit = payload.get("vm"), payload.get("limit")
    if not (vm is None or isinstance(vm, str)) or not isinstance(limit, int) or isinstance(limit, bool):
        raise ApiError(400, "tasks.list takes {vm: a VM name or null, limit: an integer}")
    return {"tasks": tasks.list(vm, limit)}


class TasksNamespace(CheckedNamespace):
    """Pushes each task change to every connected page; a page sends nothing (any event is refused)."""

    def __init__(self, namespace, socketio, fleet, users_mode):
        super().__init__(namespace)
        self.socketio, self.fleet, self.users_mode = socketio, fleet, users_mode

    def push(self, task):
        """To every page at once without users (in cluster mode through Redis to every node's); in users mode
        (one node) to each page whose user may see the task."""
        if not self.users_mode:                  # (pushes come from any thread: no app context to ask)
            self.socketio.emit("task", task, namespace=NAMESPACE)
            return
        for sid, principal in list(self.principals.items()):
            if seen_by(principal, task, self.fleet):
                self.socketio.emit("task", task, to=sid, namespace=NAMESPACE)


def install(app, socketio, cluster):
    """The app's task log, its route and namespace; every change is pushed to the /tasks namespace (in cluster
    mode through Redis to every node's pages)."""
    tasks = TaskLog(cluster.name if cluster is not None else socket.gethostname())
    namespace = TasksNamespace(NAMESPACE, socketio, app.extensions["webhyve.fleet"],
                               app.extensions.get("webhyve.users") is not None)
    tasks.listeners.append(namespace.push)
    socketio.on_namespace(namespace)
    if cluster is not None:              # another node's GET /tasks asks for this node's log
        cluster.ops["tasks.list"] = functools.partial(serve_list, tasks)
    app.extensions["webhyve.tasks"] = tasks
    app.register_blueprint(bp)
    return tasks

