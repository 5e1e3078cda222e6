"""A halted vCPU stays halted across pause/resume, snapshot/restore and debugger stops: only an interrupt
ends its HLT."""
import time

from engine import Hypervisor, snapshot

from tests.engine.conftest import assemble
from tests.engine.io.test_vlapic_guest import MAP_APIC
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64

COUNTS = 0x300000                  # [0] wake-ups past the HLT, [8] interrupts taken
GUEST = LONG_PROLOGUE + MAP_APIC + gate64(0x40, "irq") + """
    mov rbx, 0x300000
1:  sti
    hlt
    inc qword ptr [rbx]
    jmp 1b
irq:
    inc qword ptr [rbx + 8]
    mov dword ptr [r15 + 0xB0], 0
    iretq
""" + LONG_DATA


def counts(vm):
    data = vm.memory_access.read(COUNTS, 16)
    return int.from_bytes(data[:8], "little"), int.from_bytes(data[8:], "little")


def halted_guest(hv, tmp_path):
    vm = hv.create_vm("halter", mem_mb=16)
    vm.load(assemble(GUEST, tmp_path), "g.bin", kind="flat64")
    vm.start()
    assert vm.wait(states=("halted",), timeout=30) == "halted", vm.state
    return vm


def interrupt_and_wait(vm, taken):
    """Raise vector 0x40 and wait until the guest took it and halted again."""
    vm.lapic_intr(0, 0x40)
    deadline = time.monotonic() + 30
    while counts(vm)[1] < taken:
        assert time.monotonic() < deadline, counts(vm)
        time.sleep(0.001)
    assert vm.wait(states=("halted",), timeout=30) == "halted"


def test_pause_and_resume_do_not_end_a_hlt(hv, tmp_path):
    vm = halted_guest(hv, tmp_path)
    for _ in range(20):
        vm.pause()
        assert vm.state == "paused"
        vm.resume()
        assert vm.state == "halted"
    assert counts(vm) == (0, 0)                        # no wake-up without an interrupt
    interrupt_and_wait(vm, 1)
    assert counts(vm) == (1, 1)


def test_an_interrupt_raised_while_paused_ends_the_hlt_at_resume(hv, tmp_path):
    vm = halted_guest(hv, tmp_path)
    vm.pause()
    vm.lapic_intr(0, 0x40)
    vm.resume()
    deadline = time.monotonic() + 30
    while counts(vm) != (1, 1):
        assert time.monotonic() < deadline, counts(vm)
        time.sleep(0.001)


def test_debugger_stops_do_not_end_a_hlt(hv, tmp_path):
    vm = halted_guest(hv, tmp_path)
    vm.gdb_listen(0)                                   # the debugger, as gdb's stub uses it
    debugger = vm.debugger
    for _ in range(20):
        debugger.stop_all()
        debugger.resume()
        assert vm.wait(states=("halted",), timeout=30) == "halted"
    assert counts(vm) == (0, 0)
    interrupt_and_wait(vm, 1)
    assert counts(vm) == (1, 1)


def test_snapshot_and_restore_do_not_end_a_hlt(hv, tmp_path):
    vm = halted_guest(hv, tmp_path)
    vm.pause()
    path = tmp_path / "halted.snap"
    vm.snapshot(str(path))
    again = snapshot.restore(Hypervisor(host_mem_mb=512), str(path))
    assert again.wait(states=("halted",), timeout=30) == "halted", again.state
    assert counts(again) == (0, 0)
    interrupt_and_wait(again, 1)
    assert counts(again) == (1, 1)
