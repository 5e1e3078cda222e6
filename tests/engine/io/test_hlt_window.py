"""HLT in STI's shadow with an interrupt already waiting: the interrupt window opens at the HLT, as on the CPU."""
from engine import stats
from tests.engine.io.test_vlapic_guest import COUNTER, MAP_APIC, run
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64


def test_interrupt_pending_at_sti_hlt_is_taken_after_the_hlt(hv, tmp_path):
    """A self-IPI sent with IF=0 waits (interrupt-window exiting armed); `sti; hlt; cli` then takes it with the
    HLT's return address — not stepped past into the `cli`, where it would wait again at every HLT (an idle loop
    of `sti; hlt; cli` spun in HLT exits and never took it: the `ipi` guest hung so)."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x40, "handler") + """
    lea r11, [rip + after_hlt]
    cli
    mov dword ptr [r15 + 0x300], 0x40040    # ICR: fixed, vector 0x40, self; pending while IF=0
    sti
    hlt
after_hlt:
    cli
    mov r10, [rip + count]
    hlt
handler:
    inc qword ptr [rip + count]
    mov r8, [rsp]                           # where the interrupt returns to
    mov dword ptr [r15 + 0xB0], 0           # EOI
    iretq
""" + LONG_DATA + COUNTER
    vm = run(hv, tmp_path, src)
    assert vm.suspend_reason == "halt", vm.suspend_message
    r = vm.registers()
    assert r["r10"] == 1 and r["r8"] == r["r11"]
    v = vm.vcpus[0]
    assert v.counters[stats.VMEXIT_INTR_WINDOW] == 1 and v.counters[stats.VMEXIT_HLT] == 2
