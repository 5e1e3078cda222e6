"""Fixtures for engine tests: a modeled host, tiny guests assembled from source, the bundled guests."""
import os
import subprocess

import pytest

from engine import Hypervisor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUESTS = os.path.join(ROOT, "guests", "build")
FLAT_BASE = 0x200000


@pytest.fixture
def hv():
    return Hypervisor(host_mem_mb=512)


def assemble(src, tmp_path, bits=64, base=FLAT_BASE):
    """GNU as (Intel syntax) → a flat binary linked at `base`."""
    s, o, b = tmp_path / "g.s", tmp_path / "g.o", tmp_path / "g.bin"
    s.write_text(".intel_syntax noprefix\n.code%d\n%s\n" % (bits, src))
    subprocess.check_call(["as", "--64", "-o", str(o), str(s)])
    subprocess.check_call(["ld", "-Ttext=%#x" % base, "--oformat=binary", "-e", "0", "-o", str(b), str(o)])
    return b.read_bytes()


@pytest.fixture
def flat64(hv, tmp_path):
    """Boot a flat 64-bit guest from assembly source; returns the VM after it stops."""
    def boot(src, mem_mb=64, timeout=30, name="flat"):
        vm = hv.create_vm(name, mem_mb=mem_mb)
        vm.load(assemble(src, tmp_path), "guest.bin", kind="flat64")
        vm.start()
        vm.wait(states=("suspended",), timeout=timeout)
        return vm
    return boot


def guest(name):
    path = os.path.join(GUESTS, name)
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture
def boot_guest(hv):
    """Boot a bundled guest, optionally typing input once it is up; returns (vm, console text)."""
    def boot(name, cmdline="", typed=b"", ready=b"", mem_mb=64, timeout=30):
        vm = hv.create_vm(name.split(".")[0], mem_mb=mem_mb)
        vm.load(guest(name), name, cmdline=cmdline)
        vm.start()
        if typed:
            wait_for(vm, ready, timeout)
            vm.console.send_input(typed)
        vm.wait(states=("suspended",), timeout=timeout)
        return vm, vm.console.contents().decode(errors="replace")
    return boot


def wait_for(vm, text, timeout=30, reader=None):
    """Wait until the console shows `text` (read through `reader` if given: only what it has not seen)."""
    import time
    reader = reader or vm.console.reader()
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, "timed out waiting for %r; console: %r" % (text, seen[-300:])
        seen += reader.read(0.1)
    return seen
