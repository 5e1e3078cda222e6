"""Debian's kernel on virtio-net: two webhyve guests on switch0 and a QEMU guest joined to the same switch through
QEMU's -netdev socket (docs/devices.md) ping each other and pass a TCP stream with busybox nc, checked by MD5 on
both ends. One boot of the three serves both tests (a module fixture): about two webhyve boots' time here.

  webhyve A 10.0.0.1  -s 3,virtio-net,switch0,listen=127.0.0.1:PORT   pings B and Q, then receives B's and Q's data
  webhyve B 10.0.0.2  -s 3,virtio-net,switch0                         pings A, sends 256 KiB to A:5001
  QEMU    Q 10.0.0.3  -netdev socket,connect=127.0.0.1:PORT           pings A, sends 256 KiB to A:5002

The guests retry until their peer answers (a guest boots at its own pace); the host only waits for A's poweroff,
with a deadline."""
import re
import shutil
import subprocess
import threading

import pytest

from engine import Hypervisor
from engine.net.switch import host_switch
from tests.guests.linux_images import INIT_DONE, linux_images

HANG = 1500         # seconds: a deadline for a hung boot or transfer, not a speed claim (two boots run at once)
QEMU = "qemu-system-x86_64"
KIB = 256
PING = "until ping -c 1 -W 1 {0} >/dev/null 2>&1; do usleep 200000; done; echo peer={0} answered; "
RECEIVER = (PING.format("10.0.0.2") + PING.format("10.0.0.3") +
            "nc -l -p 5001 > /tmp/b; echo got-b=$(md5sum < /tmp/b) $(wc -c < /tmp/b); "
            "nc -l -p 5002 > /tmp/q; echo got-q=$(md5sum < /tmp/q) $(wc -c < /tmp/q)")
SENDER = ("dd if=/dev/urandom of=/tmp/data bs=1024 count=%d 2>/dev/null; "
          "echo sent=$(md5sum < /tmp/data) $(wc -c < /tmp/data); " % KIB + PING.format("10.0.0.1") +
          "until nc 10.0.0.1 {0} < /tmp/data; do usleep 300000; done; echo sender=done")


def cmdline(ip, script):
    return 'console=ttyS0 panic=-1 webhyve.ip=%s/24 whrun="%s"' % (ip, script)


def said(console, line):
    """`line` printed at the start of a console line (the kernel's echo of whrun= holds the same words)."""
    return re.search(rb"\n" + re.escape(line.encode()), console) is not None


def field(console, name):
    """The value after `name=` on the console (an MD5 and a size), or None."""
    found = re.search(rb"\r?\n" + name.encode() + rb"=([0-9a-f]{32}) +- +(\d+)", console)
    return found and (found.group(1).decode(), int(found.group(2)))


class QemuGuest:
    """The same kernel and initramfs under QEMU (TCG), its serial console collected on a thread."""

    def __init__(self, vmlinuz, initrd, append, port):
        args = [QEMU, "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot", "-kernel", str(vmlinuz),
                "-initrd", str(initrd), "-append", append,
                "-netdev", "socket,id=n,connect=127.0.0.1:%d" % port,
                "-device", "virtio-net-pci,netdev=n,mac=52:54:00:12:34:56"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.output = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.output += chunk

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self.reader.join(30)
        return bytes(self.output)


@pytest.fixture(scope="module")
def network():
    if shutil.which(QEMU) is None:
        pytest.skip("%s not installed: `make deps` installs qemu-system-x86" % QEMU)
    kernel, initrd = linux_images("vmlinux")
    hv = Hypervisor(host_mem_mb=1024)
    a = hv.create_vm("net-a", mem_mb=256, slots=["3,virtio-net,switch0,listen=127.0.0.1:0"])
    b = hv.create_vm("net-b", mem_mb=256, slots=["3,virtio-net,switch0"])
    endpoint = a.pci.functions[3, 0].endpoints[0]
    port = endpoint.address[1]
    qemu = None
    try:
        for vm, ip, script in ((a, "10.0.0.1", RECEIVER), (b, "10.0.0.2", SENDER.format(5001))):
            vm.load(kernel.read_bytes(), "vmlinux", cmdline=cmdline(ip, script), initrd=initrd.read_bytes())
            vm.start()
        qemu = QemuGuest(linux_images()[0], initrd, cmdline("10.0.0.3", SENDER.format(5002)), port)
        state = a.wait(states=("suspended",), timeout=HANG)
        switch = host_switch(hv, "switch0").describe()
        switch["socket links"] = [dict(link.port.counts) for link in endpoint.links]   # QEMU may have gone
        consoles = {"a": a.console.contents(), "b": b.console.contents()}
    finally:
        consoles_q = qemu.stop() if qemu is not None else b""
        for vm in (a, b):
            vm.destroy()
    consoles["q"] = consoles_q
    assert state == "suspended", ("A still %s after %d s" % (state, HANG), consoles["a"][-2000:],
                                  consoles["b"][-1500:], consoles["q"][-1500:])
    return consoles, switch


def test_two_webhyve_guests_ping_each_other_and_pass_a_tcp_stream(network):
    consoles, switch = network
    a, b = consoles["a"], consoles["b"]
    assert b"webhyve-init: eth0 10.0.0.1/24 00:a0:98:" in a, a[-2000:]
    assert said(a, "peer=10.0.0.2 answered") and said(b, "peer=10.0.0.1 answered"), (a[-1500:], b[-1500:])
    sent, got = field(b, "sent"), field(a, "got-b")
    assert sent is not None and sent == got and sent[1] == KIB * 1024, (sent, got, a[-1500:], b[-1500:])
    assert a.index(b"got-b=") < a.index(INIT_DONE)
    ports = {p["name"]: p for p in switch["ports"]}
    assert ports["net-a:00:03.0"]["tx_bytes"] > KIB * 1024 > 0 and ports["net-b:00:03.0"]["rx_bytes"] > KIB * 1024
    for bad in (b"Kernel panic", b"virtio_net: probe of", b"NETDEV WATCHDOG"):
        assert bad not in a and bad not in b, bad


def test_a_webhyve_guest_and_a_qemu_guest_reach_each_other(network):
    consoles, switch = network
    a, q = consoles["a"], consoles["q"]
    assert said(a, "peer=10.0.0.3 answered") and said(q, "peer=10.0.0.1 answered"), (a[-1500:], q[-1500:])
    sent, got = field(q, "sent"), field(a, "got-q")
    assert sent is not None and sent == got, (sent, got, a[-1500:], q[-1500:])
    links = switch["socket links"]
    assert len(links) == 1 and links[0]["rx_bytes"] > KIB * 1024 and links[0]["tx_packets"] > 0, switch
