"""The HTML pages: the VM list, one page per VM, and (users mode) the login page. They need a token or a login.

Quick start: a visit with ?token=… puts the token in an HttpOnly cookie and redirects to the same URL without it,
as Jupyter does, so the token leaves the address bar, the history, and the URLs that server logs and Referer
headers carry. The pages themselves never hold the token: their scripts' requests and Socket.IO connections
carry the cookie.

Users mode: a page without a login redirects to /login?next=…; the login form (CSRF token, throttled per name)
puts the user in Flask's signed session cookie (HttpOnly, SameSite=Lax, Secure behind https), a fresh session
each time. A page shows only the VMs its user may see (policy.py); another's VM is the same 404 as a missing one.
"""
import threading
import time
from urllib.parse import urlencode

from flask import Blueprint, current_app, g, redirect, render_template, request, session

from ..sessions.errors import ApiError
from ..sessions.fleet import LEGEND
from . import audit, policy
from .access import COOKIE, CONTROL, VIEW, request_principal, role_of, users
from .csrf import csrf_ok, csrf_token
from .users import check_nobody

bp = Blueprint("pages", __name__)
THROTTLE_FAILURES, THROTTLE_WINDOW = 5, 60.0        # failed logins per name per minute before refusing


@bp.app_context_processor
def csrf_for_templates():
    return {"csrf_token": csrf_token}


def _page(template, status=200, vm=None, **context):
    """Render `template` for whoever asks; `vm`: the VM the page is about (its control buttons follow may())."""
    if "token" in request.args and users() is None:
        return _token_to_cookie()
    principal = request_principal()
    if principal is None:
        if users() is not None:
            return redirect("/login?" + urlencode({"next": request.full_path.rstrip("?")}), 303)
        return render_template("token.html"), 401
    g.user = principal
    session_of = None
    if vm is not None and template != "novm.html":
        try:
            session_of = policy.visible_session(principal, current_app.extensions["webhyve.fleet"], vm)
        except ApiError:
            return _page("novm.html", status=404, vm=vm)
    action = policy.CREATE if vm is None else policy.CONTROL
    role = CONTROL if policy.may(principal, action, session_of) else VIEW
    g.role = role
    user = principal if principal.via == "password" else None
    return render_template(template, role=role, user=user, vm=vm, admin=policy.may(principal, policy.ADMIN),
                           **context), status


def _token_to_cookie():
    """303 to the same URL without `token`, setting the cookie; a wrong token is the token page, no cookie.
    SameSite=Lax, not Strict: a link to the page clicked on another site arrives as a cross-site navigation,
    and Strict would withhold the new cookie from the redirect that follows it. Lax lets only top-level GETs
    carry it across sites, and no GET here changes anything; Socket.IO refuses other origins."""
    token = request.args["token"]
    if role_of(token) is None:
        return render_template("token.html"), 401
    rest = urlencode([(k, v) for k, v in request.args.items(multi=True) if k != "token"])
    response = redirect(request.path + ("?" + rest if rest else ""), 303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="Lax")
    return response


@bp.get("/")
def vm_list():
    return _page("index.html")


@bp.get("/vms/<name>")
def vm_page(name):
    """The VM's page; a VM that does not exist (or that this user may not see) is a 404 page saying so."""
    fleet, cluster = current_app.extensions["webhyve.fleet"], current_app.extensions["webhyve.cluster"]
    if name not in {s.name for s in fleet.list()} and not (cluster is not None and cluster.knows(name)):
        return _page("novm.html", status=404, vm=name)
    return _page("vm.html", vm=name, legend=LEGEND, clustered=cluster is not None)


# -- users mode: log in and out ---------------------------------------------------------------------------------
class Throttle:
    """Failed logins per name in a sliding window. Legend: `failures` is guarded by `lock`."""

    def __init__(self, limit=THROTTLE_FAILURES, window=THROTTLE_WINDOW):
        self.limit, self.window = limit, window
        self.failures, self.lock = {}, threading.Lock()

    def wait(self, name):
        """Seconds until `name` may try again (0: now)."""
        now = time.monotonic()
        with self.lock:
            recent = [t for t in self.failures.get(name, []) if now - t < self.window]
            self.failures[name] = recent
            return 0 if len(recent) < self.limit else int(self.window - (now - recent[0])) + 1

    def failed(self, name):
        now = time.monotonic()
        with self.lock:
            if len(self.failures) > 10000:        # names tried once long ago: forget them, memory stays bounded
                self.failures = {n: ts for n, ts in self.failures.items() if now - ts[-1] < self.window}
            self.failures.setdefault(name, []).append(now)

    def clear(self, name):
        with self.lock:
            self.failures.pop(name, None)


def safe_next(target):
    """Only a path on this site: an absolute or scheme-relative URL would make the login an open redirect."""
    if isinstance(target, str) and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@bp.route("/login", methods=("GET", "POST"))
def login():
    if users() is None:
        return redirect("/", 303)
    target = safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("login.html", next=target, error=None, name=""), 200
    name = request.form.get("name", "")[:64]
    if not csrf_ok():
        return render_template("login.html", next=target, name=name,
                               error="The form expired (no or a wrong CSRF token): try again."), 403
    throttle = current_app.extensions["webhyve.login_throttle"]
    wait = throttle.wait(name)
    if wait:
        audit.record(None, "login", user_tried=name, status=429, error="throttled")
        return render_template("login.html", next=target, name=name, error=(
            "Too many failed logins for %s: wait %d s and try again." % (name, wait))), 429
    user = users().get(name)
    password = request.form.get("password", "")
    if not (user.check_password(password) if user is not None else check_nobody(password)):
        throttle.failed(name)
        audit.record(None, "login", user_tried=name, status=401, error="wrong name or password")
        return render_template("login.html", next=target, name=name, error="Wrong name or password."), 401
    throttle.clear(name)
    session.clear()                       # a new session: nothing from before the login carries over
    session.update(user=user.name, mark=user.session_mark())
    csrf_token()
    session.permanent = False
    audit.record(policy.Principal(user.name, user.role, user.pools), "login", status=200)
    return redirect(target, 303)


@bp.post("/logout")
def logout():
    if users() is not None and not csrf_ok():
        return render_template("login.html", next="/", name="", error="Log out needs the page's CSRF token."), 403
    session.clear()
    return redirect("/login", 303)
