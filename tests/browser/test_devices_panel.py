"""The PCI devices from the page, in headless chromium against the real server: the create form takes bhyve's -s
lines and shows a bad one's error beside itself; a Linux VM made there with a virtio-blk disk gets a devices panel
whose slot shows its IDs, decoded BARs and the MSI-X vectors the driver programmed, and whose counts move when the
guest reads the disk: bytes read reach the disk's size, and equal what the device model counted (REST)."""
import os
import random

import requests
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.browser.conftest import CONTROL
from tests.guests.linux_images import linux_images
from tests.webhyve.live import auth

DISK_BYTES = 1 << 20
HANG = 900 * 1000     # ms: a deadline for a hung boot, not a speed claim (the boot alone takes 40-70 s here)
FIRST_PANELS = HANG         # ms: the page's first panels, which come while the server boots Linux: a deadline too
READ = ("for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko; done; "
        "dd if=/dev/vda of=/dev/null bs=64k; echo disk-read-done; sleep 3600")
BLK = '#devices details[data-bdf="00:03.0"]'


def counted(page, name):
    """The devices panel's count `name` of the disk's slot, as a number (its cell's data-value)."""
    value = page.get_attribute('%s [data-count="%s"]' % (BLK, name), "data-value")
    return int(value)


def fill_create(page, name, slots):
    page.fill("#create input[name=name]", name)
    page.select_option("#create select[name=guest]", "linux")
    page.fill("#create input[name=cmdline]", 'console=ttyS0 panic=-1 whrun="%s"' % READ)
    page.fill("#create textarea[name=slots]", slots)
    page.click("#create button[type=submit]")


def test_a_linux_vm_with_a_disk_from_the_page_and_its_devices_panel(page, server, server_dir):
    linux_images()
    disks = os.path.join(str(server_dir), "disks")
    os.makedirs(disks, exist_ok=True)
    with open(os.path.join(disks, "page-disk.img"), "wb") as f:
        f.write(random.Random(18).randbytes(DISK_BYTES))
    page.goto("%s/?token=%s" % (server, CONTROL))
    page.wait_for_selector("#create select[name=guest] option[value=linux]", state="attached")
    # a bad -s: the CLI's message beside the form, which keeps what was typed; no VM
    fill_create(page, "pagedisk", "3,virtio-blk,../page-disk.img")
    page.wait_for_selector("#create-error:not([hidden])")
    assert page.inner_text("#create-error") == ("not created: -s 3,virtio-blk,../page-disk.img: virtio-blk: "
                                                "../page-disk.img leads outside the server's disk directory "
                                                "(WEBHYVE_DISKS_DIR)")
    assert page.input_value("#create textarea[name=slots]") == "3,virtio-blk,../page-disk.img"
    assert requests.get(server + "/api/v1/vms/pagedisk", headers=auth(CONTROL)).status_code == 404
    fill_create(page, "pagedisk", "3,virtio-blk,page-disk.img")
    page.wait_for_selector('#vms tr[data-vm="pagedisk"]')
    assert page.is_hidden("#create-error")
    try:
        page.click('#vms tr[data-vm="pagedisk"] a')
        page.wait_for_selector(BLK, timeout=FIRST_PANELS)
        summary = page.inner_text(BLK + " summary")
        assert summary.startswith("00:03.0 1af4:1042 class 010000 SCSI storage controller — virtio-blk "), summary
        assert summary.endswith("page-disk.img, 2,048 sectors"), summary
        before = counted(page, "read_bytes")
        try:
            page.wait_for_function("([sel, n]) => Number(document.querySelector(sel).dataset.value) >= n",
                                   arg=['%s [data-count="read_bytes"]' % BLK, DISK_BYTES], timeout=HANG)
        except PlaywrightTimeout:
            console = requests.get(server + "/api/v1/vms/pagedisk/console", headers=auth(CONTROL)).json()["text"]
            raise AssertionError("the disk's reads never reached its size; console:\n" + console[-3000:]) from None
        page.wait_for_function("document.querySelector('#terminal .xterm-rows').innerText.includes('disk-read-done')",
                               timeout=HANG)
        assert before < counted(page, "read_bytes") and counted(page, "read") > 0
        assert counted(page, "write_bytes") == 0 and counted(page, "error") == 0
        # what the driver programmed: memory decoding on, MSI-X enabled with the queue's vector unmasked to the APIC
        bars = page.inner_text(BLK + " table.bars")
        assert bars.count("memory (32-bit)") == 2 and "\tyes" in bars and "\tno" not in bars, bars
        assert page.inner_text(BLK + ' h3:has-text("MSI-X")').startswith("MSI-X enabled")
        vectors = page.inner_text(BLK + " table.msix")
        assert "0xfee" in vectors and "\tno\tno" in vectors, vectors                  # an entry unmasked, none pending
        queue = page.inner_text(BLK + " table.virtqueues tbody tr")
        assert queue.split("\t")[:3] == ["0", "256", "yes"], queue
        # the page's numbers are the device model's: once the guest sleeps, the panel and REST agree
        model = lambda: requests.get(server + "/api/v1/vms/pagedisk/devices", headers=auth(CONTROL)).json()[
            "functions"][1]["counts"]
        page.wait_for_function(
            "([sel, want]) => Object.entries(want).every(([k, v]) => "
            "Number(document.querySelector(sel + ' [data-count=\"' + k + '\"]').dataset.value) === v)",
            arg=[BLK, model()], timeout=30000)
    finally:
        requests.delete(server + "/api/v1/vms/pagedisk", headers=auth(CONTROL))
