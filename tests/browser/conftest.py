"""Fixtures for the browser tests: the real server (tests/webhyve/live.py) and a page of Debian's headless chromium
(the `browser` fixture, in tests/conftest.py)."""
import pytest

from tests.webhyve.live import CONTROL, VIEWER, start_server, stop_server

__all__ = ["CONTROL", "VIEWER"]


@pytest.fixture(scope="session")
def server_dir(tmp_path_factory):
    """The server's folder: its recordings, snapshots and server.log (gunicorn's output, access log on)."""
    return tmp_path_factory.mktemp("server")


@pytest.fixture(scope="session")
def server(server_dir):
    process, url = start_server(str(server_dir), access_log=True)
    yield url
    stop_server(process)


def create_from_list(page, server, name, guest):
    """On the VM list (control token): fill the create form with `name` and a bundled `guest`, and submit it."""
    page.goto("%s/?token=%s" % (server, CONTROL))
    page.wait_for_selector("#vms tr[data-vm=demo]")
    page.fill("#create input[name=name]", name)
    page.select_option("#create select[name=guest]", guest)
    page.click("#create button[type=submit]")


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1500, "height": 1100}, accept_downloads=True)
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert errors == [], "JavaScript errors on the page"
