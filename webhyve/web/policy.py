"""Who may do what to which VM: the one policy function, may(principal, action, session), and its helpers.

A Principal is whoever asks: a user of the users file (by password session or API token), or, in the
two-token quick start, the control token (an administrator) or the viewer token (a viewer of every VM).
The roles are Proxmox VE's built-ins, narrowed:

  administrator  everything: every VM, the host-wide tunables, demos, migration, snapshots' files, the audit log
  operator       READ and CONTROL on the VMs it owns or that are in one of its pools; CREATE (it owns the VM)
  viewer         READ on the VMs it owns or that are in one of its pools

A VM the principal may not READ does not exist for it (404, the same message as for a missing VM: no
existence leak); an action its role lacks on a VM it sees is a 403. The REST views (requires()), the
pages, both Socket.IO namespaces and /metrics all ask here.
"""
import functools

from flask import current_app, g

from ..sessions.errors import ApiError

READ, CONTROL, CREATE, ADMIN = "read", "control", "create", "admin"
GRANTS = {"administrator": {READ, CONTROL, CREATE, ADMIN}, "operator": {READ, CONTROL, CREATE}, "viewer": {READ}}


class Principal:
    """`name` and `role` (administrator, operator, viewer); `pools`; `sees_all`: every VM is in its scope (the
    administrator and both quick-start tokens); `token`: the quick start's word for it ("control", "view"), None
    for a user; `via`: "password" (a session cookie: CSRF applies), "token" or "quickstart"."""

    def __init__(self, name, role, pools=(), sees_all=False, token=None, via="token", credential=None):
        self.name, self.role, self.pools, self.token, self.via = name, role, frozenset(pools), token, via
        self.credential = credential       # users mode: the API token, or the session's password mark (access.py)
        self.sees_all = sees_all or role == "administrator"

    def grants(self, action):
        return action in GRANTS[self.role]

    def in_scope(self, session):
        return self.sees_all or getattr(session, "owner", None) == self.name or getattr(session, "pool", None) in self.pools


def quickstart(token_role):
    """The principal of a quick-start token ("control" or "view")."""
    if token_role == "control":
        return Principal("control token", "administrator", token="control", via="quickstart")
    return Principal("viewer token", "viewer", sees_all=True, token="view", via="quickstart")


def may(principal, action, session=None):
    """True when `principal` may do `action` (READ, CONTROL, CREATE, ADMIN) on `session` (a VmSession, or None
    for what concerns no VM)."""
    if principal is None or not principal.grants(action):
        return False
    return session is None or principal.in_scope(session)


def no_vm(name):
    return ApiError(404, "no VM named %r" % name)


def refusal(principal, action):
    """The 403 for an action the principal's role lacks, in the quick start's words when it is a token."""
    if principal.token == "view":
        return ApiError(403, "this needs the control token; the viewer token is read-only")
    needs = {CONTROL: "an operator or administrator of this VM", CREATE: "an operator or administrator",
             ADMIN: "an administrator: it concerns the whole host"}[action]
    article = "an" if principal.role[0] in "ao" else "a"
    return ApiError(403, "%s is %s %s; this needs %s" % (principal.name, article, principal.role, needs))


def visible_session(principal, fleet, name):
    """The VmSession named `name` if the principal may see it; ApiError 404 (the same as for no VM) otherwise.
    For a principal that sees everything, None without looking: the VM may live on another node of a cluster."""
    if principal.sees_all:
        return None
    try:
        session = fleet.get(name)
    except ApiError:
        raise no_vm(name) from None
    if not principal.in_scope(session):
        raise no_vm(name)
    return session


def check(principal, action, fleet, name=None):
    """Raise the 404 or 403 `may` implies for `action` on VM `name` (None: no VM)."""
    session = visible_session(principal, fleet, name) if name is not None else None
    if not may(principal, action, session):
        raise refusal(principal, action)


def visible(principal, sessions):
    """The sessions the principal may READ."""
    return [s for s in sessions if may(principal, READ, s)]


def current():
    return g.get("user")


def requires(action):
    """Mark a REST view as needing `action` on the VM its path names (if any: api_schema.guard has put its name in
    g.vm_name, from the route table), and check it when called. The OpenAPI description reads the mark (`needs`)."""
    def decorate(view):
        @functools.wraps(view)
        def wrapper(*args, **kwargs):
            check(current(), action, current_app.extensions["webhyve.fleet"], g.get("vm_name"))
            return view(*args, **kwargs)
        wrapper.needs = action
        wrapper.needs_control = True
        return wrapper
    return decorate


