"""The OpenAPI 3.1 description at /api/v1/openapi.json: valid, and the same routes, methods and fields as the app."""
import re

from openapi_spec_validator import validate
from werkzeug.exceptions import MethodNotAllowed, NotFound

from webhyve.web.api_schema import ROUTES

SAMPLE = {"name": "vm1", "index": "0", "action": "pause", "reg": "rax", "cap": "hlt_exit", "which": "serial",
          "rid": "vm1-1", "vm": "vm1"}


def test_the_description_is_valid_openapi_and_covers_every_api_route(app):
    doc = app.test_client().get("/api/v1/openapi.json").json       # no token needed: no VM data in it
    validate(doc)
    described = {(path, method.upper()) for path, item in doc["paths"].items() for method in item}
    served = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
            served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert described == served
    adapter = app.url_map.bind("127.0.0.1")
    for path, method in described:                                  # each described operation reaches its view
        concrete = re.sub(r"{([a-z_]+)}", lambda m: SAMPLE[m.group(1)], path)
        try:
            endpoint, _ = adapter.match(concrete, method=method)
        except (NotFound, MethodNotAllowed):
            raise AssertionError("%s %s is described but not served" % (method, path)) from None
        op = doc["paths"][path][method.lower()]
        route = ROUTES.get(endpoint)
        if route is None:
            continue
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        assert set(body.get("properties", {})) == set(route.body.fields), (method, path)
        assert {p["name"] for p in op["parameters"] if p["in"] == "query"} == set(route.query.fields)


def test_fields_carry_the_rules_the_server_enforces(app, client):
    """What the description says of create's fields is what a request meets: a bad mem_mb is refused by both."""
    doc = client.get("/api/v1/openapi.json").json
    create = doc["paths"]["/api/v1/vms"]["post"]
    fields = create["requestBody"]["content"]["application/json"]["schema"]
    mem = fields["properties"]["mem_mb"]["anyOf"][0]
    assert fields["required"] == ["name", "guest"] and fields["additionalProperties"] is False
    too_big = client.post("/api/v1/vms", json={"name": "x", "guest": "shell", "mem_mb": mem["maximum"] + 1})
    assert too_big.status_code == 400 and "mem_mb" in too_big.json["error"]
    assert re.fullmatch(fields["properties"]["name"]["pattern"], "a" * 64)
    assert not re.fullmatch(fields["properties"]["name"]["pattern"], "a" * 65)
    assert create["x-webhyve-token"] == "control" and doc["paths"]["/api/v1/vms"]["get"]["x-webhyve-token"] != "control"
    assert "multipart/form-data" in create["requestBody"]["content"]
