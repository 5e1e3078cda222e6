"""Users mode in the browser (issue 19): a student logs in on the login page, sees only their VM and types into
its console; the teacher logs in and sees every VM. The real server (gunicorn) in users mode, Debian's chromium."""
import os
import subprocess
import sys

import pytest
import requests

from tests.browser.test_vm_page import terminal_text, wait_terminal
from tests.webhyve.live import ROOT, start_server, stop_server
from tests.webhyve.usersmode import CHEAP, PASSWORD
from webhyve.web.users import User, token_digest, write

TEACHER_TOKEN = "teacher!setup=teacher-secret-for-the-browser-test"
S1_TOKEN = "s1!cli=s1-secret-for-vmmctl"


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """The server in users mode; the teacher made vm-s1 for student s1 and vm-s2 for s2 (both in pool class1)."""
    folder = tmp_path_factory.mktemp("classroom")
    users = {"teacher": User("teacher", "administrator", [], CHEAP.hash(PASSWORD),
                             {"setup": token_digest(TEACHER_TOKEN.partition("=")[2])})}
    users.update({s: User(s, "operator", [], CHEAP.hash(PASSWORD)) for s in ("s1", "s2")})
    users["s1"].tokens["cli"] = token_digest(S1_TOKEN.partition("=")[2])
    write(str(folder / "users.json"), users)
    process, url = start_server(str(folder), users=str(folder / "users.json"), token=TEACHER_TOKEN)
    try:
        for student in ("s1", "s2"):
            made = requests.post(url + "/api/v1/vms", json={"name": "vm-" + student, "guest": "shell", "mem_mb": 16,
                                                            "owner": student, "pool": "class1"},
                                 headers={"Authorization": "Bearer " + TEACHER_TOKEN})
            assert made.status_code == 201, made.text
        yield url
    finally:
        stop_server(process)


def log_in(page, url, name, start="/"):
    page.goto(url + start)
    page.wait_for_selector("#login")                         # no login yet: the login page, the way back kept
    page.fill("#login input[name=name]", name)
    page.fill("#login input[name=password]", PASSWORD)
    page.click("#login button[type=submit]")


def listed(page):
    page.wait_for_selector("#vms tbody tr")
    return sorted(page.eval_on_selector_all("#vms tbody tr[data-vm]", "rows => rows.map(r => r.dataset.vm)"))


def test_a_student_sees_only_their_vm_and_types_into_its_console(page, classroom):
    log_in(page, classroom, "s1", "/vms/vm-s1")
    page.wait_for_url(classroom + "/vms/vm-s1")
    assert page.inner_text("header #user") == "s1 (operator)"
    wait_terminal(page, "webhyve>")
    page.wait_for_selector("#conn.up")
    page.click("#terminal")
    page.keyboard.type("help")
    page.keyboard.press("Enter")
    wait_terminal(page, "cause a triple fault")                # typed over Socket.IO, answered by the guest
    assert "webhyve> help" in terminal_text(page)
    page.goto(classroom + "/")
    assert listed(page) == ["vm-s1"]
    other = page.goto(classroom + "/vms/vm-s2")
    assert other.status == 404 and "No VM named" in page.inner_text("#novm")
    page.goto(classroom + "/")
    page.click("header form.logout button")
    page.wait_for_selector("#login")


def test_a_wrong_password_says_so_on_the_login_page(page, classroom):
    page.goto(classroom + "/login")
    page.fill("#login input[name=name]", "s2")
    page.fill("#login input[name=password]", "not the password")
    page.click("#login button[type=submit]")
    assert page.inner_text("#login-error") == "Wrong name or password."


def test_the_teacher_sees_every_vm(page, classroom):
    log_in(page, classroom, "teacher")
    page.wait_for_url(classroom + "/")
    assert page.inner_text("header #user") == "teacher (administrator)"
    page.wait_for_selector("#vms tr[data-vm=vm-s2]")
    assert listed(page) == ["demo", "vm-s1", "vm-s2"]


def test_socketio_refuses_a_connection_from_another_origin(classroom):
    """The cookie would ride along on a cross-site WebSocket; engine.io checks the Origin first."""
    probe = classroom + "/socket.io/?EIO=4&transport=polling"
    assert requests.get(probe, headers={"Origin": classroom}).status_code == 200
    assert requests.get(probe, headers={"Origin": "http://evil.example"}).status_code == 400


def test_vmmctl_with_a_students_api_token_lists_and_types_only_into_their_vm(classroom, tmp_path):
    env = dict(os.environ, WEBHYVE_URL=classroom, WEBHYVE_TOKEN=S1_TOKEN, XDG_CONFIG_HOME=str(tmp_path))
    vmmctl = lambda *args: subprocess.run([sys.executable, "-m", "webhyve.cli", *args], capture_output=True, text=True,
                                          cwd=ROOT, env=env, timeout=120)
    listing = vmmctl("list")
    assert listing.returncode == 0 and "vm-s1" in listing.stdout and "vm-s2" not in listing.stdout, listing
    other = vmmctl("--vm=vm-s2", "--destroy")
    assert other.returncode != 0 and "no VM named 'vm-s2'" in other.stderr, other
