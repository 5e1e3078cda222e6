"""Durability across `kill -9` (issue 18, item 3): a separate `vmmctl run` process boots Debian's kernel on an ext4
virtio-blk root, the guest writes files and syncs each, then keeps the disk busy with fsync'd writes; the test sends
that process SIGKILL (no clean shutdown, nothing flushed by webhyve on the way out). Every file the guest reported
synced must be in the image with its MD5, and the file system must be consistent: `e2fsck -f -n` finds nothing to
fix in the image as the kill left it (journal not replayed: the synced files' metadata may still be only in the
journal) and again after e2fsck replays the journal as the next mount would (-E journal_only), when every synced
file must be there. A FLUSH is fsync on the image
(virtio/blk.py); a write the device completed is in the host's page cache, which outlives the process."""
import hashlib
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.guests.linux_images import BLK_MODULES, ext4_image, linux_images, tool

HANG = 900          # seconds: a deadline for a hung boot, not a speed claim
FILES = 4
BUSY = 3            # fsync'd writes seen after the last synced file before the kill
VMMCTL = Path(sys.executable).parent / "vmmctl"
WRITE = ("for m in %s; do insmod /lib/modules/$m.ko; done; mkdir -p /mnt && mount -t ext4 /dev/vda /mnt || exit; "
         "mkdir -p /mnt/dir; i=0; while [ $i -lt %d ]; do i=$((i+1)); "
         "dd if=/dev/urandom of=/mnt/dir/f$i bs=1024 count=$((16*i)) 2>/dev/null; sync; "
         "echo synced=f$i $(md5sum < /mnt/dir/f$i); done; "
         "i=0; while :; do i=$((i+1)); dd if=/dev/zero of=/mnt/busy$((i%%4)) bs=4096 count=32 conv=fsync 2>/dev/null; "
         "echo busy=$i; done" % (BLK_MODULES, FILES))


class Vmmctl:
    """`vmmctl run` in its own process, its console collected on a thread."""

    def __init__(self, args):
        self.proc = subprocess.Popen([str(VMMCTL), "run", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.output = bytearray()
        self.changed = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            with self.changed:
                self.output += chunk
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, pattern, deadline):
        with self.changed:
            while not re.search(pattern, self.output):
                left = deadline - time.monotonic()
                assert left > 0 and self.proc.poll() is None, ("no %r" % pattern, bytes(self.output[-2000:]))
                self.changed.wait(min(left, 5))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(60)
        self.reader.join(60)
        return code


def test_files_synced_before_a_kill_9_of_webhyve_are_intact_and_the_file_system_is_clean(tmp_path):
    if not VMMCTL.exists():
        pytest.skip("%s is missing: `make .venv/.installed` installs vmmctl" % VMMCTL)
    kernel, initrd = linux_images("vmlinux")
    image = ext4_image(tmp_path, "16M")
    run = Vmmctl([str(kernel), "--initrd", str(initrd), "--mem", "256", "--host-mem", "512",
                  "--cmdline", 'console=ttyS0 panic=-1 whrun="%s"' % WRITE, "-s", "3,virtio-blk,%s" % image])
    try:
        run.wait_for(rb"\nbusy=%d\r?\n" % BUSY, time.monotonic() + HANG)
    finally:
        code = run.kill()
    console = bytes(run.output)
    assert code == -signal.SIGKILL, (code, console[-2000:])
    assert b"vmmctl: VM" not in console                       # it never got to say the VM stopped
    synced = dict(re.findall(rb"\nsynced=(f\d+) ([0-9a-f]{32})", console))
    assert sorted(synced) == [b"f%d" % i for i in range(1, FILES + 1)], console[-2000:]
    header = subprocess.run([tool("dumpe2fs"), "-h", str(image)], capture_output=True, text=True, timeout=60).stdout
    assert "needs_recovery" in header, header                 # left mounted, its journal in use: a crash
    as_left = subprocess.run([tool("e2fsck"), "-f", "-n", str(image)], capture_output=True, text=True, timeout=60)
    assert as_left.returncode == 0, as_left.stdout + as_left.stderr          # consistent without the journal too
    replay = subprocess.run([tool("e2fsck"), "-E", "journal_only", "-p", str(image)], capture_output=True, text=True,
                            timeout=60)
    assert replay.returncode in (0, 1), replay.stdout + replay.stderr        # 1: the journal was replayed
    check = subprocess.run([tool("e2fsck"), "-f", "-n", str(image)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    for name, md5 in synced.items():
        data = subprocess.run([tool("debugfs"), "-R", "cat /dir/%s" % name.decode(), str(image)],
                              capture_output=True, timeout=60).stdout
        assert len(data) == 16 * 1024 * int(name[1:]), (name, len(data))
        assert hashlib.md5(data).hexdigest().encode() == md5, name
