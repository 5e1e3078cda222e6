"""The `ipi` guest: vCPU 0 pings vCPU 1 with a fixed IPI, vCPU 1's handler answers with one back; each side counts."""

from engine import stats
from tests.engine.conftest import guest

ROUND_TRIPS = 300

def boot_ipi(hv, cmdline):
    vm = hv.create_vm("ipi", mem_mb=32, cpus=2)
    vm.load(guest("ipi.elf"), "ipi.elf", cmdline=cmdline)
    vm.start()
    assert vm.wait(states=("suspended",), timeout=120) == "suspended"     # a deadline for a hang, not speed
    assert vm.suspend_reason == "halt", vm.suspend_message
    return vm, vm.console.contents().decode()

def test_every_ping_gets_exactly_one_pong(hv):
    """300 round trips: each side's handler ran 300 times, and the vLAPIC stats agree — INIT, SIPI, SIPI, the
    pings and the final stop from vCPU 0; the pongs from vCPU 1. None lost, none sent twice."""
    vm, text = boot_ipi(hv, "count=%d" % ROUND_TRIPS)
    assert "ipi: done, %d round trips, AP took %d, BSP took %d ok" % ((ROUND_TRIPS,) * 3) in text, text
    bsp, ap = vm.vcpus
    assert bsp.counters[stats.VLAPIC_IPI_SEND] == 3 + ROUND_TRIPS + 1
    assert ap.counters[stats.VLAPIC_IPI_RECV] == 3 + ROUND_TRIPS + 1
    assert ap.counters[stats.VLAPIC_IPI_SEND] == ROUND_TRIPS
    assert bsp.counters[stats.VLAPIC_IPI_RECV] == ROUND_TRIPS
    assert bsp.counters[stats.VMEXIT_HLT] >= 1 and ap.counters[stats.VMEXIT_HLT] >= 1

def test_the_memory_baseline_plays_the_same_game_without_interrupts(hv):
    """flag=1: the ball goes back and forth through one word both vCPUs spin on; no IPI after INIT-SIPI-SIPI."""
    vm, text = boot_ipi(hv, "count=%d flag=1" % ROUND_TRIPS)
    assert "ponging through memory" in text
    assert "ipi: done, %d round trips, AP took %d, BSP took %d ok" % ((ROUND_TRIPS,) * 3) in text, text
    assert vm.vcpus[0].counters[stats.VLAPIC_IPI_SEND] == 3
    assert vm.vcpus[1].counters[stats.VLAPIC_IPI_SEND] == 0
