"""The 8259 pair, the 8254 and the UART's IRQ: the chips by their registers, then guests taking their interrupts."""
import time

from engine import stats
from engine.io.vpic import Vpic
from engine.io.vpit import Vpit
from tests.engine.conftest import assemble, wait_for
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64

PIC_INIT = """
    mov al, 0x11
    out 0x20, al                # ICW1: init, ICW4 follows
    out 0xA0, al
    mov al, 0x20
    out 0x21, al                # ICW2: master vectors 0x20-0x27
    mov al, 0x28
    out 0xA1, al                # slave 0x28-0x2F
    mov al, 4
    out 0x21, al                # ICW3
    mov al, 2
    out 0xA1, al
    mov al, 1
    out 0x21, al                # ICW4: 8086 mode
    out 0xA1, al
    mov al, {mask}
    out 0x21, al                # OCW1: IMR
    mov al, 0xFF
    out 0xA1, al
"""


def initialized(outputs):
    pic = Vpic(outputs.append)
    for chip, base in ((0, 0x20), (1, 0x28)):
        pic.port_write(chip, 0, 0x11)
        pic.port_write(chip, 1, base)
        pic.port_write(chip, 1, 4 if chip == 0 else 2)
        pic.port_write(chip, 1, 1)
    return pic


def test_pic_priority_eoi_mask_and_cascade():
    """IRQ 1 before IRQ 3; ISR blocks lower priorities until EOI; a masked IRQ waits; IRQ 10 comes via IRQ 2."""
    outputs = []
    pic = initialized(outputs)
    pic.pulse(3)
    pic.pulse(1)
    assert outputs == [True]
    assert pic.acknowledge() == 0x21
    assert pic.port_read(0, 0) == 1 << 3                       # IRR: IRQ 3 still requested
    assert pic.acknowledge() is None                            # IRQ 1 in service blocks IRQ 3
    pic.port_write(0, 0, 0x20)                                  # non-specific EOI
    assert pic.acknowledge() == 0x23
    pic.port_write(0, 0, 0x63)                                  # specific EOI for IRQ 3
    pic.port_write(0, 1, 0xFF ^ (1 << 2))                       # mask all but the cascade
    pic.pulse(5)
    assert pic.acknowledge() is None
    pic.pulse(10)
    assert pic.acknowledge() == 0x2A
    pic.port_write(0, 0, 0x0B)                                  # OCW3: read ISR
    assert pic.port_read(0, 0) == 1 << 2
    assert outputs[-1] is False


def test_pit_counts_down_and_fires_periodically():
    """Mode 2, count 1193 (~1 ms): a latched read is within the count; expire() pulses IRQ 0 and rearms."""
    pulses = []
    pit = Vpit(lambda: pulses.append(1))
    pit.write(3, 0x34)                                          # counter 0, LSB then MSB, mode 2
    pit.write(0, 1193 & 0xFF)
    pit.write(0, 1193 >> 8)
    pit.write(3, 0x00)                                          # latch
    count = pit.read(0) | pit.read(0) << 8
    assert 0 < count <= 1193
    first = pit.deadline_ns()
    pit.expire(first)
    assert pulses == [1] and pit.deadline_ns() > first


def boot(hv, tmp_path, src, name="pic"):
    vm = hv.create_vm(name, mem_mb=16)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    return vm


def test_guest_takes_pit_ticks_through_the_pic(hv, tmp_path):
    """PIT at 100 Hz on IRQ 0, PIC vector 0x20: five ticks taken in sti;hlt, each an ExtINT."""
    src = LONG_PROLOGUE + PIC_INIT.format(mask=0xFE) + gate64(0x20, "tick") + """
    mov al, 0x34
    out 0x43, al
    mov ax, 11932
    out 0x40, al
    mov al, ah
    out 0x40, al
1:  sti
    hlt
    cmp qword ptr [rip + ticks], 5
    jb 1b
    cli
    hlt
tick:
    inc qword ptr [rip + ticks]
    push rax
    mov al, 0x20
    out 0x20, al
    pop rax
    iretq
""" + LONG_DATA + """
    .balign 8
ticks: .quad 0
"""
    started = time.monotonic()
    vm = boot(hv, tmp_path, src)
    assert vm.wait(states=("suspended",), timeout=30) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert time.monotonic() - started >= 0.04                   # five 10 ms periods
    assert vm.vcpus[0].counters[stats.VCPU_EXTINT_COUNT] >= 5


def test_uart_receive_interrupt_through_irq4(hv, tmp_path):
    """IER.ERXRDY and MCR.OUT2 set, IRQ 4 unmasked: each typed byte raises vector 0x24; the handler reads it."""
    src = LONG_PROLOGUE + PIC_INIT.format(mask=0xEF) + gate64(0x24, "rx") + """
    mov dx, 0x3F9
    mov al, 1
    out dx, al                  # IER: receive data available
    mov dx, 0x3FC
    mov al, 0x08
    out dx, al                  # MCR: OUT2 gates the IRQ line
    mov dx, 0x3FD
    in al, dx                   # LSR: the guest drives the UART now
    mov dx, 0x3F8
    mov al, '>'
    out dx, al
1:  sti
    hlt
    cmp byte ptr [rip + last], 'q'
    jne 1b
    cli
    hlt
rx:
    push rax
    push rdx
    mov dx, 0x3F8
    in al, dx
    mov byte ptr [rip + last], al
    inc qword ptr [rip + received]
    mov al, 0x20
    out 0x20, al
    pop rdx
    pop rax
    iretq
""" + LONG_DATA + """
    .balign 8
received: .quad 0
last: .quad 0
"""
    vm = boot(hv, tmp_path, src, name="uartirq")
    wait_for(vm, b">", 30)
    for byte in b"abq":
        vm.console.send_input(bytes([byte]))
        time.sleep(0.05)
    assert vm.wait(states=("suspended",), timeout=30) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert vm.vcpus[0].counters[stats.VCPU_EXTINT_COUNT] >= 3
