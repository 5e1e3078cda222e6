"""What every REST route under /api/v1 accepts, as one table, and the check that runs before each view.

A route's entry declares its path parameters, its query parameters and its JSON body (create_vm also a
multipart form). check_request() runs after authentication: it parses the body once, refuses anything
the entry does not allow with a 400 naming the field and the problem, and leaves the clean values in
g.body and g.query for the view. A route without body fields takes no body (or `{}`); `token` is the
one query parameter every route takes (access.py). Views never read request.args or the raw JSON.
"""
import json

from flask import current_app, g, request

from engine.door.tables import DEFAULT_PROFILE, KINDS, PROFILES

from ..cluster import hooks
from ..sessions.tasks import LIMIT as TASKS_KEPT
from . import policy
from .access import authenticate
from .schema import NOTHING, Address, Bool, Int, Invalid, Name, Schema, SchemaError, Setting, Text, TextList, shown

MAX_INPUT = 4096                 # characters typed in one request or event
MAX_MEM_MB = 4096
MAX_SLOTS = 32                   # -s arguments in one create (the engine says how many the PCI window holds)
DEFAULT_MEM_MB = 64             # when a create names none (the bundled Linux guest takes 256: api.py)
VM = Name("VM name")
SNAPSHOT = Name("snapshot name")
WORD = Text(1, 64)               # a path segment the view looks up and answers 404 for when unknown
VM_CONFIG = dict(name=VM, kind=Text(choices=KINDS, default=None, nullable=True),
                 mem_mb=Int(1, MAX_MEM_MB, default=None, nullable=True), cpus=Int(1, 1 << 16, default=1),       # the engine judges the upper bound and says why (VM_MAXCPU)
                 profile=Text(choices=PROFILES, default=DEFAULT_PROFILE),
                 cmdline=Text(0, 4096, default=""), start=Bool(default=True),
                 node=Name("node name", default=None, nullable=True),     # cluster mode: where to create it
                 slots=TextList(Text(1, 1024), MAX_SLOTS, default=()),    # bhyve's -s arguments (devices.py)
                 owner=Name("user name", default=None, nullable=True),    # users mode: whose VM (policy.py)
                 pool=Name("pool name", default=None, nullable=True))


class Route:
    """One route: `path` fields (by their name in the URL rule), `query` and `body` Schemas; `form`, the
    Schema of a multipart upload's fields, whose `files` are the names of its file fields (`optional_files`
    may be left out)."""

    def __init__(self, path=None, query=NOTHING, body=NOTHING, form=None, files=(), optional_files=()):
        self.path, self.query, self.body, self.form, self.files = path or {}, query, body, form, files
        self.optional_files = optional_files


def vm_route(**kwargs):
    return Route(path={"name": VM}, **kwargs)


def vcpu_route(**kwargs):
    return Route(path={"name": VM, "index": Int(0, 63), **kwargs.pop("path", {})}, **kwargs)


ROUTES = {
    "api.whoami": Route(),
    "api.guests": Route(),
    "api.list_vms": Route(),
    "api.create_vm": Route(body=Schema(**VM_CONFIG, guest=Text(1, 64)), form=Schema(**VM_CONFIG), files=("image",),
                            optional_files=("initrd",)),
    "api.get_vm": vm_route(),
    "api.destroy_vm": vm_route(),
    "api.lifecycle": Route(path={"name": VM, "action": WORD}),
    "api.migrate": vm_route(body=Schema(node=Name("node name"), auto_converge=Bool(default=False))),
    "api.console_text": vm_route(),
    "api.console_input": vm_route(body=Schema(data=Text(1, MAX_INPUT))),
    "api.vga": vm_route(),
    "api.registers": vcpu_route(),
    "api.vmcs": vcpu_route(),
    "api.stats": vcpu_route(),
    "api.translate": vcpu_route(query=Schema(gla=Address())),
    "api.ept": vm_route(),
    "api.ept_lookup": vm_route(query=Schema(gpa=Address())),
    "api.caches": vm_route(),
    "api.pci_devices": vm_route(),
    "api.exit_history": vm_route(),
    "api.tunables": Route(),
    "api.set_tunable": Route(path={"name": WORD}, body=Schema(value=Setting())),
    "api.take_screenshot": Route(path={"name": VM, "which": WORD}),
    "api.start_recording": vm_route(),
    "api.stop_recording": vm_route(),
    "api.recordings": Route(),
    "api.download_recording": Route(path={"rid": Text(1, 128)}, query=Schema(download=Bool(default=False))),
    "ctl.vcpu_state": vcpu_route(),
    "ctl.set_register": vcpu_route(path={"reg": WORD}, body=Schema(value=Address())),
    "ctl.set_capability": vcpu_route(path={"cap": WORD}, body=Schema(value=Int(0, 1))),
    "ctl.run_once": vcpu_route(),
    "ctl.inject_nmi": vcpu_route(),
    "snapdemo.list_snapshots": Route(),
    "snapdemo.save_snapshot": Route(path={"vm": VM}, body=Schema(name=SNAPSHOT, suspend=Bool(default=False))),
    "snapdemo.restore_snapshot": Route(path={"name": SNAPSHOT},
                                       body=Schema(vm=Name("VM name", default=None, nullable=True), start=Bool(default=True))),
    "snapdemo.delete_snapshot": Route(path={"name": SNAPSHOT}),
    "snapdemo.list_demos": Route(),
    "snapdemo.run_demo": Route(path={"name": WORD}),
    "tasks.list_tasks": Route(query=Schema(vm=Name("VM name", default=None, nullable=True),
                                           limit=Int(1, TASKS_KEPT, default=100))),
    "audit.audit_log": Route(query=Schema(limit=Int(1, 100000, default=200))),
}


def guard():
    """Every API blueprint's before_request: who is asking (401 without a token), then what they send."""
    authenticate()
    check_request()
    vm_arg = vm_argument(ROUTES[request.endpoint])
    g.vm_name = request.view_args[vm_arg] if vm_arg is not None else None     # what policy.requires checks
    if vm_arg is not None:               # another user's VM is a 404, as one that does not exist (policy.py)
        policy.visible_session(g.user, current_app.extensions["webhyve.fleet"], g.vm_name)
    node = current_app.extensions.get("webhyve.cluster")
    if node is not None:                 # cluster mode: a VM on another node is answered by that node
        return hooks.route(node, vm_arg)


def vm_argument(route):
    """The path argument that names a VM in this route (`name`, or `vm` for a snapshot), or None."""
    return next((arg for arg, field in route.path.items() if field is VM), None)


def check_request():
    """Check the request against its route's entry; the clean body and query go to g.body and g.query."""
    route = ROUTES[request.endpoint]
    path = request.path if len(request.path) <= 80 else request.path[:77] + "..."
    where = "%s %s" % (request.method, path)
    for key, field in route.path.items():
        value = request.view_args[key]
        try:
            field.check(value)
        except Invalid as problem:
            raise SchemaError("%s: the %s in the path must be %s, not %s%s" % (
                where, key, problem.kind, shown(value), ": " + problem.detail if problem.detail else "")) from None
    query = {k: v for k, v in request.args.items(multi=False) if k != "token"}
    if len(request.args.getlist("token")) > 1 or any(len(request.args.getlist(k)) > 1 for k in query):
        raise SchemaError("%s: a query parameter is given more than once" % where)
    g.query = route.query.check(query, where + " (query string)", from_text=True)
    g.body = body(route, where)


def body(route, where):
    if request.mimetype == "multipart/form-data" and route.form is not None:
        unknown = [k for k in request.files if k not in route.files + route.optional_files]
        missing = [k for k in route.files if k not in request.files]
        if unknown or missing:
            raise SchemaError("%s: the upload needs the file field%s %s%s, not %s" % (
                where, "s" if len(route.files) > 1 else "", ", ".join(route.files),
                " (and may have %s)" % ", ".join(route.optional_files) if route.optional_files else "",
                ", ".join(request.files) or "none"))
        fields = {k: v for k, v in request.form.items() if v != ""}      # an empty form input means "not given"
        return route.form.check(fields, where + " (form)", from_text=True)
    raw = request.get_data(cache=True)
    if not raw and not any(f.required for f in route.body.fields.values()):
        return route.body.check({}, where)
    if not request.is_json:
        raise SchemaError("%s: send a JSON object with Content-Type: application/json%s" % (
            where, "" if route.body.fields else ", or no body: " + route.body.takes()))
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as problem:
        raise SchemaError("%s: the body is not JSON: %s" % (where, str(problem)[:80])) from None
    return route.body.check(payload, where)
