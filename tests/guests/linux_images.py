"""Where `make linux` leaves the Linux guest (Debian's vmlinuz, our busybox initramfs), for the tests that boot it."""
from pathlib import Path

import pytest

LINUX_DIR = Path(__file__).resolve().parents[2] / "guests" / "build" / "linux"
VMLINUZ, INITRD, VERSIONS = LINUX_DIR / "vmlinuz", LINUX_DIR / "initrd.gz", LINUX_DIR / "VERSIONS"
INIT_UP, INIT_DONE = b"webhyve-init: up", b"webhyve-init: done, powering off"


def linux_images():
    """(vmlinuz, initrd.gz) paths; the test is skipped, saying how to get them, when they were not built."""
    missing = [p.name for p in (VMLINUZ, INITRD) if not p.exists()]
    if missing:
        pytest.skip("%s not built: `make linux` fetches Debian's kernel and busybox-static and packs the "
                    "initramfs (`make test` does it first)" % " and ".join(missing))
    return VMLINUZ, INITRD


def kernel_release():
    """The kernel's release as Debian names it (6.1.0-57-amd64), from the package `make linux` fetched."""
    for line in VERSIONS.read_text().splitlines():
        name = line.split()[0]
        if name.startswith("linux-image-"):
            return name[len("linux-image-"):]
    raise AssertionError("%s names no linux-image package" % VERSIONS)
