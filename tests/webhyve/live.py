"""The real server for tests that need one: gunicorn (one worker, threads) serving create_app() on a free
loopback port, the shell guest booted as VM "demo"."""
import os
import socket
import subprocess
import sys
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTROL, VIEWER = "live-control-token", "live-viewer-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir):
    """(process, url); the process leads its own session so a test can kill the server and its worker."""
    port = free_port()
    env = dict(os.environ, WEBHYVE_CONTROL_TOKEN=CONTROL, WEBHYVE_VIEWER_TOKEN=VIEWER, WEBHYVE_DEMO_GUEST="shell",
               WEBHYVE_HOST_MEM_MB="512", WEBHYVE_RECORDINGS_DIR=os.path.join(workdir, "recordings"))
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    log = open(os.path.join(workdir, "server.log"), "w+")
    process = subprocess.Popen([gunicorn, "--workers", "1", "--threads", "100", "--bind", "127.0.0.1:%d" % port,
                                "webhyve:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/api/v1/vms", headers=auth(CONTROL), timeout=10).ok:
                return process, url
        except requests.RequestException:               # not listening yet, or still booting
            time.sleep(0.2)
    process.kill()
    log.seek(0)
    raise RuntimeError("the server did not come up:\n" + log.read())


def stop_server(process):
    process.terminate()
    process.wait(10)


def auth(token):
    return {"Authorization": "Bearer " + token}
