"""The cluster secret's HMAC on forwarded requests: what a receiving node accepts and what it refuses, and why."""
import time

import pytest

from webhyve.cluster.security import SIGNATURE, TIME, Signer
from webhyve.sessions.errors import ApiError

PATH = "/api/v1/vms/demo/pause"


def refused(signer, headers, body=b"", method="POST", path=PATH):
    with pytest.raises(ApiError) as problem:
        signer.verify(method, path, headers, body)
    assert problem.value.status == 403
    return problem.value.message


def test_a_signed_request_is_accepted_once_with_its_role():
    sender, receiver = Signer("s3cret", "a"), Signer("s3cret", "b")
    headers = sender.headers("POST", PATH, "control", b'{"x": 1}')
    assert receiver.verify("POST", PATH, headers, b'{"x": 1}') == "control"
    assert "replay" in refused(receiver, headers, b'{"x": 1}')


def test_anything_altered_is_refused():
    sender, receiver = Signer("s3cret", "a"), Signer("s3cret", "b")
    headers = sender.headers("POST", PATH, "view", b"{}")
    assert "bad cluster signature" in refused(receiver, headers, b'{"x": 1}')                 # the body
    assert "bad cluster signature" in refused(receiver, headers, b"{}", path=PATH + "x")        # the path
    assert "bad cluster signature" in refused(receiver, headers, b"{}", method="DELETE")        # the method
    assert "bad cluster signature" in refused(receiver, {**headers, "X-Webhyve-Role": "control"}, b"{}")  # the role
    assert "bad cluster signature" in refused(Signer("other", "b"), headers, b"{}")            # another secret


def test_an_old_or_incomplete_request_is_refused():
    sender, receiver = Signer("s3cret", "a"), Signer("s3cret", "b")
    headers = sender.headers("POST", PATH, "view", b"")
    assert "more than 30 s" in refused(receiver, {**headers, TIME: "%.6f" % (time.time() - 31)})
    assert "more than 30 s" in refused(receiver, {**headers, TIME: "yesterday"})
    assert "lacks the cluster headers" in refused(receiver, {k: v for k, v in headers.items() if k != SIGNATURE})
    assert "lacks the cluster headers" in refused(receiver, {**headers, "X-Webhyve-Role": "root"})


def test_cluster_mode_needs_a_secret():
    with pytest.raises(ValueError, match="cluster secret"):
        Signer("", "a")
