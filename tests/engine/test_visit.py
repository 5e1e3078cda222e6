"""Visits (vcpu.visit): another thread's read done by the vCPU's own thread, the guest undisturbed and uncounted."""
import time

import pytest

from engine import stats as S
from tests.engine.conftest import FLAT_BASE, assemble

LOOP = """
    xor eax, eax
1:  inc rax
    jmp 1b
"""


def counts_past(vm, value):
    """True once a visit sees RAX above `value`; False if it never does (20 s: for a hang, not a speed claim)."""
    deadline = time.monotonic() + 20
    while vm.registers()["rax"] <= value:
        if time.monotonic() > deadline:
            return False
    return True


@pytest.fixture
def counting(hv, tmp_path):
    """A flat 64-bit guest counting in RAX forever, seen counting by a first visit."""
    vm = hv.create_vm("counting", mem_mb=8)
    vm.load(assemble(LOOP, tmp_path), "loop.bin", kind="flat64")
    vm.start()
    assert counts_past(vm, 0), "the guest never started counting"
    yield vm
    vm.poweroff()


def test_a_running_vcpu_answers_visits_without_a_vm_exit(counting):
    """200 visits to a vCPU spinning in the guest: each sees it in its loop, RAX never going back and moving on
    (two visits may fall between the same two instructions), the vCPU stays running, and not one VM exit,
    external interrupt or AST is counted for them."""
    vcpu = counting.vcpus[0]
    before = list(vcpu.counters)
    seen = [vcpu.registers() for _ in range(200)]
    assert all(FLAT_BASE <= r["rip"] < FLAT_BASE + 16 for r in seen)
    assert all(a["rax"] <= b["rax"] for a, b in zip(seen, seen[1:])) and seen[0]["rax"] < seen[-1]["rax"]
    assert vcpu.state == "running"
    after = list(vcpu.counters)
    for ident in ("VMEXIT_COUNT", "VMEXIT_EXTINT", "VMEXIT_ASTPENDING", "VMEXIT_USERSPACE"):
        assert after[S.SLOTS[ident]] == before[S.SLOTS[ident]], ident


def test_a_visit_that_fails_raises_here_and_the_vcpu_goes_on(counting):
    vcpu = counting.vcpus[0]
    with pytest.raises(ZeroDivisionError):
        vcpu.visit(lambda v: 1 // 0)
    assert counts_past(counting, vcpu.registers()["rax"]) and vcpu.state == "running"


def test_a_visit_to_a_vcpu_whose_thread_ended_runs_here(counting):
    """After power-off nothing else uses the Unicorn instance: the visit runs on the caller's thread."""
    vcpu = counting.vcpus[0]
    counting.poweroff()
    assert not vcpu.thread.is_alive()
    assert vcpu.registers()["rax"] > 0
