"""Guests using the RTC, the 8042, PCI configuration mechanism #1 and port 0x61 through their ports, as a kernel
does: the time it reads is the host's, IRQ 8 arrives through the slave 8259, the host bridge answers at every
width, the 8042's pulse resets the VM (and the CMOS RAM survives it), the PIT calibration loop ends, and a
snapshot carries the devices' state."""
import calendar
import struct
import time

from engine import stats
from tests.engine.conftest import assemble, stopped
from tests.engine.io.test_vpic_vpit import PIC_INIT
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64

OUT = 0x300000                                      # where the guests store what they read

RTC_READ = """
    mov rdi, {out:#x}
1:  mov al, 0x0A
    out 0x70, al
    in al, 0x71
    test al, 0x80               # UIP: an update is coming, wait
    jnz 1b
    lea rsi, [rip + fields]
    mov ecx, 8
2:  mov al, byte ptr [rsi]
    out 0x70, al
    in al, 0x71
    mov byte ptr [rdi], al
    inc rsi
    inc rdi
    dec ecx
    jnz 2b
    cli
    hlt
fields: .byte 0, 2, 4, 7, 8, 9, 0x32, 0x0B
""".format(out=OUT)


def boot(hv, tmp_path, src, name, mem_mb=16):
    vm = hv.create_vm(name, mem_mb=mem_mb)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    return vm


def halted(vm, timeout=60):
    stopped(vm, timeout)
    assert vm.suspend_reason == "halt", vm.suspend_message
    return vm


def from_bcd(b):
    return (b >> 4) * 10 + (b & 15)


def test_a_guest_reads_the_hosts_utc_time_from_the_rtc(hv, tmp_path):
    """The guest waits for UIP to clear, then reads seconds, minutes, hours, date, month, year, century and
    register B: 24-hour BCD, within two seconds of the host's clock (UTC)."""
    before = int(time.time())
    vm = halted(boot(hv, tmp_path, RTC_READ, "rtcread"))
    after = int(time.time())
    sec, minute, hour, day, month, year, century, reg_b = vm.memory_access.read(OUT, 8)
    assert reg_b == 0x02
    read = calendar.timegm((from_bcd(century) * 100 + from_bcd(year), from_bcd(month), from_bcd(day),
                            from_bcd(hour), from_bcd(minute), from_bcd(sec)))
    assert before - 1 <= read <= after + 1


def test_rtc_periodic_interrupts_arrive_on_irq_8_through_the_slave_8259(hv, tmp_path):
    """RS = 1010 (64 Hz) and PIE: 16 interrupts at vector 0x28 (the slave's IRQ 0), each handler reading register
    C (which re-arms the pin) and sending EOI to both 8259s; the flags it saw include IRQF and PF."""
    src = LONG_PROLOGUE + PIC_INIT.format(mask=0xFB) + gate64(0x28, "rtc") + """
    mov al, 0xFE
    out 0xA1, al                # slave: IRQ 8 only
    mov al, 0x0A
    out 0x70, al
    mov al, 0x2A                # 32.768 kHz, RS = 1010: 64 Hz
    out 0x71, al
    mov al, 0x0C
    out 0x70, al
    in al, 0x71                 # clear any flag
    mov al, 0x0B
    out 0x70, al
    mov al, 0x42                # PIE, 24-hour BCD
    out 0x71, al
    xor r9, r9
1:  sti
    hlt
    cmp r8, 16
    jb 1b
    cli
    hlt
rtc:
    push rax
    mov al, 0x0C
    out 0x70, al
    in al, 0x71
    or r9b, al
    inc r8
    mov al, 0x20
    out 0xA0, al
    out 0x20, al
    pop rax
    iretq
""" + LONG_DATA
    vm = halted(boot(hv, tmp_path, src, "rtcirq"))
    regs = vm.registers()
    assert regs["r8"] == 16 and regs["r9"] & 0xC0 == 0xC0   # IRQF | PF (UF too once a second has passed)
    assert vm.vcpus[0].counters[stats.VCPU_EXTINT_COUNT] >= 16


def test_periodic_interrupts_reach_the_guest_between_updates_never_faster_than_rs_selects(hv, tmp_path):
    """PIE at 128 Hz and UIE: between two update-ended interrupts (one second of the RTC's own time) the guest
    takes periodic ones, each re-armed by the handler's read of register C, and never more than the 128 that RS
    selects. How many fewer depends on the host: PF is a latch, so edges that come while the guest does not run
    merge into one, as on the chip (a guest starved of the CPU took 35). The exact rate, edge by edge, is checked
    on the model with a clock the test drives (test_rtc_mc146818.py,
    test_periodic_interrupts_come_at_the_rate_rs_selects)."""
    src = LONG_PROLOGUE + PIC_INIT.format(mask=0xFB) + gate64(0x28, "rtc") + """
    mov al, 0xFE
    out 0xA1, al
    mov al, 0x0A
    out 0x70, al
    mov al, 0x29                # RS = 1001: 128 Hz
    out 0x71, al
    mov al, 0x0C
    out 0x70, al
    in al, 0x71
    mov al, 0x0B
    out 0x70, al
    mov al, 0x52                # PIE, UIE, 24-hour BCD
    out 0x71, al
    xor r8, r8                  # periodic interrupts
    xor r10, r10                # update-ended interrupts
1:  sti
    hlt
    cmp r10, 2
    jb 1b
    cli
    hlt
rtc:
    push rax
    mov al, 0x0C
    out 0x70, al
    in al, 0x71
    test al, 0x40
    jz 2f
    inc r8
2:  test al, 0x10
    jz 3f
    inc r10
    cmp r10, 1
    jne 4f
    mov r11, r8                 # the count at the first update
    jmp 3f
4:  mov r12, r8
    sub r12, r11                # periodic interrupts in one second
3:  mov al, 0x20
    out 0xA0, al
    out 0x20, al
    pop rax
    iretq
""" + LONG_DATA
    vm = halted(boot(hv, tmp_path, src, "rtcrate"))
    assert 1 <= vm.registers()["r12"] <= 129


PCI_READS = """
    mov rdi, {out:#x}
    mov dx, 0xCF8
    mov eax, 0x80000000
    out dx, eax
    in eax, dx
    mov dword ptr [rdi], eax    # CONFIG_ADDRESS reads back
    mov dx, 0xCFC
    in eax, dx
    mov dword ptr [rdi + 4], eax    # vendor, device
    mov dx, 0xCFE
    in ax, dx
    mov word ptr [rdi + 8], ax      # device ID by a word at 0xCFE
    mov dx, 0xCF8
    mov eax, 0x80000008
    out dx, eax
    mov dx, 0xCFF
    in al, dx
    mov byte ptr [rdi + 10], al     # base class by a byte at 0xCFF
    mov dx, 0xCF8
    mov eax, 0x80001800             # device 3: nobody
    out dx, eax
    mov dx, 0xCFC
    in eax, dx
    mov dword ptr [rdi + 12], eax
    mov dx, 0xCFD
    in ax, dx
    mov word ptr [rdi + 16], ax
    mov dx, 0xCF8
    mov eax, 0x00000000             # enable bit clear
    out dx, eax
    mov dx, 0xCFC
    in eax, dx
    mov dword ptr [rdi + 20], eax
    mov dx, 0xCF9
    mov al, 0x01
    out dx, al                      # a byte at 0xCF9 is not CONFIG_ADDRESS (it is the reset register: no RST_CPU)
    mov dx, 0xCF8
    in eax, dx
    mov dword ptr [rdi + 24], eax
    in ax, dx
    mov word ptr [rdi + 28], ax
    cli
    hlt
""".format(out=OUT)


def test_a_guest_reads_the_host_bridge_and_absent_functions_through_0xcf8_and_0xcfc(hv, tmp_path):
    vm = halted(boot(hv, tmp_path, PCI_READS, "pcireads"))
    address, ids, device, base_class, absent, absent_word, disabled, address_after, word = struct.unpack(
        "<IIHBxIHxxIIH", vm.memory_access.read(OUT, 30))
    assert (address, ids, device, base_class) == (0x80000000, 0x12751275, 0x1275, 0x06)
    assert (absent, absent_word, disabled) == (0xFFFFFFFF, 0xFFFF, 0xFFFFFFFF)
    assert address_after == 0 and word == 0xFFFF


REBOOT = """
    mov al, 0x40
    out 0x70, al
    in al, 0x71                 # CMOS RAM byte 0x40: which boot is this?
    inc al
    mov bl, al
    mov al, 0x40
    out 0x70, al
    mov al, bl
    out 0x71, al
    add bl, '0'
    mov dx, 0x3F8
    mov al, bl
    out dx, al                  # "1", then "2" on the next boot
    cmp bl, '2'
    je 2f
    mov al, 0xAA
    out 0x64, al                # self-test first, as a BIOS does
1:  in al, 0x64
    test al, 1
    jz 1b
    in al, 0x60
    mov dx, 0x3F8
    out dx, al                  # 0x55: 'U'
    mov al, 0xFE
    out 0x64, al                # pulse the reset line (Linux's reboot=k)
    jmp .
2:  cli
    hlt
"""


def test_the_8042_reset_pulse_stops_the_vm_with_reason_reset(hv, tmp_path):
    vm = boot(hv, tmp_path, REBOOT, "kbcreset")
    stopped(vm, 60)
    assert vm.suspend_reason == "reset" and "8042" in vm.suspend_message
    assert vm.console.contents() == b"1U"


def test_with_reboot_on_reset_the_guest_boots_again_and_the_cmos_ram_survives(hv, tmp_path):
    vm = hv.create_vm("kbcreboot", mem_mb=16)
    vm.reboot_on_reset = True
    vm.load(assemble(REBOOT, tmp_path), "g.bin", kind="flat64")
    vm.start()
    deadline = time.monotonic() + 60
    while b"2" not in vm.console.contents() and time.monotonic() < deadline:
        vm.wait(states=("suspended",), timeout=0.5)
    halted(vm)
    assert vm.console.contents() == b"1U2"
    assert any("reset by the 8042" in e for e in vm.events) and "reset" in vm.events


PIT_CALIBRATION = """
    in al, 0x61
    and al, 0xFD
    or al, 1
    out 0x61, al                # GATE2 high, speaker off
    mov al, 0xB0
    out 0x43, al                # counter 2, LSB then MSB, mode 0
    mov ax, 11931               # 10 ms
    out 0x42, al
    mov al, ah
    out 0x42, al
    xor r8, r8
1:  inc r8
    in al, 0x61
    test al, 0x20               # OUT2
    jz 1b
    cli
    hlt
"""


def test_linux_style_pit_calibration_through_port_0x61_ends(hv, tmp_path):
    """pit_calibrate_tsc's loop: poll port 0x61 until counter 2's OUT rises 10 ms after it started."""
    started = time.monotonic()
    vm = halted(boot(hv, tmp_path, PIT_CALIBRATION, "pitcal"))
    assert time.monotonic() - started >= 0.01
    assert vm.registers()["r8"] >= 1


DEVICE_SETUP = """
    mov al, 0x0B
    out 0x70, al
    mov al, 0x82                # SET: the guest sets the clock
    out 0x71, al
    lea rsi, [rip + time]
1:  mov al, byte ptr [rsi]
    cmp al, 0xFF
    je 2f
    out 0x70, al
    mov al, byte ptr [rsi + 1]
    out 0x71, al
    add rsi, 2
    jmp 1b
2:  mov al, 0x0B
    out 0x70, al
    mov al, 0x02
    out 0x71, al                # counting from 2001-01-01 00:00:00
    mov al, 0x41
    out 0x70, al
    mov al, 0x5A
    out 0x71, al                # CMOS RAM
    mov al, 0x60
    out 0x64, al
    mov al, 0x47
    out 0x60, al                # the 8042's command byte
    mov dx, 0xCF8
    mov eax, 0x80000004
    out dx, eax
    mov dx, 0xCFC
    mov ax, 0x0006
    out dx, ax                  # the host bridge's command register: memory, bus master
    mov dx, 0xCF8
    mov eax, 0x8000003C
    out dx, eax
    cli
    hlt
time: .byte 0, 0, 2, 0, 4, 0, 7, 1, 8, 1, 9, 1, 0x32, 0x20, 0xFF
"""


def test_a_snapshot_carries_the_rtc_the_8042_and_pci(hv, tmp_path):
    vm = halted(boot(hv, tmp_path, DEVICE_SETUP, "chipsnap"))
    path = tmp_path / "chip.snap"
    vm.snapshot(path)
    hv.destroy_vm(vm.name)
    back = hv.restore_vm(path, name="chipback")
    shown = back.rtc.time()
    assert calendar.timegm((2001, 1, 1, 0, 0, 0)) <= shown <= calendar.timegm((2001, 1, 1, 0, 1, 0))
    assert back.rtc.read_register(0x41) == 0x5A
    back.kbc.write(4, 0x20)
    assert back.kbc.read(0) == 0x47
    assert back.pci.address == 0x8000003C
    assert back.pci.functions[0, 0].cfg_read(4, 2) == 0x0006


SECOND_BOOT = """
    mov al, 0x40
    out 0x70, al
    in al, 0x71
    test al, al
    jnz 2f
    mov al, 0x40                # first boot: mark the CMOS, change the 8042 and the host bridge, halt
    out 0x70, al
    mov al, 1
    out 0x71, al
    mov al, 0x60
    out 0x64, al
    mov al, 0x47
    out 0x60, al
    mov dx, 0xCF8
    mov eax, 0x80000004
    out dx, eax
    mov dx, 0xCFC
    mov ax, 0x0006
    out dx, ax
    cli
    hlt
2:  mov rdi, {out:#x}             # second boot: what the reset left
    mov al, 0x20
    out 0x64, al
1:  in al, 0x64
    test al, 1
    jz 1b
    in al, 0x60
    mov byte ptr [rdi], al
    mov dx, 0xCF8
    mov eax, 0x80000004
    out dx, eax
    mov dx, 0xCFC
    in ax, dx
    mov word ptr [rdi + 1], ax
    cli
    hlt
""".format(out=OUT)


def test_a_vm_reset_brings_the_8042_and_pci_to_power_on_and_the_cmos_ram_survives(hv, tmp_path):
    vm = halted(boot(hv, tmp_path, SECOND_BOOT, "chipreset"))
    vm.reset()
    halted(vm)
    command_byte, pci_command = struct.unpack("<BH", vm.memory_access.read(OUT, 3))
    assert command_byte == 0x74 and pci_command == 0
