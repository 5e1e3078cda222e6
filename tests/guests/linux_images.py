"""Where `make linux` leaves the Linux guest (Debian's vmlinuz, the vmlinux inside it, our busybox initramfs), for
the tests that boot it, and the ext4 disk images they attach (made with e2fsprogs as a user would).

A test about the kernel, its devices or its SMP boots the vmlinux: the same kernel without the 20 s its
decompressor takes under emulation. The bzImage path (decompressor included) has its own tests: the main boot
(test_linux_webhyve.py), the CLI's, the loader's and QEMU's."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

LINUX_DIR = Path(__file__).resolve().parents[2] / "guests" / "build" / "linux"
VMLINUZ, INITRD, VERSIONS = LINUX_DIR / "vmlinuz", LINUX_DIR / "initrd.gz", LINUX_DIR / "VERSIONS"
KERNELS = {"vmlinuz": VMLINUZ, "vmlinux": LINUX_DIR / "vmlinux"}
INIT_UP, INIT_DONE = b"webhyve-init: up", b"webhyve-init: done, powering off"
# the modules a guest loads for an ext4 virtio-blk disk, in their dependency order (a subset of /lib/modules/order)
BLK_MODULES = "virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk crc16 mbcache " \
              "jbd2 crc32c_generic ext4"
SBIN = os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin"))


def linux_images(kernel="vmlinuz"):
    """(kernel, initrd.gz) paths, the kernel "vmlinuz" (the bzImage) or "vmlinux"; the test is skipped, saying how
    to get them, when they were not built."""
    missing = [p.name for p in (KERNELS[kernel], INITRD) if not p.exists()]
    if missing:
        pytest.skip("%s not built: `make linux` fetches Debian's kernel and busybox-static and packs the "
                    "initramfs (`make test` does it first)" % " and ".join(missing))
    return KERNELS[kernel], INITRD


def kernel_release():
    """The kernel's release as Debian names it (6.1.0-57-amd64), from the package `make linux` fetched."""
    for line in VERSIONS.read_text().splitlines():
        name = line.split()[0]
        if name.startswith("linux-image-"):
            return name[len("linux-image-"):]
    raise AssertionError("%s names no linux-image package" % VERSIONS)


def tool(name):
    found = shutil.which(name, path=SBIN)
    if found is None:
        pytest.skip("%s is missing: `make deps` installs e2fsprogs" % name)
    return found


def ext4_image(tmp_path, size="8M"):
    """An ext4 file system of `size` holding /from-host.txt, made as a user would (mke2fs -d)."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "from-host.txt").write_text("written by the host\n")
    image = tmp_path / "disk.img"
    subprocess.run([tool("mke2fs"), "-q", "-F", "-t", "ext4", "-d", str(tree), "-L", "whdisk", str(image), size],
                   check=True, capture_output=True, timeout=60)
    return image
