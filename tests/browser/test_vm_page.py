"""The VM page in headless chromium: type `help` and read the answer, flip a tunable, screenshot, record, download."""
import io
import os
import subprocess
import sys
import uuid

import requests
from PIL import Image, ImageChops
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import CONTROL, VIEWER
from tests.webhyve.conftest import wait_for


def terminal_text(page):
    return page.inner_text("#terminal .xterm-rows")


def wait_terminal(page, text, timeout=30000):
    """Wait until the xterm.js screen shows `text`; on timeout, fail showing what it does show."""
    try:
        page.wait_for_function("t => document.querySelector('#terminal .xterm-rows').innerText.includes(t)", arg=text,
                               timeout=timeout)
    except PlaywrightTimeout:
        raise AssertionError("%r never appeared; the terminal shows:\n%s\nstatus: %s" % (
            text, terminal_text(page), page.inner_text("#status"))) from None


def open_vm(page, server, token=CONTROL):
    page.goto("%s/vms/demo?token=%s" % (server, token))
    wait_terminal(page, "webhyve>")
    page.wait_for_selector("#conn.up")


def server_console(server):
    return requests.get(server + "/api/v1/vms/demo/console", headers={"Authorization": "Bearer " + VIEWER}).json()["text"]


def type_by_rest(server, text):
    requests.post(server + "/api/v1/vms/demo/console", json={"data": text},
                  headers={"Authorization": "Bearer " + CONTROL}).raise_for_status()


def test_type_help_and_see_the_answer(page, server):
    open_vm(page, server)
    page.click("#terminal")
    page.keyboard.type("help")
    page.keyboard.press("Enter")
    wait_terminal(page, "cause a triple fault")
    assert "webhyve> help" in terminal_text(page)


def test_viewer_page_cannot_type(page, server):
    """The viewer's keys reach nothing, and the server refuses its socket when the page's script is bypassed.
    What the control token types afterwards arrives, so anything the viewer had sent would have arrived first."""
    open_vm(page, server, token=VIEWER)
    assert page.inner_text("header .role") == "read-only viewer"
    assert page.is_disabled("button[data-action=pause]") and page.is_disabled("#record")
    page.click("#terminal")
    page.keyboard.type("echo from viewer\n")
    assert "read-only" in page.inner_text("#console-hint")                # said, not silently dropped
    assert page.evaluate("window.scrollY") == 0             # the keys did not scroll the console out of view
    forced = page.evaluate("""() => new Promise((answer) =>
        SerialConsole.socket.emit("input", {vm: "demo", data: "echo forced by viewer\\r"}, answer))""")
    assert forced["status"] == 403 and "read-only" in forced["error"]     # handled after the typed keys
    marker = "after-viewer-" + uuid.uuid4().hex[:8]
    type_by_rest(server, "echo %s\r" % marker)
    wait_terminal(page, "\n" + marker)                                      # the viewer sees the guest's output
    text = server_console(server)
    assert "from viewer" not in text and "forced by viewer" not in text
    assert "from viewer" not in terminal_text(page)


def test_serial_screenshot_link_gives_a_png(page, server):
    """The link's PNG is the terminal as drawn by the server: text on a background, not an empty picture."""
    open_vm(page, server)
    href = page.get_attribute("#shot-serial", "href")
    response = page.request.get(server + href)                  # the page's cookie carries the token
    assert response.ok and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.body())).convert("RGB")
    assert image.width > 600 and image.height > 400
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    drawn = ImageChops.difference(image, background).getbbox()
    assert drawn is not None and drawn[2] - drawn[0] > 50         # the prompt at least is drawn


def test_record_download_and_play(page, server, tmp_path):
    """Record from the page, type, stop, download the .cast: asciinema plays it; the page's player loads it."""
    open_vm(page, server)
    page.click("#record")
    page.wait_for_function("document.getElementById('record').textContent === 'stop recording'")
    page.click("#terminal")
    page.keyboard.type("echo recorded in the browser\n")
    wait_terminal(page, "\nrecorded in the browser")
    page.click("#record")
    page.wait_for_function("document.getElementById('record').textContent === 'record'")
    page.wait_for_selector("#recordings li a")
    with page.expect_download() as download:
        page.click("#recordings li a")
    path = tmp_path / download.value.suggested_filename
    download.value.save_as(path)
    assert path.suffix == ".cast"
    asciinema = os.path.join(os.path.dirname(sys.executable), "asciinema")
    played = subprocess.run([asciinema, "cat", str(path)], capture_output=True, timeout=60)
    assert played.returncode == 0 and b"recorded in the browser" in played.stdout
    page.click("#recordings li button")
    page.wait_for_function("document.getElementById('player').innerText.includes('recorded in the browser')")


def test_reconnect_loses_nothing(page, server):
    """The console socket drops; output produced meanwhile appears after it reconnects."""
    open_vm(page, server)
    page.evaluate("SerialConsole.socket.disconnect()")
    page.wait_for_selector("#conn.down")
    type_by_rest(server, "echo typed while you were away\r")
    assert wait_for(lambda: "\ntyped while you were away" in server_console(server))     # produced while away
    assert "\ntyped while you were away" not in terminal_text(page)
    page.evaluate("SerialConsole.socket.connect()")
    wait_terminal(page, "\ntyped while you were away")
    assert page.inner_text("#conn") == "reconnected, nothing lost"


def test_pause_shows_registers_and_disassembly_then_resume(page, server):
    """Pausing from the page fills the register panel and disassembles where the shell waits for a key (after its
    sti; hlt, the jump back to the ring-buffer check)."""
    open_vm(page, server)
    page.click("button[data-action=pause]")
    page.wait_for_function("document.getElementById('state').textContent === 'paused'")
    page.wait_for_function("document.getElementById('disasm').textContent.includes('jmp')")
    assert "cr0" in page.inner_text("#registers") and "32-bit code" in page.inner_text("#regs-note")
    assert page.is_disabled("button[data-action=pause]")           # a paused VM cannot be paused again
    page.click("button[data-action=resume]")
    page.wait_for_function("['running', 'idle in HLT'].includes(document.getElementById('state').textContent)")


def test_ept_walk_form_refuses_a_bad_address(page, server):
    """A bad address is refused with a message and shows no walk (test_console_ui.py checks a good one's table)."""
    open_vm(page, server)
    page.fill("#ept-lookup input", "banana")
    page.click("#ept-lookup button")
    page.wait_for_selector("#status.error")
    assert "field 'gpa' must be an address like 0x1000" in page.inner_text("#status")
    assert page.inner_text("#ept-walk") == ""


def test_the_token_leaves_the_address_bar_and_the_page_still_types(page, server, server_dir):
    """Opened with ?token=, the page ends at the same URL without it: not in the address bar, not in the history
    (back leads to where the browser was before), not readable by the page's scripts (an HttpOnly cookie),
    and not in the server's log; typing works."""
    page.goto("%s/vms/demo?token=%s" % (server, CONTROL))
    wait_terminal(page, "webhyve>")
    assert page.url == server + "/vms/demo"
    assert CONTROL not in page.content() and CONTROL not in page.evaluate("document.cookie")
    cookie = next(c for c in page.context.cookies() if c["name"] == "webhyve_token")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.wait_for_selector("#conn.up")
    page.click("#terminal")
    page.keyboard.type("echo typed without a token in the url\n")
    wait_terminal(page, "\ntyped without a token in the url")
    page.go_back()
    assert page.url == "about:blank"
    logged = (server_dir / "server.log").read_text()
    assert "/vms/demo?token=[redacted]" in logged and CONTROL not in logged and VIEWER not in logged


def test_the_viewer_token_leaves_the_address_bar_and_the_page_is_read_only(page, server):
    page.goto("%s/vms/demo?token=%s" % (server, VIEWER))
    wait_terminal(page, "webhyve>")
    assert page.url == server + "/vms/demo"
    assert page.inner_text("header .role") == "read-only viewer" and page.is_disabled("button[data-action=pause]")
    forced = page.evaluate("""() => new Promise((answer) =>
        SerialConsole.socket.emit("input", {vm: "demo", data: "x"}, answer))""")
    assert forced["status"] == 403
