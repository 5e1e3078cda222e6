"""The Tasks panel in headless chromium: a VM created from the page appears as a task and finishes OK, a refused
create shows its error in red, a demo shows its progress bar while it runs, and the VM page lists its VM's tasks."""
from tests.browser.conftest import CONTROL, VIEWER, create_from_list

ROW = "#tasks tr[data-kind=%s][data-vm='%s']"


def test_a_create_from_the_page_appears_and_finishes_ok(page, server, tmp_path):
    create_from_list(page, server, "tasked", "hello")
    row = page.wait_for_selector(ROW % ("create", "tasked") + "[data-state=ok]")       # pushed, not reloaded
    cells = [c.inner_text() for c in row.query_selector_all("td")]
    start, end, duration, node, who, description, status = cells
    assert description == "create VM tasked" and status == "OK" and who == "control" and node
    assert start and end and duration.endswith(" s")

    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x01" * 2048)
    page.fill("#create input[name=name]", "junked")
    page.set_input_files("#create input[name=image]", str(junk))
    page.click("#create button[type=submit]")
    failed = page.wait_for_selector(ROW % ("create", "junked") + "[data-state=error] .task-error")
    assert "boot signature" in failed.inner_text()
    red = page.evaluate("getComputedStyle(document.querySelector('#tasks .task-error')).color")
    assert red == page.evaluate("getComputedStyle(document.querySelector('#status.error')).color")   # the page's red

    page.goto("%s/vms/tasked" % server)                     # the VM page: this VM's tasks only
    page.wait_for_selector(ROW % ("create", "tasked"))
    assert {r.get_attribute("data-vm") for r in page.query_selector_all("#tasks tbody tr")} == {"tasked"}


def test_a_running_demo_shows_its_progress_then_ok_to_a_viewer(page, browser, server):
    viewer = browser.new_context().new_page()
    viewer.goto("%s/?token=%s" % (server, VIEWER))
    viewer.wait_for_selector("#demos tr[data-demo=posted-interrupts]")
    page.goto("%s/?token=%s" % (server, CONTROL))
    page.wait_for_selector("#demos tr[data-demo=posted-interrupts] button:not([disabled])")
    page.click("#demos tr[data-demo=posted-interrupts] button")
    demo = "#tasks tr[data-kind=demo][data-state=%s]:has-text('run demo posted-interrupts')"
    bar = viewer.wait_for_selector(demo % "running" + " progress")
    assert bar.get_attribute("max") == "1"
    viewer.wait_for_selector(demo % "running" + " .task-status:has-text('step ')")
    done = viewer.wait_for_selector(demo % "ok", timeout=120000)
    assert done.get_attribute("data-vm") == "posted_interrupts" and done.query_selector("progress") is None
    viewer.context.close()
