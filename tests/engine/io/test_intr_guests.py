"""The interrupt-driven bundled guests end to end: `timer` counts LAPIC timer ticks, `smp` starts every AP."""
import re

import pytest

from engine import stats
from tests.engine.conftest import guest


def test_timer_guest_counts_ticks_each_second(boot_guest):
    """100 Hz for 2 s: a line per second with at least that second's ticks, then the total; the VM halts."""
    vm, text = boot_guest("timer.elf", cmdline="hz=100 seconds=2", timeout=60)
    assert "periodic LAPIC timer at 100 Hz" in text
    seconds = [(int(s), int(t)) for s, t in re.findall(r"second (\d+): (\d+) ticks", text)]
    assert [s for s, _ in seconds] == [1, 2]
    assert all(t >= 100 * s for s, t in seconds)
    total = int(re.search(r"done, (\d+) ticks", text).group(1))
    assert total >= 200
    assert vm.suspend_reason == "halt"
    v = vm.vcpus[0]
    assert v.counters[stats.VLAPIC_INTR_TIMER] >= total
    assert v.counters[stats.VMEXIT_HLT] >= 100                  # it waited in HLT between ticks


@pytest.mark.parametrize("cpus", [2, 4])
def test_smp_guest_starts_every_ap_and_counts_under_a_lock(hv, cpus):
    """INIT-SIPI-SIPI per AP: each prints its APIC ID; the shared counter is exact (the bus lock holds)."""
    vm = hv.create_vm("smp%d" % cpus, mem_mb=32, cpus=cpus)
    vm.load(guest("smp.elf"), "smp.elf", cmdline="cpus=%d work=30000" % cpus)
    vm.start()
    assert vm.wait(states=("suspended",), timeout=300) == "suspended"     # a deadline for a hang, not speed
    text = vm.console.contents().decode()
    assert [int(n) for n in re.findall(r"AP (\d+) up", text)] == list(range(1, cpus))
    assert "smp: counter %d ok" % (30000 * cpus) in text, text
    assert vm.suspend_reason == "halt"
    assert vm.vcpus[0].counters[stats.VLAPIC_IPI_SEND] == 3 * (cpus - 1)      # INIT, SIPI, SIPI each
    assert all(v.counters[stats.VLAPIC_IPI_RECV] == 3 for v in vm.vcpus[1:])


def test_spinning_vcpus_on_a_shared_host_cpu_give_it_up_at_pause(hv):
    """4 vCPUs on 2 host CPUs: a waiter's PAUSE exits (40) while the host CPU is shared, so the lock holder
    gets the CPU instead of the waiter spinning out its timeslice."""
    vm = hv.create_vm("smp4p", mem_mb=32, cpus=4)
    vm.load(guest("smp.elf"), "smp.elf", cmdline="cpus=4 work=5000")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=300) == "suspended"
    assert "smp: counter %d ok" % (5000 * 4) in vm.console.contents().decode()
    assert sum(int(v.counters[stats.VMEXIT_PAUSE]) for v in vm.vcpus) > 0
    assert any(entry["name"] == "PAUSE" for v in vm.vcpus for entry in v.exit_log())
