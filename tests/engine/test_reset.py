"""VM reset: fresh vCPUs, memory released, devices at power-on, the image booted again; history kept."""
import pytest

from engine import stats as S
from engine.errors import StateError
from tests.engine.conftest import assemble, guest, wait_for


def test_reset_reboots_the_shell_and_keeps_the_console_history(hv):
    vm = hv.create_vm("shell", mem_mb=32)
    vm.load(guest("shell.elf"), "shell.elf")
    vm.start()
    wait_for(vm, b"webhyve> ")
    vm.console.send_input(b"help\r")
    wait_for(vm, b"cpuid")
    old_vcpu = vm.vcpus[0]
    resident_before = vm.pmap.stats()["resident_pages"]
    after = vm.console.reader(from_start=False)
    vm.reset()
    assert vm.vcpus[0] is not old_vcpu and vm.vcpus[0].uc is not old_vcpu.uc
    booted = wait_for(vm, b"webhyve shell ready", reader=after)       # only the rebooted guest prints it
    while b"webhyve> " not in booted.split(b"webhyve shell ready")[1]:
        booted += wait_for(vm, b"> ", reader=after)                       # the prompt may come in pieces
    assert booted.count(b"webhyve shell ready") == 1
    assert vm.console.contents().count(b"webhyve shell ready") == 2
    assert vm.state in ("running", "halted") and vm.suspend_reason is None
    assert vm.vcpus[0].counters[S.VMEXIT_COUNT] > 0 and "reset" in vm.events
    assert vm.pmap.stats()["resident_pages"] <= resident_before
    vm.console.send_input(b"help\r")
    assert b"cpuid" in wait_for(vm, b"cpuid", reader=after)
    vm.poweroff()


def test_reset_brings_back_a_triple_faulted_guest_with_clean_memory(hv, tmp_path):
    vm = hv.create_vm("crash", mem_mb=16)
    vm.load(assemble("""
        mov rax, [0x500000]
        inc rax
        mov [0x500000], rax
        mov r9, rax
        ud2
    """, tmp_path), "g.bin", kind="flat64")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=20) == "suspended" and vm.suspend_reason == "triplefault"
    assert vm.registers()["r9"] == 1
    vm.reset()
    assert vm.wait(states=("suspended",), timeout=20) == "suspended" and vm.suspend_reason == "triplefault"
    assert vm.registers()["r9"] == 1                 # memory came back zero: the counter starts over


def test_reset_without_an_image_is_refused(hv):
    vm = hv.create_vm("empty", mem_mb=4)
    with pytest.raises(StateError, match="no image"):
        vm.reset()


def test_start_after_poweroff_boots_afresh_with_a_marker_line(hv):
    """Power off, then Start: a cold boot, as Proxmox's start after stop; the console shows where it began."""
    vm = hv.create_vm("again", mem_mb=32)
    vm.load(guest("shell.elf"), "shell.elf")
    vm.start()
    wait_for(vm, b"webhyve> ")
    with pytest.raises(StateError, match="already started"):
        vm.start()
    vm.poweroff()
    assert vm.state == "suspended" and vm.suspend_reason == "poweroff"
    after = vm.console.reader(from_start=False)
    vm.start()
    booted = wait_for(vm, b"webhyve> ", reader=after)
    marker = booted.index(b"-- webhyve: start after powered off at ")
    assert booted.startswith(b"\r\n\x1b[7m") and marker < booted.index(b"webhyve shell ready")
    assert vm.state in ("running", "halted") and vm.suspend_reason is None
    vm.console.send_input(b"help\r")
    wait_for(vm, b"cpuid", reader=after)
    after = vm.console.reader(from_start=False)
    vm.reset()
    assert b"-- webhyve: reset at " in wait_for(vm, b"webhyve shell ready", reader=after)
    vm.poweroff()
