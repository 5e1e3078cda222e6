"""Fixtures for the web tests: an app with fixed tokens and its own recordings folder, its clients."""
import os

import pytest

from webhyve import create_app, shutdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTROL, VIEWER = "control-token-for-tests", "viewer-token-for-tests"


@pytest.fixture
def app(tmp_path):
    app = create_app({"TESTING": True, "HOST_MEM_MB": 512, "CONTROL_TOKEN": CONTROL, "VIEWER_TOKEN": VIEWER,
                      "RECORDINGS_DIR": str(tmp_path / "recordings"), "PANEL_INTERVAL": 0.2,
                      "SNAPSHOTS_DIR": str(tmp_path / "snapshots")})
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
    assert wait_for(lambda: "webhyve>" in client.get("/api/v1/vms/sh/console").json["text"])
    return "sh"


LIVE = ("running", "halted")     # started and not paused: the shell sits in HLT between keys (interrupt-driven input)


def wait_for(predicate, timeout=20, step=0.02):
    """Poll until predicate() is true; False after `timeout` seconds (a test then fails on its assert)."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
