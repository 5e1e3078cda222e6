"""The VM list in headless chromium: create from a bundled guest, refuse a bad upload, destroy."""
from tests.browser.conftest import CONTROL, create_from_list


def test_create_refuse_and_destroy(page, server, tmp_path):
    create_from_list(page, server, "fromlist", "hello")
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

    page.click("#vms tr[data-vm=fromlist] button[data-action=destroy]")
    assert "Destroy fromlist?" in page.inner_text("#confirm-text")
    page.click("#confirm-ok")
    page.wait_for_selector("#vms tr[data-vm=fromlist]", state="detached")
    assert page.query_selector("#vms tr[data-vm=demo]") is not None


def test_run_a_demo_live_and_snapshot_and_restore_from_the_list(page, server):
    """The Demos table runs demand-paging in front of the audience; a snapshot of the demo VM comes back."""
    page.goto("%s/?token=%s" % (server, CONTROL))
    page.wait_for_selector("#demos tr[data-demo=demand-paging]")
    page.click("#demos tr[data-demo=demand-paging] button")
    page.wait_for_selector("#vms tr[data-vm=demand_paging]")
    page.wait_for_function("document.querySelector('#demos tr[data-demo=demand-paging] .demo-state')"
                           ".textContent === 'done'", timeout=60000)
    assert "2 MiB superpages in place: 6" in page.inner_text("#demos tr[data-demo=demand-paging] .demo-figures")

    page.on("dialog", lambda dialog: dialog.dismiss())          # no browser prompt() or confirm() any more
    page.click("#vms tr[data-vm=demo] button[data-action=snapshot]")
    page.fill("#snapshot-dialog input[name=name]", "from-page")
    page.click("#snapshot-dialog button[value=save]")
    page.wait_for_selector("#snapshots tr[data-snapshot=from-page]")
    page.click("#snapshots tr[data-snapshot=from-page] button:text('restore')")
    assert page.input_value("#restore-dialog input[name=vm]") == "demo-restored"
    page.fill("#restore-dialog input[name=vm]", "restored-demo")
    page.click("#restore-dialog button[value=restore]")
    page.wait_for_selector("#vms tr[data-vm=restored-demo]")
    assert "shell.elf" in page.inner_text("#vms tr[data-vm=restored-demo]")
