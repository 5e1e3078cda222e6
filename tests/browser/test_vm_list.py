"""The VM list in headless chromium: create from a bundled guest, refuse a bad upload, destroy."""
from tests.browser.conftest import CONTROL


def test_create_refuse_and_destroy(page, server, tmp_path):
    page.goto("%s/?token=%s" % (server, CONTROL))
    page.wait_for_selector("#vms tr[data-vm=demo]")
    page.fill("#create input[name=name]", "fromlist")
    page.select_option("#create select[name=guest]", "hello")
    page.click("#create button[type=submit]")
    page.wait_for_selector("#vms tr[data-vm=fromlist]")
    assert "hello.elf (multiboot)" in page.inner_text("#vms tr[data-vm=fromlist]")

    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x01" * 2048)
    page.fill("#create input[name=name]", "junk")
    page.set_input_files("#create input[name=image]", str(junk))
    page.click("#create button[type=submit]")
    page.wait_for_selector("#status.error")
    assert "junk.img" in page.inner_text("#status") and "boot signature" in page.inner_text("#status")
    assert page.query_selector("#vms tr[data-vm=junk]") is None

    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#vms tr[data-vm=fromlist] button.danger")
    page.wait_for_selector("#vms tr[data-vm=fromlist]", state="detached")
    assert page.query_selector("#vms tr[data-vm=demo]") is not None
