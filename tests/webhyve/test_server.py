"""The real server over real websockets: gunicorn + simple-websocket, a python-socketio client, and a kill -9."""
import os
import signal
import subprocess
import sys
import threading

import pytest
import requests
import socketio

from tests.webhyve.conftest import wait_for
from tests.webhyve.live import CONTROL, auth, start_server, stop_server


@pytest.fixture
def live(tmp_path):
    process, url = start_server(str(tmp_path))
    yield process, url
    if process.poll() is None:
        stop_server(process)


def websocket_client(url, token):
    client = socketio.Client(reconnection=False)
    client.connect(url, namespaces=["/console"], transports=["websocket"], auth={"token": token})
    return client


def test_type_help_over_a_real_websocket(live):
    _, url = live
    received, lock = [], threading.Lock()
    client = websocket_client(url, CONTROL)

    def output(message):
        with lock:
            received.append(message["data"])
        client.emit("ack", {"vm": "demo", "position": message["end"]}, namespace="/console")
    client.on("output", output, namespace="/console")
    try:
        first = client.call("attach", {"vm": "demo"}, namespace="/console", timeout=10)
        assert first["ok"] and "webhyve>" in first["data"]
        assert client.call("input", {"vm": "demo", "data": "help\r"}, namespace="/console", timeout=10)["sent"] == 5
        assert wait_for(lambda: "cpuid LEAF [SUB]" in "".join(received))
    finally:
        client.disconnect()
    with pytest.raises(socketio.exceptions.ConnectionError):
        websocket_client(url, "not-a-token")


def test_recording_survives_killing_the_server(live, tmp_path):
    """SIGKILL to gunicorn and its worker mid-recording: the .cast on disk plays up to the last event."""
    process, url = live
    started = requests.post(url + "/api/v1/vms/demo/recording", headers=auth(CONTROL)).json()
    requests.post(url + "/api/v1/vms/demo/console", json={"data": "echo last words\r"}, headers=auth(CONTROL))
    assert wait_for(lambda: "\nlast words" in requests.get(url + "/api/v1/vms/demo/console", headers=auth(CONTROL)).json()["text"])
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    cast = tmp_path / "recordings" / started["id"]
    asciinema = os.path.join(os.path.dirname(sys.executable), "asciinema")
    played = subprocess.run([asciinema, "cat", str(cast)], capture_output=True, timeout=60)
    assert played.returncode == 0, played.stderr
    assert b"\r\nlast words\r\n" in played.stdout
