"""Who is asking: the quick start's two tokens, or (users mode) a user by login session or API token.

Quick start (no users file): a control token (type, lifecycle, tunables, uploads, recordings) and a read-only
viewer token. A request carries its token as `Authorization: Bearer …`, `?token=…`, or the cookie a page visit
sets; a Socket.IO connection in its auth object (vmmctl) or the page's cookie. No token, no data.

Users mode (WEBHYVE_USERS / serve --users): the two tokens are off. A request carries `Authorization: Bearer
USER!TOKENID=SECRET` (an API token, users.py) or the signed session cookie /login sets (pages.py); a
cookie-authenticated request that changes something must carry the session's CSRF token (csrf.py). What each
principal may do is policy.py's.
"""
import hmac
import secrets

from flask import current_app, g, request, session

from ..cluster import hooks
from ..sessions.errors import ApiError
from . import policy
from .policy import CONTROL as CONTROL_ACTION

CONTROL, VIEW = "control", "view"
COOKIE = "webhyve_token"


def new_token():
    return secrets.token_urlsafe(18)


def users():
    """The UserStore in users mode, None in the quick start."""
    return current_app.extensions.get("webhyve.users")


def role_of(token):
    """CONTROL, VIEW, or None for a missing or wrong token (compared in constant time, as bytes: compare_digest
    refuses str with non-ASCII characters, and a header or cookie may carry any). Always None in users mode."""
    if not isinstance(token, str) or not token or users() is not None:
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


def principal_of(token):
    """The Principal a bearer token names (a quick-start token, or a user's API token), or None."""
    store = users()
    if store is None:
        role = role_of(token)
        return policy.quickstart(role) if role else None
    user = store.by_token(token) if isinstance(token, str) and token else None
    return user and policy.Principal(user.name, user.role, user.pools, via="token", credential=token)


def session_principal():
    """Users mode: the user of the login session cookie, or None (none, deleted, or the password changed since)."""
    store = users()
    name = session.get("user") if store is not None else None
    user = store.get(name) if name else None
    if user is None or not hmac.compare_digest(session.get("mark", ""), user.session_mark()):
        return None
    return policy.Principal(user.name, user.role, user.pools, via="password", credential=user.session_mark())


def request_principal():
    """Who this HTTP request is: a bearer token wins over a session cookie, as it does over the token cookie."""
    header = request.headers.get("Authorization", "")
    if users() is not None and not header.startswith("Bearer "):
        return session_principal()
    return principal_of(request_token())


def connection_principal(auth):
    """The principal of a Socket.IO connection: from its auth object {"token": …} when it sends one (vmmctl),
    else from its request (a page's cookie). A wrong token in the auth object is refused, whatever else comes along."""
    if auth is None:
        return request_principal()
    return principal_of(auth.get("token") if isinstance(auth, dict) else None)


def still_valid(principal):
    """A Socket.IO connection's principal as the users file says now (its role and pools may have changed), or
    ApiError 401 when its user was deleted, its token revoked or its password changed since it connected."""
    if users() is None or principal.via == "quickstart":
        return principal
    if principal.via == "token":
        now = principal_of(principal.credential)
    else:
        user = users().get(principal.name)
        now = user and hmac.compare_digest(principal.credential, user.session_mark()) and policy.Principal(
            user.name, user.role, user.pools, via="password", credential=principal.credential)
    if not now:
        raise ApiError(401, "your login or API token is no longer valid: log in again and reload the page")
    return now


def ambient(principal, forwarded):
    """Whether the request's credential is one the browser attaches by itself, which a page of another site (or of
    another port of this host: SameSite calls that the same site) could make it send: a login session, or the
    quick start's token cookie when neither an Authorization header nor ?token= came along."""
    if principal.via == "password":
        return True
    return (principal.via == "quickstart" and not forwarded and not request.args.get("token")
            and not request.headers.get("Authorization", "").startswith("Bearer ") and COOKIE in request.cookies)


def authenticate():
    """Set g.user (a policy.Principal) and g.role (CONTROL or VIEW, as the cluster forwards it) from the request,
    or from a request another node of the cluster forwarded and signed (a bad signature is a 403); ApiError 401
    when there is none or it is wrong. A cookie-authenticated change (a login session's, or the quick start's token
    cookie) must carry its CSRF token (403)."""
    node = current_app.extensions.get("webhyve.cluster")
    forwarded = node is not None and hooks.forwarded_role(node)
    principal = policy.quickstart(forwarded) if forwarded else request_principal()
    if principal is None:
        if users() is not None:
            raise ApiError(401, "log in at /login, or send Authorization: Bearer USER!TOKENID=SECRET (an API token "
                                "from `python -m webhyve.web.users token add`)")
        raise ApiError(401, "a valid token is required: add ?token=… to the URL that `make run` printed, "
                            "or send Authorization: Bearer TOKEN")
    if ambient(principal, forwarded) and request.method not in ("GET", "HEAD", "OPTIONS"):
        from .csrf import require_csrf          # csrf.py renders into pages, which import this module
        require_csrf()
    g.user = principal
    g.role = CONTROL if principal.grants(CONTROL_ACTION) else VIEW
    return g.role


control_required = policy.requires(CONTROL_ACTION)
