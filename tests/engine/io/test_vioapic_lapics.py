"""The I/O APIC's messages reaching the vCPUs' local APICs: physical and logical destinations to several vCPUs,
lowest priority, TMR set for level-triggered vectors, the local APIC's EOI broadcast back to the I/O APIC, NMI,
INIT and ExtINT messages, the ISA wiring (8254 on pin 2, the UARTs on 4 and 3, the 8259's output on pin 0), and
the I/O APIC's state in snapshots and at reset. VMs here are loaded, never started: the tests play the guest's
part on its registers, the way tests/engine/hostile/test_hostile_vlapic.py does."""
import numpy as np
import pytest

from engine.io import vioapic as IO
from engine.io.lapic import access, apicv, deliver, regs as L
from tests.engine.conftest import assemble
from tests.engine.io.test_vioapic import entry, program


def parked(hv, tmp_path, cpus, flat=True, profile="haswell"):
    """A loaded, never started VM whose local APICs are software-enabled with logical IDs set: flat (a bit per
    vCPU) or cluster (cluster 0 and 1, two vCPUs each)."""
    vm = hv.create_vm("ioapic%d" % len(hv.vms), mem_mb=16, cpus=cpus, profile=profile)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    for i, v in enumerate(vm.vcpus):
        v.lapic.regs[L.SVR >> 2] = 0x1FF
        v.lapic.regs[L.DFR >> 2] = 0xFFFFFFFF if flat else 0x0FFFFFFF
        v.lapic.regs[L.LDR >> 2] = (1 << i) << 24 if flat else ((i // 2) << 4 | 1 << (i % 2)) << 24
    return vm


def requested(vm):
    """Per vCPU, the vectors in its IRR once posted requests are moved there (vmx_inject_pir); cleared after."""
    out = []
    for v in vm.vcpus:
        apicv.pir_to_irr(v.ctx)
        out.append(v.lapic.vector_set(L.IRR))
        v.lapic.regs[(L.IRR >> 2):(L.IRR >> 2) + 32] = 0
    return out


@pytest.mark.parametrize("profile", ["cascadelake", "haswell"])
def test_physical_logical_broadcast_and_lowest_priority(hv, tmp_path, profile):
    """Physical destination = an APIC ID; logical flat = a bit per vCPU, cluster = cluster and bits; 0xFF = all;
    lowest priority reaches one of the matches (the first, as bhyve picks). Through the PIR descriptor (the
    cascadelake profile's virtual-interrupt delivery) or straight into the IRR (haswell, no APICv)."""
    vm = parked(hv, tmp_path, 4, profile=profile)
    chip = vm.ioapic
    program(chip, 2, 0x30, 2 << 24)                                  # physical, APIC ID 2
    vm.isa_pulse(0)
    assert requested(vm) == [[], [], [0x30], []]
    program(chip, 2, IO.DESTMODE_LOGICAL | 0x31, 0x05 << 24)         # logical flat: vCPUs 0 and 2
    vm.isa_pulse(0)
    assert requested(vm) == [[0x31], [], [0x31], []]
    program(chip, 2, 0x32, 0xFF << 24)                               # physical broadcast
    vm.isa_pulse(0)
    assert requested(vm) == [[0x32]] * 4
    program(chip, 2, IO.LOWEST_PRIORITY << 8 | IO.DESTMODE_LOGICAL | 0x33, 0x0C << 24)
    vm.isa_pulse(0)
    assert requested(vm) == [[], [], [0x33], []]
    program(chip, 2, 0x34, 9 << 24)                                  # no such APIC: nobody
    vm.isa_pulse(0)
    assert requested(vm) == [[]] * 4
    vm.vcpus[3].lapic.regs[L.SVR >> 2] = 0xFF                        # software-disabled: drops it
    program(chip, 2, 0x35, 0xFF << 24)
    vm.isa_pulse(0)
    assert requested(vm) == [[0x35]] * 3 + [[]]


def test_logical_cluster_destinations(hv, tmp_path):
    """DFR cluster model: bits 7:4 of the destination pick the cluster, bits 3:0 the vCPUs in it."""
    vm = parked(hv, tmp_path, 4, flat=False)
    program(vm.ioapic, 4, IO.DESTMODE_LOGICAL | 0x40, 0x13 << 24)    # cluster 1, both members: vCPUs 2 and 3
    vm.isa_irq(4, True)
    assert requested(vm) == [[], [], [0x40], [0x40]]


def eoi(v):
    """The guest's EOI write to its local APIC page (the write hook, then the store)."""
    access.mmio_write(v.ctx, L.EOI, 4, 0)


def take(v, vector):
    """The vCPU takes `vector` from its IRR (vlapic_intr_accepted)."""
    apicv.pir_to_irr(v.ctx)
    assert vector in v.lapic.vector_set(L.IRR)
    deliver.accept(v.ctx, vector)


def test_level_interrupt_sets_tmr_and_its_eoi_reaches_the_ioapic(hv, tmp_path):
    """A level-triggered message sets the vector's TMR bit (SDM 10.8.4) and remote IRR; the local APIC's EOI for it
    is broadcast to the I/O APIC, which clears remote IRR and, the pin still asserted, delivers it again. An
    edge-triggered message for the vector clears the TMR bit, and its EOI does not reach the I/O APIC."""
    vm = parked(hv, tmp_path, 2)
    v = vm.vcpus[1]
    program(vm.ioapic, 9, IO.TRIGGER_LEVEL | IO.POLARITY_LOW | 0x50, 1 << 24)
    vm.isa_irq(9, True)
    assert v.lapic.vector_set(L.TMR) == [0x50] and entry(vm.ioapic, 9) & IO.REMOTE_IRR
    take(v, 0x50)
    eoi(v)                                                       # still asserted: delivered again
    assert entry(vm.ioapic, 9) & IO.REMOTE_IRR and vm.ioapic.delivered[9] == 2
    take(v, 0x50)
    vm.isa_irq(9, False)
    eoi(v)
    assert not entry(vm.ioapic, 9) & IO.REMOTE_IRR and vm.ioapic.delivered[9] == 2
    assert requested(vm) == [[], []]
    deliver.intr_edge(v.ctx, 0x50)                         # the same vector edge-triggered (an IPI's)
    assert v.lapic.vector_set(L.TMR) == []
    take(v, 0x50)
    vm.isa_irq(9, True)                                          # the I/O APIC's next one is level again
    assert v.lapic.vector_set(L.TMR) == [0x50]


def test_a_remote_irr_waits_for_its_own_vcpus_eoi(hv, tmp_path):
    """Two level pins on two vCPUs: each remote IRR is cleared only by an EOI of its vector, from any local APIC
    (the broadcast carries the vector, not the sender)."""
    vm = parked(hv, tmp_path, 2)
    program(vm.ioapic, 10, IO.TRIGGER_LEVEL | 0x60, 0 << 24)
    program(vm.ioapic, 11, IO.TRIGGER_LEVEL | 0x61, 1 << 24)
    vm.isa_irq(10, True)
    vm.isa_irq(11, True)
    vm.isa_irq(10, False)
    vm.isa_irq(11, False)
    take(vm.vcpus[1], 0x61)
    eoi(vm.vcpus[1])
    assert entry(vm.ioapic, 10) & IO.REMOTE_IRR and not entry(vm.ioapic, 11) & IO.REMOTE_IRR
    take(vm.vcpus[0], 0x60)
    eoi(vm.vcpus[0])
    assert not entry(vm.ioapic, 10) & IO.REMOTE_IRR


def test_nmi_init_and_extint_messages(hv, tmp_path):
    """NMI and INIT reach the addressed vCPUs as their ICR's would (a request on their mailbox); ExtINT asks the
    vCPU for an INTA cycle on the 8259, whatever its LINT0 says, and the 8259's INT output pulses pin 0."""
    vm = parked(hv, tmp_path, 3)
    program(vm.ioapic, 1, IO.NMI << 8, 0x06 << 24 | 0)               # physical 6: nobody
    program(vm.ioapic, 1, IO.DESTMODE_LOGICAL | IO.NMI << 8, 0x06 << 24)
    vm.isa_pulse(1)
    program(vm.ioapic, 1, IO.INIT << 8, 0 << 24)
    vm.isa_pulse(1)
    mail = [list(v.mailbox.queue) for v in vm.vcpus]
    assert mail == [[("init",)], [("nmi",)], [("nmi",)]]
    program(vm.ioapic, 0, IO.EXTINT << 8, 2 << 24)
    v = vm.vcpus[2]
    assert v.lapic.regs[L.LVT_LINT0 >> 2] & L.LVT_MASKED
    assert not deliver.extint_pending(v.ctx, v.lapic.regs)
    for port, value in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)):
        vm.pic.port_write(port >> 7, port & 1, value)               # ICW1-4, only IRQ 0 unmasked
    vm.isa_pulse(0)                                                  # the 8254's tick: 8259 IRQ 0 rises
    assert vm.ioapic.delivered[0] == 1 and deliver.extint_pending(v.ctx, v.lapic.regs)
    assert vm.pic.acknowledge() == 0x20


def test_isa_wiring(hv, tmp_path):
    """IRQ 0 (the 8254) reaches I/O APIC pin 2 and the 8259's IRQ 0; COM1 pin 4 and IRQ 4, COM2 pin 3 and IRQ 3; the
    ACPI SCI's IRQ 9 pin 9 and the slave's IRQ 1; the 8259's output (its IMR is 0 at power-on) pulses pin 0."""
    vm = parked(hv, tmp_path, 1)
    for pin in range(24):
        program(vm.ioapic, pin, IO.TRIGGER_LEVEL | (0x80 + pin))
    vm.isa_irq(0, True)
    vm.com1.write(4, 0x08)
    vm.com1.write(1, 0x02)
    vm.com2.write(4, 0x08)
    vm.com2.write(1, 0x02)
    vm.isa_irq(9, True)
    assert vm.ioapic.lines == 1 << 2 | 1 << 4 | 1 << 3 | 1 << 9
    assert requested(vm) == [[0x80, 0x82, 0x83, 0x84, 0x89]]
    assert vm.pic.master.irr == 1 << 0 | 1 << 4 | 1 << 3 | 1 << 2 and vm.pic.slave.irr == 1 << 1


def test_snapshot_keeps_the_ioapic_and_reset_powers_it_on(hv, tmp_path):
    """The redirection table, ID, IOREGSEL and pin levels go into a snapshot and come back in the restored VM; a
    reset returns them to power-on (every entry masked, ID 0)."""
    vm = hv.create_vm("snap", mem_mb=16)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    vm.start()
    vm.wait(states=("suspended",), timeout=30)
    program(vm.ioapic, 5, IO.TRIGGER_LEVEL | 0x45, 0x0F << 24)
    vm.ioapic.write_register(IO.REG_ID, 0x03000000)
    vm.ioapic.set_pin(7, True)
    vm.ioapic.mmio_write(IO.IOREGSEL, 4, 0x1B)
    saved = vm.ioapic.state()
    vm.snapshot(tmp_path / "s.snap")
    copy = hv.restore_vm(tmp_path / "s.snap", name="copy", start=False)
    assert copy.ioapic.state() == saved and copy.ioapic.mmio_read(IO.IOWIN, 4) == 0x0F000000
    vm.reset()
    assert vm.ioapic.state() == {"id": 0, "ioregsel": 0, "entries": [IO.MASKED] * 24, "lines": 0}
    assert vm.ioapic.read_register(IO.REG_VER) == 0x00170011
    np.testing.assert_array_equal(vm.vcpus[0].lapic.regs[L.TMR >> 2:(L.TMR >> 2) + 32], 0)
