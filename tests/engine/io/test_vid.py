"""Virtual-interrupt delivery as the SDM has it (§29.1.2, 29.1.3, 29.2) on a CPU that offers it (cascadelake), and
its absence on one that does not (haswell): RVI and SVI in the guest-interrupt status, EOIs virtualized with exit
45 only for the vectors of the EOI-exit bitmap that the I/O APIC's level-triggered entries give (bhyve's
vioapic_update_tmr and vmx_set_tmr), and no interrupt-window exit for a virtual interrupt."""
import pytest

from engine import stats
from engine.core import ctx as C
from engine.core import vmcs as V
from engine.io import vioapic as IO
from engine.io.lapic import access, apicv, deliver, regs as L
from engine.vmx import exits
from tests.engine.io.test_vioapic import entry, program
from tests.engine.io.test_vioapic_lapics import parked, requested, take
from tests.engine.io.test_vlapic_guest import COUNTER, MAP_APIC
from tests.engine.conftest import assemble
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64


def status(v):
    """(RVI, SVI) from the vCPU's VMCS."""
    value = int(v.vmcs.store[V.GUEST_INTR_STATUS])
    return value & 0xFF, value >> 8


def eoi_bitmap(v):
    """The vectors of the vCPU's EOI-exit bitmap (EOI_EXIT0-3)."""
    words = [int(v.vmcs.store[V.EOI_EXIT0 + w]) for w in range(4)]
    return [vector for vector in range(256) if words[vector >> 6] >> (vector & 63) & 1]


def guest_eoi(v):
    """The guest's EOI write (the write hook, then the store); what the vCPU leaves the guest for after it."""
    v.ctx[C.LAPIC_STEP] = 0
    access.mmio_write(v.ctx, L.EOI, 4, 0)
    return int(v.ctx[C.LAPIC_STEP])


def test_the_eoi_exit_bitmap_follows_the_level_triggered_entries_and_only_they_exit(hv, tmp_path):
    """A level-triggered entry aimed at vCPU 1 puts its vector in vCPU 1's EOI-exit bitmap and TMR (at its next
    entry), not vCPU 0's. Its EOI exits (45, the vector) and reaches the I/O APIC: remote IRR clears, and the pin
    still asserted delivers again. An edge-triggered vector's EOI exits only to evaluate a waiting request, and
    an EOI with none in service is no exit and is not counted as gratuitous (bhyve never sees it)."""
    vm = parked(hv, tmp_path, 2, profile="cascadelake")
    v0, v1 = vm.vcpus
    program(vm.ioapic, 9, IO.TRIGGER_LEVEL | IO.POLARITY_LOW | 0x50, 1 << 24)
    program(vm.ioapic, 4, 0x60, 1 << 24)                          # edge-triggered: no bit
    for v in vm.vcpus:
        apicv.sync_eoi_exit(v.ctx)                                # what each vCPU's next entry does
    assert eoi_bitmap(v1) == [0x50] and v1.lapic.vector_set(L.TMR) == [0x50]
    assert eoi_bitmap(v0) == [] and v0.lapic.vector_set(L.TMR) == []

    vm.isa_irq(9, True)
    take(v1, 0x50)
    assert status(v1) == (0, 0x50)
    assert guest_eoi(v1) == apicv.EOI_VIRTUALIZED | 0x50 << 8     # exit 45 after the store
    assert entry(vm.ioapic, 9) & IO.REMOTE_IRR and vm.ioapic.delivered[9] == 2     # still asserted: again
    take(v1, 0x50)
    vm.isa_irq(9, False)
    assert guest_eoi(v1) == apicv.EOI_VIRTUALIZED | 0x50 << 8
    assert not entry(vm.ioapic, 9) & IO.REMOTE_IRR and status(v1) == (0, 0)

    deliver.intr_edge(v1.ctx, 0x60)                               # an edge vector: its EOI stays in the guest
    deliver.intr_edge(v1.ctx, 0x30)
    take(v1, 0x60)
    assert status(v1) == (0x30, 0x60)
    assert guest_eoi(v1) == apicv.EVALUATE                        # 0x30 waits: evaluated, no exit
    assert status(v1) == (0x30, 0)
    take(v1, 0x30)
    assert guest_eoi(v1) == 0 and guest_eoi(v1) == 0              # the second has nothing in service
    assert v1.counters[stats.VLAPIC_GRATUITOUS_EOI] == 0
    assert v1.lapic.vector_set(L.TMR) == [0x50]                   # the table's, whatever the messages were

    program(vm.ioapic, 9, IO.POLARITY_LOW | 0x50, 1 << 24)        # edge now: out of the bitmap
    apicv.sync_eoi_exit(v1.ctx)
    assert eoi_bitmap(v1) == [] and v1.lapic.vector_set(L.TMR) == []
    assert requested(vm) == [[], []]


def test_without_virtual_interrupt_delivery_the_bitmap_stays_clear(hv, tmp_path):
    """haswell has no APICv: the VMCS's EOI-exit bitmap and guest-interrupt status stay 0, the TMR is set as a
    level-triggered message is accepted, and that vector's EOI reaches the I/O APIC without any exit 45."""
    vm = parked(hv, tmp_path, 1, profile="haswell")
    v = vm.vcpus[0]
    program(vm.ioapic, 9, IO.TRIGGER_LEVEL | 0x50, 0)
    vm.isa_irq(9, True)
    vm.isa_irq(9, False)
    assert v.lapic.vector_set(L.TMR) == [0x50] and eoi_bitmap(v) == []
    take(v, 0x50)
    assert status(v) == (0, 0)
    assert guest_eoi(v) == 0 and not entry(vm.ioapic, 9) & IO.REMOTE_IRR


def run(hv, tmp_path, src, profile):
    vm = hv.create_vm("vid-" + profile, mem_mb=16, profile=profile)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=30) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    return vm


@pytest.mark.parametrize("profile, vid", [("cascadelake", True), ("haswell", False)])
def test_rvi_and_svi_while_a_handler_runs(hv, tmp_path, profile, vid):
    """Stopped inside 0x40's handler with 0x30 requested and held back by PPR: RVI 0x30, SVI 0x40 where the VMCS
    has virtual-interrupt delivery; 0 without it."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x40, "handler") + """
    sti
    mov dword ptr [r15 + 0x300], 0x40040    # self, 0x40
    mov rcx, 1000
1:  dec rcx
    jnz 1b
    cli
    hlt
handler:
    mov dword ptr [r15 + 0x300], 0x40030    # self, 0x30: below the class in service
    cli
    hlt
""" + LONG_DATA
    vm = run(hv, tmp_path, src, profile)
    v = vm.vcpus[0]
    assert v.lapic.vector_set(L.ISR) == [0x40] and v.lapic.vector_set(L.IRR) == [0x30]
    assert status(v) == ((0x30, 0x40) if vid else (0, 0))


@pytest.mark.parametrize("profile, vid", [("cascadelake", True), ("haswell", False)])
def test_an_eoi_with_a_request_waiting_and_the_window_after_it(hv, tmp_path, profile, vid):
    """In 0x40's handler (IF clear) the guest requests 0x30, then EOIs 0x40. Without virtual-interrupt delivery
    the EOI is an APIC-write exit (56, 0xB0) and the wait for IRETQ's IF an interrupt-window exit (7); with it,
    neither: the processor evaluates and delivers by itself. Both ways 0x30 runs once, after the IRETQ."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x40, "outer") + gate64(0x30, "inner") + """
    sti
    mov dword ptr [r15 + 0x300], 0x40040
    mov rcx, 1000
1:  dec rcx
    jnz 1b
    mov r9, [rip + count]
    cli
    hlt
outer:
    mov dword ptr [r15 + 0x300], 0x40030
    mov r8, [rip + count]                   # 0: held back while 0x40 is in service
    mov dword ptr [r15 + 0xB0], 0
    mov r10, [rip + count]                  # still 0: IF is clear until the IRETQ
    iretq
inner:
    inc qword ptr [rip + count]
    mov dword ptr [r15 + 0xB0], 0
    iretq
""" + LONG_DATA + COUNTER
    vm = run(hv, tmp_path, src, profile)
    r, v = vm.registers(), vm.vcpus[0]
    assert (r["r8"], r["r10"], r["r9"]) == (0, 0, 1)
    log = v.exit_log()
    eoi_writes = [e for e in log if e["reason"] == exits.APIC_WRITE and e["qualification"] == L.EOI]
    assert len(eoi_writes) == (0 if vid else 1)
    assert v.counters[stats.VMEXIT_INTR_WINDOW] == (0 if vid else 1)
    assert not any(e["reason"] == exits.VIRTUALIZED_EOI for e in log)     # edge vectors: no exit 45
    assert status(v) == (0, 0) and v.lapic.vector_set(L.ISR) == []
