"""Guest-to-guest TCP throughput: two webhyve Linux guests on switch0 against two QEMU TCG guests joined by a
-netdev socket pair (one listening, one connecting), each pair passing N MiB of random bytes with busybox nc.

Both pairs boot guests/build/linux/{vmlinuz,initrd.gz} (`make linux`) with webhyve.ip= and the same scripts: the
sender makes its data, waits until the receiver answers a ping, prints "xfer-start" and sends; the receiver prints
"got=MD5 - SIZE" when nc ends. The time is the host's, from the sender's marker on its console to the
receiver's (consoles are followed by threads, so the markers are timed as they arrive), which includes nc's
connection set-up. The pairs run one after the other. Printed: MB/s for each and webhyve/QEMU as a ratio; the
MD5s must agree or the run fails. Usage: python bench/net.py [--mib N] [--deadline s]
"""
import argparse
import os
import re
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine import Hypervisor  # noqa: E402

KERNEL = os.path.join(ROOT, "guests", "build", "linux", "vmlinuz")
INITRD = os.path.join(ROOT, "guests", "build", "linux", "initrd.gz")
PING = "until ping -c 1 -W 1 {0} >/dev/null 2>&1; do usleep 200000; done; "
RECEIVER = "nc -l -p 5001 > /tmp/b; echo got=$(md5sum < /tmp/b) $(wc -c < /tmp/b)"
SENDER = ("dd if=/dev/urandom of=/tmp/data bs=65536 count={mib16} 2>/dev/null; echo sent=$(md5sum < /tmp/data); "
          + PING.format("10.0.0.1") + "echo xfer-start; until nc 10.0.0.1 5001 < /tmp/data; do usleep 100000; done")
GOT = re.compile(rb"\ngot=([0-9a-f]{32})")
SENT = re.compile(rb"\nsent=([0-9a-f]{32})")
START = re.compile(rb"\nxfer-start")
MARKERS = {"start": START, "got": GOT}          # at a line's start: the kernel's echo of whrun= has them too


def cmdline(ip, script):
    return 'console=ttyS0 panic=-1 quiet webhyve.ip=%s/24 whrun="%s"' % (ip, script)


class Marks:
    """A console followed on a thread: its bytes, and when each watched marker first appeared."""

    def __init__(self, read):
        self.data, self.times, self.cond = bytearray(), {}, threading.Condition()
        threading.Thread(target=self._follow, args=(read,), daemon=True).start()

    def _follow(self, read):
        while True:
            chunk = read()
            if chunk is None:
                return
            with self.cond:
                self.data += chunk
                now = time.monotonic()
                for marker, pattern in MARKERS.items():
                    if marker not in self.times and pattern.search(self.data):
                        self.times[marker] = now
                self.cond.notify_all()

    def wait(self, marker, deadline):
        with self.cond:
            self.cond.wait_for(lambda: marker in self.times, max(deadline - time.monotonic(), 0))
            return self.times.get(marker)


def measure(sender, receiver, mib, deadline):
    """Seconds from xfer-start to got=, checking that both ends saw the same bytes."""
    end = time.monotonic() + deadline
    start, done = sender.wait("start", end), receiver.wait("got", end)
    if start is None or done is None:
        raise SystemExit("no transfer within %d s; sender: %r; receiver: %r"
                         % (deadline, bytes(sender.data[-400:]), bytes(receiver.data[-400:])))
    sent, got = SENT.search(bytes(sender.data)), GOT.search(bytes(receiver.data))
    if sent is None or got is None or sent.group(1) != got.group(1):
        raise SystemExit("the bytes differ: sent %r, got %r" % (sent and sent.group(1), got and got.group(1)))
    return done - start


def webhyve_pair(mib, deadline):
    hv = Hypervisor(host_mem_mb=1024)
    with open(KERNEL, "rb") as f:
        kernel = f.read()
    with open(INITRD, "rb") as f:
        initrd = f.read()
    vms, marks = [], []
    for name, ip, script in (("bench-rx", "10.0.0.1", RECEIVER), ("bench-tx", "10.0.0.2", SENDER)):
        vm = hv.create_vm(name, mem_mb=256, slots=["3,virtio-net,switch0"])
        vm.load(kernel, "vmlinuz", cmdline=cmdline(ip, script.format(mib16=mib * 16)), initrd=initrd)
        reader = vm.console.reader()
        marks.append(Marks(lambda r=reader: r.read(timeout=1.0)))
        vms.append(vm)
        vm.start()
    try:
        return measure(marks[1], marks[0], mib, deadline)
    finally:
        for vm in vms:
            vm.destroy()


def listening(port):
    """Whether some socket listens on TCP `port` (/proc/net/tcp, state 0A), without connecting to it: a probe
    connection would be QEMU's one peer."""
    with open("/proc/net/tcp") as table:
        return any(row.split()[1].endswith(":%04X" % port) and row.split()[3] == "0A"
                   for row in list(table)[1:])


def qemu_pair(mib, deadline):
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    procs, marks = [], []
    for ip, script, netdev, mac in (("10.0.0.1", RECEIVER, "listen", "52:54:00:00:00:01"),
                                    ("10.0.0.2", SENDER, "connect", "52:54:00:00:00:02")):
        proc = subprocess.Popen(["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
                                 "-kernel", KERNEL, "-initrd", INITRD,
                                 "-append", cmdline(ip, script.format(mib16=mib * 16)),
                                 "-netdev", "socket,id=n,%s=127.0.0.1:%d" % (netdev, port),
                                 "-device", "virtio-net-pci,netdev=n,mac=%s" % mac],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        marks.append(Marks(lambda p=proc: p.stdout.read1(4096) or None))
        procs.append(proc)
        while netdev == "listen" and not listening(port) and proc.poll() is None:
            time.sleep(0.05)                       # QEMU's connect= fails unless the listener is up
    try:
        return measure(marks[1], marks[0], mib, deadline)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=2)
    parser.add_argument("--deadline", type=float, default=1500)
    args = parser.parse_args()
    mb = args.mib * 1048576 / 1e6
    ours = webhyve_pair(args.mib, args.deadline)
    print("webhyve guest-to-guest nc of %d MiB: %.1f s, %.3f MB/s" % (args.mib, ours, mb / ours), flush=True)
    theirs = qemu_pair(args.mib, args.deadline)
    print("QEMU TCG guest-to-guest nc of %d MiB over -netdev socket: %.1f s, %.3f MB/s" % (args.mib, theirs,
                                                                                       mb / theirs))
    print("ratio webhyve/QEMU: %.2f" % (theirs / ours))


if __name__ == "__main__":
    main()
