"""The `ioapic` guest: the 8259 masked, the 8254's ticks taken through I/O APIC pin 2 on 1 and 2 vCPUs, edge and
level-triggered, to physical and logical destinations, and none while the pin is masked."""
import pytest

from engine import stats
from tests.engine.conftest import guest

TICKS = 50


@pytest.mark.parametrize("cpus", [1, 2])
def test_pit_ticks_through_pin_2(hv, cpus):
    """Every phase's line as the guest printed it: no tick on a CPU the entry does not address, the level-triggered
    handler saw its TMR bit and the entry's remote IRR before its EOI and the EOI cleared it, each logical tick
    reached both CPUs, none came while masked, none through the 8259; the I/O APIC's counts agree."""
    vm = hv.create_vm("ioapic", mem_mb=32, cpus=cpus)
    vm.load(guest("ioapic.elf"), "ioapic.elf", cmdline="cpus=%d ticks=%d" % (cpus, TICKS))
    vm.start()
    state = vm.wait(states=("suspended",), timeout=120)                   # a deadline for a hang, not speed
    text = vm.console.contents().decode()
    assert state == "suspended", "hung (a lost tick?) after:\n" + text
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert "ioapic: version 170011" in text and text.rstrip().endswith("ioapic: ok"), text
    expected = ["ticks on cpu1 while routed to cpu0 0", "level ticks without their EOI seen 0",
                "remote IRR after the last EOI 0", "ticks while masked 0", "8259 interrupts 0"]
    if cpus == 2:
        expected += ["ticks on cpu0 while routed to cpu1 0", "logical ticks, cpu1 minus cpu0 0"]
    for line in expected:
        assert "ioapic: " + line + "\r\n" in text, (line, text)
    pin = vm.ioapic.table()[2]
    assert pin["masked"] and not pin["remote_irr"] and pin["delivered"] >= (3 if cpus == 2 else 2) * TICKS
    assert vm.vcpus[0].counters[stats.VCPU_EXTINT_COUNT] == 0
