"""virtio-blk throughput: Debian's kernel reading and writing a raw disk with busybox dd, under webhyve and under
QEMU TCG (`-drive if=virtio`, virtio-blk-pci) on the same kind of image, in the same run.

The guest (`make linux`'s kernel and initramfs) loads the virtio modules and prints a marker before and after each
phase; the host times the markers as the console shows them, for both, so the ratio compares like with like:
  seq-read   dd if=/dev/vda bs=1M count=64 iflag=direct      (64 MiB, sequential, no page cache)
  seq-write  dd of=/dev/vda bs=1M count=64 oflag=direct conv=fsync
  rand-read  400 × dd bs=4k count=1 skip=$RANDOM iflag=direct (each a fork and exec of dd, as the issue asks)
Each image is a fresh 128 MiB sparse file. Usage: .venv/bin/python bench/blk.py [--deadline s]
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine import Hypervisor  # noqa: E402

KERNEL = os.path.join(ROOT, "guests", "build", "linux", "vmlinuz")
INITRD = os.path.join(ROOT, "guests", "build", "linux", "initrd.gz")
MODULES = "virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"
PHASES = {
    "seq-read": "dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct",
    "seq-write": "dd if=/dev/zero of=/dev/vda bs=1M count=64 oflag=direct conv=fsync",
    "rand-read": "i=0; while [ $i -lt 400 ]; do dd if=/dev/vda of=/dev/null bs=4k count=1 "
                 "skip=$((RANDOM % 32768)) iflag=direct 2>/dev/null || echo dd-failed; i=$((i+1)); done",
}
SCRIPT = "for m in %s; do insmod /lib/modules/$m.ko; done; " % MODULES + "".join(
    "echo go-%s; %s; echo end-%s; " % (name, command, name) for name, command in PHASES.items())
CMDLINE = 'console=ttyS0 panic=-1 quiet whrun="%s"' % SCRIPT
MiB = 1 << 20
SIZES = {"seq-read": 64 * MiB, "seq-write": 64 * MiB, "rand-read": 400 * 4096}


def image(folder):
    path = os.path.join(folder, "disk.img")
    with open(path, "wb") as f:
        f.truncate(128 * MiB)
    return path


class Markers:
    """The monotonic time at which each go-/end- marker showed on a console, fed with its bytes as they come."""

    def __init__(self):
        self.seen, self.text, self.done = {}, b"", threading.Event()

    def feed(self, data):
        now = time.monotonic()
        self.text += data
        for mark in re.findall(rb"(?:go|end)-[a-z-]+", self.text):
            self.seen.setdefault(mark.decode(), now)
        if b"webhyve-init: done" in self.text:
            self.done.set()

    def seconds(self):
        return {name: self.seen["end-" + name] - self.seen["go-" + name] for name in PHASES
                if "go-" + name in self.seen and "end-" + name in self.seen}


def qemu(folder, deadline):
    markers = Markers()
    proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
                             "-nic", "none", "-kernel", KERNEL, "-initrd", INITRD, "-append", CMDLINE,
                             "-drive", "file=%s,format=raw,if=virtio" % image(folder)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    reader = threading.Thread(target=lambda: [markers.feed(c) for c in iter(lambda: proc.stdout.read1(4096), b"")],
                              daemon=True)
    reader.start()
    markers.done.wait(deadline)
    proc.kill()
    proc.wait()
    check(markers, "QEMU")
    return markers.seconds()


def webhyve(folder, deadline):
    markers = Markers()
    hv = Hypervisor(host_mem_mb=1024)
    vm = hv.create_vm("blk", mem_mb=256, slots=["3,virtio-blk,%s" % image(folder)])
    with open(KERNEL, "rb") as kernel, open(INITRD, "rb") as initrd:
        vm.load(kernel.read(), "vmlinuz", cmdline=CMDLINE, initrd=initrd.read())
    reader = vm.console.reader()
    vm.start()
    end = time.monotonic() + deadline
    while not markers.done.is_set() and time.monotonic() < end:
        markers.feed(reader.read(0.2))
    if vm.state != "suspended":
        vm.poweroff()
    check(markers, "webhyve")
    return markers.seconds()


def check(markers, who):
    """A dd that refused its options would make a phase look instant: its own record counts must be there."""
    copied = markers.text.count(b"64+0 records out")
    if copied < 2 or b"dd-failed" in markers.text:
        raise SystemExit("%s: dd did not copy what was asked (%d of 2 summaries):\n%s"
                         % (who, copied, markers.text[-1500:].decode("latin-1")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadline", type=float, default=600, help="seconds for each boot and its phases")
    args = parser.parse_args()
    if not (os.path.exists(KERNEL) and os.path.exists(INITRD)):
        raise SystemExit("bench/blk.py needs `make linux` (Debian's kernel and the initramfs)")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        theirs, ours = qemu(a, args.deadline), webhyve(b, args.deadline)
    print("%-10s %12s %12s %12s %12s %8s" % ("phase", "QEMU s", "QEMU MB/s", "webhyve s", "webhyve MB/s", "ratio"))
    for name in PHASES:
        if name not in theirs or name not in ours:
            print("%-10s did not finish (QEMU: %s, webhyve: %s)" % (name, name in theirs, name in ours))
            continue
        print("%-10s %12.3f %12.1f %12.3f %12.1f %7.2fx" % (
            name, theirs[name], SIZES[name] / theirs[name] / 1e6, ours[name], SIZES[name] / ours[name] / 1e6,
            theirs[name] / ours[name]))
    print("ratio: webhyve's throughput as a fraction of QEMU TCG's (the issue's target: at least 0.5)")


if __name__ == "__main__":
    main()
