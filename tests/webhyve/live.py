"""The real server for tests that need one: gunicorn (one worker, threads) serving create_app() on a free
loopback port, the shell guest booted as VM "demo"."""
import os
import signal
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


def start_server(workdir, threads=100, access_log=False, users=None, token=CONTROL):
    """(process, url) once the demo shell shows its prompt; the process leads its own session so a test
    can kill the server and its worker. With `access_log`, gunicorn logs every request to
    workdir/server.log too. Disk images for -s virtio-blk go in workdir/disks. bench/web_latency.py starts its server here too.
    `users`: a users file (users mode); then `token` is an administrator's API token to see the demo VM with."""
    port = free_port()
    env = dict(os.environ, WEBHYVE_CONTROL_TOKEN=CONTROL, WEBHYVE_VIEWER_TOKEN=VIEWER, WEBHYVE_DEMO_GUEST="shell",
               WEBHYVE_HOST_MEM_MB="512", WEBHYVE_RECORDINGS_DIR=os.path.join(workdir, "recordings"),
               WEBHYVE_SNAPSHOTS_DIR=os.path.join(workdir, "snapshots"), WEBHYVE_DISKS_DIR=os.path.join(workdir, "disks"),
               **({"WEBHYVE_USERS": users} if users else {}))
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    log = open(os.path.join(workdir, "server.log"), "w+")
    logging = ["--access-logfile", "-"] if access_log else []
    process = subprocess.Popen([gunicorn, "--workers", "1", "--threads", str(threads), "--bind", "127.0.0.1:%d" % port,
                                *logging, "webhyve.web:create_app()"], cwd=ROOT, env=env, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    url = "http://127.0.0.1:%d" % port
    try:
        return _wait_until_ready(process, url, log, token)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)     # never leave a server behind
        process.wait(10)
        raise


def _wait_until_ready(process, url, log, token):
    deadline = time.monotonic() + 120            # a cold numba cache compiles the kernels first
    while time.monotonic() < deadline:
        try:
            console = requests.get(url + "/api/v1/vms/demo/console", headers=auth(token), timeout=10)
            if console.ok and "webhyve>" in console.json()["text"]:       # up, and the shell has its prompt
                return process, url
        except requests.RequestException:               # not listening yet, or still booting
            pass
        time.sleep(0.2)
    log.seek(0)
    raise RuntimeError("the server did not come up:\n" + log.read())


def stop_server(process):
    """SIGINT: gunicorn's quick shutdown (SIGTERM would wait up to 30 s for open long-polls); then SIGKILL."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def auth(token):
    return {"Authorization": "Bearer " + token}
