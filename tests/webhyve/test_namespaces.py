"""The /console and /inspect namespaces through Flask-SocketIO's test client, against the running shell guest."""
from tests.webhyve.conftest import CONTROL, LIVE, VIEWER, wait_for


def sio(app, client, token=CONTROL, namespace="/console"):
    return app.extensions["webhyve.socketio"].test_client(app, namespace=namespace, auth={"token": token},
                                                          flask_test_client=client)


class Follower:
    """Collects a console client's output events into one byte string, checking positions are contiguous."""

    def __init__(self, sc, first):
        self.sc, self.data, self.position = sc, first["data"].encode("latin-1"), first["position"]
        self.replays = 0

    def poll(self):
        for event in self.sc.get_received("/console"):
            args = event["args"][0]
            if event["name"] == "output":
                assert args["start"] == self.position, "a gap or an overlap in the stream"
                self.data += args["data"].encode("latin-1")
                self.position = args["end"]
                self.sc.emit("ack", {"vm": "sh", "position": self.position}, namespace="/console", callback=True)
            elif event["name"] == "replay":
                self.replays += 1
        return self.data

    def wait_for(self, text):
        return wait_for(lambda: text.encode() in self.poll())


def attach(sc, **extra):
    return sc.emit("attach", {"vm": "sh", **extra}, namespace="/console", callback=True)


def test_connect_needs_a_token(app, client, shell_vm):
    assert not sio(app, client, token="wrong").is_connected("/console")
    assert not sio(app, client, token="wrong", namespace="/inspect").is_connected("/inspect")
    assert sio(app, client).is_connected("/console")


def test_type_help_see_answer_and_late_joiner_gets_the_screen(app, client, shell_vm):
    """Typed `help` is echoed and answered in order; a viewer joining later sees it in its replay."""
    sc = sio(app, client)
    first = attach(sc)
    assert first["ok"] and first["mode"] == "replay" and "webhyve>" in first["data"] and first["role"] == "control"
    typist = Follower(sc, first)
    assert sc.emit("input", {"vm": "sh", "data": "help\r"}, namespace="/console", callback=True) == {"ok": True, "sent": 5}
    assert typist.wait_for("cli; hlt\r\nwebhyve> ")
    late = sio(app, client, token=VIEWER)
    replay = attach(late)
    assert replay["role"] == "view" and replay["position"] >= typist.position
    assert "help                 this list" in replay["data"] and "\x1b[" in replay["data"]   # cursor placed


def test_read_only_viewer_sees_output_but_cannot_type(app, client, shell_vm):
    writer, reader = sio(app, client), sio(app, client, token=VIEWER)
    follower = Follower(reader, attach(reader))
    Follower(writer, attach(writer))
    refused = reader.emit("input", {"vm": "sh", "data": "echo sneaky\r"}, namespace="/console", callback=True)
    assert refused["status"] == 403 and "read-only" in refused["error"]
    writer.emit("input", {"vm": "sh", "data": "echo allowed\r"}, namespace="/console", callback=True)
    assert follower.wait_for("\r\nallowed\r\n")
    assert b"sneaky" not in follower.poll()


def test_reconnect_resumes_exactly_where_it_dropped(app, client, shell_vm):
    """A viewer that drops and comes back with its last position gets exactly the bytes it missed."""
    sc = sio(app, client)
    follower = Follower(sc, attach(sc))
    dropped_at = follower.position
    sc.disconnect(namespace="/console")
    control = sio(app, client)
    attach(control)
    control.emit("input", {"vm": "sh", "data": "echo while away\r"}, namespace="/console", callback=True)
    assert wait_for(lambda: "while away\nwebhyve>" in client.get("/api/v1/vms/sh/console").json["text"])
    back = sio(app, client, token=VIEWER)
    resumed = attach(back, since=dropped_at)
    assert resumed["mode"] == "resume" and resumed["start"] == dropped_at
    assert resumed["data"] == "echo while away\r\nwhile away\r\nwebhyve> "
    assert resumed["position"] == dropped_at + len(resumed["data"])


def test_malformed_events_get_errors_and_change_nothing(app, client, shell_vm):
    sc = sio(app, client)
    for event, payload in (("attach", "sh"), ("attach", {}), ("attach", {"vm": "nope"}), ("attach", {"vm": 3}),
                           ("input", {"vm": "sh", "data": 12}), ("input", {"vm": "sh", "data": ""}),
                           ("input", {"vm": "sh", "data": "x" * 5000}), ("ack", {"vm": "sh", "position": "far"}),
                           ("ack", {"vm": "sh", "position": 5}), ("detach", None)):
        reply = sc.emit(event, payload, namespace="/console", callback=True)
        assert reply["error"] and 400 <= reply["status"] < 500, (event, payload, reply)
    assert sc.is_connected("/console") and attach(sc)["ok"]
    assert client.get("/api/v1/vms/sh").json["state"] in LIVE


def test_inspect_panels_and_tunable_marker(app, client, shell_vm):
    """Watching gets every panel; a tunable change shows up in the next update and as a console marker."""
    console = sio(app, client)
    attach(console)
    inspect = sio(app, client, namespace="/inspect")
    watched = inspect.emit("watch", {"vm": "sh"}, namespace="/inspect", callback=True)
    panels = watched["panels"]
    assert {"registers/0", "vmcs/0", "stats/0", "tunables", "caches", "ept", "summary"} <= set(panels)
    inspect.get_received("/inspect")
    client.put("/api/v1/tunables/hw.vmm.halt_detection", json={"value": 0})

    def tunable_update():
        for event in inspect.get_received("/inspect"):
            changed = event["args"][0]["panels"]
            if "tunables" in changed:
                return {t["name"]: t["value"] for t in changed["tunables"]}["hw.vmm.halt_detection"] == 0
        return False
    assert wait_for(tunable_update, timeout=5)
    markers = [e["args"][0] for e in console.get_received("/console") if e["name"] == "marker"]
    assert [m["label"] for m in markers] == ["hw.vmm.halt_detection: 1 -> 0"]
    assert inspect.emit("watch", {"vm": "ghost"}, namespace="/inspect", callback=True)["status"] == 404


def test_exit_histogram_fills_over_time(app, client, shell_vm):
    """The ticker samples exit counts: the shell answering a command (after the first sample) shows up as in/out
    exits."""
    def samples():
        return client.get("/api/v1/vms/sh/exits").json["samples"]
    assert wait_for(lambda: samples(), timeout=5)
    client.post("/api/v1/vms/sh/console", json={"data": "help\r"})
    assert wait_for(lambda: any(s["exits"].get("VMEXIT_INOUT", 0) > 0 for s in samples()), timeout=5)


def test_events_name_vms_by_the_one_name_rule(app, client, shell_vm):
    """A VM name against engine/names.py's rule is refused with the rule, in both namespaces."""
    for namespace, event in (("/console", "attach"), ("/inspect", "watch")):
        answer = sio(app, client, namespace=namespace).emit(event, {"vm": "ünï"}, namespace=namespace, callback=True)
        assert answer["status"] == 400 and "ASCII letters, digits, '-' and '_', 1 to 64 characters" in answer["error"]


def test_a_page_connects_with_its_cookie_and_a_wrong_auth_token_is_refused_anyway(app, shell_vm):
    """The page holds no token: its socket carries the cookie its ?token= visit set."""
    browser = app.test_client()
    assert browser.get("/vms/sh?token=" + VIEWER).status_code == 303
    socketio = app.extensions["webhyve.socketio"]
    page = socketio.test_client(app, namespace="/console", flask_test_client=browser)
    assert attach(page)["role"] == "view"
    assert socketio.test_client(app, namespace="/inspect", flask_test_client=browser).is_connected("/inspect")
    wrong = socketio.test_client(app, namespace="/console", auth={"token": "wrong"}, flask_test_client=browser)
    assert not wrong.is_connected("/console")


def test_integers_beyond_2_53_travel_as_text_on_inspect():
    """A browser's JSON numbers are doubles: a 64-bit address goes as its decimal text, everything else as is."""
    from webhyve.web.inspector import exact
    assert exact({"rip": 0xffffffff8ec5907b, "n": 5, "ok": True, "l": [1 << 53, (1 << 53) - 1, -(1 << 60)], "t": "x"}) == \
        {"rip": "18446744071809896571", "n": 5, "ok": True, "l": ["9007199254740992", (1 << 53) - 1, str(-(1 << 60))],
         "t": "x"}
