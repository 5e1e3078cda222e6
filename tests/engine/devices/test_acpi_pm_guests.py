"""Guests that use ACPI as an OS does: they find the RSDP in the BIOS area, follow the XSDT to the FADT's PM timer
port and count the MADT's processors, power the VM off through PM1a_CNT (S5) and reset it through 0xCF9."""
import struct
import threading
import time

import pytest

from engine import Hypervisor
from engine.devices.acpi_pm import PWRBTN_EN, SCI_EN, timer_count
from engine.loaders import acpi_tables as A
from tests.engine.conftest import assemble, stopped

# Scan 0xE0000-0xFFFFF for "RSD PTR " on 16-byte boundaries (RSI: where, or 0), then through the XSDT: the
# FADT's PM_TMR_BLK port read twice around a spin (R8, R9), and the MADT's Processor Local APIC entries (R10).
FIND_TABLES = """
    mov rsi, 0xE0000
    mov rax, 0x2052545020445352     # "RSD PTR "
1:  cmp [rsi], rax
    je 2f
    add rsi, 16
    cmp rsi, 0x100000
    jb 1b
    xor esi, esi
    jmp 9f
2:  mov rdi, [rsi + 24]             # XsdtAddress
    mov rbx, [rdi + 36]             # XSDT entry 0: the FADT
    mov edx, [rbx + 76]             # PM_TMR_BLK
    in eax, dx
    mov r8d, eax
    mov ecx, 200000
3:  loop 3b
    in eax, dx
    mov r9d, eax
    mov rbx, [rdi + 44]             # XSDT entry 1: the MADT
    mov ecx, [rbx + 4]              # its length
    add rcx, rbx                    # its end
    lea r11, [rbx + 44]             # its first interrupt controller structure
    xor r10d, r10d
4:  cmp r11, rcx
    jae 9f
    cmp byte ptr [r11], 0           # type 0: Processor Local APIC
    jne 5f
    inc r10
5:  movzx eax, byte ptr [r11 + 1]   # length
    add r11, rax
    jmp 4b
9:  cli
    hlt
"""

# ACPICA's S5 (hwsleep.c): SLP_TYP = 5 to PM1a_CNT, then SLP_TYP | SLP_EN; the guest then halts with interrupts
# off, which halt detection would call a halt if the power-off had not already decided why the VM stopped.
S5 = """
    mov dx, 0x404
    mov ax, 5 << 10
    out dx, ax
    or ax, 1 << 13
    out dx, ax
    cli
    hlt
"""

# Say "A" on the debug console, then write the FADT's RESET_VALUE to the reset register.
RESET = """
    mov al, 'A'
    out 0xE9, al
    mov dx, 0xCF9
    mov al, 6
    out dx, al
    cli
    hlt
"""


def boot(hv, tmp_path, src, cpus=1, name="acpi"):
    vm = hv.create_vm(name, mem_mb=16, cpus=cpus)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    return vm


def wait_for_event(vm, text, timeout=30):
    with vm.lock:
        assert vm.changed.wait_for(lambda: text in vm.events, timeout), vm.events


@pytest.mark.parametrize("cpus", [1, 3])
def test_guest_finds_the_tables_and_reads_the_pm_timer(hv, tmp_path, cpus):
    """The guest's scan finds the RSDP at RSDP_ADDR; through the XSDT it reads the PM timer at the FADT's port (the
    count advanced) and counts one Processor Local APIC per vCPU in the MADT."""
    vm = stopped(boot(hv, tmp_path, FIND_TABLES, cpus), 30)
    assert vm.suspend_reason == "halt", vm.suspend_message
    r = vm.registers()
    assert r["rsi"] == A.RSDP_ADDR
    assert r["r10"] == cpus
    assert 0 < (r["r9"] - r["r8"]) % 2**32 < 2**31


def test_the_ports_the_fadt_names_are_decoded_by_the_acpi_blocks(hv, tmp_path):
    """The FADT in a loaded VM's memory and the port bus agree: PM1a_EVT, PM1a_CNT, PM_TMR and the reset register
    are decoded where the FADT says, over the lengths it gives."""
    vm = hv.create_vm("fadt", mem_mb=16)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    rsdp = vm.memory_access.read(A.RSDP_ADDR, 36)
    xsdt = struct.unpack_from("<Q", rsdp, 24)[0]
    fadt_addr = struct.unpack_from("<Q", vm.memory_access.read(xsdt + 36, 8))[0]
    fadt = vm.memory_access.read(fadt_addr, 276)
    evt, cnt, tmr = struct.unpack_from("<I", fadt, 56)[0], struct.unpack_from("<I", fadt, 64)[0], \
        struct.unpack_from("<I", fadt, 76)[0]
    evt_len, cnt_len, tmr_len = fadt[88], fadt[89], fadt[91]
    reset_port = struct.unpack_from("<Q", fadt, 120)[0]
    for name, base, length in (("acpi pm1a_evt", evt, evt_len), ("acpi pm1a_cnt", cnt, cnt_len),
                               ("acpi pm_tmr", tmr, tmr_len),
                               ("pci config address", reset_port, 1)):    # 0xCF9: its byte access, as on a PIIX
        assert [vm.io.device_at(p) for p in range(base, base + length)] == [name] * length


@pytest.mark.parametrize("cpus", [1, 2])
def test_s5_powers_the_vm_off(hv, tmp_path, cpus):
    """SLP_TYP 5 with SLP_EN: the VM powers off as VM.poweroff does, reason "poweroff", "powered off"; the HLT
    that follows does not turn it into a halt."""
    vm = boot(hv, tmp_path, S5, cpus)
    wait_for_event(vm, "powered off")
    assert (vm.suspend_reason, vm.suspend_message) == ("poweroff", "powered off")
    assert "the guest entered S5 (soft-off) through PM1a_CNT" in vm.events
    for vcpu in vm.vcpus:                          # the AP too, even one VM.start started after the S5
        vcpu.thread.join(10)
        assert not vcpu.thread.is_alive()
    assert not any(e.startswith("suspended") for e in vm.events)


def test_reset_register_resets_the_vm(hv, tmp_path):
    """Writing 6 to 0xCF9 resets the VM through VM.reset: the image boots again (the debug console, which outlives
    resets, shows it once per boot) until it is powered off."""
    vm = boot(hv, tmp_path, RESET)
    console = vm.debug_console.reader()
    seen = b""
    while seen.count(b"A") < 3:
        got = console.read(timeout=30)
        assert got, "no new boot within 30 s: %r, events %r" % (seen, vm.events)
        seen += got
    vm.poweroff()
    assert vm.events.count("the guest reset the platform through the reset register at 0xCF9") >= 2
    assert vm.events.count("reset") >= 2


def test_a_power_off_that_overtakes_a_guest_reset_stays_off(hv, tmp_path):
    """The user's power-off while the guest keeps resetting: lifecycle changes happen one at a time, and a guest
    reset that comes after the power-off is not done, so the VM stays off (suspended for the guest's last reset,
    as bhyve's VM is until its wrapper restarts it, or powered off)."""
    vm = boot(hv, tmp_path, RESET, name="resetting")
    reader = vm.debug_console.reader()
    assert reader.read(timeout=30), vm.events
    vm.poweroff()
    for thread in threading.enumerate():
        if thread.name == "resetting-reset":
            thread.join(30)
    assert vm.suspend_reason in ("reset", "poweroff")
    assert all(v.thread is None or not v.thread.is_alive() for v in vm.vcpus)
    assert vm.state == "suspended"


def test_a_snapshot_keeps_the_acpi_registers_and_the_timer_goes_on(hv, tmp_path):
    """PM1_EN, PM1_CNT's SLP_TYP and RST_CNT come back from a snapshot as the guest left them, and the PM timer
    goes on from where it was: never backwards, never more than the time the save and restore took."""
    vm = boot(hv, tmp_path, """
    mov dx, 0x402
    mov ax, 1 << 8                  # PWRBTN_EN
    out dx, ax
    mov dx, 0x404
    mov ax, 3 << 10                 # SLP_TYP 3, no SLP_EN
    out dx, ax
    mov dx, 0xCF9
    mov al, 2                       # SYS_RST alone: no reset
    out dx, al
1:  pause
    jmp 1b
""")
    deadline = time.monotonic() + 30
    while vm.reset_control.read(0) != 2:
        assert time.monotonic() < deadline, vm.events
        time.sleep(0.01)
    vm.pause()
    before = time.monotonic_ns()
    saved = vm.acpi_pm.timer_read(0, 4)
    vm.snapshot(tmp_path / "acpi.snap")
    copy = Hypervisor(host_mem_mb=256).restore_vm(tmp_path / "acpi.snap", name="again", start=False)
    restored = copy.acpi_pm.timer_read(0, 4)
    after = time.monotonic_ns()
    assert 0 <= restored - saved <= timer_count(after - before) + 1
    assert copy.acpi_pm.event_read(2, 2) == PWRBTN_EN
    assert copy.acpi_pm.control_read(0, 2) == SCI_EN | 3 << 10
    assert copy.reset_control.read(0) == 2
    copy.poweroff()
