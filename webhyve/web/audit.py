"""The audit log: every state-changing API request and login, as one JSON line each, and GET /api/v1/audit.

A line says who (the user, or which quick-start token; null when unauthenticated), when (UTC, ISO 8601), what
(the route's endpoint, method and path), which VM, and the result (the HTTP status, and the error's message
when refused). Refused requests are logged too: an audit wants the attempts. Keystrokes typed over Socket.IO are
not logged one by one (a shell session would be thousands of lines); a console attach that may type is, once.
The file is appended to (O_APPEND: one write per line) in the data folder, AUDIT_LOG, beside recordings/.
"""
import datetime
import json
import os
import threading

from flask import Blueprint, current_app, g, request

from .api_schema import ROUTES, VM, guard
from .policy import ADMIN, requires

bp = Blueprint("audit", __name__, url_prefix="/api/v1")
bp.before_request(guard)
CHANGES = ("POST", "PUT", "DELETE")


class AuditLog:
    """Legend: writes are serialised by `lock` so lines never interleave."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def append(self, who, action, vm=None, status=200, error=None, **more):
        entry = {"t": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                 "user": who.name if who else None, "role": who.role if who else None, "action": action,
                 "vm": vm, "status": status, **more}
        if error:
            entry["error"] = error
        line = json.dumps(entry, sort_keys=True) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)

    def tail(self, limit):
        """The last `limit` entries, oldest first."""
        try:
            with self.lock, open(self.path, encoding="utf-8") as f:
                lines = f.readlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines[-limit:] if line.strip()]


def install(app):
    """Log every POST/PUT/DELETE under /api/ once its answer is known."""
    app.extensions["webhyve.audit"] = AuditLog(app.config["AUDIT_LOG"] or os.path.join(
        os.path.dirname(os.path.abspath(app.config["RECORDINGS_DIR"])), "audit.jsonl"))

    @app.after_request
    def log_change(response):
        if request.method in CHANGES and request.path.startswith("/api/") and not g.get("forwarded"):
            error = response.get_json(silent=True) if response.status_code >= 400 and response.is_json else None
            app.extensions["webhyve.audit"].append(
                g.get("user"), request.endpoint or "unknown", vm_of_request(), response.status_code,
                (error or {}).get("error"), method=request.method, path=request.path[:200])
        return response


def vm_of_request():
    route = ROUTES.get(request.endpoint)
    if route is None:
        return None
    for arg, field in route.path.items():
        if field is VM:
            return (request.view_args or {}).get(arg)
    body = g.get("body")
    return body.get("name") if request.endpoint == "api.create_vm" and isinstance(body, dict) else None


def record(who, action, vm=None, **more):
    """One entry for something that is no REST request (a login, a console attach that may type)."""
    current_app.extensions["webhyve.audit"].append(who, action, vm, **more)


@bp.get("/audit")
@requires(ADMIN)
def audit_log():
    """The audit log's last entries (administrators): who did what to which VM, when, and the result."""
    return {"entries": current_app.extensions["webhyve.audit"].tail(g.query["limit"])}
