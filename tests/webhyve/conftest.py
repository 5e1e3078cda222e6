"""Fixtures for the web tests: an app with fixed tokens and its own recordings folder, its clients.

A fixture whose guest does not get ready in time destroys it and fails the test saying what it saw.
"""
import os
import time

import pytest

from webhyve.web import create_app, shutdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTROL, VIEWER = "control-token-for-tests", "viewer-token-for-tests"


@pytest.fixture
def app(tmp_path):
    app = create_app({"TESTING": True, "HOST_MEM_MB": 512, "CONTROL_TOKEN": CONTROL, "VIEWER_TOKEN": VIEWER,
                      "RECORDINGS_DIR": str(tmp_path / "recordings"), "PANEL_INTERVAL": 0.2,
                      "SNAPSHOTS_DIR": str(tmp_path / "snapshots"), "DISKS_DIR": str(tmp_path / "disks")})
    yield app
    shutdown(app)


@pytest.fixture
def client(app):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + CONTROL
    return client


@pytest.fixture
def viewer(app):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + VIEWER
    return client


@pytest.fixture
def shell_vm(client):
    """The bundled shell guest running as VM "sh", its prompt already printed."""
    assert client.post("/api/v1/vms", json={"name": "sh", "guest": "shell"}).status_code == 201
    console = lambda: client.get("/api/v1/vms/sh/console").json["text"]
    ready_or_fail(lambda: "webhyve>" in console(), "VM 'sh' never printed its prompt", console,
                  lambda: client.delete("/api/v1/vms/sh"))
    return "sh"


LIVE = ("running", "halted")     # started and not paused: the shell sits in HLT between keys (interrupt-driven input)


def ready_or_fail(predicate, what, console, end, timeout=20):
    """For fixtures: wait until predicate() is true; else call `end` (destroy the VM) and fail the test with
    `what` and the console's last lines."""
    if not wait_for(predicate, timeout):
        seen = console()[-300:]
        end()
        pytest.fail("%s within %gs; destroyed. Console: %r" % (what, timeout, seen))


def wait_for(predicate, timeout=20, step=0.02):
    """Poll until predicate() is true; False after `timeout` seconds (a test then fails on its assert)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
