"""Every REST route checks what it is sent against api_schema.ROUTES: a 400 naming the field and the problem."""
import io
import json

import pytest

from tests.webhyve.conftest import LIVE, VIEWER
from webhyve.web.api_schema import ROUTES


def send(client, method, path, body):
    """`body` as raw JSON text, so that what json= would refuse to write (a lone surrogate) goes out too."""
    return client.open(path, method=method, data=json.dumps(body), content_type="application/json")


def test_every_api_route_has_an_entry(app):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules() if rule.rule.startswith("/api/")}
    assert endpoints - {"openapi.openapi"} == set(ROUTES)             # the description takes nothing, not even a token


@pytest.mark.parametrize("method, path, body, field, problem", [
    # found by a probe: each of these was a 500 or silently became something else
    ("POST", "/api/v1/vms/sh/console", {"data": "\ud800"}, "data", "lone surrogate"),
    ("POST", "/api/v1/vms", {"name": "g", "guest": ["a"]}, "guest", "not a list"),
    ("POST", "/api/v1/vms", {"name": "m", "guest": "hello", "mem_mb": 1.5}, "mem_mb", "not 1.5"),
    ("POST", "/api/v1/vms", {"name": "m", "guest": "hello", "mem_mb": True}, "mem_mb", "not true (a boolean)"),
    ("POST", "/api/v1/vms", {"name": "m", "guest": "hello", "mem_mb": 1.0}, "mem_mb", "not 1.0"),
    ("POST", "/api/v1/vms", {"name": "m", "guest": "hello", "mem_mb": "64"}, "mem_mb", "an integer from 1 to 4096"),
    ("POST", "/api/v1/vms", {"name": "m", "guest": "hello", "start": "no"}, "start", "true or false"),
    ("POST", "/api/v1/vms", {"name": "m", "guest": "hello", "profile": "486"}, "profile", "one of haswell"),
    ("POST", "/api/v1/vms", {"name": "m", "guest": "hello", "colour": "red"}, "colour", "unknown field"),
    ("POST", "/api/v1/vms", {"name": "m"}, "guest", "is missing"),
    ("PUT", "/api/v1/tunables/hw.vmm.halt_detection", {"value": False}, "value", "not false (a boolean)"),
    ("PUT", "/api/v1/ctl/vms/sh/vcpus/0/capabilities/bpt_exit", {"value": True}, "value", "from 0 to 1"),
    ("PUT", "/api/v1/ctl/vms/sh/vcpus/0/registers/rax", {"value": -1}, "value", "an address"),
    ("POST", "/api/v1/vms/sh/snapshot", {"name": "s", "suspend": 1}, "suspend", "true or false"),
    ("POST", "/api/v1/snapshots/s/restore", {"vm": 7}, "vm", "VM name"),
    ("POST", "/api/v1/vms/sh/pause", {"please": True}, "please", "it takes no fields"),
])
def test_a_bad_field_is_a_400_naming_it_and_nothing_changes(client, shell_vm, method, path, body, field, problem):
    response = send(client, method, path, body)
    assert response.status_code == 400
    assert repr(field) in response.json["error"] and problem in response.json["error"]
    assert path.split("/api/v1")[1].split("/")[1] in response.json["error"]       # and the route
    assert [(v["name"], v["state"] in LIVE) for v in client.get("/api/v1/vms").json["vms"]] == [("sh", True)]
    tunables = {t["name"]: t["value"] for t in client.get("/api/v1/tunables").json["tunables"]}
    assert tunables["hw.vmm.halt_detection"] == 1


def test_bodies_that_are_no_json_object(client, shell_vm):
    deep = "[" * 100000                           # json.loads recursed out of its stack: a 500 before
    for data, content_type, problem in [
        (deep, "application/json", "the body is not JSON"),
        ("{\"data\": \"x\"", "application/json", "the body is not JSON"),
        (b"\xff\xfe{}", "application/json", "the body is not JSON"),
        ("[1]", "application/json", "send a JSON object such as {\"data\": …}, not a list"),
        ("data=x", "application/x-www-form-urlencoded", "Content-Type: application/json"),
    ]:
        response = client.post("/api/v1/vms/sh/console", data=data, content_type=content_type)
        assert response.status_code == 400 and problem in response.json["error"], response.json
    assert client.post("/api/v1/vms/sh/pause", data="x", content_type="text/plain").status_code == 400


def test_query_strings_and_paths_are_checked_too(client, shell_vm):
    for path, problem in [
        ("/api/v1/vms/sh/ept/lookup?gpa=banana", "field 'gpa' must be an address"),
        ("/api/v1/vms/sh/ept/lookup", "field 'gpa' is missing"),
        ("/api/v1/vms/sh/ept/lookup?gpa=0x1000&gla=1", "unknown field 'gla'"),
        ("/api/v1/vms/sh/ept/lookup?gpa=1&gpa=2", "more than once"),
        ("/api/v1/recordings/x.cast?download=maybe", "field 'download' must be true or false"),
        ("/api/v1/vms/%s" % ("n" * 65), "the name in the path must be a VM name"),
        ("/api/v1/vms/sh/vcpus/99/registers", "the index in the path must be an integer from 0 to 63"),
    ]:
        response = client.get(path)
        assert response.status_code == 400 and problem in response.json["error"], (path, response.json)


def test_tokens_of_any_text_are_refused_not_crashed_on(app):
    """hmac.compare_digest raises on non-ASCII str: a header or cookie with an ü was a 500."""
    anonymous = app.test_client()
    assert anonymous.get("/api/v1/vms", headers={"Authorization": "Bearer ü"}).status_code == 401
    assert anonymous.get("/api/v1/vms?token=%C3%BC").status_code == 401
    anonymous.set_cookie("webhyve_token", "\u00fc")
    assert anonymous.get("/api/v1/vms").status_code == 401


def test_the_checks_come_after_the_token(app, viewer):
    """No token: 401 whatever the body; a viewer's malformed request is a 400 before the 403 it would get."""
    assert send(app.test_client(), "POST", "/api/v1/vms", ["junk"]).status_code == 401
    assert send(viewer, "POST", "/api/v1/vms", {"name": 1}).status_code == 400
    assert send(viewer, "POST", "/api/v1/vms", {"name": "v", "guest": "hello"}).status_code == 403


def test_the_page_form_and_vmmctl_still_create(client, viewer):
    """A multipart upload takes its fields as text (mem_mb "2", start "false"); an empty field is one not given."""
    image = bytearray(512)
    image[510:512] = b"\x55\xaa"
    response = client.post("/api/v1/vms", data={"name": "up", "mem_mb": "2", "start": "false", "kind": "",
                                                 "image": (io.BytesIO(bytes(image)), "disk.img")},
                           content_type="multipart/form-data")
    assert response.status_code == 201 and response.json["state"] != "running" and response.json["mem_mb"] == 2
    bad = client.post("/api/v1/vms", data={"name": "up2", "mem_mb": "1.5", "image": (io.BytesIO(b"x"), "d")},
                      content_type="multipart/form-data")
    assert bad.status_code == 400 and "field 'mem_mb' must be an integer" in bad.json["error"]
    assert VIEWER not in bad.json["error"]
