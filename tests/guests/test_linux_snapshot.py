"""A snapshot taken while Debian's kernel copies a file to its virtio-blk ext4 disk, restored on a fresh modeled
host: the copy goes on from where it stopped and completes, the guest reads the file back from the disk (its page
cache dropped) with the MD5 it had before the copy, and the host finds the file system clean (e2fsck -f -n) and the
file whole (debugfs). The image is the user's file: the snapshot names it and the restored VM opens it again
(docs/devices.md, "Snapshots")."""
import hashlib
import re
import subprocess
import time

from engine import Hypervisor
from tests.guests.linux_images import BLK_MODULES, INIT_DONE, ext4_image, linux_images, tool

HANG = 900          # seconds: a deadline for a hung boot or copy, not a speed claim
CHUNKS, CHUNK_KIB = 24, 128
SAVE_AT = 6         # the host pauses once the guest has said it copied this many chunks
# the copy goes in chunks, each synced: many rounds of requests, so the snapshot lands between two of them
COPY = ("for m in %s; do insmod /lib/modules/$m.ko; done; mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && "
        "dd if=/dev/urandom of=/tmp/data bs=1024 count=%d 2>/dev/null && echo src=$(md5sum < /tmp/data) && "
        "i=0; while [ $i -lt %d ]; do dd if=/tmp/data of=/mnt/copy bs=%d skip=$i seek=$i count=1 conv=notrunc "
        "2>/dev/null; sync; i=$((i+1)); echo chunk=$i; done; echo copy=done; echo 3 > /proc/sys/vm/drop_caches; "
        "echo dst=$(md5sum < /mnt/copy) $(wc -c < /mnt/copy); umount /mnt && echo disk=unmounted"
        % (BLK_MODULES, CHUNKS * CHUNK_KIB, CHUNKS, CHUNK_KIB * 1024))


def said(console, name):
    """The value printed after `name=` at the start of a console line, or None."""
    found = re.search(rb"\n" + name.encode() + rb"=([^\r\n]*)", console)
    return found and found.group(1).decode()


def wait_console(vm, text, deadline):
    reader = vm.console.reader()
    seen = b""
    while text not in seen:
        assert vm.state in ("running", "halted"), (vm.state, vm.suspend_message, seen[-2000:])
        assert time.monotonic() < deadline, ("no %r within %d s" % (text, HANG), seen[-2000:])
        seen += reader.read(0.2)
    return seen


def test_a_snapshot_taken_mid_copy_resumes_the_copy_on_another_host(tmp_path):
    kernel, initrd = linux_images("vmlinux")
    image = ext4_image(tmp_path, "16M")
    hv = Hypervisor(host_mem_mb=512)
    vm = hv.create_vm("copier", mem_mb=256, slots=["3,virtio-blk,%s" % image])
    vm.load(kernel.read_bytes(), "vmlinux", cmdline='console=ttyS0 panic=-1 whrun="%s"' % COPY,
            initrd=initrd.read_bytes())
    deadline = time.monotonic() + HANG
    vm.start()
    try:
        wait_console(vm, b"\nchunk=%d" % SAVE_AT, deadline)
        vm.pause()
        before = vm.console.contents()
        disk = vm.pci.functions[3, 0]
        queue = disk.device_state()["virtio"]["queues"][0]
        writes = disk.counts["write"]
        vm.snapshot(tmp_path / "copier.snap")
    finally:
        hv.destroy_vm("copier")                   # the saved VM never runs again: the image is the restored one's
    assert b"\ncopy=done" not in before and queue["enabled"] and queue["last_avail"] > 0, before[-1500:]
    source = said(before, "src")
    other = Hypervisor(host_mem_mb=512)
    copy = other.restore_vm(tmp_path / "copier.snap")
    try:
        state = copy.wait(states=("suspended",), timeout=max(deadline - time.monotonic(), 1))
        after = copy.console.contents()
        restored_disk = copy.pci.functions[3, 0]
        counts = dict(restored_disk.counts)
    finally:
        other.destroy_vm("copier")
    tail = after[-2000:]
    assert state == "suspended" and copy.suspend_reason == "poweroff", (state, copy.suspend_message, tail)
    assert INIT_DONE in after and b"chunk=%d" % (SAVE_AT + 1) in after and b"\ncopy=done" in after, tail
    assert b"chunk=1\r" not in after, tail                     # not started again: it went on
    assert counts["write"] > writes and counts["read"] > 0, counts
    assert source and said(after, "dst") == "%s %d" % (source, CHUNKS * CHUNK_KIB * 1024), (source, tail)
    assert b"disk=unmounted" in after, tail
    for bad in (b"EXT4-fs error", b"I/O error", b"blk_update_request", b"virtio_blk", b"Kernel panic"):
        assert bad not in after, (bad, tail)
    check = subprocess.run([tool("e2fsck"), "-f", "-n", str(image)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    data = subprocess.run([tool("debugfs"), "-R", "cat /copy", str(image)], capture_output=True, timeout=60).stdout
    assert len(data) == CHUNKS * CHUNK_KIB * 1024 and source.split() == [hashlib.md5(data).hexdigest(), "-"]
