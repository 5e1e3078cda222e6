"""The console as a user meets it (issue 19): a toolbar that knows the VM's state, power off then start, a marker
after a reset, readable panels, a page that fits the window, hints for keys that go nowhere or wait, dialogs
instead of prompt(), tunables as the controls their values need, the bundled flat guests from the form, a 404
page, fullscreen, and the theme. One extra VM ("life", the shell) serves the lifecycle tests."""
import pytest
import requests

from tests.browser.conftest import CONTROL, VIEWER
from tests.browser.test_vm_page import open_vm, terminal_text, wait_terminal

AUTH = {"Authorization": "Bearer " + CONTROL}
SIZES = [(1400, 900), (1280, 800), (800, 600)]


@pytest.fixture(scope="module")
def life(server):
    """A second shell VM whose lifecycle the tests may change (the demo VM stays up for the other tests)."""
    r = requests.post(server + "/api/v1/vms", json={"name": "life", "guest": "shell", "mem_mb": 16}, headers=AUTH)
    assert r.status_code == 201, r.text
    yield "life"
    requests.delete(server + "/api/v1/vms/life", headers=AUTH)


def open_page(page, server, vm, token=CONTROL):
    page.goto("%s/vms/%s?token=%s" % (server, vm, token))
    page.wait_for_selector("#conn.up")


def wait_state(page, word, timeout=30000):
    page.wait_for_function("w => document.getElementById('state').textContent === w", arg=word, timeout=timeout)


def enabled(page):
    """The lifecycle buttons a user can press now."""
    return {b: page.is_enabled("button[data-action=%s]" % b) for b in ("start", "pause", "resume", "reset", "poweroff")}


def test_power_off_then_start_boots_again_and_buttons_follow_the_state(page, server, life):
    """Power off asks first (Cancel keeps it running); powered off, only Start and Reset apply; Start boots it
    afresh with a marker line in the console; Reset asks, then leaves its own marker line."""
    open_page(page, server, life)
    wait_terminal(page, "webhyve>")
    wait_state(page, "idle in HLT")                  # the shell waits for a key in HLT with interrupts on
    assert enabled(page) == {"start": False, "pause": True, "resume": False, "reset": True, "poweroff": True}
    page.wait_for_function("document.getElementById('uptime').textContent.startsWith('up ')")
    assert "waits in HLT" in page.get_attribute("#state", "title")
    page.click("#legend summary")                    # the legend says what each word means
    assert "powered off" in page.inner_text("#legend dl") and "stopped" in page.inner_text("#legend dl")
    page.click("#legend summary")

    page.click("button[data-action=poweroff]")
    assert page.is_visible("#confirm-dialog") and "Power off life?" in page.inner_text("#confirm-text")
    page.click("#confirm-dialog button[value=cancel]")
    assert page.inner_text("#state") == "idle in HLT"
    page.click("button[data-action=poweroff]")
    page.click("#confirm-ok")
    wait_state(page, "powered off")
    assert enabled(page) == {"start": True, "pause": False, "resume": False, "reset": True, "poweroff": False}
    assert page.inner_text("#uptime") == ""

    page.click("button[data-action=start]")
    wait_terminal(page, "-- webhyve: start after powered off at")
    wait_state(page, "idle in HLT")
    text = terminal_text(page)
    assert text.index("-- webhyve: start after powered off") < text.rindex("webhyve>")

    page.click("button[data-action=reset]")
    assert "Reset life?" in page.inner_text("#confirm-text")
    page.click("#confirm-ok")
    wait_terminal(page, "-- webhyve: reset at")
    marker = page.locator("#terminal .xterm-rows div", has_text="-- webhyve: reset at")
    assert marker.inner_text().strip().startswith("-- webhyve: reset at")   # a line of its own
    wait_state(page, "idle in HLT")


def test_typing_into_a_paused_vm_says_it_is_queued(page, server, life):
    open_page(page, server, life)
    wait_terminal(page, "webhyve>")
    page.click("button[data-action=pause]")
    wait_state(page, "paused")
    assert enabled(page)["resume"] and not enabled(page)["pause"]
    page.click("#terminal")
    page.keyboard.type("echo queued-while-paused")
    page.wait_for_selector("#console-hint.shown")
    assert "queued until you resume" in page.inner_text("#console-hint")
    assert "queued-while-paused" not in terminal_text(page)
    # A 64-bit value (a kernel address) shows exactly, in the /inspect panel and through the page's REST calls:
    # JSON numbers are doubles in a browser, and 0xffffffff8ec5907b used to show as 0xffffffff8ec59000.
    put = requests.put(server + "/api/v1/ctl/vms/life/vcpus/0/registers/r9", json={"value": "0xffffffff8ec5907b"},
                       headers=AUTH)
    assert put.status_code == 200, put.text
    page.wait_for_function("document.getElementById('registers').innerText.includes('0xffffffff8ec5907b')")
    assert page.evaluate("WH.api('GET', '/ctl/vms/life/vcpus/0').then((s) => WH.hex(s.registers.r9))") == "0xffffffff8ec5907b"
    page.click("button[data-action=resume]")
    page.keyboard.press("Enter")
    wait_terminal(page, "\nqueued-while-paused")


def test_viewer_typing_says_read_only(page, server):
    open_vm(page, server, token=VIEWER)
    assert all(not on for on in enabled(page).values())
    page.click("#terminal")
    page.keyboard.type("ls")
    page.wait_for_selector("#console-hint.shown")
    assert "read-only" in page.inner_text("#console-hint")


def sideways(page):
    """{scroll, inner, wide}: the page's scroll width, the window's width, and the first elements sticking out to the
    right (outside the boxes that scroll on purpose)."""
    return page.evaluate("""() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
        wide: [...document.querySelectorAll('body *')].filter((e) => e.getBoundingClientRect().right > window.innerWidth + 1
            && !e.closest('.scroll, .xterm, .vga, dialog, .menu-items, .legend dl')).map((e) => e.tagName + '#' + e.id + '.' + e.className).slice(0, 5)})""")


def test_the_vm_page_fits_the_window(page, server):
    """No sideways scrolling at 1400x900, 1280x800 or 800x600, with every panel filled; one column below 1200 px.
    One page, resized as a user drags the window."""
    open_vm(page, server)
    page.wait_for_selector("#registers tr")
    page.wait_for_selector("#caches .tlb-facts")
    page.wait_for_selector("#ept-map")
    page.wait_for_selector("#tunables tr")
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_function("w => window.innerWidth === w", arg=width)
        overflow = sideways(page)
        assert overflow["scroll"] <= overflow["inner"], (width, overflow)
        assert overflow["wide"] == [], (width, overflow)
        left, right = page.locator(".left").bounding_box(), page.locator(".right").bounding_box()
        if width < 1200:
            assert right["y"] > left["y"] + left["height"] - 1, width          # stacked
        else:
            assert right["x"] >= left["x"] + left["width"], width              # side by side


def test_the_vm_list_fits_800x600(page, server):
    page.set_viewport_size({"width": 800, "height": 600})
    page.goto("%s/?token=%s" % (server, CONTROL))
    page.wait_for_selector("#vms tr[data-vm=demo]")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_panels_are_tables_in_hex_and_decimal(page, server):
    """EPT, TLB and L1D as tables: addresses in hex, counts in decimal; the walk and translate answers too."""
    open_vm(page, server)
    page.wait_for_selector("#ept-map td.hex")
    assert [h.inner_text() for h in page.query_selector_all("#ept-map th")][:4] == ["segment", "GPA", "size", "HPA"]
    assert page.inner_text("#ept-map tbody tr td.hex").startswith("0x")
    page.wait_for_selector("#caches .tlb-facts")
    facts = {r.query_selector("th").inner_text(): r.query_selector("td").inner_text()
             for r in page.query_selector_all("#caches .tlb-facts tr")}
    assert facts["EPTP"].startswith("0x") and not facts["hits"].startswith("0x") and facts["hit rate"].endswith("%")
    heads = [h.inner_text() for h in page.query_selector_all("#caches .tlb-entries th")]
    assert heads == ["GLA", "GPA", "HPA", "VPID", "EPTP", "perms", "global"]
    assert page.query_selector("#caches .l1d-facts") is not None
    page.fill("#ept-lookup input", "0x100000")
    page.click("#ept-lookup button")
    page.wait_for_selector("#walk-table")
    rows = [[c.inner_text() for c in r.query_selector_all("td")] for r in page.query_selector_all("#walk-table tbody tr")]
    assert [r[0] for r in rows] == ["4", "3", "2", "1"] and all(r[1].startswith("0x") and r[2].startswith("0x") for r in rows)
    assert "RWX" in rows[-1][3]
    page.fill("#translate input", "0x100000")
    page.click("#translate button")
    page.wait_for_selector("#translate-result")
    result = page.inner_text("#translate-result")
    assert "guest-linear\t0x100000" in result and "guest-physical\t0x100000" in result and "host-physical\t0x" in result


def test_tunables_are_checkboxes_and_menus_and_say_host_wide(page, server):
    open_vm(page, server)
    assert "host-wide" in page.inner_text("#tunables-note")
    row = "#tunables tr[data-name='hw.vmm.trace_guest_exceptions']"
    page.wait_for_selector(row + " input[type=checkbox]")
    assert "read at VM creation" in page.inner_text(row)
    assert not page.is_checked(row + " input")
    page.click(row + " input")
    page.wait_for_selector(row + ".changed")
    page.wait_for_function("document.getElementById('markers').innerText.includes('hw.vmm.trace_guest_exceptions: 0 -> 1')")
    page.click(row + " input")
    page.wait_for_selector(row + ":not(.changed)")
    flush = "#tunables tr[data-name='hw.vmm.l1d_flush']"
    assert page.input_value(flush + " select") == "-1"
    assert [o.inner_text() for o in page.query_selector_all(flush + " option")] == ["auto (-1)", "off (0)", "on (1)"]
    assert "read at VM creation" not in page.inner_text(flush)
    maxcpu = "#tunables tr[data-name='hw.vmm.maxcpu'] input[type=number]"
    page.fill(maxcpu, "999")
    page.press(maxcpu, "Enter")
    page.wait_for_selector("#status.error")
    assert "outside 1..255" in page.inner_text("#status")


def test_the_l1tf_demo_puts_the_host_wide_tunables_back(page, server):
    page.goto("%s/?token=%s" % (server, CONTROL))
    assert "puts them back" in page.inner_text("main")
    page.wait_for_selector("#demos tr[data-demo=l1tf] button")
    page.click("#demos tr[data-demo=l1tf] button")
    page.wait_for_function("document.querySelector('#demos tr[data-demo=l1tf] .demo-state').textContent === 'done'",
                           timeout=120000)
    open_vm(page, server)
    page.wait_for_selector("#tunables tr[data-name='hw.vmm.l1d_sim'] input")
    assert page.input_value("#tunables tr[data-name='hw.vmm.l1d_flush'] select") == "-1"
    assert not page.is_checked("#tunables tr[data-name='hw.vmm.l1d_sim'] input")
    requests.delete(server + "/api/v1/vms/l1tf", headers=AUTH)


def test_flat64_and_readers_from_the_form_and_the_vga_panel_of_a_serial_only_guest(page, server, tmp_path):
    """Choosing a bundled flat binary sets the kind to flat64 and it boots; its VM page shows no black VGA box.
    A bad upload's message names the form's kind field."""
    page.goto("%s/?token=%s" % (server, CONTROL))
    page.wait_for_selector("#create select[name=guest] option[value=flat64]", state="attached")
    for guest in ("flat64", "readers"):
        page.select_option("#create select[name=guest]", guest)
        assert page.input_value("#create select[name=kind]") == "flat64"
        page.fill("#create input[name=name]", "form-" + guest)
        page.fill("#create input[name=mem_mb]", "16")
        page.click("#create button[type=submit]")
        page.wait_for_selector("#vms tr[data-vm=form-%s]" % guest)
        assert "(flat64)" in page.inner_text("#vms tr[data-vm=form-%s]" % guest)
    page.select_option("#create select[name=guest]", "shell")
    assert page.input_value("#create select[name=kind]") == ""
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x01" * 2048)
    page.fill("#create input[name=name]", "junk")
    page.set_input_files("#create input[name=image]", str(junk))
    page.click("#create button[type=submit]")
    page.wait_for_selector("#status.error")
    assert "the form's kind field" in page.inner_text("#status")

    open_page(page, server, "form-flat64")
    page.wait_for_function("document.getElementById('vga-note').textContent.includes('serial console only')")
    assert not page.is_visible("#vga")
    for guest in ("flat64", "readers"):
        requests.delete(server + "/api/v1/vms/form-" + guest, headers=AUTH)


def test_the_name_pattern_is_a_valid_regex_and_a_missing_vm_is_a_404_page(page, server):
    messages = []
    page.on("console", lambda m: messages.append(m.text))
    page.goto("%s/?token=%s" % (server, CONTROL))
    page.wait_for_selector("#vms tr[data-vm=demo]")
    name = "#create input[name=name]"
    page.fill(name, "bad name!")
    assert page.evaluate("document.querySelector(%r).validity.patternMismatch" % name)
    page.fill(name, "good-name_1")
    assert not page.evaluate("document.querySelector(%r).validity.patternMismatch" % name)
    assert not [m for m in messages if "pattern" in m.lower()]
    response = page.goto(server + "/vms/nosuch")
    assert response.status == 404
    assert "No VM named" in page.inner_text("main") and page.query_selector("button[data-action]") is None


def test_snapshot_from_the_vm_page_in_a_dialog(page, server):
    open_vm(page, server)
    page.click("#snapshot")
    assert page.is_visible("#snapshot-dialog")
    assert page.input_value("#snapshot-dialog input[name=name]").startswith("demo-")
    page.fill("#snapshot-dialog input[name=name]", "bad name")
    page.click("#snapshot-dialog button[value=save]")
    assert page.is_visible("#snapshot-dialog")                # the pattern keeps the dialog open
    page.fill("#snapshot-dialog input[name=name]", "from-vm-page")
    page.click("#snapshot-dialog button[value=save]")
    page.wait_for_selector("#vm-snapshots tr[data-snapshot=from-vm-page]")
    assert "pages saved" in page.inner_text("#status")
    requests.delete(server + "/api/v1/snapshots/from-vm-page", headers=AUTH)


def test_send_keys_fullscreen_and_copy(page, server):
    """Ctrl-U from the menu reaches the shell (it kills the line being typed); fullscreen gives the console the
    window and xterm.js more rows; the disabled menu entries say why."""
    open_vm(page, server)
    page.click("#terminal")
    page.keyboard.type("echo never-run")
    page.click("#sendkeys-button")
    assert "PS/2" in page.inner_text("#sendkeys .menu-items") and page.is_disabled("button[data-keys=cad]")
    page.click("button[data-keys=ctrl-u]")
    page.keyboard.type("echo after-ctrl-u\n")
    wait_terminal(page, "\nafter-ctrl-u")
    assert "never-run" not in terminal_text(page)
    rows = page.evaluate("SerialConsole.term.rows")
    page.click("#fullscreen")
    page.wait_for_function("r => SerialConsole.term.rows > r", arg=rows)
    assert not page.is_visible(".right") and page.inner_text("#fullscreen") == "Leave fullscreen"
    page.click("#fullscreen")
    page.wait_for_function("r => SerialConsole.term.rows === r", arg=rows)


def test_theme_follows_the_browser_and_the_switch(browser, server):
    for scheme, dark in (("light", False), ("dark", True)):
        context = browser.new_context(color_scheme=scheme)
        page = context.new_page()
        page.goto("%s/?token=%s" % (server, CONTROL))
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(21, 23, 26)") == dark, background
        page.select_option("#theme", "light" if dark else "dark")
        flipped = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert flipped != background
        page.reload()
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == flipped     # remembered
        context.close()
