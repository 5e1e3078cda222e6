"""The task log: a create, a snapshot, a restore, a refused create and a demo run each leave one task with who,
what, when, how long and the result; the /tasks namespace pushes every change as it happens."""
import socket

from tests.webhyve.conftest import CONTROL, VIEWER, wait_for
from webhyve.demos import scenario as demo
from webhyve.sessions.tasks import TaskLog, migration_progress


def tasks(client, **query):
    answer = client.get("/api/v1/tasks", query_string=query)
    assert answer.status_code == 200, answer.json
    return answer.json["tasks"]


def one(client, kind, vm):
    found = [t for t in tasks(client) if t["kind"] == kind and t["vm"] == vm]
    assert len(found) == 1, found
    return found[0]


def ended_ok(task, kind, vm, http_status):
    assert (task["kind"], task["vm"], task["state"], task["status"], task["http_status"]) == (kind, vm, "ok", "OK",
                                                                                             http_status)
    assert task["who"] == "control" and task["node"] == socket.gethostname()
    assert task["started"] <= task["ended"] and task["duration_s"] >= 0 and task["progress"] is None
    assert task["id"].startswith("UPID:%s:" % socket.gethostname()) and (":%s:%s:" % (kind, vm)) in task["id"]


def test_create_snapshot_restore_each_leave_one_task_ok(client, viewer, shell_vm):
    ended_ok(one(client, "create", "sh"), "create", "sh", 201)
    assert client.post("/api/v1/vms/sh/snapshot", json={"name": "first"}).status_code == 201
    saved = one(client, "snapshot", "sh")
    ended_ok(saved, "snapshot", "sh", 201)
    assert saved["description"] == "save snapshot first of VM sh"
    assert client.post("/api/v1/snapshots/first/restore", json={"vm": "copy"}).status_code == 201
    restored = one(client, "restore", "copy")
    ended_ok(restored, "restore", "copy", 201)
    assert restored["description"] == "restore snapshot first as VM copy"
    listed = tasks(viewer)                                   # the viewer token reads the log too
    assert [t["kind"] for t in listed] == ["restore", "snapshot", "create"]        # newest first
    assert [t["kind"] for t in tasks(viewer, vm="sh")] == ["snapshot", "create"]
    assert [t["kind"] for t in tasks(viewer, limit=1)] == ["restore"]


def test_a_restore_named_as_saved_is_the_task_of_that_vm(client, shell_vm):
    client.post("/api/v1/vms/sh/snapshot", json={"name": "keep"})
    client.delete("/api/v1/vms/sh")
    assert client.post("/api/v1/snapshots/keep/restore", json={}).status_code == 201
    assert one(client, "restore", "sh")["description"] == "restore snapshot keep as VM sh"
    ended_ok(one(client, "destroy", "sh"), "destroy", "sh", 200)


def test_a_refused_create_is_a_failed_task_with_the_error_it_answered(client, viewer):
    refused = client.post("/api/v1/vms", json={"name": "x", "guest": "nosuch"})
    assert refused.status_code == 400 and set(refused.json) == {"error"}          # the answer is as before
    failed = one(client, "create", "x")
    assert (failed["state"], failed["status"], failed["http_status"]) == ("error", refused.json["error"], 400)
    assert failed["ended"] is not None and failed["progress"] is None
    assert viewer.post("/api/v1/vms", json={"name": "y", "guest": "shell"}).status_code == 403
    assert client.post("/api/v1/vms", json={"name": "bad name!", "guest": "shell"}).status_code == 400
    assert [t["vm"] for t in tasks(client)] == ["x"]          # a refused token or malformed request starts nothing


def test_lifecycle_actions_are_tasks_and_a_409_is_its_error(client, shell_vm):
    assert client.post("/api/v1/vms/sh/pause").status_code == 200
    ended_ok(one(client, "pause", "sh"), "pause", "sh", 200)
    refused = client.post("/api/v1/vms/sh/pause")
    assert refused.status_code == 409
    second = [t for t in tasks(client) if t["kind"] == "pause"][0]
    assert (second["state"], second["status"], second["http_status"]) == ("error", refused.json["error"], 409)
    assert second["description"] == "pause VM sh"


def test_a_demo_run_is_one_task_with_its_steps_as_progress(app, client):
    """The page's view: the /tasks namespace pushes the task as it starts, at each step, and when it ends."""
    sc = app.extensions["webhyve.socketio"].test_client(app, namespace="/tasks", auth={"token": VIEWER})
    assert sc.is_connected("/tasks")
    assert client.post("/api/v1/demos/demand-paging").status_code == 202
    pushed = []

    def done():
        pushed.extend(e["args"][0] for e in sc.get_received("/tasks") if e["name"] == "task")
        return any(t["state"] != "running" for t in pushed)
    assert wait_for(done, timeout=90)
    assert {t["id"] for t in pushed} == {pushed[0]["id"]} and pushed[-1]["state"] == "ok"
    running = [t["progress"] for t in pushed if t["state"] == "running" and t["progress"]["text"]]
    steps = len(demo.load("demand-paging")["step"])
    assert [p["text"] for p in running] == ["step %d of %d" % (i, steps) for i in range(1, steps + 1)]
    assert [p["fraction"] for p in running] == sorted(p["fraction"] for p in running) and running[0]["fraction"] == 0
    task = one(client, "demo", "demand_paging")
    assert task["description"] == "run demo demand-paging" and task["status"] == "OK" and task["who"] == "control"
    assert task["duration_s"] > 0 and task["http_status"] is None         # it ended after its request answered 202
    sc.disconnect(namespace="/tasks")


def test_the_namespace_needs_a_token_and_takes_no_events(app, client):
    socketio = app.extensions["webhyve.socketio"]
    assert not socketio.test_client(app, namespace="/tasks", auth={"token": "wrong"}).is_connected("/tasks")
    sc = socketio.test_client(app, namespace="/tasks", auth={"token": CONTROL})
    answer = sc.emit("watch", {"vm": "sh"}, namespace="/tasks", callback=True)
    assert answer["status"] == 404 and "none (it only pushes to the page)" in answer["error"]


def test_bad_queries_are_400s_naming_the_field(client):
    assert "limit" in client.get("/api/v1/tasks?limit=0").json["error"]
    assert "limit" in client.get("/api/v1/tasks?limit=501").json["error"]
    assert "vm" in client.get("/api/v1/tasks?vm=no%20such").json["error"]


def test_the_log_keeps_the_newest_tasks_each_with_its_own_id():
    log, heard = TaskLog("node1", limit=3), []
    log.listeners.append(heard.append)
    made = [log.start("create", "vm%d" % i, "create VM vm%d" % i, "control") for i in range(5)]
    assert len({t.id for t in made}) == 5
    assert [t["vm"] for t in log.list()] == ["vm4", "vm3", "vm2"]
    made[4].progress(2.5, "too far")
    assert log.list(limit=1)[0]["progress"] == {"fraction": 1.0, "text": "too far"}
    made[4].fail("it broke", 409)
    made[4].finish()                                          # the first end stands
    assert (log.list()[0]["status"], log.list()[0]["http_status"]) == ("it broke", 409)
    assert [h["state"] for h in heard][-3:] == ["running", "running", "error"]
    assert log.list(vm="vm0") == []


def test_migration_figures_as_progress():
    """What engine/migration/source.py reports after each round, as the task's fraction and text."""
    assert migration_progress({"phase": "connecting", "rounds": [], "pages_sent": 0}) == (None, "connecting")
    fraction, text = migration_progress({"phase": "pre-copy", "rounds": [{}, {}], "pages_sent": 900, "dirty": 100})
    assert fraction == 0.9 and text == "pre-copy round 2: 900 pages sent, 100 dirty left"
    assert migration_progress({"phase": "stop-and-copy", "pages_sent": 1000, "dirty": 0}) == (1.0, "stop-and-copy")
    assert migration_progress({"phase": "done", "pages_sent": 1010}) == (1.0, "done: 1010 pages sent")
