"""Generated JSON of every shape at every REST route and Socket.IO event, with both tokens: a 4xx with a message, never a 500.

One app with the shell guest running serves the whole module. After each request the server must still
answer, and a refused request must have changed nothing: the VMs and their states, the tunables, the
recordings and the snapshots. The generator never sends a request that is valid and would change
something (a control-token POST/PUT/DELETE or `input` that the route's schema accepts), so that nothing
legitimately changes between examples. test_*_bad_* build requests that are wrong by construction,
one field at a time, from a catalogue of wrong values per field type written out here.
"""
import io
import json
import os
import re
import urllib.parse

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.webhyve.conftest import CONTROL, LIVE, VIEWER, wait_for
from webhyve.demos import scenario as demo
from webhyve.web import create_app, shutdown
from webhyve.web.api_schema import ROUTES
from webhyve.web.events import EVENTS
from webhyve.web.schema import Address, Bool, Int, Name, SchemaError, Setting, Text, TextList, Typed

FUZZ = settings(max_examples=20, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])
NAME_RULE = re.compile(r"[A-Za-z0-9_-]{1,64}")          # engine/names.py's rule, written out independently
PATH_VALUES = {"name": "sh", "vm": "sh", "index": 0, "action": "pause", "which": "vga", "reg": "rax",
               "cap": "hlt_exit", "rid": "sh-20260101T000000-0.cast"}
PATH_OVERRIDES = {"api.set_tunable": {"name": "hw.vmm.halt_detection"}, "snapdemo.restore_snapshot": {"name": "nosnap"},
                  "snapdemo.delete_snapshot": {"name": "nosnap"}, "snapdemo.run_demo": {"name": "nosuch"}}
FIELD_NAMES = sorted({k for r in ROUTES.values() for k in [*r.body.fields, *r.query.fields]}
                     | {k for events in EVENTS.values() for s in events.values() for k in s.fields} | {"token"})

# -- what gets sent -------------------------------------------------------------------------------------------
lone_surrogate = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.text(max_size=12) | st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), lone_surrogate,
                                         st.text(max_size=4))
scalars = (st.none() | st.booleans() | st.integers() | st.integers(-(1 << 70), 1 << 70) | st.floats() | texts
           | st.sampled_from(["sh", "", "0x1000", "true", "64", "x" * 5000]))
keys = st.sampled_from(FIELD_NAMES) | texts
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(keys, kids, max_size=3),
                           max_leaves=8)
objects = st.dictionaries(keys, json_values, max_size=4)
bodies = objects | json_values
tokens = st.sampled_from([CONTROL, VIEWER])


def bad_values(field):
    """Values a field of this type must refuse, whatever its range."""
    containers = st.lists(scalars, max_size=2) | st.dictionaries(texts, scalars, max_size=2)
    wrong = containers if field.nullable else containers | st.none()
    surrogates = st.builds(lambda s: "ok" + s, lone_surrogate)
    if isinstance(field, Int):
        return wrong | st.booleans() | st.floats() | texts | st.integers().filter(lambda v: not field.low <= v <= field.high)
    if isinstance(field, Bool):
        return wrong | st.integers() | st.floats() | texts
    if isinstance(field, Name):
        return wrong | st.integers() | st.booleans() | st.floats() | texts.filter(lambda t: not NAME_RULE.fullmatch(t))
    if isinstance(field, Text):
        too_long = st.just("x" * (field.max_len + 1))
        off_list = texts.filter(lambda t: t not in field.choices) if field.choices else too_long
        return wrong | st.integers() | st.booleans() | st.floats() | surrogates | too_long | off_list
    if isinstance(field, Address):
        return (wrong | st.booleans() | st.floats() | st.integers(max_value=-1) | st.integers(min_value=1 << 64)
                | st.sampled_from(["banana", "", "0x", "-1", "1.5", "0x1" + "0" * 16, "\ud800", "\uff11"]))
    if isinstance(field, Setting):
        return wrong | st.booleans() | st.floats() | surrogates | st.just("1" * 65)
    if isinstance(field, TextList):
        return (wrong.filter(lambda v: not (isinstance(v, list) and all(isinstance(i, str) and 1 <= len(i) <= 1024
                                                                            for i in v)))
                | st.integers() | st.booleans() | st.floats() | texts | st.just(["x"] * (field.max_items + 1))
                | st.just([""]) | st.just(["ok", 3]) | st.builds(lambda s: ["ok" + s], lone_surrogate))
    if isinstance(field, Typed):
        return wrong | st.integers() | st.booleans() | st.floats() | surrogates | st.just("") | st.just("x" * 4097)
    raise AssertionError("no wrong values for %r" % field)


def good_value(field):
    """A value the field takes, to build a request that only the mutated field makes wrong."""
    return {Int: lambda f: f.low, Bool: lambda f: False, Name: lambda f: "sh", Address: lambda f: 0x1000,
            Setting: lambda f: "1", Typed: lambda f: "x", TextList: lambda f: [],
            Text: lambda f: f.choices[0] if f.choices else "x" * max(1, f.min_len)}[type(field)](field)


# -- the server -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    app = create_app({"TESTING": True, "HOST_MEM_MB": 256, "CONTROL_TOKEN": CONTROL, "VIEWER_TOKEN": VIEWER,
                      "RECORDINGS_DIR": str(folder / "recordings"), "SNAPSHOTS_DIR": str(folder / "snapshots")})
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + CONTROL
    assert client.post("/api/v1/vms", json={"name": "sh", "guest": "shell"}).status_code == 201
    assert wait_for(lambda: "webhyve>" in client.get("/api/v1/vms/sh/console").json["text"])
    yield app
    shutdown(app)


def state(app):
    """What a refused request must not change."""
    fleet, config = app.extensions["webhyve.fleet"], app.config
    listing = lambda folder: sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return ({s.name: "live" if s.vm.state in LIVE else s.vm.state for s in fleet.list()},
            {t["name"]: t["value"] for t in fleet.host.tunables()},
            listing(config["RECORDINGS_DIR"]), listing(config["SNAPSHOTS_DIR"]))


def url(app, endpoint, **values):
    rule = next(r for r in app.url_map.iter_rules() if r.endpoint == endpoint)
    path = {k: v for k, v in {**PATH_VALUES, **PATH_OVERRIDES.get(endpoint, {})}.items() if k in rule.arguments}
    method = sorted(rule.methods - {"HEAD", "OPTIONS"})[0]
    return method, app.url_map.bind("localhost").build(endpoint, {**path, **values})


def request(app, token, method, path, **kwargs):
    client = app.test_client()
    return client.open(path, method=method, headers={"Authorization": "Bearer " + token}, **kwargs)


def json_text(value):
    return json.dumps(value)                # NaN and Infinity go out as JSON's common extension; \ud800 escaped


def accepted(schema, payload, from_text=False):
    try:
        schema.check(payload, "probe", from_text=from_text)
        return True
    except SchemaError:
        return False


def check_refused_or_served(app, response, before, bad=False):
    """A 4xx with a message that changed nothing, or (for a request the generator may have got right) a 2xx;
    never a 500; and the server answers the next request."""
    assert response.status_code < 500, response.get_data(as_text=True)
    if bad or response.status_code >= 400:
        assert 400 <= response.status_code < 500, (response.status_code, response.get_data(as_text=True))
        error = response.get_json()["error"]
        assert isinstance(error, str) and error
        assert state(app) == before
    assert request(app, VIEWER, "GET", "/api/v1/session").json["role"] == "view"


# -- REST ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", sorted(ROUTES))
@FUZZ
@given(body=bodies, query=st.dictionaries(keys, texts, max_size=3), token=tokens)
def test_any_json_at_any_route(served, endpoint, body, query, token):
    route, (method, path) = ROUTES[endpoint], url(served, endpoint)
    query_valid = accepted(route.query, {k: v for k, v in query.items() if k != "token"}, from_text=True)
    assume(not (method != "GET" and token == CONTROL and query_valid and accepted(route.body, body)))
    if query:                                        # as bytes: a lone surrogate goes out as its (invalid) UTF-8
        path += "?" + urllib.parse.urlencode({k.encode("utf-8", "surrogatepass"): v.encode("utf-8", "surrogatepass")
                                              for k, v in query.items()})
    before = state(served)
    response = request(served, token, method, path, data=json_text(body), content_type="application/json")
    check_refused_or_served(served, response, before)


@pytest.mark.parametrize("endpoint", sorted(e for e, r in ROUTES.items() if r.body.fields or r.query.fields))
@FUZZ
@given(data=st.data(), token=tokens)
def test_one_bad_field_at_a_route_is_a_400_naming_it(served, endpoint, data, token):
    route = ROUTES[endpoint]
    part = data.draw(st.sampled_from([p for p in ("body", "query") if getattr(route, p).fields]))
    schema = getattr(route, part)
    good = {k: good_value(f) for k, f in schema.fields.items()}
    key = data.draw(st.sampled_from(sorted(schema.fields)))
    how = data.draw(st.sampled_from(["wrong value", "missing", "unknown field"] if part == "body" else ["wrong value"]))
    sent, named = dict(good), key
    if how == "wrong value":
        field = schema.fields[key]
        sent[key] = data.draw(bad_values(field) if part == "body" else
                              st.sampled_from(["banana", "", "maybe", "1.5", "\uff11", "0x1" + "0" * 16]))
        assume(not (field.nullable and sent[key] in (None, "")))
        assume(not (part == "query" and sent[key] == "" and not field.required))
        assume(not (part == "query" and accepted(schema, sent, from_text=True)))     # "banana" is a good VM name
    elif how == "missing":
        assume(schema.fields[key].required)
        del sent[key]
    else:
        named = data.draw(texts.filter(lambda t: t not in schema.fields and t != "token"))
        sent[named] = data.draw(json_values)
    query = sent if part == "query" else {k: good_value(f) for k, f in route.query.fields.items()}
    body = sent if part == "body" else {k: good_value(f) for k, f in route.body.fields.items()}
    method, path = url(served, endpoint, **query)
    before = state(served)
    response = request(served, token, method, path, data=json_text(body), content_type="application/json")
    check_refused_or_served(served, response, before, bad=True)
    assert response.status_code == 400 and repr(named)[:30] in response.json["error"], response.json


@pytest.mark.parametrize("endpoint", sorted(e for e, r in ROUTES.items() if not r.body.fields))
@FUZZ
@given(body=bodies, token=tokens)
def test_a_body_at_a_route_that_takes_none_is_a_400(served, endpoint, body, token):
    assume(body != {})
    method, path = url(served, endpoint, **{k: good_value(f) for k, f in ROUTES[endpoint].query.fields.items()})
    before = state(served)
    response = request(served, token, method, path, data=json_text(body), content_type="application/json")
    check_refused_or_served(served, response, before, bad=True)


@FUZZ
@given(segment=st.text(min_size=1, max_size=80) | texts.filter(bool), token=tokens,
       endpoint=st.sampled_from(sorted(e for e, r in ROUTES.items() if r.path.get("name") is not None)))
def test_any_text_as_a_path_name(served, segment, token, endpoint):
    assume(segment not in ("sh", "nosnap", "nosuch", "hw.vmm.halt_detection", *demo.bundled()))
    method, path = url(served, endpoint)
    name = urllib.parse.quote(segment.encode("utf-8", "surrogatepass"), safe="")
    path = path.replace("/%s" % PATH_OVERRIDES.get(endpoint, PATH_VALUES)["name"], "/" + name, 1)
    before = state(served)
    body = {k: good_value(f) for k, f in ROUTES[endpoint].body.fields.items()}
    response = request(served, token, method, path, data=json_text(body), content_type="application/json")
    check_refused_or_served(served, response, before, bad=True)


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(["name", "kind", "mem_mb", "cpus", "profile", "cmdline", "start", "guest"])
                              | texts, texts, max_size=5),
       file_field=st.sampled_from(["image"]) | texts, content=st.binary(max_size=64), token=tokens)
def test_any_multipart_upload(served, fields, file_field, content, token):
    try:
        form = {k.encode("utf-8").decode(): v.encode("utf-8").decode() for k, v in fields.items()}
        file_field.encode("utf-8")
    except UnicodeEncodeError:
        assume(False)
    before = state(served)
    response = request(served, token, "POST", "/api/v1/vms", content_type="multipart/form-data",
                       data={**form, file_field: (io.BytesIO(content), "upload.bin")})
    if response.status_code == 201:                  # valid fields and a flat64 image: a VM it may make
        request(served, CONTROL, "DELETE", "/api/v1/vms/" + response.json["name"])
        return
    check_refused_or_served(served, response, before, bad=True)


# -- Socket.IO ------------------------------------------------------------------------------------------------------
EVENT_NAMES = [(ns, event) for ns, events in EVENTS.items() for event in [*events, "connect", "disconnect", "reboot"]]


@pytest.mark.parametrize("namespace, event", EVENT_NAMES)
@FUZZ
@given(args=st.lists(json_values | objects | st.binary(max_size=8), max_size=2), token=tokens)
def test_any_payload_at_any_event(served, namespace, event, args, token):
    schema = EVENTS[namespace].get(event)
    typing = event == "input" and token == CONTROL and len(args) == 1 and accepted(schema, args[0])
    assume(not typing)
    before = state(served)
    socketio = served.extensions["webhyve.socketio"]
    sc = socketio.test_client(served, namespace=namespace, auth={"token": token})
    answer = sc.emit(event, *args, namespace=namespace, callback=True)
    assert isinstance(answer, dict), answer
    if "error" in answer:
        assert isinstance(answer["error"], str) and answer["error"] and 400 <= answer["status"] < 500, answer
        assert state(served) == before
    else:
        assert answer["ok"] is True
    sc.disconnect(namespace=namespace)
    assert request(served, VIEWER, "GET", "/api/v1/session").status_code == 200


@pytest.mark.parametrize("namespace, event", [(ns, e) for ns, events in EVENTS.items() for e in events])
@FUZZ
@given(data=st.data(), token=tokens)
def test_one_bad_field_at_an_event_is_a_400_naming_it(served, namespace, event, data, token):
    schema = EVENTS[namespace][event]
    key = data.draw(st.sampled_from(sorted(schema.fields)))
    payload = {k: good_value(f) for k, f in schema.fields.items()}
    payload[key] = data.draw(bad_values(schema.fields[key]))
    before = state(served)
    sc = served.extensions["webhyve.socketio"].test_client(served, namespace=namespace, auth={"token": token})
    answer = sc.emit(event, payload, namespace=namespace, callback=True)
    sc.disconnect(namespace=namespace)
    assert answer["status"] == 400 and "field %r" % key in answer["error"], answer
    assert state(served) == before


def test_a_slash_as_a_name_is_refused_not_redirected(served):
    """Found by test_any_text_as_a_path_name: "/" quoted in a path became a 308 to another route."""
    response = request(served, CONTROL, "GET", "/api/v1/vms/%2F/caches")
    assert response.status_code == 404 and response.get_json()["error"]
