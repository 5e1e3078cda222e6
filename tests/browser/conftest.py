"""Fixtures for the browser tests: the real server (gunicorn, one worker, threads) and Debian's headless chromium."""
import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from playwright.sync_api import sync_playwright

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHROMIUM = "/usr/bin/chromium"
CONTROL, VIEWER = "browser-control-token", "browser-viewer-token"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """gunicorn serving create_app() on a free loopback port, with the shell guest booted as VM "demo"."""
    port = free_port()
    env = dict(os.environ, WEBHYVE_CONTROL_TOKEN=CONTROL, WEBHYVE_VIEWER_TOKEN=VIEWER, WEBHYVE_DEMO_GUEST="shell",
               WEBHYVE_HOST_MEM_MB="512", WEBHYVE_RECORDINGS_DIR=str(tmp_path_factory.mktemp("recordings")))
    gunicorn = os.path.join(os.path.dirname(sys.executable), "gunicorn")
    log = open(tmp_path_factory.mktemp("log") / "server.log", "w+")
    process = subprocess.Popen([gunicorn, "--workers", "1", "--threads", "100", "--bind", "127.0.0.1:%d" % port,
                                "webhyve:create_app()"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = "http://127.0.0.1:%d" % port
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(url + "/api/v1/vms", headers={"Authorization": "Bearer " + CONTROL}, timeout=2).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        log.seek(0)
        pytest.fail("the server did not come up:\n" + log.read())
    yield url
    process.terminate()
    process.wait(10)


@pytest.fixture(scope="session")
def browser():
    assert os.path.exists(CHROMIUM), "browser tests need Debian's chromium: apt-get install chromium"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == [], "JavaScript errors on the page"
