"""webhyve's web side: create_app(config) builds the Flask app with its REST API, pages and Socket.IO namespaces.

Flask-SocketIO runs in threading mode: vCPUs are real threads and green threads could not preempt
Unicorn's emu_start. Without a config, settings come from WEBHYVE_* environment variables (gunicorn).
"""
import atexit
import os
import sys

from engineio.payload import Payload
from flask import Flask, request
from flask_socketio import SocketIO
from werkzeug.exceptions import HTTPException

from engine.door import Host

from ..sessions.errors import ApiError
from ..sessions.fleet import Fleet
from . import api_ctl, api_demo, audit, cluster_setup, logs, metrics, openapi, tasks
from .access import new_token
from .pages import Throttle
from .users import UserStore, UsersError
from .api import bp as api_bp
from .console import ConsoleNamespace
from .inspector import InspectNamespace
from .pages import bp as pages_bp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULTS = {
    "HOST_MEM_MB": 2048,
    "CONTROL_TOKEN": None,
    "VIEWER_TOKEN": None,
    "RECORDINGS_DIR": os.path.join(ROOT, "recordings"),
    "SNAPSHOTS_DIR": os.path.join(ROOT, "snapshots"),
    "DISKS_DIR": os.path.join(ROOT, "disks"),   # the only place -s virtio-blk images come from (web/devices.py)
    "GUESTS_DIR": os.path.join(ROOT, "guests", "build"),
    "DEMO_GUEST": None,                 # a bundled guest to boot as VM "demo" at startup
    "PUMP_INTERVAL": 0.02,
    "PANEL_INTERVAL": 0.5,
    "PUBLIC_URL": "http://127.0.0.1:8080",
    "MAX_CONTENT_LENGTH": 64 << 20,
    "REDIS": None,                      # cluster mode (docs/cluster.md): redis://[:PASSWORD@]HOST:PORT/DB
    "NODE": None,                       # this node's name in the cluster
    "NODE_URL": None,                   # where the other nodes reach this one's API (default PUBLIC_URL)
    "CLUSTER_SECRET": None,             # the key of the forwarded requests' HMAC, the same on every node
    "RESTART_ON_FAILURE": None,         # seconds between checkpoints of the running VMs (cluster/failover.py)
    "SHARED_DIR": None,                 # where the checkpoints go: a folder at the same path on every node
    "USERS": None,                      # users mode: the users file (web/users.py); None: the two-token quick start
    "SECRET_KEY": None,                 # signs users mode's session cookies; None: a new one each start
    "AUDIT_LOG": None,                  # the audit log (web/audit.py); None: audit.jsonl beside RECORDINGS_DIR
}
ENV_KEYS = ("HOST_MEM_MB", "CONTROL_TOKEN", "VIEWER_TOKEN", "RECORDINGS_DIR", "SNAPSHOTS_DIR", "DISKS_DIR", "DEMO_GUEST",
            "PUBLIC_URL", "REDIS", "NODE", "NODE_URL", "CLUSTER_SECRET", "RESTART_ON_FAILURE", "SHARED_DIR",
            "USERS", "SECRET_KEY", "AUDIT_LOG")


def config_from_env():
    out = {}
    for key in ENV_KEYS:
        value = os.environ.get("WEBHYVE_" + key)
        if value:
            out[key] = int(value) if key == "HOST_MEM_MB" else value
    return out


def create_app(config=None):
    app = Flask(__name__, static_folder=os.path.join(ROOT, "static"), template_folder=os.path.join(ROOT, "templates"))
    app.url_map.merge_slashes = False     # a name that is "/" is a bad name (4xx), not a 308 to another route
    app.config.from_mapping(DEFAULTS)
    app.config.update(config_from_env() if config is None else config)
    announce = not app.config["CONTROL_TOKEN"]
    app.config["CONTROL_TOKEN"] = app.config["CONTROL_TOKEN"] or new_token()
    app.config["VIEWER_TOKEN"] = app.config["VIEWER_TOKEN"] or new_token()
    _users_mode(app)
    logs.install(app.logger)              # no log line prints a token (gunicorn's, werkzeug's, ours)
    queue = cluster_setup.queue_options(app.config)   # cluster mode: Redis carries every emit to every node

    # async_handlers=False: one client's events are handled in order, on its connection's thread. With a
    # thread per event, two keystrokes typed quickly reached the guest swapped ("reorcded").
    socketio = SocketIO(app, async_mode="threading", async_handlers=False, max_http_buffer_size=1 << 20, **queue)
    # A browser on long-polling sends every event queued since its last request in one POST; engine.io
    # rejects the whole POST beyond 16 and fast typing was lost (python-engineio #142's workaround). The
    # POST body stays bounded by max_http_buffer_size.
    Payload.max_decode_packets = 1024
    fleet = Fleet(Host(host_mem_mb=app.config["HOST_MEM_MB"]),
                  lambda event, data, to, ns: socketio.emit(event, data, to=to, namespace=ns),
                  app.config["RECORDINGS_DIR"], app.config["PUMP_INTERVAL"])
    node = cluster_setup.join(app, fleet, socketio)       # None without --redis
    inspector = InspectNamespace(fleet, socketio, app.config["PANEL_INTERVAL"], cluster=node)
    socketio.on_namespace(ConsoleNamespace(fleet, cluster=node))
    socketio.on_namespace(inspector)
    app.extensions.update({"webhyve.fleet": fleet, "webhyve.socketio": socketio, "webhyve.inspector": inspector,
                           "webhyve.cluster": node})
    app.register_blueprint(api_bp)
    app.register_blueprint(api_ctl.bp)                  # vmmctl's endpoints
    app.register_blueprint(api_demo.bp)                 # snapshots and demos
    app.register_blueprint(pages_bp)
    app.register_blueprint(metrics.bp)                  # /metrics for Prometheus
    app.register_blueprint(openapi.bp)                  # /api/v1/openapi.json
    tasks.install(app, socketio, node)                  # /api/v1/tasks and the /tasks namespace
    app.register_blueprint(audit.bp)                    # /api/v1/audit
    audit.install(app)
    _register_errors(app)
    inspector.start_ticker()
    if node is not None:
        node.start()
    atexit.register(shutdown, app)       # vCPU threads left inside Unicorn at interpreter exit crash it
    if app.config["DEMO_GUEST"]:
        _boot_demo(app, fleet)
    if app.config["USERS"]:
        print("webhyve: users mode (%s): log in at %s/login" % (app.config["USERS"], app.config["PUBLIC_URL"]),
              file=sys.stderr, flush=True)
    elif announce:
        print("webhyve: control  %s/?token=%s\nwebhyve: viewer   %s/?token=%s" % (
            app.config["PUBLIC_URL"], app.config["CONTROL_TOKEN"], app.config["PUBLIC_URL"], app.config["VIEWER_TOKEN"]),
            file=sys.stderr, flush=True)
    return app


def _users_mode(app):
    """Users mode when a users file is given: its store, the login throttle and the session cookie's settings.
    Flask's session cookie is HttpOnly by default; SameSite=Lax as the token cookie; Secure behind https."""
    app.config["SECRET_KEY"] = app.config["SECRET_KEY"] or os.urandom(32)
    app.config.update(SESSION_COOKIE_NAME="webhyve_session", SESSION_COOKIE_HTTPONLY=True,
                      SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_SECURE=app.config["PUBLIC_URL"].startswith("https:"))
    if not app.config["USERS"]:
        return
    if app.config["REDIS"]:
        raise SystemExit("webhyve: users mode and cluster mode do not combine yet (docs/cluster.md)")
    if not os.path.isfile(app.config["USERS"]):
        raise SystemExit("webhyve: no users file %s: make it with `python -m webhyve.web.users --file %s add NAME "
                         "--role administrator`" % (app.config["USERS"], app.config["USERS"]))
    try:
        app.extensions["webhyve.users"] = UserStore(app.config["USERS"])
    except UsersError as problem:
        raise SystemExit("webhyve: %s" % problem) from None
    app.extensions["webhyve.login_throttle"] = Throttle()


def shutdown(app):
    """Stop the ticker, the pumps and every VM (tests; a server simply exits)."""
    app.extensions["webhyve.inspector"].stop_ticker()
    if app.extensions["webhyve.cluster"] is not None:
        app.extensions["webhyve.cluster"].stop()
    app.extensions["webhyve.fleet"].close()


def _boot_demo(app, fleet):
    path = os.path.join(app.config["GUESTS_DIR"], app.config["DEMO_GUEST"] + ".elf")
    if not os.path.exists(path):
        raise SystemExit("webhyve: no bundled guest %s (run `make guests`)" % path)
    with open(path, "rb") as f:
        fleet.create("demo", f.read(), os.path.basename(path))


def _register_errors(app):
    @app.errorhandler(ApiError)
    def api_error(problem):
        return {"error": problem.message}, problem.status

    @app.errorhandler(HTTPException)
    def http_error(problem):
        if request.path.startswith("/api/"):
            return {"error": "%s: %s" % (problem.name, problem.description)}, problem.code
        return problem
