"""Users mode: the users CLI and file, logging in and out, throttled wrong passwords, and a class of students."""
import json
import os
import stat
import subprocess
import sys

import pytest

from tests.webhyve.conftest import ROOT, wait_for
from tests.webhyve.usersmode import OP_TOKEN, PASSWORD, csrf_of, log_in, write_users
from webhyve.web import create_app, shutdown
from webhyve.web.users import UserStore


@pytest.fixture
def users_app(tmp_path):
    write_users(tmp_path / "users.json", extra=[("s%d" % i, "operator", []) for i in (1, 2, 3)])
    app = create_app({"TESTING": True, "HOST_MEM_MB": 512, "USERS": str(tmp_path / "users.json"),
                      "RECORDINGS_DIR": str(tmp_path / "recordings"), "SNAPSHOTS_DIR": str(tmp_path / "snapshots")})
    yield app
    shutdown(app)


def cli(path, *args, stdin=""):
    return subprocess.run([sys.executable, "-m", "webhyve.web.users", "--file", str(path), *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_cli_adds_users_and_tokens_that_the_server_accepts(tmp_path):
    path = tmp_path / "users.json"
    assert cli(path, "add", "ann", "--role", "operator", "--pool", "class1", stdin="ann-password\n").returncode == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [f for f in os.listdir(tmp_path) if f != "users.json"] == []          # no temporary file left
    stored = json.loads(path.read_text())["users"]["ann"]
    assert stored["role"] == "operator" and stored["pools"] == ["class1"] and stored["password"].startswith("$argon2id$")
    assert "ann-password" not in path.read_text()
    made = cli(path, "token", "add", "ann", "ci")
    token = made.stdout.strip()
    assert made.returncode == 0 and token.startswith("ann!ci=") and token.partition("=")[2] not in path.read_text()
    store = UserStore(str(path))
    assert store.by_token(token).name == "ann" and store.by_token(token + "x") is None
    assert store.get("ann").check_password("ann-password") and not store.get("ann").check_password("wrong")
    again = cli(path, "add", "ann", "--role", "viewer", stdin="whatever-pw\n")
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    assert cli(path, "add", "bob", "--role", "viewer", stdin="short\n").stderr.strip() == \
        "users: a password needs at least 8 characters"
    assert cli(path, "passwd", "ann", stdin="new-password\n").returncode == 0
    assert store.get("ann").check_password("new-password")                       # the store re-reads the file
    assert "ann" in cli(path, "list").stdout and cli(path, "token", "del", "ann", "ci").returncode == 0
    assert store.by_token(token) is None
    assert cli(path, "del", "ann").returncode == 0 and store.get("ann") is None
    assert cli(path, "del", "ann").stderr.startswith("users: no user 'ann'")


def test_a_users_file_the_server_cannot_use_is_a_clear_error(tmp_path):
    bad = tmp_path / "users.json"
    bad.write_text('{"users": {"x": {"role": "king"}}}')
    with pytest.raises(SystemExit, match="user 'x' needs a role, one of administrator, operator, viewer"):
        create_app({"TESTING": True, "USERS": str(bad), "RECORDINGS_DIR": str(tmp_path / "r")})
    with pytest.raises(SystemExit, match="no users file"):
        create_app({"TESTING": True, "USERS": str(tmp_path / "none.json"), "RECORDINGS_DIR": str(tmp_path / "r")})


def test_login_and_logout_and_the_quick_start_tokens_are_off(users_app):
    browser = users_app.test_client()
    assert browser.get("/vms/x?a=1").headers["Location"] == "/login?next=%2Fvms%2Fx%3Fa%3D1"
    assert browser.get("/api/v1/vms").status_code == 401
    assert browser.get("/?token=" + users_app.config["CONTROL_TOKEN"]).status_code == 303      # to /login
    assert browser.get("/api/v1/vms", headers={"Authorization": "Bearer " + users_app.config["CONTROL_TOKEN"]}).status_code == 401
    before = browser.get("/login").headers.get("Set-Cookie", "")
    answer, csrf = log_in(browser, "op")
    cookie = answer.headers["Set-Cookie"]
    assert answer.headers["Location"] == "/" and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert cookie.split(";")[0] != before.split(";")[0]                      # a new session at login
    assert browser.get("/api/v1/session").json == {"role": "control", "user": "op", "user_role": "operator",
                                                   "pools": ["class1"]}
    assert "op (operator)" in browser.get("/").get_data(as_text=True)
    assert browser.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    assert browser.post("/logout", data={"csrf_token": csrf}).headers["Location"] == "/login"
    assert browser.get("/api/v1/vms").status_code == 401


def test_an_open_redirect_and_a_login_without_the_form_token_are_refused(users_app):
    browser = users_app.test_client()
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        form = csrf_of(browser.get("/login").get_data(as_text=True))          # each login makes a new session
        answer = browser.post("/login", data={"name": "op", "password": PASSWORD, "csrf_token": form, "next": target})
        assert answer.headers["Location"] == "/"
    stranger = users_app.test_client()
    refused = stranger.post("/login", data={"name": "op", "password": PASSWORD})
    assert refused.status_code == 403 and "CSRF" in refused.get_data(as_text=True)


def test_wrong_passwords_are_throttled_per_name_with_a_clear_message(users_app):
    browser = users_app.test_client()
    for _ in range(5):
        answer, _ = log_in(browser, "op", "wrong password")
        assert answer.status_code == 401 and "Wrong name or password." in answer.get_data(as_text=True)
    answer, _ = log_in(browser, "op")                                  # even the right password, for a while
    assert answer.status_code == 429
    assert "Too many failed logins for op: wait" in answer.get_data(as_text=True)
    assert log_in(browser, "view")[0].status_code == 303                # another name is not held back
    audit = [e for e in map(json.loads, open(users_app.extensions["webhyve.audit"].path)) if e["action"] == "login"]
    assert [(e.get("user_tried"), e["status"]) for e in audit][-2:] == [("op", 429), (None, 200)]


def test_a_new_password_logs_the_old_sessions_out(users_app, tmp_path):
    browser = users_app.test_client()
    log_in(browser, "view")
    assert browser.get("/api/v1/vms").status_code == 200
    assert cli(tmp_path / "users.json", "passwd", "view", stdin="another-password\n").returncode == 0
    assert browser.get("/api/v1/vms").status_code == 401


def test_a_teacher_gives_three_students_a_vm_each_and_each_sees_only_theirs(users_app):
    teacher = users_app.test_client()
    _, csrf = log_in(teacher, "teacher")
    for i in (1, 2, 3):
        made = teacher.post("/api/v1/vms", json={"name": "vm-s%d" % i, "guest": "shell", "owner": "s%d" % i,
                                                 "pool": "class1"}, headers={"X-CSRF-Token": csrf})
        assert made.status_code == 201 and made.json["owner"] == "s%d" % i and made.json["pool"] == "class1"
    assert teacher.post("/api/v1/vms", json={"name": "x", "guest": "shell", "owner": "nobody"},
                        headers={"X-CSRF-Token": csrf}).json == {"error": "POST /api/v1/vms: owner 'nobody': no such user"}
    assert {v["name"] for v in teacher.get("/api/v1/vms").json["vms"]} == {"vm-s1", "vm-s2", "vm-s3"}
    assert 'name="owner"' in teacher.get("/").get_data(as_text=True)            # the create form offers it
    students = {}
    for i in (1, 2, 3):
        students[i] = users_app.test_client()
        _, token = log_in(students[i], "s%d" % i)
        students[i].environ_base["HTTP_X_CSRF_TOKEN"] = token
        assert [v["name"] for v in students[i].get("/api/v1/vms").json["vms"]] == ["vm-s%d" % i]
    assert wait_for(lambda: "webhyve>" in students[1].get("/api/v1/vms/vm-s1/console").json["text"])
    assert students[1].post("/api/v1/vms/vm-s1/console", json={"data": "help\r"}).status_code == 200
    assert students[1].post("/api/v1/vms/vm-s2/console", json={"data": "help\r"}).status_code == 404
    assert students[2].delete("/api/v1/vms/vm-s1").json == {"error": "no VM named 'vm-s1'"}
    assert students[1].post("/api/v1/vms", json={"name": "mine", "guest": "shell", "owner": "s2"}).status_code == 403
    assert students[1].post("/api/v1/vms", json={"name": "mine", "guest": "shell", "pool": "class1"}).status_code == 403
    assert students[1].post("/api/v1/vms", json={"name": "mine", "guest": "shell", "start": False}).json["owner"] == "s1"
    assert {v["name"] for v in students[1].get("/api/v1/vms").json["vms"]} == {"vm-s1", "mine"}
    assert "mine" in {v["name"] for v in teacher.get("/api/v1/vms").json["vms"]}
    # the task log: the teacher's creates of the students' VMs are in each student's view, only their own VM's
    tasks = lambda client: {(t["vm"], t["who"]) for t in client.get("/api/v1/tasks").json["tasks"] if t["kind"] == "create"}
    assert tasks(students[1]) == {("vm-s1", "teacher"), ("mine", "s1")}
    assert tasks(students[2]) == {("vm-s2", "teacher")}
    assert {("vm-s%d" % i, "teacher") for i in (1, 2, 3)} | {("mine", "s1")} <= tasks(teacher)


def test_the_quick_start_is_unchanged_without_a_users_file(client, viewer):
    assert client.get("/api/v1/session").json == {"role": "control"}
    assert viewer.put("/api/v1/tunables/hw.vmm.halt_detection", json={"value": 1}).json == {
        "error": "this needs the control token; the viewer token is read-only"}
    assert client.get("/login").headers["Location"] == "/"
    assert client.get("/api/v1/audit").status_code == 200                 # the control token is the administrator
    assert viewer.get("/api/v1/audit").status_code == 403


def test_the_op_token_is_refused_by_a_quick_start_server(client):
    assert client.get("/api/v1/vms", headers={"Authorization": "Bearer " + OP_TOKEN}).status_code == 401


def test_the_server_reads_a_toml_users_file_too(tmp_path):
    from tests.webhyve.usersmode import CHEAP
    path = tmp_path / "users.toml"
    path.write_text('[users.ann]\nrole = "viewer"\npools = ["lab"]\npassword = "%s"\n' % CHEAP.hash(PASSWORD))
    ann = UserStore(str(path)).get("ann")
    assert (ann.role, ann.pools) == ("viewer", ("lab",)) and ann.check_password(PASSWORD)
    written = cli(path, "del", "ann")
    assert written.returncode == 2 and "the CLI writes JSON" in written.stderr


def test_an_open_console_of_a_user_whose_password_changed_or_token_was_revoked_ends_at_its_next_event(users_app, tmp_path):
    teacher = users_app.test_client()
    teacher.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + OP_TOKEN           # op's token: op owns the VM
    assert teacher.post("/api/v1/vms", json={"name": "vm-op", "guest": "shell", "start": False}).status_code == 201
    socketio = users_app.extensions["webhyve.socketio"]
    browser = users_app.test_client()
    log_in(browser, "op")
    by_cookie = socketio.test_client(users_app, namespace="/console", flask_test_client=browser)
    by_token = socketio.test_client(users_app, namespace="/inspect", auth={"token": OP_TOKEN})
    assert by_cookie.emit("attach", {"vm": "vm-op"}, namespace="/console", callback=True)["role"] == "control"
    assert by_token.emit("watch", {"vm": "vm-op"}, namespace="/inspect", callback=True)["ok"]
    pump = users_app.extensions["webhyve.fleet"].get("vm-op").pump
    assert len(pump.viewers) == 1
    assert cli(tmp_path / "users.json", "passwd", "op", stdin="a-new-password\n").returncode == 0
    assert cli(tmp_path / "users.json", "token", "del", "op", "ci").returncode == 0
    refused = by_cookie.emit("input", {"vm": "vm-op", "data": "x"}, namespace="/console", callback=True)
    assert refused == {"error": "your login or API token is no longer valid: log in again and reload the page",
                       "status": 401}
    assert not by_cookie.is_connected("/console") and len(pump.viewers) == 0
    by_token.emit("watch", {"vm": "vm-op"}, namespace="/inspect", callback=True)
    assert not by_token.is_connected("/inspect")


def test_serve_refuses_a_missing_users_file_and_users_with_a_cluster(tmp_path):
    serve = lambda *args: subprocess.run([sys.executable, "-m", "webhyve.web.serve", *args], capture_output=True,
                                         text=True, cwd=ROOT, timeout=60)
    missing = serve("--users", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "no such file; make it with `python -m webhyve.web.users" in missing.stderr
    (tmp_path / "u.json").write_text('{"users": {}}')
    clustered = serve("--users", str(tmp_path / "u.json"), "--redis", "redis://127.0.0.1:1/0")
    assert clustered.returncode == 2 and "--users and --redis do not combine yet" in clustered.stderr
