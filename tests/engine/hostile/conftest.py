"""Fixtures for the hostile-value tests: guests that do what a hostile guest does, and the checks on them.

These tests run only with numba's bounds checking on (NUMBA_BOUNDSCHECK=1), in the subprocess that
tests/engine/test_hostile_values.py starts; in the normal suite they are skipped.
"""
import os

import numpy as np
import pytest

from engine import Hypervisor
from tests.engine.conftest import assemble
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64

MEM_MB = 16
END = MEM_MB << 20                  # the first guest-physical address past guest memory
# Linear END (right after the last guest page) mapped to guest-physical 0 with a 2 MiB page (PDE 8 of the
# flat64 identity map): an instruction or an access that crosses the end of guest memory goes on there.
MAP_PAST_END = """
    mov rax, cr3
    and rax, -4096
    mov rbx, [rax]
    and rbx, -4096
    mov rbx, [rbx]
    and rbx, -4096
    mov qword ptr [rbx + 8 * 8], 0x87
    invlpg [{end}]
""".format(end=END)
# Exceptions the guests take: each handler appends (vector, error code, faulting RIP) to the fault log
# (r15 points at its end) and resumes at r14, or halts with interrupts off when r14 is 0.
LOG = 0x300000
VECTORS = (6, 13, 14)
FAULTS = "".join(gate64(v, "fault%d" % v) for v in VECTORS)
HANDLERS = "".join("""
fault{v}:
    {error}
    mov r11, [rsp]
    mov qword ptr [r15], {v}
    mov [r15 + 8], r12
    mov [r15 + 16], r11
    add r15, 24
    test r14, r14
    jz 1f
    mov [rsp], r14
    iretq
1:  cli
    hlt
""".format(v=v, error="pop r12" if v in (13, 14) else "xor r12, r12") for v in VECTORS)


@pytest.fixture(scope="session", autouse=True)
def bounds_checked():
    if os.environ.get("NUMBA_BOUNDSCHECK") != "1":
        pytest.skip("run bounds-checked by tests/engine/test_hostile_values.py (NUMBA_BOUNDSCHECK=1)")


@pytest.fixture
def hv():
    hypervisor = Hypervisor(host_mem_mb=64)
    yield hypervisor
    for vm in list(hypervisor.vms.values()):
        vm.poweroff()


@pytest.fixture
def guest(hv, tmp_path):
    """Run a flat 64-bit guest (LONG_PROLOGUE, the fault gates, `src`, the handlers) until it halts with
    interrupts off; returns the VM."""
    count = [0]

    def run(src, timeout=30):
        count[0] += 1
        vm = hv.create_vm("hostile%d" % count[0], mem_mb=MEM_MB)
        src = "mov r15, %#x\nxor r14, r14\n" % LOG + src
        vm.load(assemble(LONG_PROLOGUE + FAULTS + src + HANDLERS + LONG_DATA, tmp_path), "g.bin", kind="flat64")
        vm.start()
        state = vm.wait(states=("suspended",), timeout=timeout)
        if state != "suspended":
            vm.poweroff()
            pytest.fail("the guest did not stop within %gs" % timeout)
        assert vm.suspend_reason == "halt", vm.suspend_message
        return vm
    return run


def faults(vm):
    """The guest's fault log: (vector, error code, RIP) of each exception it took."""
    n = (vm.registers()["r15"] - LOG) // 24
    words = np.frombuffer(vm.memory_access.read(LOG, 24 * n), "<u8")
    return [tuple(int(w) for w in words[3 * i:3 * i + 3]) for i in range(n)]


def exits(vm, reason):
    """The exit-log rows of one exit reason."""
    return [row for row in vm.vcpus[0].exit_log() if row["reason"] == reason]


def host_outside(hv, regions):
    """A copy of host memory with the given (start, size) regions zeroed: what must not change."""
    copy = hv.memory.copy()
    for start, size in regions:
        copy[start:start + size] = 0
    return copy


def assert_only_inside(hv, before, regions):
    after = host_outside(hv, regions)
    changed = np.flatnonzero(after != before)
    assert changed.size == 0, "host memory outside %s changed at %s" % (
        [(hex(a), hex(n)) for a, n in regions], [hex(int(x)) for x in changed[:8]])
