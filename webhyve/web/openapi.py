"""GET /api/v1/openapi.json: an OpenAPI 3.1 description of /api/v1, generated from the app's own routes.

Nothing here is written by hand twice: the paths and methods come from Flask's URL map, what each route
takes from its entry in api_schema.ROUTES (the table check_request() enforces), each field's JSON Schema
from the field itself (schema.py), the summary and description from the view's docstring, and whether it
needs the control token (and, in users mode, which role: x-webhyve-needs) from the view's `requires` mark. So the description cannot drift from what
the server does; tests/webhyve/test_openapi.py holds it to the URL map and validates it as OpenAPI 3.1.
The description is served without a token: it holds no VM's data, and tools fetch it before they have one.
"""
import inspect
import re

from flask import Blueprint, current_app

from .api_schema import ROUTES, Route
from .schema import json_schema

bp = Blueprint("openapi", __name__)
CONVERTER = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")
ERRORS = {"400": "the request is malformed: the message names the field and the problem",
          "401": "no token, or a wrong one", "403": "this needs the control token",
          "404": "no such VM, vCPU, snapshot, recording or tunable", "409": "not in the VM's present state",
          "413": "the upload is larger than the server takes"}
# What each route needs in users mode (webhyve/web/policy.py), from the view's `requires` mark.
NEEDS = {"read": "any user who sees the VM (another's VM is a 404)",
         "control": "an operator who owns the VM or shares its pool, or an administrator",
         "create": "an operator (who then owns the VM) or an administrator", "admin": "an administrator"}
PUBLIC = {"openapi.openapi": Route()}          # routes without a token: this description itself
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}


def describe(app):
    """The OpenAPI 3.1 document for every rule under /api/v1."""
    paths = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.rule.startswith("/api/v1/"):
            continue
        view = app.view_functions[rule.endpoint]
        item = paths.setdefault(CONVERTER.sub(r"{\1}", rule.rule), {})
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            if rule.endpoint in PUBLIC:
                item[method.lower()] = {**operation(rule, view, PUBLIC[rule.endpoint], method), "security": [],
                                        "x-webhyve-token": "none", "x-webhyve-needs": "nothing: no token, no login"}
            else:
                item[method.lower()] = operation(rule, view, ROUTES[rule.endpoint], method)
    return {
        "openapi": "3.1.0",
        "info": {"title": "webhyve", "version": "1",
                 "description": "The REST API of webhyve's server: VMs and their lifecycle, consoles, the state "
                                "panels bhyvectl reads, tunables, snapshots, recordings and demos."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "the control or the viewer token `make run` prints"}},
            "schemas": {"Error": ERROR_SCHEMA},
        },
        "security": [{"bearer": []}],
    }


def operation(rule, view, route, method):
    doc = inspect.getdoc(view) or rule.endpoint
    summary, _, description = doc.partition("\n")
    op = {"operationId": rule.endpoint.replace(".", "_") + ("" if len(rule.methods - {"HEAD", "OPTIONS"}) == 1
                                                             else "_" + method.lower()),
          "summary": summary.strip(), "tags": [rule.endpoint.split(".")[0]],
          "parameters": parameters(rule, route),
          "responses": {"2XX": {"description": "done: a JSON object (a file for downloads and screenshots)"},
                        **{code: {"description": text, "content": {"application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}}}} for code, text in ERRORS.items()}},
          "x-webhyve-token": "control" if getattr(view, "needs_control", False) else "control or viewer",
          "x-webhyve-needs": NEEDS[getattr(view, "needs", "read")]}
    if description.strip():
        op["description"] = " ".join(description.split())
    body = request_body(route)
    if body:
        op["requestBody"] = body
    return op


def parameters(rule, route):
    out = []
    for name in rule.arguments:
        out.append({"name": name, "in": "path", "required": True, "schema": json_schema(route.path[name])})
    for name, field in route.query.fields.items():
        out.append({"name": name, "in": "query", "required": field.required, "schema": json_schema(field)})
    return out


def request_body(route):
    content = {}
    if route.body.fields:
        content["application/json"] = {"schema": object_schema(route.body)}
    if route.form is not None:
        form = object_schema(route.form)
        for name in route.files + route.optional_files:
            form["properties"][name] = {"type": "string", "contentMediaType": "application/octet-stream"}
        form["required"] = form.get("required", []) + list(route.files)
        content["multipart/form-data"] = {"schema": form}
    if not content:
        return None
    required = any(f.required for f in route.body.fields.values()) or bool(route.files)
    return {"required": required, "content": content}


def object_schema(schema):
    out = {"type": "object", "additionalProperties": False,
           "properties": {name: json_schema(field) for name, field in schema.fields.items()}}
    required = [name for name, field in schema.fields.items() if field.required]
    if required:
        out["required"] = required
    return out


@bp.get("/api/v1/openapi.json")
def openapi():
    """This API's OpenAPI 3.1 description."""
    return describe(current_app)
