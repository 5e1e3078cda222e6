"""Three real nodes on one real Redis: VMs created anywhere, consoles watched and typed into from any node, control
forwarded with the owner's own answers, placement, a forged forwarded request, kill -9 of a node, Redis restarted.

The tests share one cluster (module scope) and run in file order: the last two kill node c and Redis."""
import json
import os
import threading
import time

import redis
import requests
import socketio
from click.testing import CliRunner

from webhyve.cli import main as vmmctl
from webhyve.cluster.security import Signer

from tests.cluster.conftest import CONTROL, ROOT, SECRET, VIEWER, wait_for
from tests.console_output import OutputLog


def vm_row(node, name):
    return next((vm for vm in node.api("GET", "/vms").json()["vms"] if vm["name"] == name), None)


def console_text(node, vm):
    return node.api("GET", "/vms/%s/console" % vm).json()["text"]


class Viewer:
    """A python-socketio client on one node's /console, acknowledging output as a browser does."""

    def __init__(self, node, token=CONTROL):
        self.client = socketio.Client(reconnection=False)
        self.received, self.states = OutputLog(), []
        self.client.on("output", self._output, namespace="/console")
        self.client.on("vm_state", lambda message: self.states.append(message), namespace="/console")
        self.client.connect(node.url, namespaces=["/console"], transports=["websocket"], auth={"token": token})

    def _output(self, message):
        self.received.add(message)
        self.client.emit("ack", {"vm": self.vm, "position": message["end"]}, namespace="/console")

    def call(self, event, payload):
        return self.client.call(event, payload, namespace="/console", timeout=15)

    def attach(self, vm):
        self.vm = vm
        return self.call("attach", {"vm": vm})

    def text(self):
        return self.received.text()

    def close(self):
        self.client.disconnect()


class TaskPushes:
    """The /tasks pushes a page on `node` receives (every node's tasks, through Redis), as a list."""

    def __init__(self, node):
        self.pushed, self.client = [], socketio.Client(reconnection=False)
        self.client.on("task", self.pushed.append, namespace="/tasks")
        self.client.connect(node.url, namespaces=["/tasks"], transports=["websocket"], auth={"token": VIEWER})

    def __enter__(self):
        return self.pushed

    def __exit__(self, *exc):
        self.client.disconnect()


class Watched:
    """A memtouch VM made on one node, its console followed by a Viewer on another node that also collects the
    VM's `migration` events; entered once memtouch has printed its base address."""

    def __init__(self, owner, watcher, name, cmdline, **create):
        created = owner.api("POST", "/vms", json={"name": name, "guest": "memtouch", "node": owner.name,
                                                  "cmdline": cmdline, **create})
        assert created.status_code == 201, created.text
        self.name, self.viewer, self.progress = name, Viewer(watcher), []
        self.viewer.client.on("migration", self.progress.append, namespace="/console")

    def __enter__(self):
        try:
            self.first = self.viewer.attach(self.name)
            assert wait_for("memtouch runs", lambda: self.shows("base=0x"))
        except BaseException:
            self.viewer.close()
            raise
        return self

    def __exit__(self, *exc):
        self.viewer.close()

    def shows(self, text):
        """The console as the viewer has it, from its attach on, contains `text`."""
        return text in self.first["data"] + self.viewer.text()

    def phases(self):
        return {p.get("phase") for p in self.progress}


def test_a_vm_created_through_a_is_placed_on_b_when_asked(cluster):
    a, b, c = (cluster.nodes[n] for n in "abc")
    created = a.api("POST", "/vms", json={"name": "onb", "guest": "shell", "node": "b"})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "onb"
    assert "onb" in {vm["name"] for vm in b.api("GET", "/vms").json()["vms"] if vm["node"] == "b"}
    assert wait_for("c lists onb on node b", lambda: (vm_row(c, "onb") or {}).get("node") == "b")
    assert a.api("GET", "/vms/onb").json()["node"] == "b"              # forwarded to b, answered by b
    assert wait_for("the shell's prompt, read through c", lambda: "webhyve>" in console_text(c, "onb"))


def test_console_on_b_watched_from_c_and_typed_into_from_a(cluster):
    a, c = cluster.nodes["a"], cluster.nodes["c"]
    watcher, typist = Viewer(c, VIEWER), Viewer(a)
    try:
        first = watcher.attach("onb")
        assert first["ok"] and first["mode"] == "replay" and "webhyve>" in first["data"], first   # the scrollback
        assert first["role"] == "view"
        assert typist.attach("onb")["ok"]
        assert typist.call("input", {"vm": "onb", "data": "echo typed on a\r"})["sent"] == 16
        assert wait_for("c's viewer sees the echo", lambda: "\r\ntyped on a" in watcher.text())
        assert typist.call("input", {"vm": "onb", "data": b"echo sent as bytes\r"})["sent"] == 19   # a binary event
        assert wait_for("the bytes' echo", lambda: "\r\nsent as bytes" in watcher.text())
        assert wait_for("a's typist sees it too", lambda: "\r\ntyped on a" in typist.text())
        refused = watcher.call("input", {"vm": "onb", "data": "x"})        # the viewer token, forwarded: still 403
        assert refused == {"error": "read-only viewer: typing needs the control token", "status": 403}
        again = Viewer(c, VIEWER)                                          # a late joiner on c gets the scrollback
        try:
            assert "typed on a" in again.attach("onb")["data"]
        finally:
            again.close()
    finally:
        watcher.close()
        typist.close()


def test_panels_of_a_vm_on_b_are_pushed_to_a_browser_on_c(cluster):
    c = cluster.nodes["c"]
    client, updates = socketio.Client(reconnection=False), []
    client.on("update", updates.append, namespace="/inspect")
    client.connect(c.url, namespaces=["/inspect"], transports=["websocket"], auth={"token": VIEWER})
    try:
        first = client.call("watch", {"vm": "onb"}, namespace="/inspect", timeout=15)
        assert first["ok"] and first["panels"]["summary"]["name"] == "onb" and "registers/0" in first["panels"]
        cluster.nodes["a"].api("POST", "/vms/onb/console", json={"data": "echo panels\r"})   # the guest runs: panels change
        assert wait_for("an update from b", lambda: [u for u in updates if u["vm"] == "onb"])
        assert client.call("unwatch", {"vm": "onb"}, namespace="/inspect", timeout=15) == {"ok": True}
        missing = client.call("watch", {"vm": "nosuchvm"}, namespace="/inspect", timeout=15)
        assert missing == {"error": "no VM named 'nosuchvm'", "status": 404}
    finally:
        client.disconnect()


def test_forwarded_control_answers_as_the_vms_own_node(cluster):
    a, b, c = (cluster.nodes[n] for n in "abc")
    paused = c.api("POST", "/vms/onb/pause")
    assert paused.status_code == 200 and paused.json()["state"] == "paused"
    assert b.api("GET", "/vms/onb").json()["state"] == "paused"
    for method, path, kwargs in [("POST", "/vms/onb/pause", {}),                       # 409: already paused
                                 ("POST", "/vms/onb/jump", {}),                        # 404: no such action
                                 ("POST", "/vms/onb/console", {"json": {"data": 5}}),  # 400: the schema's words
                                 ("POST", "/vms/onb/console", {"json": {"data": "x", "extra": 1}}),
                                 ("GET", "/vms/onb/vcpus/0/translate", {"params": {"gla": "nope"}}),
                                 ("GET", "/ctl/vms/onb/vcpus/7", {}),                  # no vCPU 7
                                 ("DELETE", "/vms/onb", {"token": VIEWER})]:           # 403: read-only
        token = kwargs.pop("token", CONTROL)
        here, there = c.api(method, path, token=token, **kwargs), b.api(method, path, token=token, **kwargs)
        assert here.status_code == there.status_code >= 400, (path, here.text, there.text)
        assert here.json() == there.json(), path
    vga = c.api("GET", "/vms/onb/screenshot/serial.png")
    assert vga.status_code == 200 and vga.headers["Content-Type"] == "image/png" and vga.content[:4] == b"\x89PNG"
    resumed = a.api("POST", "/vms/onb/resume")
    assert resumed.status_code == 200 and resumed.json()["state"] in ("running", "halted")
    assert c.api("GET", "/vms/nosuchvm").json() == b.api("GET", "/vms/nosuchvm").json()


def test_placement_by_free_memory_and_clear_refusals(cluster):
    a = cluster.nodes["a"]

    def free():
        return {n["name"]: n["mem_free_mb"] for n in a.api("GET", "/vms").json()["nodes"]}
    before = wait_for("b's heartbeat counts onb", lambda: free()["b"] == 1024 - 64 and free())
    created = a.api("POST", "/vms", json={"name": "placed", "guest": "shell", "mem_mb": 128})
    assert created.status_code == 201, created.text
    assert wait_for("placed listed", lambda: vm_row(a, "placed"))["node"] == max(before, key=before.get) == "b"
    too_big = a.api("POST", "/vms", json={"name": "huge", "guest": "shell", "mem_mb": 2000})
    assert too_big.status_code == 503
    message = too_big.json()["error"]
    assert message.startswith("no node can take VM 'huge': ")
    for name, total in (("a", 512), ("b", 1024), ("c", 768)):
        assert "node %r cannot take VM 'huge': it needs 2000 MiB" % name in message and "node's %d MiB" % total in message
    asked = a.api("POST", "/vms", json={"name": "huge", "guest": "shell", "mem_mb": 600, "node": "a"})
    assert asked.status_code == 503 and "node 'a' cannot take VM 'huge': it needs 600 MiB and 512 MiB" in asked.json()["error"]
    assert a.api("POST", "/vms", json={"name": "x", "guest": "shell", "node": "zz"}).json()["error"].startswith(
        "no node named 'zz' in the cluster")
    for body in ({"name": "bad", "guest": "shell", "mem_mb": True}, {"name": "bad", "guest": "nosuch"},
                 {"name": "bad/", "guest": "shell"}, {"name": "bad", "guest": "shell", "node": 7}):
        here, there = a.api("POST", "/vms", json=body), cluster.nodes["b"].api("POST", "/vms", json=body)
        assert here.status_code == there.status_code == 400 and here.json() == there.json(), body
    with open(os.path.join(ROOT, "guests", "build", "flat64.bin"), "rb") as image:     # an upload, placed on c
        uploaded = a.api("POST", "/vms", data={"name": "upload", "node": "c", "kind": "flat64", "start": "false"},
                         files={"image": ("flat64.bin", image.read())})
    assert uploaded.status_code == 201 and uploaded.json()["kind"] == "flat64", uploaded.text
    assert wait_for("upload listed on c", lambda: vm_row(a, "upload"))["node"] == "c"
    taken = cluster.nodes["c"].api("POST", "/vms", json={"name": "onb", "guest": "shell"})
    assert taken.status_code == 409 and taken.json()["error"] == "a VM named 'onb' exists on node 'b'"
    assert "huge" not in {vm["name"] for vm in a.api("GET", "/vms").json()["vms"]}


def test_vmmctl_list_shows_each_vms_node_and_the_nodes(cluster):
    c = cluster.nodes["c"]
    out = CliRunner(mix_stderr=False).invoke(vmmctl, ["list"], env={"WEBHYVE_URL": c.url, "WEBHYVE_TOKEN": VIEWER})
    assert out.exit_code == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines() if line.strip()}
    assert rows["NAME"][-1] == "NODE" and rows["onb"][-1] == "b"
    assert "NODES" in out.stdout and all(rows[n][1] == "up" for n in "abc")


def test_a_forged_forwarded_request_is_refused(cluster):
    b = cluster.nodes["b"]
    path = "/api/v1/vms/onb/poweroff"
    forged = Signer("not-the-cluster-secret", "mallory").headers("POST", path, "control", b"")
    refused = requests.post(b.url + path, headers=forged, timeout=10)
    assert refused.status_code == 403 and "bad cluster signature" in refused.json()["error"]
    # the cluster headers with a good token alongside: still refused, a forwarded request is judged by its HMAC
    refused = requests.post(b.url + path, headers={**forged, "Authorization": "Bearer " + CONTROL}, timeout=10)
    assert refused.status_code == 403
    stale = Signer(SECRET, "a").headers("POST", path, "control", b"")
    stale["X-Webhyve-Time"] = "%.6f" % (time.time() - 300)
    assert "more than 30 s" in requests.post(b.url + path, headers=stale, timeout=10).json()["error"]
    op = Signer("wrong", "a").headers("POST", "/cluster/v1/ops/console.input", "control", b"{}")
    assert requests.post(b.url + "/cluster/v1/ops/console.input", data=b"{}", headers=op, timeout=10).status_code == 403
    good = Signer(SECRET, "a").headers("GET", "/api/v1/vms/onb", "view", b"")
    assert requests.get(b.url + "/api/v1/vms/onb", headers=good, timeout=10).status_code == 200
    replayed = requests.get(b.url + "/api/v1/vms/onb", headers=good, timeout=10)
    assert replayed.status_code == 403 and "replay" in replayed.json()["error"]
    assert b.api("GET", "/vms/onb").json()["state"] != "suspended"        # nothing was powered off


def test_live_migration_of_a_guest_rewriting_its_memory_with_its_console_open(cluster):
    """memtouch rewrites 4096 pages over and over while a moves it to b; the browser on c that watches its console
    stays attached and reads, from b, the checksum that proves no page was lost."""
    from tests.guests.memtouch_reference import checksum
    a, b, c = (cluster.nodes[n] for n in "abc")
    with TaskPushes(c) as pushed, Watched(a, c, "mover", "pages=4096 pattern=random passes=1500") as mover:
        moved = c.api("POST", "/vms/mover/migrate", json={"node": "b"})           # c forwards it to a, the owner
        assert moved.status_code == 200, moved.text
        figures = moved.json()
        assert figures["node"] == "b" and figures["pages_sent"] >= 1 and figures["downtime_ms"] > 0
        assert len(figures["rounds"]) >= 1 and figures["bytes_sent"] > 4096
        assert vm_row(b, "mover")["node"] == "b"                                  # b registered it before a let go
        assert wait_for("a no longer holds mover", lambda: vm_row(a, "mover")["node"] == "b")
        want = "checksum=0x%016x" % checksum(4096, "random", 1500)
        assert wait_for("the checksum, printed on b, in c's open console", lambda: mover.shows(want), timeout=120)
        assert {"vm": "mover", "state": "migrated", "node": "b"} in mover.viewer.states
        assert mover.phases() >= {"pre-copy", "done"}
        task = [t for t in c.api("GET", "/tasks?vm=mover").json()["tasks"] if t["kind"] == "migrate"]   # a's log, on c
        assert [(t["state"], t["node"], t["description"]) for t in task] == [("ok", "a", "migrate VM mover to node b")]
        assert [t["kind"] for t in c.api("GET", "/tasks?vm=mover", token=VIEWER).json()["tasks"]] == ["migrate", "create"]
        assert wait_for("the task's end pushed to c", lambda: any(t["id"] == task[0]["id"] and t["state"] == "ok"
                                                                   for t in pushed))
        rounds = [t["progress"]["text"] for t in pushed if t["id"] == task[0]["id"] and t["state"] == "running"
                  and t["progress"]["text"].startswith("pre-copy round")]
        assert rounds and rounds[0].startswith("pre-copy round 1: ")            # a's rounds, live on c's page
    assert a.api("DELETE", "/vms/mover").status_code == 200                       # forwarded to b
    assert wait_for("mover gone", lambda: vm_row(c, "mover") is None)


def test_a_shell_migrated_there_and_back_takes_typing_and_loses_no_output(cluster):
    a, b, c = (cluster.nodes[n] for n in "abc")
    typist = Viewer(c)
    try:
        assert typist.attach("onb")["ok"]
        typist.call("input", {"vm": "onb", "data": "echo before the move\r"})
        assert wait_for("the echo", lambda: "\r\nbefore the move" in typist.text())
        for there in ("a", "b"):              # to a through a's REST API, back to b with vmmctl on c
            if there == "a":
                moved = a.api("POST", "/vms/onb/migrate", json={"node": "a"})
                assert moved.status_code == 200, moved.text
            else:
                out = CliRunner(mix_stderr=False).invoke(vmmctl, ["migrate", "onb", "b"],
                                                         env={"WEBHYVE_URL": c.url, "WEBHYVE_TOKEN": CONTROL})
                assert out.exit_code == 0, out.stderr
                assert out.stdout.startswith("VM onb migrated to node b in ") and "downtime" in out.stdout
                assert "round 1 " in out.stdout and "stop-and-copy" in out.stdout
            assert wait_for("onb listed on %s" % there, lambda: vm_row(c, "onb")["node"] == there)
            typist.call("input", {"vm": "onb", "data": "echo typed after moving to %s\r" % there})
            assert wait_for("its echo from %s" % there, lambda: "\r\ntyped after moving to %s" % there in typist.text())
        assert typist.text().count("\r\nbefore the move") == 1                  # nothing sent twice
    finally:
        typist.close()


def test_the_vm_pages_migrate_button_moves_it_and_shows_the_figures(cluster, browser):
    """In Chromium on c's page for onb (on b): Migrate…, pick a, and the page says where it went and how it went."""
    c = cluster.nodes["c"]
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(c.url + "/vms/onb?token=" + CONTROL)
        page.wait_for_function("document.getElementById('state').textContent.endsWith(' on b')")
        page.click("#migrate")
        page.wait_for_selector("#migrate-dialog[open] select[name=node] option", state="attached")   # after GET /vms
        options = page.locator("#migrate-dialog select[name=node] option").all_text_contents()
        assert [o.split()[0] for o in options] == ["a", "c"] and "MiB free" in options[0]
        page.select_option("#migrate-dialog select[name=node]", "a")
        page.click("#migrate-dialog button[value=migrate]")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('migrated to a in ')")
        status = page.text_content("#status")
        assert " rounds, " in status and "downtime" in status and " ms" in status
        page.wait_for_function("document.getElementById('state').textContent.endsWith(' on a')")
        page.click("#terminal")
        page.keyboard.type("echo typed in the page after the move\n")     # the console followed the VM
        page.wait_for_function("document.querySelector('#terminal .xterm-rows').textContent.split("
                               "'typed in the page after the move').length > 2")     # the echo, then the output
        assert errors == []
    finally:
        page.close()
    assert c.api("POST", "/vms/onb/migrate", json={"node": "b"}).status_code == 200   # back where the later tests want it


def watching(node, vm):
    """(console viewers, panel watchers) of `vm` as the node's /metrics counts them; None where it does not hold it."""
    from prometheus_client.parser import text_string_to_metric_families
    response = requests.get(node.url + "/metrics", headers={"Authorization": "Bearer " + VIEWER}, timeout=30)
    assert response.status_code == 200, response.text
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    counts = [[s.value for s in families[name].samples if s.labels["vm"] == vm]
              for name in ("webhyve_vm_console_viewers", "webhyve_vm_panel_watchers")]
    return tuple(int(c[0]) for c in counts) if all(counts) else None


def test_a_browser_watching_the_panels_on_the_old_node_is_let_go_on_the_new_one_when_it_closes(cluster):
    """A browser connected to b watches onb's panels and console; onb moves to a, which takes both over; when the
    browser closes, b tells a, and a's /metrics shows nobody watching."""
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    viewer = Viewer(b)
    panels = socketio.Client(reconnection=False)
    panels.connect(b.url, namespaces=["/inspect"], transports=["websocket"], auth={"token": CONTROL})
    try:
        assert viewer.attach("onb")["ok"]
        assert "summary" in panels.call("watch", {"vm": "onb"}, namespace="/inspect", timeout=15)["panels"]
        assert wait_for("b counts the browser", lambda: watching(b, "onb") == (1, 1))
        assert b.api("POST", "/vms/onb/migrate", json={"node": "a"}).status_code == 200
        assert wait_for("a took the browser over", lambda: watching(a, "onb") == (1, 1))
        assert watching(b, "onb") is None
    finally:
        viewer.close()
        panels.disconnect()
    assert wait_for("a let the closed browser go", lambda: watching(a, "onb") == (0, 0))
    assert a.api("POST", "/vms/onb/migrate", json={"node": "b"}).status_code == 200   # where the later tests want it


def test_a_migration_that_cannot_happen_says_why_and_the_vm_runs_on(cluster):
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    cases = [({"node": "b"}, 400, "VM 'onb' already runs on node 'b'"),
             ({"node": "zz"}, 400, "no node named 'zz' in the cluster"),
             ({"node": 7}, 400, "node"),
             ({}, 400, "node")]
    for body, status, words in cases:
        answer = a.api("POST", "/vms/onb/migrate", json=body)
        assert answer.status_code == status and words in answer.json()["error"], (body, answer.text)
    big = a.api("POST", "/vms", json={"name": "big", "guest": "shell", "node": "b", "mem_mb": 600})
    assert big.status_code == 201, big.text
    full = b.api("POST", "/vms/big/migrate", json={"node": "a"})              # a has 512 MiB in all
    assert full.status_code == 503 and "node 'a' cannot take VM 'big': it needs 600 MiB" in full.json()["error"]
    assert b.api("GET", "/vms/big").json()["state"] in ("running", "halted")
    assert b.api("DELETE", "/vms/big").status_code == 200
    out = CliRunner(mix_stderr=False).invoke(vmmctl, ["migrate", "onb", "zz"],
                                             env={"WEBHYVE_URL": a.url, "WEBHYVE_TOKEN": CONTROL})
    assert out.exit_code != 0 and "no node named 'zz'" in out.stderr


def test_kill_9_of_the_target_during_pre_copy_leaves_the_vm_running_on_its_node(cluster):
    """A fourth node, d, is started for this and killed (kill -9) while memtouch's 60,000 pages are being copied to
    it: the request says the migration failed, and the VM runs on at a, where its console is still followed."""
    from tests.cluster.conftest import Node
    a, c = cluster.nodes["a"], cluster.nodes["c"]
    d = Node("d", cluster.redis.url, cluster.workdir)
    try:
        wait_for("node d answers", d.up, timeout=120, every=0.2)
        wait_for("d registered", lambda: "d" in cluster.up_nodes(a))
        with Watched(a, c, "flee", "pages=60000 pattern=random passes=1000000", mem_mb=256) as flee:
            answer = {}
            request = threading.Thread(target=lambda: answer.update(r=c.api("POST", "/vms/flee/migrate", json={"node": "d"})))
            request.start()
            wait_for("the pre-copy under way", lambda: "pre-copy" in flee.phases(), timeout=60)
            d.kill()
            request.join(60)
            failed = answer["r"]
            assert failed.status_code == 502, failed.text
            assert failed.json()["error"].startswith("migration of VM 'flee' to node 'd' failed: ")
            row = vm_row(a, "flee")
            assert row["node"] == "a" and row["state"] == "running", row
            assert wait_for("the failure reported to the console", lambda: "failed" in flee.phases())
            before = a.api("GET", "/vms/flee/vcpus/0/registers").json()      # memtouch's loop takes no exits:
            assert wait_for("flee still runs on a",                             # its counters move in its registers
                            lambda: a.api("GET", "/vms/flee/vcpus/0/registers").json() != before)
    finally:
        d.kill()
        a.api("DELETE", "/vms/flee")


def test_kill_9_of_a_node_marks_it_down_and_its_vms_lost(cluster):
    """c runs with --restart-on-failure: its running VM "ha" starts again elsewhere from its checkpoint; "onc",
    never started, has none and is lost."""
    a, c = cluster.nodes["a"], cluster.nodes["c"]
    assert a.api("POST", "/vms", json={"name": "onc", "guest": "shell", "node": "c", "start": False}).status_code == 201
    assert a.api("POST", "/vms", json={"name": "ha", "guest": "shell", "node": "c"}).status_code == 201
    wait_for("ha's prompt", lambda: "webhyve>" in console_text(a, "ha"))
    a.api("POST", "/vms/ha/console", json={"data": "echo before the crash\r"})
    wait_for("ha's echo", lambda: "\nbefore the crash" in console_text(a, "ha"))
    checkpoint = os.path.join(c.shared, "ha.snap")
    written = wait_for("a checkpoint of ha after the echo", lambda: os.path.exists(checkpoint) and os.path.getmtime(checkpoint))
    wait_for("a newer checkpoint", lambda: os.path.getmtime(checkpoint) > written)
    viewer, on_c = Viewer(a), Viewer(c)
    try:
        assert viewer.attach("onc")["ok"]
        assert on_c.attach("onb")["ok"]                 # a browser on c following b's VM: c dies without a detach
        orphan = on_c.client.get_sid("/console")
        c.kill()
        killed = time.monotonic()
        down = wait_for("a sees c down", lambda: "c" not in cluster.up_nodes(a), timeout=15)
        assert down and time.monotonic() - killed < 10
        row = wait_for("onc shown as lost", lambda: (vm_row(a, "onc") or {}).get("state") == "lost" and vm_row(a, "onc"))
        assert row["node"] == "c" and row["status"] == "lost" and "node 'c' is down" in row["status_detail"]
        assert wait_for("the console says lost", lambda: {"vm": "onc", "state": "lost", "node": "c"} in viewer.states)
        assert viewer.attach("onb")["ok"]
        assert not published_to(cluster, orphan, viewer, "onb"), "b still sends onb's output to c's dead browser"
    finally:
        viewer.close()
    paused = a.api("POST", "/vms/onc/pause")
    assert paused.status_code == 409 and paused.json()["error"].startswith("VM 'onc' is lost: its node 'c' is down")
    assert a.api("GET", "/vms/onc").json()["status"] == "lost"
    assert a.api("DELETE", "/vms/onc").json() == {"destroyed": "onc", "lost": True}
    assert vm_row(a, "onc") is None
    assert vm_row(a, "onb")["state"] != "lost"                              # b's VM is untouched
    restarted = wait_for("ha restarted on a or b", lambda: (vm_row(a, "ha") or {}).get("node") in ("a", "b") and vm_row(a, "ha"))
    assert restarted["state"] in ("running", "halted") and restarted["node"] == "b"          # b has the most free memory
    a.api("POST", "/vms/ha/console", json={"data": "echo after the restart\r"})
    assert wait_for("ha answers on b", lambda: "\nafter the restart" in console_text(a, "ha"))


def published_to(cluster, sid, viewer, vm, timeout=10.0):
    """Whether the message queue still carries `vm`'s output to `sid` `timeout` seconds on (b's heartbeat drops a
    browser whose node is down): type, and read the queue until `viewer`, a live browser, has the echo; again."""
    listener = redis.Redis.from_url(cluster.redis.url).pubsub(ignore_subscribe_messages=True)
    listener.subscribe("webhyve")
    wait_for("subscribed", lambda: listener.get_message(timeout=0.1) is None and listener.subscribed)
    deadline, attempt = time.monotonic() + timeout, 0
    try:
        while True:
            attempt += 1
            cluster.nodes["a"].api("POST", "/vms/%s/console" % vm, json={"data": "echo orphan check %d\r" % attempt})
            wait_for("the live viewer's echo", lambda: "\r\norphan check %d" % attempt in viewer.text())
            rooms = []
            while (message := listener.get_message(timeout=0.2)) is not None:
                rooms.append(json.loads(message["data"])["room"])
            if sid not in rooms or time.monotonic() > deadline:
                return sid in rooms
    finally:
        listener.close()


def test_redis_killed_and_restarted_local_vms_run_on_and_re_register(cluster):
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    assert a.api("POST", "/vms", json={"name": "ona", "guest": "shell", "node": "a"}).status_code == 201
    wait_for("ona's prompt", lambda: "webhyve>" in console_text(a, "ona"))
    cluster.redis.kill()
    listing = wait_for("a says Redis is gone", lambda: not a.api("GET", "/vms").json()["cluster"]["ok"]
                       and a.api("GET", "/vms").json())
    message = listing["cluster"]["message"]
    assert "Redis at redis://127.0.0.1:%d/0 is unreachable" % cluster.redis.port in message
    assert "cluster-redis-password" not in message and "this node's VMs keep running" in message
    assert [vm["name"] for vm in listing["vms"]] == ["ona"]                  # its own VMs, served without Redis
    a.api("POST", "/vms/ona/console", json={"data": "echo without redis\r"})
    assert wait_for("ona answers while Redis is down", lambda: "\nwithout redis" in console_text(a, "ona"))
    away = a.api("GET", "/vms/onb")
    assert away.status_code == 503 and "cluster registry is unreachable" in away.json()["error"]
    cluster.redis.start()                                                    # empty: no persistence
    wait_for("a lists b's VM again", lambda: (vm_row(a, "onb") or {}).get("node") == "b", timeout=20)
    wait_for("a says the cluster is back", lambda: a.api("GET", "/vms").json()["cluster"]["ok"])
    assert wait_for("b lists a's VM", lambda: (vm_row(b, "ona") or {}).get("node") == "a")
    viewer = Viewer(b)                                     # consoles across nodes work again once the queue is back
    try:
        assert viewer.attach("ona")["ok"]
        deadline = time.monotonic() + 30
        while "\r\nback again" not in viewer.text() and time.monotonic() < deadline:
            viewer.call("input", {"vm": "ona", "data": "echo back again\r"})
            wait_for_text(viewer, "\r\nback again", 3)
        assert "\r\nback again" in viewer.text()
    finally:
        viewer.close()


def wait_for_text(viewer, text, seconds):
    try:
        wait_for("output", lambda: text in viewer.text(), timeout=seconds)
    except AssertionError:
        pass
