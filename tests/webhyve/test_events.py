"""Every Socket.IO event is checked against events.EVENTS before its handler runs: an ack with a 4xx and a message."""
from tests.webhyve.conftest import CONTROL, LIVE, VIEWER
from webhyve.web.events import EVENTS


def sio(app, client, token=CONTROL, namespace="/console"):
    return app.extensions["webhyve.socketio"].test_client(app, namespace=namespace, auth={"token": token},
                                                          flask_test_client=client)


def emit(sc, namespace, event, *args):
    return sc.emit(event, *args, namespace=namespace, callback=True)


def test_each_namespace_declares_each_of_its_handlers(app):
    for namespace, handlers in app.extensions["webhyve.socketio"].server.namespace_handlers.items():
        declared = {name[3:] for name in dir(handlers) if name.startswith("on_")} - {"connect", "disconnect"}
        assert declared == set(EVENTS[namespace]), namespace


def test_bad_payloads_are_refused_with_the_field_and_the_problem(app, client, shell_vm):
    """Found by a probe: a lone surrogate typed was a 500, `since: true` resumed from byte 1, and unwatch with an
    object for `vm` was a 500."""
    console, inspect = sio(app, client), sio(app, client, namespace="/inspect")
    for sc, namespace, event, payload, problem in [
        (console, "/console", "input", {"vm": "sh", "data": "\ud800"}, "field 'data' must be valid Unicode text"),
        (console, "/console", "input", {"vm": "sh", "data": ""}, "1 to 4096 long"),
        (console, "/console", "attach", {"vm": "sh", "since": True}, "field 'since' must be an integer"),
        (console, "/console", "attach", {"vm": "sh", "since": -1}, "field 'since' must be an integer"),
        (console, "/console", "ack", {"vm": "sh", "position": 1.5}, "field 'position' must be an integer"),
        (console, "/console", "detach", {"vm": "sh", "extra": 1}, "unknown field 'extra'"),
        (console, "/console", "attach", ["sh"], "send a JSON object such as {\"vm\": …}, not a list"),
        (inspect, "/inspect", "unwatch", {"vm": {}}, "field 'vm' must be a VM name"),
        (inspect, "/inspect", "watch", {}, "field 'vm' is missing"),
    ]:
        answer = emit(sc, namespace, event, payload)
        assert answer["status"] == 400 and problem in answer["error"], (event, payload, answer)
        assert answer["error"].startswith("%s %s: " % (namespace, event))
    assert [(v["name"], v["state"] in LIVE) for v in client.get("/api/v1/vms").json["vms"]] == [("sh", True)]
    assert "\ufffd" not in client.get("/api/v1/vms/sh/console").json["text"]


def test_unknown_events_and_extra_arguments_are_refused(app, client, shell_vm):
    console = sio(app, client, token=VIEWER)
    unknown = emit(console, "/console", "reboot", {"vm": "sh"})
    assert unknown["status"] == 404 and "send one of attach, input, ack, detach" in unknown["error"]
    extra = emit(console, "/console", "attach", {"vm": "sh"}, "and more")
    assert extra["status"] == 400 and "exactly one object, not 2 arguments" in extra["error"]
    assert emit(console, "/console", "attach")["status"] == 400


def test_a_client_sending_connect_or_disconnect_as_events_runs_no_handler(app, client, shell_vm):
    """python-socketio passes an event a client names "connect" or "disconnect" to those handlers: a fake disconnect
    dropped the connection's role, so its next attach was a KeyError, a 500."""
    console = sio(app, client)
    for event in ("connect", "disconnect"):
        assert emit(console, "/console", event, {"token": CONTROL})["status"] == 404
    attached = emit(console, "/console", "attach", {"vm": "sh"})
    assert attached["ok"] and attached["role"] == "control"


def test_connecting_with_a_malformed_token_is_refused(app, client):
    for auth in ({"token": "\u00fc"}, {"token": ["x"]}, ["x"], "x"):
        sc = app.extensions["webhyve.socketio"].test_client(app, namespace="/console", auth=auth, flask_test_client=client)
        assert not sc.is_connected("/console")
