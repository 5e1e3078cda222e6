"""Fixtures for engine tests: a modeled host, tiny guests assembled from source, the bundled guests.

A guest that does not do what a fixture waits for within its timeout is powered off and the test fails
with what the console showed; no guest outlives its test (the hv fixture powers off what is left).
"""
import os
import subprocess
import time

import pytest

from engine import Hypervisor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUESTS = os.path.join(ROOT, "guests", "build")
FLAT_BASE = 0x200000


# Every engine test's VM entries from userspace pass SDM 26.3.1's guest-state checks, or the VM stops with exit 33.
CHECKED = {"hw.vmm.vmx.check_guest_state": 1}


@pytest.fixture
def hv():
    hypervisor = Hypervisor(host_mem_mb=512, tunables=CHECKED)
    yield hypervisor
    for vm in list(hypervisor.vms.values()):         # a failed test may leave a guest running: end it
        vm.poweroff()


def stopped(vm, timeout):
    """The VM once it has stopped by itself (suspended: halted for good, triple fault, ...); if it has not
    within `timeout` seconds, power it off and fail the test saying so."""
    if vm.wait(states=("suspended",), timeout=timeout) != "suspended":
        state = vm.state
        vm.poweroff()
        pytest.fail("VM %r did not stop within %gs (still %s); powered off. Console: %r"
                    % (vm.name, timeout, state, vm.console.contents()[-300:]))
    return vm


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
        return stopped(vm, timeout)
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
        stopped(vm, timeout)
        return vm, vm.console.contents().decode(errors="replace")
    return boot


def wait_for(vm, text, timeout=30, reader=None):
    """Wait until the console shows `text` (read through `reader` if given: only what it has not seen); if it
    does not within `timeout` seconds, power the VM off and fail the test."""
    reader = reader or vm.console.reader()
    seen = b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        if time.monotonic() >= deadline:
            vm.poweroff()
            pytest.fail("VM %r did not print %r within %gs; powered off. Console: %r" % (vm.name, text, timeout, seen[-300:]))
        seen += reader.read(0.1)
    return seen
