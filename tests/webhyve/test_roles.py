"""Users mode, table-driven: every REST route, page and Socket.IO event, for every kind of principal.

The principals: the teacher (administrator), op (operator, owner of VM "own" in pool class1), other (an operator
of pool class2), view (a viewer of class1), op's API token, and nobody. WHAT_EACH_NEEDS below is docs/web.md's
roles table written out by hand; the test holds the app's URL map and events.py's table to it (a new route
fails here until someone says who may use it), checks each answer, and checks a refused request changed nothing.
"""
import os

import pytest

from tests.webhyve.conftest import LIVE, wait_for
from tests.webhyve.usersmode import OP_TOKEN, log_in, write_users
from webhyve.web import create_app, shutdown
from webhyve.web.events import EVENTS
from webhyve.web.openapi import NEEDS

# endpoint → (what it needs, a sample request that is valid and harmless where allowed: method, path, JSON body)
WHAT_EACH_NEEDS = {
    "api.whoami": ("read", "GET", "/api/v1/session", None),
    "api.guests": ("read", "GET", "/api/v1/guests", None),
    "api.list_vms": ("read", "GET", "/api/v1/vms", None),
    "api.create_vm": ("create", "POST", "/api/v1/vms", {"name": "own", "guest": "shell"}),     # a name in use: 400
    "api.get_vm": ("read", "GET", "/api/v1/vms/own", None),
    "api.destroy_vm": ("control", "DELETE", "/api/v1/vms/own", None),                      # made again after
    "api.migrate": ("admin", "POST", "/api/v1/vms/own/migrate", {"node": "n2"}),            # alone: 409
    "api.lifecycle": ("control", "POST", "/api/v1/vms/own/start", None),                   # running: 409
    "api.console_text": ("read", "GET", "/api/v1/vms/own/console", None),
    "api.console_input": ("control", "POST", "/api/v1/vms/own/console", {"data": "\x15"}),  # Ctrl-U: kill nothing
    "api.vga": ("read", "GET", "/api/v1/vms/own/vga", None),
    "api.registers": ("read", "GET", "/api/v1/vms/own/vcpus/0/registers", None),
    "api.vmcs": ("read", "GET", "/api/v1/vms/own/vcpus/0/vmcs", None),
    "api.stats": ("read", "GET", "/api/v1/vms/own/vcpus/0/stats", None),
    "api.translate": ("read", "GET", "/api/v1/vms/own/vcpus/0/translate?gla=0x1000", None),
    "api.ept": ("read", "GET", "/api/v1/vms/own/ept", None),
    "api.ept_lookup": ("read", "GET", "/api/v1/vms/own/ept/lookup?gpa=0x1000", None),
    "api.caches": ("read", "GET", "/api/v1/vms/own/caches", None),
    "api.pci_devices": ("read", "GET", "/api/v1/vms/own/devices", None),
    "api.exit_history": ("read", "GET", "/api/v1/vms/own/exits", None),
    "api.tunables": ("read", "GET", "/api/v1/tunables", None),
    "api.set_tunable": ("admin", "PUT", "/api/v1/tunables/hw.vmm.nosuch", {"value": 1}),   # no such tunable: 400
    "api.take_screenshot": ("read", "GET", "/api/v1/vms/own/screenshot/serial.png", None),
    "api.start_recording": ("control", "POST", "/api/v1/vms/own/recording", None),
    "api.stop_recording": ("control", "DELETE", "/api/v1/vms/own/recording", None),
    "api.recordings": ("read", "GET", "/api/v1/recordings", None),
    "api.download_recording": ("read", "GET", "/api/v1/recordings/{rid}", None),
    "ctl.vcpu_state": ("read", "GET", "/api/v1/ctl/vms/own/vcpus/0", None),
    "ctl.set_register": ("control", "PUT", "/api/v1/ctl/vms/own/vcpus/0/registers/rax", {"value": 0}),  # running: 409
    "ctl.set_capability": ("control", "PUT", "/api/v1/ctl/vms/own/vcpus/0/capabilities/nosuch", {"value": 1}),
    "ctl.run_once": ("control", "POST", "/api/v1/ctl/vms/own/vcpus/7/run", None),          # no vCPU 7: 404
    "ctl.inject_nmi": ("control", "POST", "/api/v1/ctl/vms/own/vcpus/7/nmi", None),
    "snapdemo.list_snapshots": ("read", "GET", "/api/v1/snapshots", None),
    "snapdemo.save_snapshot": ("control", "POST", "/api/v1/vms/own/snapshot", {"name": "s1"}),
    "snapdemo.restore_snapshot": ("admin", "POST", "/api/v1/snapshots/nosnap/restore", {}),
    "snapdemo.delete_snapshot": ("admin", "DELETE", "/api/v1/snapshots/nosnap", None),
    "snapdemo.list_demos": ("read", "GET", "/api/v1/demos", None),
    "snapdemo.run_demo": ("admin", "POST", "/api/v1/demos/nosuch", None),
    "audit.audit_log": ("admin", "GET", "/api/v1/audit", None),
    "tasks.list_tasks": ("read", "GET", "/api/v1/tasks", None),
    "openapi.openapi": ("public", "GET", "/api/v1/openapi.json", None),
    "metrics.metrics": ("read", "GET", "/metrics", None),
    "pages.vm_list": ("page", "GET", "/", None),
    "pages.vm_page": ("page", "GET", "/vms/own", None),
    "pages.login": ("public", "GET", "/login", None),
    "pages.logout": ("public", "POST", "/logout", None),
    "static": ("public", "GET", "/static/js/common.js", None),
}
# event → what it needs; every event names its VM
EVENT_NEEDS = {("/console", "attach"): "read", ("/console", "input"): "control", ("/console", "ack"): "read",
               ("/console", "detach"): "read", ("/inspect", "watch"): "read", ("/inspect", "unwatch"): "none"}
GRANTS = {"teacher": {"read", "control", "create", "admin"}, "op": {"read", "control", "create"},
          "token": {"read", "control", "create"}, "other": {"read", "control", "create"}, "view": {"read"},
          "nobody": set()}
SEES_OWN = {"teacher", "op", "token", "view"}
PRINCIPALS = ("teacher", "op", "token", "other", "view", "nobody")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A users-mode app; op created VM "own" in pool class1 and recorded it once."""
    tmp = tmp_path_factory.mktemp("roles")
    write_users(tmp / "users.json")
    app = create_app({"TESTING": True, "HOST_MEM_MB": 512, "USERS": str(tmp / "users.json"),
                      "RECORDINGS_DIR": str(tmp / "recordings"), "SNAPSHOTS_DIR": str(tmp / "snapshots"),
                      "DISKS_DIR": str(tmp / "disks"), "PANEL_INTERVAL": 0.2})
    op = app.test_client()
    op.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + OP_TOKEN
    make_own(op)
    assert op.post("/api/v1/vms/own/recording").status_code == 201
    rid = op.delete("/api/v1/vms/own/recording").json["id"]
    clients = {name: app.test_client() for name in PRINCIPALS}
    csrf = {}
    for name in ("teacher", "op", "other", "view"):
        answer, csrf[name] = log_in(clients[name], name)
        assert answer.status_code == 303, answer.get_data(as_text=True)
    clients["token"].environ_base["HTTP_AUTHORIZATION"] = "Bearer " + OP_TOKEN
    yield app, clients, csrf, rid
    shutdown(app)


def make_own(op):
    assert op.post("/api/v1/vms", json={"name": "own", "guest": "shell", "pool": "class1"}).status_code == 201
    assert wait_for(lambda: "webhyve>" in op.get("/api/v1/vms/own/console").json["text"])


def state(app):
    """What a refused request must not change: the VMs, their states and consoles, tunables, files."""
    fleet, config = app.extensions["webhyve.fleet"], app.config
    listing = lambda folder: sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return ({s.name: ("live" if s.vm.state in LIVE else s.vm.state, s.pump.position, s.recording is None)
             for s in fleet.list()}, {t["name"]: t["value"] for t in fleet.host.tunables()},
            listing(config["RECORDINGS_DIR"]), listing(config["SNAPSHOTS_DIR"]))


def expected(who, needs, names_vm):
    """'ok', or the status the roles table gives."""
    if needs == "public":
        return "ok"
    if who == "nobody":
        return 303 if needs == "page" else 401
    if names_vm and who not in SEES_OWN:
        return 404
    if needs == "page":
        return "ok"
    return "ok" if needs in GRANTS[who] else 403


def test_the_table_covers_every_route_and_says_what_the_views_declare(world):
    app = world[0]
    served = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert served == set(WHAT_EACH_NEEDS), "classify the new route in WHAT_EACH_NEEDS (and docs/web.md)"
    for endpoint, (needs, *_) in WHAT_EACH_NEEDS.items():
        if needs not in ("public", "page"):
            assert getattr(app.view_functions[endpoint], "needs", "read") == needs, endpoint
    assert set(EVENT_NEEDS) == {(ns, e) for ns, events in EVENTS.items() for e in events}
    doc = app.test_client().get("/api/v1/openapi.json").json                  # the description says the same
    said = {op["operationId"].split("_", 1)[0] + "." + op["operationId"].split("_", 1)[1]: op["x-webhyve-needs"]
            for item in doc["paths"].values() for op in item.values() if op.get("x-webhyve-needs")}
    for endpoint, words in said.items():
        needs = WHAT_EACH_NEEDS[endpoint][0]
        assert words == NEEDS.get(needs, "nothing: no token, no login"), endpoint


@pytest.mark.parametrize("who", PRINCIPALS)
def test_every_route_answers_each_principal_as_the_roles_table_says(world, who):
    app, clients, csrf, rid = world
    client = clients[who]
    for endpoint, (needs, method, path, body) in WHAT_EACH_NEEDS.items():
        path = path.format(rid=rid)
        names_vm = "/own" in path or endpoint == "api.download_recording"
        want = expected(who, needs, names_vm)
        headers = {"X-CSRF-Token": csrf[who]} if who in csrf and method != "GET" else {}
        if endpoint == "pages.logout":
            continue                                  # logs the client out: test_login_logout
        before = state(app)
        answer = client.open(path, method=method, json=body, headers=headers)
        text = answer.get_data().decode("utf-8", "replace")
        where = "%s %s as %s: %s %s" % (method, path, who, answer.status_code, text[:200])
        if want == "ok":
            assert answer.status_code not in (401, 403) and "no VM named" not in text, where
            if endpoint == "api.destroy_vm":
                make_own(clients["token"])
        else:
            assert answer.status_code == want, where
            if want == 404 and path.startswith("/api/v1/vms/"):        # the words of a VM that does not exist
                assert answer.json == {"error": "no VM named 'own'"}, where
            assert state(app) == before, where


@pytest.mark.parametrize("who", PRINCIPALS)
def test_every_socketio_event_answers_each_principal_as_the_roles_table_says(world, who):
    app, clients, csrf, _ = world
    socketio = app.extensions["webhyve.socketio"]
    auth = {"token": OP_TOKEN} if who == "token" else None
    sockets = {ns: socketio.test_client(app, namespace=ns, flask_test_client=clients[who], auth=auth) for ns in EVENTS}
    if who == "nobody":
        assert not any(s.is_connected(ns) for ns, s in sockets.items())
        return
    payloads = {"attach": {}, "input": {"data": "\x15"}, "ack": {"position": 0}, "detach": {}, "watch": {},
                "unwatch": {}}
    for (ns, event), needs in EVENT_NEEDS.items():
        before = state(app)
        answer = sockets[ns].emit(event, {"vm": "own", **payloads[event]}, namespace=ns, callback=True)
        if needs == "none":
            want = "ok"
        elif who not in SEES_OWN:
            want = 404
        else:
            want = "ok" if needs in GRANTS[who] else 403
        where = "%s %s as %s: %s" % (ns, event, who, answer)
        if want == "ok":
            assert answer.get("ok") or answer.get("status") == 409, where       # ack before any output: 409
        else:
            assert answer == {"error": answer["error"], "status": want}, where
            assert state(app) == before, where
        if event == "attach" and want == "ok":
            assert answer["role"] == ("control" if "control" in GRANTS[who] else "view"), where
    for ns, s in sockets.items():
        s.disconnect(namespace=ns)


@pytest.mark.parametrize("who", PRINCIPALS)
def test_lists_metrics_and_pages_show_only_the_vms_one_may_see(world, who):
    app, clients, _, rid = world
    client = clients[who]
    if who == "nobody":
        assert client.get("/api/v1/vms").status_code == 401 and client.get("/metrics").status_code == 401
        assert client.get("/").headers["Location"].startswith("/login?next=")
        return
    sees = who in SEES_OWN
    names = {vm["name"] for vm in client.get("/api/v1/vms").json["vms"]}
    assert ("own" in names) == sees and names <= {"own"}
    assert ('vm="own"' in client.get("/metrics").get_data(as_text=True)) == sees
    assert (rid in {r["id"] for r in client.get("/api/v1/recordings").json["recordings"]}) == sees
    page = client.get("/vms/own")
    assert page.status_code == (200 if sees else 404)
    if who == "other":
        assert page.get_data(as_text=True) == clients["other"].get("/vms/nosuch").get_data(as_text=True).replace(
            "nosuch", "own"), "another's VM looks exactly like a missing one"


def test_a_cookie_change_without_the_csrf_token_is_refused_and_changes_nothing(world):
    app, clients, csrf, _ = world
    op = clients["op"]
    before = state(app)
    for headers in ({}, {"X-CSRF-Token": "wrong"}, {"X-CSRF-Token": csrf["view"]}):
        refused = op.post("/api/v1/vms/own/console", json={"data": "x"}, headers=headers)
        assert refused.status_code == 403 and "CSRF" in refused.json["error"]
    assert state(app) == before
    assert op.post("/api/v1/vms/own/console", json={"data": "\x15"}, headers={"X-CSRF-Token": csrf["op"]}).status_code == 200
    assert clients["token"].post("/api/v1/vms/own/console", json={"data": "\x15"}).status_code == 200   # bearer: none needed


def test_the_audit_log_says_who_did_what_to_which_vm(world):
    app, clients, csrf, _ = world
    clients["op"].post("/api/v1/vms/own/pause", headers={"X-CSRF-Token": csrf["op"]})
    clients["view"].post("/api/v1/vms/own/resume", headers={"X-CSRF-Token": csrf["view"]})
    clients["op"].post("/api/v1/vms/own/resume", headers={"X-CSRF-Token": csrf["op"]})
    entries = clients["teacher"].get("/api/v1/audit?limit=10000").json["entries"]
    mine = [(e["user"], e["action"], e["vm"], e["status"]) for e in entries if e["action"] == "api.lifecycle"][-3:]
    assert mine == [("op", "api.lifecycle", "own", 200), ("view", "api.lifecycle", "own", 403),
                    ("op", "api.lifecycle", "own", 200)]
    assert all(e["t"].endswith("+00:00") for e in entries)
    attaches = {(e["user"], e["vm"], e["mode"]) for e in entries if e["action"] == "console.attach"}
    assert attaches == {("teacher", "own", "control"), ("op", "own", "control")}        # the viewer's is no control
    assert clients["op"].get("/api/v1/audit").status_code == 403
