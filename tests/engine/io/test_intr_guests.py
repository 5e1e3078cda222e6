"""The interrupt-driven bundled guests end to end: `timer` counts LAPIC timer ticks, `smp` starts every AP."""
import re
import time

import pytest

from engine import Hypervisor, stats
from tests.engine.conftest import guest, wait_for


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


@pytest.mark.parametrize("wait_us", [5000, 0])
def test_fast_timer_takes_one_halt_per_tick_in_the_kernel_or_in_userspace(wait_us):
    """2 kHz for 1 s. With hw.vmm.hlt_kernel_wait_us at its default the 0.5 ms halts wait in the kernel loop
    (vmx/halt.py) and the ticks are delivered there (vmx/deliver.py); with 0 every halt and delivery goes
    through userspace. Either way every tick is taken and each HLT ends with one: no spurious wake-ups, and
    no HLT in an STI shadow left with interrupt-window exiting armed (it opens after the HLT: exit 7)."""
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.hlt_kernel_wait_us": wait_us})
    vm = hv.create_vm("timer", mem_mb=32)
    vm.load(guest("timer.elf"), "timer.elf", cmdline="hz=2000 seconds=1")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=120) == "suspended" and vm.suspend_reason == "halt"
    ticks = int(re.search(r"done, (\d+) ticks", vm.console.contents().decode()).group(1))
    v = vm.vcpus[0]
    assert ticks >= 2000 and v.counters[stats.VLAPIC_INTR_TIMER] >= ticks
    assert v.counters[stats.VMEXIT_HLT] <= ticks + 10       # (a tick that lands before the HLT needs none)


def test_a_vcpu_waiting_in_the_kernel_pauses_and_resumes(hv):
    """A 1 kHz guest spends its time in kernel-loop halts: pause still stops it (no tick is taken while
    paused) and resume lets it finish."""
    vm = hv.create_vm("timer", mem_mb=32)
    vm.load(guest("timer.elf"), "timer.elf", cmdline="hz=1000 seconds=2")
    reader = vm.console.reader()
    vm.start()
    wait_for(vm, b"second 1:", timeout=60, reader=reader)
    vm.pause()
    assert vm.state == "paused"
    v = vm.vcpus[0]
    taken = v.counters[stats.VMEXIT_HLT]
    time.sleep(0.05)
    assert v.counters[stats.VMEXIT_HLT] == taken
    vm.resume()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended" and vm.suspend_reason == "halt"
    assert "done, " in vm.console.contents().decode()


@pytest.mark.parametrize("cpus", [2, 4, 8, 16])
def test_smp_guest_starts_every_ap_and_counts_under_a_lock(hv, cpus):
    """INIT-SIPI-SIPI per AP: each prints its APIC ID; the shared counter is exact (the bus lock holds).
    The modeled host has 2 CPUs: from 4 vCPUs on, they share them in turns (the host timer's tick)."""
    vm = hv.create_vm("smp%d" % cpus, mem_mb=32, cpus=cpus)
    vm.load(guest("smp.elf"), "smp.elf", cmdline="cpus=%d work=%d" % (cpus, 60000 // cpus))
    vm.start()
    assert vm.wait(states=("suspended",), timeout=300) == "suspended"     # a deadline for a hang, not speed
    text = vm.console.contents().decode()
    assert [int(n) for n in re.findall(r"AP (\d+) up", text)] == list(range(1, cpus))
    assert "smp: counter %d ok" % (60000 // cpus * cpus) in text, text
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
