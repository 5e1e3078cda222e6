"""Access tokens: a control token (type, lifecycle, tunables, uploads, recordings) and a read-only viewer token.

A request carries its token as `Authorization: Bearer …`, `?token=…`, or the cookie a page visit sets; a
Socket.IO connection in its auth object (vmmctl) or the page's cookie. No token, no data.
"""
import functools
import hmac
import secrets

from flask import current_app, g, request

from ..cluster import hooks
from ..sessions.errors import ApiError

CONTROL, VIEW = "control", "view"
COOKIE = "webhyve_token"


def new_token():
    return secrets.token_urlsafe(18)


def role_of(token):
    """CONTROL, VIEW, or None for a missing or wrong token (compared in constant time, as bytes: compare_digest
    refuses str with non-ASCII characters, and a header or cookie may carry any)."""
    if not isinstance(token, str) or not token:
        return None
    given, config = token.encode("utf-8", "surrogatepass"), current_app.config
    if hmac.compare_digest(given, config["CONTROL_TOKEN"].encode()):
        return CONTROL
    if hmac.compare_digest(given, config["VIEWER_TOKEN"].encode()):
        return VIEW
    return None


def request_token():
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer "):].strip()
    return request.args.get("token") or request.cookies.get(COOKIE)


def connection_role(auth):
    """The role of a Socket.IO connection: from its auth object {"token": …} when it sends one (vmmctl), else
    from its request (a page's cookie). A wrong token in the auth object is refused, whatever else comes along."""
    if auth is None:
        return role_of(request_token())
    return role_of(auth.get("token") if isinstance(auth, dict) else None)


def authenticate():
    """Set g.role from the request's token, or from a request another node of the cluster forwarded and signed
    (a bad signature is a 403); ApiError 401 when there is none or it is wrong."""
    node = current_app.extensions.get("webhyve.cluster")
    role = (node is not None and hooks.forwarded_role(node)) or role_of(request_token())
    if role is None:
        raise ApiError(401, "a valid token is required: add ?token=… to the URL that `make run` printed, "
                            "or send Authorization: Bearer TOKEN")
    g.role = role
    return role


def control_required(view):
    """Only the control token may change things; a viewer gets 403 and nothing changes."""
    @functools.wraps(view)
    def wrapper(*args, **kwargs):
        if g.get("role") != CONTROL:
            raise ApiError(403, "this needs the control token; the viewer token is read-only")
        return view(*args, **kwargs)
    wrapper.needs_control = True                  # the OpenAPI description says which token a route needs
    return wrapper
