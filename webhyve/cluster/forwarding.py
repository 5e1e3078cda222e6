"""Requests for a VM on another node, sent to that node's own API over HTTP, signed with the cluster secret.

Two kinds travel: a REST request as the user sent it (method, path, query without the token, body), relayed
back with the owner's status, type and body, so the answer and its errors are the owner's own; and a Socket.IO
operation (attach a viewer, type, acknowledge, watch panels) as POST /cluster/v1/ops/OP {sid, payload}, run by
the owner on behalf of a browser connected elsewhere. Its output then reaches that browser through Flask-SocketIO's
Redis message queue, addressed to the browser's sid. The role (control or view) the first node checked travels
signed; the user's token does not travel.
"""
import base64
import json
from urllib.parse import quote, urlencode

import requests
from flask import Blueprint, Response, current_app, request

from ..sessions.errors import ApiError
from .security import NODE, SIGNATURE

CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 30.0           # the longest a view may take on the owner (a snapshot of a large VM)
PASSED_HEADERS = ("Content-Type",)


def canonical_path(path, args):
    """What the signature covers of a URL: the decoded path and the query's (key, value) pairs, without the token,
    so the sender's and the receiver's parsers cannot disagree about quoting."""
    pairs = sorted((k, v) for k, v in args if k != "token")
    return path + "?" + json.dumps(pairs, ensure_ascii=False) if pairs else path


def received_path():
    return canonical_path(request.path, request.args.items(multi=True))


def is_forwarded():
    return SIGNATURE in request.headers


class Forwarder:
    """Sends signed requests to other nodes. requests' Session keeps connections to each node open."""

    def __init__(self, signer):
        self.signer = signer
        self.http = requests.Session()

    def rest(self, node, role):
        """Forward the current REST request to `node` (a node view with `url`); a Flask Response."""
        pairs = [(k, v) for k, v in request.args.items(multi=True) if k != "token"]
        url = node["url"] + quote(request.path) + ("?" + urlencode(pairs) if pairs else "")
        prepared = requests.Request(request.method, url, **self._body()).prepare()
        prepared.headers.update(self.signer.headers(request.method, canonical_path(request.path, pairs), role, prepared.body))
        answer = self._send(node, prepared)
        return Response(answer.content, status=answer.status_code,
                        headers={k: answer.headers[k] for k in ("Content-Type", "Content-Disposition") if k in answer.headers})

    def _body(self):
        """The request's body as requests should send it: a multipart upload rebuilt from its parsed parts (the
        schema check has read the stream), anything else as the bytes that came."""
        if request.mimetype == "multipart/form-data":
            files = {k: (f.filename, f.read(), f.mimetype) for k, f in request.files.items()}
            return {"data": list(request.form.items(multi=True)), "files": files}
        headers = {k: request.headers[k] for k in PASSED_HEADERS if k in request.headers}
        return {"data": request.get_data(cache=True), "headers": headers}

    def op(self, node, name, sid, role, payload):
        """Run a Socket.IO operation on the VM's node; its answer, or ApiError with the owner's refusal."""
        body = json.dumps({"sid": sid, "payload": {k: as_json(v) for k, v in payload.items()}}).encode()
        path = "/cluster/v1/ops/" + name
        prepared = requests.Request("POST", node["url"] + path, data=body,
                                    headers={"Content-Type": "application/json",
                                             **self.signer.headers("POST", path, role, body)}).prepare()
        answer = self._send(node, prepared)
        try:
            result = answer.json()
        except ValueError:
            raise ApiError(502, "node %r answered %s %r with no JSON (status %d)" % (
                node["name"], path, answer.text[:80], answer.status_code)) from None
        if "error" in result:
            raise ApiError(result.get("status", answer.status_code), result["error"])
        result.pop("ok", None)
        return result

    def _send(self, node, prepared):
        try:
            return self.http.send(prepared, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT), allow_redirects=False)
        except requests.RequestException as problem:
            raise ApiError(502, "node %r at %s did not answer: %s" % (node["name"], node["url"], type(problem).__name__)) from None


def as_json(value):
    """Bytes (a binary Socket.IO event's data) travel as {"base64": …}."""
    return {"base64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value


def from_json(value):
    if isinstance(value, dict) and set(value) == {"base64"}:
        return base64.b64decode(value["base64"])
    return value


bp = Blueprint("cluster", __name__, url_prefix="/cluster/v1")


@bp.post("/ops/<op>")
def run_op(op):
    """A Socket.IO operation forwarded by another node: only with a valid signature, run as the role it carries."""
    cluster = current_app.extensions["webhyve.cluster"]
    try:
        role = cluster.signer.verify("POST", received_path(), request.headers, request.get_data(cache=True))
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("sid"), str) or not isinstance(body.get("payload"), dict):
            raise ApiError(400, "a cluster operation takes {sid, payload}")
        payload = {k: from_json(v) for k, v in body["payload"].items()}
        return {"ok": True, **(cluster.serve_op(op, request.headers[NODE], body["sid"], role, payload) or {})}
    except ApiError as problem:
        return {"error": problem.message, "status": problem.status}, problem.status
