"""The usermode guest: a 64-bit kernel whose ring-3 program makes system calls, takes demand-paging faults and
provokes one exception of each kind; every one of them is handled in the kernel loop, none in Python."""
import re
import shutil
import subprocess

import pytest

from engine import Hypervisor
from engine import stats as S
from engine.core import ctx as C
from tests.engine.conftest import GUESTS, guest, stopped

# (vector, error code, CR2, where RIP was: 1 on the instruction, 2 after it) of the program's probes, in order
PROBES = [(6, 0, 0, 1),                     # ud2
          (13, 0, 0, 1),                    # cli at CPL 3, IOPL 0
          (0, 0, 0, 1),                     # div by zero
          (3, 0, 0, 2),                     # int3: a trap
          (13, 0x81 * 8 + 2, 0, 1),         # int 0x81 through a DPL-0 gate: the gate's index, IDT bit (SDM 6.13)
          (14, 5, 0x100010, 1),             # a read of the kernel's page: P|U, CR2 the byte's address
          (14, 7, 0x40000011, 1),           # a write to its own read-only code: P|W|U
          (13, 0, 0, 1),                    # a non-canonical address
          (13, 0, 0, 1)]                    # swapgs at CPL 3
HARDWARE_PROBES = 7                         # all but int3 and int 0x81 (a software interrupt whose delivery faults)


def run(hv, syscalls, rounds, pages):
    vm = hv.create_vm("usermode%d" % len(hv.vms), mem_mb=32)
    vm.load(guest("usermode.elf"), "usermode.elf", cmdline="syscalls=%d rounds=%d pages=%d" % (syscalls, rounds, pages))
    vm.start()
    stopped(vm, 180)
    assert vm.suspend_reason == "halt", vm.suspend_message
    return vm, parse(vm.console.contents().decode())


def parse(out):
    """The kernel's report: its counts, and the probes it logged."""
    found = re.search(r"usermode: calls=(\w+) sum=(\w+) checksum=(\w+) errors=(\w+) faults=(\w+) reads=(\w+) "
                      r"writes=(\w+)", out)
    assert found and "usermode: done" in out, out[-600:]
    keys = ("calls", "sum", "checksum", "errors", "faults", "reads", "writes")
    counts = {k: int(v, 16) for k, v in zip(keys, found.groups())}
    probes = [tuple(int(x, 16) for x in m) for m in re.findall(r"usermode: probe (\w+) (\w+) (\w+) (\w+)", out)]
    return counts, probes


def expected(syscalls, rounds, pages):
    total = syscalls * (syscalls + 1) // 2
    return {"calls": syscalls + rounds + 2, "sum": total, "checksum": 3 * total + syscalls, "errors": 0,
            "faults": rounds * pages, "reads": (rounds - 1) * pages, "writes": pages}


def test_system_calls_and_page_faults_never_reach_userspace(hv):
    """20,000 SYSCALLs, 8 rounds of 128 demand-paging faults and the nine probes: every count exact, every
    event delivered by the kernel (DELIVERED_USER = 0), no exception exit (the bitmap has only #MC)."""
    syscalls, rounds, pages = 20000, 8, 128
    vm, (counts, probes) = run(hv, syscalls, rounds, pages)
    assert counts == expected(syscalls, rounds, pages)
    assert probes == PROBES
    c, counters = vm.vcpus[0].ctx, vm.vcpus[0].counters
    assert int(c[C.DELIVERED_USER]) == 0
    assert int(c[C.DELIVERED_KERNEL]) == rounds * pages + len(PROBES)
    assert int(c[C.SYSCALLS]) == syscalls + rounds + 2
    assert int(c[C.SYSRETS]) == syscalls + rounds + 2          # each call that returns, and the first entry
    assert counters[S.VMEXIT_EXCEPTION] == 0


def test_exception_bitmap_makes_each_hardware_exception_an_exit():
    """hw.vmm.trace_guest_exceptions sets every bit of the exception bitmap: each hardware exception is exit 0
    (software ones, INT3 and INT n, are not, as before), still delivered in the kernel."""
    hv = Hypervisor(host_mem_mb=128, tunables={"hw.vmm.trace_guest_exceptions": 1})
    try:
        rounds, pages = 2, 16
        vm, (counts, probes) = run(hv, 100, rounds, pages)
        assert counts == expected(100, rounds, pages) and probes == PROBES
        v = vm.vcpus[0]
        assert v.counters[S.VMEXIT_EXCEPTION] == rounds * pages + HARDWARE_PROBES
        assert int(v.ctx[C.DELIVERED_USER]) == 0
    finally:
        for vm in list(hv.vms.values()):
            vm.poweroff()


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
def test_the_same_report_as_qemu(hv):
    """QEMU's TCG runs the same guest to the same report, but for one error code: QEMU gives INT n through a
    DPL-0 64-bit gate #GP(vector * 16 + 2), a byte offset, where the SDM's error code holds the gate's index."""
    args = (3000, 4, 64)
    _, ours = run(hv, *args)
    qemu = subprocess.run(["qemu-system-x86_64", "-m", "64", "-display", "none", "-serial", "stdio", "-no-reboot",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel",
                           "%s/usermode.elf" % GUESTS, "-append", "syscalls=%d rounds=%d pages=%d" % args],
                          capture_output=True, timeout=120)
    theirs = parse(qemu.stdout.decode())
    assert theirs[0] == ours[0]
    assert [p if p[:2] != (13, 0x81 * 16 + 2) else (13, 0x81 * 8 + 2) + p[2:] for p in theirs[1]] == ours[1]
