"""The 8259 pair and the 8254 under every port and value a guest can send: no device fails, the 8259's
registers read back as the 8259A data sheet says (a plain-Python twin), and after it all the standard
initialization brings the timer interrupt in again.
"""
import numpy as np

from engine import stats as S
from tests.engine.test_inject import gate64

PIC_PORTS = (0x20, 0x21, 0xA0, 0xA1)
PIT_PORTS = (0x40, 0x41, 0x42, 0x43)
READS = 0x310000


class Twin8259:
    """The registers of one 8259A as its data sheet defines them, for a chip whose request lines stay low:
    ICW1 (bit 4) starts initialization and clears IMR; ICW2 follows, ICW3 only in cascade mode (ICW1 bit 1
    clear), ICW4 only when ICW1 bit 0 asks; then the data port is OCW1 (IMR). OCW3 (bits 4:3 = 01) with RR
    selects IRR or ISR (RIS) for reads of the command port; both stay 0 here."""

    def __init__(self):
        self.imr, self.step, self.single, self.icw4, self.read_isr = 0, 0, False, False, False

    def write(self, offset, value):
        if offset == 0:
            if value & 0x10:
                self.imr, self.step, self.read_isr = 0, 2, False
                self.single, self.icw4 = bool(value & 2), bool(value & 1)
            elif value & 0x18 == 0x08 and value & 2:
                self.read_isr = bool(value & 1)
        elif self.step == 2:
            self.step = 4 if self.single else 3
            if self.single and not self.icw4:
                self.step = 0
        elif self.step == 3:
            self.step = 4 if self.icw4 else 0
        elif self.step == 4:
            self.step = 0
        else:
            self.imr = value

    def read(self, offset):
        return self.imr if offset else 0


def counter2_twin():
    """What port 0x42 reads in the sweep: counter 2 (mode 0, LSB then MSB, as at power-on) with its GATE low
    (port 0x61 untouched) never counts, so each read is a byte of the last count loaded, LSB and MSB in turn."""
    reload, low, high, want = 0x10000, None, False, []
    for value in range(256):
        if low is None:
            low = value
        else:
            reload, low = (low | value << 8) or 0x10000, None
        count = reload & 0xFFFF
        want.append(count >> 8 if high else count & 0xFF)
        high = not high
    return want


def sweep(ports):
    """Guest code: every value 0-255 OUT to each port, each followed by an IN of that port, stored at r10."""
    return "".join("""
    xor ecx, ecx
1:  mov eax, ecx
    mov dx, {port:#x}
    out dx, al
    in al, dx
    mov byte ptr [r10], al
    inc r10
    inc ecx
    cmp ecx, 256
    jne 1b
""".format(port=port) for port in ports)


WIDE = "".join("""
    mov dx, {port:#x}
    mov eax, 0x{port:02x}C3A5FF
    out dx, ax
    out dx, eax
    in ax, dx
    in eax, dx
""".format(port=port) for port in PIC_PORTS + PIT_PORTS)

STANDARD = """
    mov al, 0x11                    # ICW1: edge, cascade, ICW4 follows
    out 0x20, al
    out 0xA0, al
    mov al, 0x20                    # ICW2: vectors 0x20-0x27 and 0x28-0x2F
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 4                       # ICW3: the slave on IRQ 2
    out 0x21, al
    mov al, 2
    out 0xA1, al
    mov al, 1                       # ICW4: 8086 mode
    out 0x21, al
    out 0xA1, al
    mov al, 0xFE                    # OCW1: IRQ 0 only
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
    mov al, 0x34                    # counter 0, LSB then MSB, mode 2
    out 0x43, al
    mov ax, 1193                    # 1 kHz
    out 0x40, al
    mov al, ah
    out 0x40, al
    xor r8, r8
1:  sti
    hlt
    cli
    cmp r8, 5
    jb 1b
    cli
    hlt
tick:
    inc r8
    cmp r8, 5
    jb 2f
    mov al, 0xFF                    # the fifth: mask IRQ 0, so that a tick already latched (a loaded host runs
    out 0x21, al                    # the guest late) cannot arrive between the IRETQ and the CLI after the HLT
2:  mov al, 0x20                    # non-specific EOI
    out 0x20, al
    iretq
"""


def test_every_port_and_value(guest):
    """Every value OUT to each 8259 and 8254 port, then words and dwords, with an IN after each: no device
    fails (the VM halts, not suspends with an error), the 8259s read back the twin's IMR, IRR and ISR, the
    8254's counter 2 (gated off) reads the counts written to it and its control port all ones (counter 1
    counts with the host's clock: tests/engine/io/test_vpit_counters.py checks it); the standard
    initialization then makes the PIT's IRQ 0 arrive at vector 0x20, five times."""
    vm = guest(gate64(0x20, "tick") + "    mov r10, %#x\n" % READS + sweep(PIC_PORTS) + sweep(PIT_PORTS) + WIDE +
               STANDARD, timeout=60)
    got = np.frombuffer(vm.memory_access.read(READS, 256 * 8), np.uint8).reshape(8, 256)
    chips = {0x20: Twin8259(), 0xA0: Twin8259()}
    for row, port in enumerate(PIC_PORTS):
        chip = chips[port & ~1]
        want = []
        for value in range(256):
            chip.write(port & 1, value)
            want.append(chip.read(port & 1))
        assert got[row].tolist() == want, hex(port)
    assert got[6].tolist() == counter2_twin()
    assert (got[7] == 0xFF).all()
    assert vm.registers()["r8"] == 5
    assert vm.vcpus[0].counters[S.VMEXIT_INOUT] >= 8 * 512 + 8 * 4
