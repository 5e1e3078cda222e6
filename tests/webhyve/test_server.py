"""The real server over real websockets: gunicorn + simple-websocket, a python-socketio client, and a kill -9."""
import os
import signal
import subprocess
import sys

import pytest
import requests
import socketio

from tests.console_output import OutputLog
from tests.webhyve.conftest import wait_for
from tests.webhyve.live import CONTROL, VIEWER, auth, start_server, stop_server


@pytest.fixture
def live(tmp_path):
    process, url = start_server(str(tmp_path))
    yield process, url
    if process.poll() is None:
        stop_server(process)


def websocket_client(url, token, transports=("websocket",)):
    client = socketio.Client(reconnection=False)
    client.connect(url, namespaces=["/console"], transports=list(transports), auth={"token": token})
    return client


def test_type_help_over_a_real_websocket(live):
    _, url = live
    received = OutputLog()
    client = websocket_client(url, CONTROL)

    def output(message):
        received.add(message)
        client.emit("ack", {"vm": "demo", "position": message["end"]}, namespace="/console")
    client.on("output", output, namespace="/console")
    try:
        first = client.call("attach", {"vm": "demo"}, namespace="/console", timeout=10)
        assert first["ok"] and "webhyve>" in first["data"]
        assert client.call("input", {"vm": "demo", "data": "help\r"}, namespace="/console", timeout=10)["sent"] == 5
        assert wait_for(lambda: "cpuid LEAF [SUB]" in received.text())
    finally:
        client.disconnect()
    with pytest.raises(socketio.exceptions.ConnectionError):
        websocket_client(url, "not-a-token")


def test_recording_survives_killing_the_server(live, tmp_path):
    """SIGKILL to gunicorn and its worker mid-recording: the .cast on disk plays up to the last event."""
    process, url = live
    started = requests.post(url + "/api/v1/vms/demo/recording", headers=auth(CONTROL)).json()
    requests.post(url + "/api/v1/vms/demo/console", json={"data": "echo last words\r"}, headers=auth(CONTROL))
    # the prompt after the line: the shell's output may reach the console in pieces, "last words" before its "\r\n"
    assert wait_for(lambda: "\nlast words\nwebhyve>" in requests.get(url + "/api/v1/vms/demo/console",
                                                                   headers=auth(CONTROL)).json()["text"])
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)
    cast = tmp_path / "recordings" / started["id"]
    asciinema = os.path.join(os.path.dirname(sys.executable), "asciinema")
    played = subprocess.run([asciinema, "cat", str(cast)], capture_output=True, timeout=60)
    assert played.returncode == 0, played.stderr
    assert b"\r\nlast words\r\n" in played.stdout


def test_fast_typing_over_long_polling_arrives_whole_and_in_order(live):
    """500 characters emitted without waiting, one event each, reach the guest in the order typed.

    Over long-polling, as a browser starts before it upgrades: many events arrive in one request."""
    _, url = live
    received = OutputLog()
    client = websocket_client(url, CONTROL, transports=("polling",))

    def output(message):
        received.add(message)
        client.emit("ack", {"vm": "demo", "position": message["end"]}, namespace="/console")
    client.on("output", output, namespace="/console")
    lines = ["".join("abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + n) % 36] for i in range(100)) for n in range(5)]
    try:
        client.call("attach", {"vm": "demo"}, namespace="/console", timeout=10)
        for char in "".join("echo %s\r" % line for line in lines):
            client.emit("input", {"vm": "demo", "data": char}, namespace="/console")
        assert wait_for(lambda: "\r\n%s\r\n" % lines[-1] in received.text()), received.text()
        echoed = received.text()
        assert [line for line in lines if "\r\n%s\r\n" % line not in echoed] == [], echoed
    finally:
        client.disconnect()


def test_gunicorns_logs_show_no_token(tmp_path):
    """With gunicorn's access log on, a page visit with ?token=, API calls with the token in the query, a header
    and the cookie, and a Socket.IO connection leave no token in the server's output."""
    process, url = start_server(str(tmp_path), access_log=True)
    try:
        visit = requests.get(url + "/vms/demo?token=" + CONTROL, allow_redirects=False)
        assert visit.status_code == 303 and visit.headers["Location"] == "/vms/demo"
        assert requests.get(url + "/vms/demo", cookies=visit.cookies).status_code == 200
        assert requests.get(url + "/api/v1/vms?token=" + VIEWER).status_code == 200
        assert requests.get(url + "/api/v1/vms", headers=auth(VIEWER)).status_code == 200
        websocket_client(url, CONTROL).disconnect()
    finally:
        stop_server(process)
    logged = (tmp_path / "server.log").read_text()
    assert '"GET /vms/demo?token=[redacted] HTTP/1.1" 303' in logged
    assert '"GET /api/v1/vms?token=[redacted] HTTP/1.1" 200' in logged
    assert CONTROL not in logged and VIEWER not in logged


def test_make_run_says_what_it_does_and_prints_the_two_urls_last(tmp_path):
    """`make run`'s server (python -m webhyve.web.serve --demo shell): progress lines while the worker starts and
    the demo boots, then the control and read-only URLs, labelled, as the last lines; both URLs open the page."""
    from tests.webhyve.live import ROOT, free_port
    port = free_port()
    env = dict(os.environ, WEBHYVE_CONTROL_TOKEN=CONTROL, WEBHYVE_VIEWER_TOKEN=VIEWER, WEBHYVE_HOST_MEM_MB="128",
               WEBHYVE_RECORDINGS_DIR=str(tmp_path / "rec"), WEBHYVE_SNAPSHOTS_DIR=str(tmp_path / "snap"))
    process = subprocess.Popen([sys.executable, "-m", "webhyve.web.serve", "--port", str(port), "--demo", "shell",
                                "--threads", "8"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("  read-only:"):
                break
        url = "http://127.0.0.1:%d" % port
        assert lines[0] == "webhyve: starting the server on %s (gunicorn, 1 worker, 8 threads)" % url
        assert any(l.startswith("webhyve: server up after") for l in lines)
        assert any(l.startswith("webhyve: demo VM booted after") for l in lines)
        assert lines[-3].startswith("webhyve: ready.")
        assert lines[-2] == "  control:    %s/vms/demo?token=%s" % (url, CONTROL)
        assert lines[-1] == "  read-only:  %s/vms/demo?token=%s" % (url, VIEWER)
        assert requests.get(lines[-1].split()[-1], allow_redirects=False).status_code == 303
    finally:
        stop_server(process)
