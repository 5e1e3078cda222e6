"""The 82093AA I/O APIC against its datasheet (§3): registers through IOREGSEL/IOWIN, the version, masks, edge
and level pins, remote IRR and the EOI broadcast, accesses of every width and offset, and garbage from a hostile
guest. The chip alone here, its messages recorded; with the vCPUs' local APICs in test_vioapic_lapics.py."""
import random

import pytest

from engine.io import vioapic as IO


class Bus:
    """Records the messages the chip sends; every local APIC accepts unless told otherwise."""

    def __init__(self):
        self.messages, self.accept = [], 1

    def deliver(self, dest, physical, mode, vector, level):
        self.messages.append((dest, physical, mode, vector, level))
        return self.accept

    def take(self):
        messages, self.messages = self.messages, []
        return messages


@pytest.fixture
def bus():
    return Bus()


@pytest.fixture
def chip(bus):
    return IO.Vioapic(bus.deliver)


def select(chip, index):
    chip.mmio_write(IO.IOREGSEL, 4, index)


def read(chip, index):
    select(chip, index)
    return chip.mmio_read(IO.IOWIN, 4)


def write(chip, index, value):
    select(chip, index)
    chip.mmio_write(IO.IOWIN, 4, value)


def program(chip, pin, low, high=0):
    """The way an OS writes an entry: high dword first, then the low one that unmasks it."""
    write(chip, IO.REG_REDTBL + 2 * pin + 1, high)
    write(chip, IO.REG_REDTBL + 2 * pin, low)


def entry(chip, pin):
    return read(chip, IO.REG_REDTBL + 2 * pin) | read(chip, IO.REG_REDTBL + 2 * pin + 1) << 32


LEVEL = IO.TRIGGER_LEVEL


def test_power_on_registers(chip):
    """§3.2: ID 0, version 0x00170011 (version 0x11, maximum redirection entry 0x17), arbitration ID 0, all 24
    entries masked with every other bit 0, IOREGSEL 0; indexes 0x40-0xFF and 0x03-0x0F read 0."""
    assert read(chip, IO.REG_VER) == 0x00170011
    assert read(chip, IO.REG_ID) == 0 and read(chip, IO.REG_ARB) == 0
    assert [entry(chip, pin) for pin in range(24)] == [IO.MASKED] * 24
    assert all(read(chip, index) == 0 for index in list(range(3, 0x10)) + list(range(0x40, 0x100)))
    chip.reset()
    assert chip.mmio_read(IO.IOREGSEL, 4) == 0


def test_id_arbitration_and_version(chip):
    """The ID is bits 27:24, read/write; the arbitration ID is loaded from it on an ID write; VER and ARB are
    read-only; writing elsewhere in the ID register leaves the reserved bits 0."""
    write(chip, IO.REG_ID, 0xFFFFFFFF)
    assert read(chip, IO.REG_ID) == 0x0F000000 and read(chip, IO.REG_ARB) == 0x0F000000
    write(chip, IO.REG_ID, 0x05000000)
    write(chip, IO.REG_ARB, 0x0A000000)
    write(chip, IO.REG_VER, 0)
    assert (read(chip, IO.REG_ID), read(chip, IO.REG_ARB), read(chip, IO.REG_VER)) == (0x05000000, 0x05000000,
                                                                                     0x00170011)


def test_redirection_entries_read_back_what_was_written(chip):
    """Each entry is two independent dwords (§3.0); delivery status (12) and remote IRR (14) are read-only: a write
    of ones leaves them 0; every other bit reads back as written (QEMU keeps the reserved ones too)."""
    rng = random.Random(1)
    for _ in range(500):
        pin, low, high = rng.randrange(24), rng.getrandbits(32) | IO.MASKED, rng.getrandbits(32)
        program(chip, pin, low, high)
        assert entry(chip, pin) == (low | high << 32) & ~IO.READ_ONLY


def test_register_window_widths_and_offsets(chip):
    """IOWIN must be a dword access (§3.1.2): a byte or word there reads 0 and writes nothing. IOREGSEL takes any
    width ("a byte memory write ... loads the IOREGSEL Register", §3.0) and keeps bits 7:0. The registers repeat
    every 256 bytes of the page, other offsets read 0, an access not aligned to its width is refused, and an
    8-byte access is two dword accesses (QEMU's memory core)."""
    chip.mmio_write(IO.IOREGSEL, 1, IO.REG_VER)
    assert chip.mmio_read(IO.IOWIN, 4) == 0x00170011
    assert chip.mmio_read(IO.IOWIN, 2) == 0 and chip.mmio_read(IO.IOWIN, 1) == 0
    assert chip.mmio_read(IO.IOWIN + 2, 2) == 0 and chip.mmio_read(IO.IOWIN + 1, 4) == 0    # part, misaligned
    chip.mmio_write(IO.IOREGSEL, 4, 0x12345601)                  # bits 31:8 reserved
    assert chip.mmio_read(IO.IOREGSEL, 4) == 0x01 and chip.mmio_read(IO.IOREGSEL, 1) == 0x01
    assert chip.mmio_read(IO.IOREGSEL + 1, 1) == 0 and chip.mmio_read(IO.IOREGSEL + 2, 2) == 0
    assert chip.mmio_read(0x100 + IO.IOWIN, 4) == 0x00170011 and chip.mmio_read(0xF00, 4) == 0x01   # aliases
    assert chip.mmio_read(IO.IOWIN, 8) == 0x00170011             # IOWIN, then offset 0x14 (nothing)
    assert chip.mmio_read(IO.IOREGSEL, 8) == 0x01
    for offset in (0x04, 0x08, 0x0C, 0x14, 0x20, 0x40, 0x80, 0xFC, 0xFF0):
        assert chip.mmio_read(offset, 4) == 0, hex(offset)
    chip.mmio_write(IO.IOREGSEL, 1, 0x10)
    chip.mmio_write(IO.IOWIN, 2, 0x1234)                         # a word into IOWIN: nothing written
    chip.mmio_write(IO.IOWIN + 1, 4, 0x1234)                     # misaligned: nothing
    chip.mmio_write(0x20, 4, 0x1234)                             # no register there
    assert entry(chip, 0) == IO.MASKED
    chip.mmio_write(IO.IOREGSEL, 1, 0x10)
    chip.mmio_write(0x200 + IO.IOWIN, 8, 0xFFFFFFFF00000031)     # 8 bytes: the low dword goes to IOWIN
    assert chip.mmio_read(IO.IOWIN, 4) == 0x31
    chip.mmio_write(IO.IOREGSEL + 2, 2, 0x11)                    # not at IOREGSEL: IOREGSEL keeps 0x10
    assert chip.mmio_read(IO.IOREGSEL, 4) == 0x10


def test_edge_pin_delivers_on_a_rising_edge_while_unmasked(bus, chip):
    """An edge-triggered pin sends one message per rising edge; one signaled on a masked pin is ignored, not held
    pending (§3.2.4 bit 16), so unmasking later sends nothing."""
    chip.pulse_pin(2)
    program(chip, 2, IO.MASKED | 0x30)
    chip.pulse_pin(2)
    program(chip, 2, 0x30, 0x01 << 24)
    assert bus.take() == []
    chip.set_pin(2, True)
    chip.set_pin(2, True)                                        # still high: no new edge
    chip.set_pin(2, False)
    chip.pulse_pin(2)
    assert bus.take() == [(1, True, IO.FIXED, 0x30, False)] * 2
    assert entry(chip, 2) & IO.REMOTE_IRR == 0


def test_level_pin_remote_irr_and_eoi(bus, chip):
    """A level-triggered pin delivers while asserted; the accepting local APIC sets remote IRR, which holds further
    messages back until the EOI for its vector clears it; a pin still asserted at the EOI delivers again, one
    deasserted does not. An EOI for another vector changes nothing."""
    program(chip, 9, LEVEL | IO.POLARITY_LOW | IO.DESTMODE_LOGICAL | 0x41, 0x03 << 24)
    chip.set_pin(9, True)
    assert bus.take() == [(0x03, False, IO.FIXED, 0x41, True)]
    assert entry(chip, 9) & IO.REMOTE_IRR
    chip.set_pin(9, True)
    chip.eoi(0x42)
    assert bus.take() == [] and entry(chip, 9) & IO.REMOTE_IRR
    chip.eoi(0x41)
    assert bus.take() == [(0x03, False, IO.FIXED, 0x41, True)] and entry(chip, 9) & IO.REMOTE_IRR
    chip.set_pin(9, False)
    chip.eoi(0x41)
    assert bus.take() == [] and not entry(chip, 9) & IO.REMOTE_IRR


def test_level_pin_masked_then_unmasked(bus, chip):
    """Level asserts on a masked pin are ignored (§3.2.4 bit 16), but the level is still there: unmasking an asserted
    level-triggered pin delivers; a deasserted one does not."""
    program(chip, 4, IO.MASKED | LEVEL | 0x50)
    chip.set_pin(4, True)
    assert bus.take() == []
    program(chip, 4, LEVEL | 0x50)
    assert bus.take() == [(0, True, IO.FIXED, 0x50, True)]
    program(chip, 5, IO.MASKED | LEVEL | 0x51)
    chip.set_pin(5, True)
    chip.set_pin(5, False)
    program(chip, 5, LEVEL | 0x51)
    assert bus.take() == []


def test_masking_after_acceptance_does_not_undo_it(bus, chip):
    """Masking a level pin whose interrupt was accepted leaves remote IRR set until the EOI (§3.2.4: "no effect on
    that interrupt"); the EOI then clears it and, masked, nothing is sent."""
    program(chip, 3, LEVEL | 0x60)
    chip.set_pin(3, True)
    program(chip, 3, IO.MASKED | LEVEL | 0x60)
    assert entry(chip, 3) & IO.REMOTE_IRR
    chip.eoi(0x60)
    assert bus.take() == [(0, True, IO.FIXED, 0x60, True)] and not entry(chip, 3) & IO.REMOTE_IRR


def test_remote_irr_only_when_a_local_apic_accepts(bus, chip):
    """§3.2.4 bit 14: set "when local APIC(s) accept the level interrupt"; a message no local APIC took leaves it
    clear, so the next assertion is sent again."""
    bus.accept = 0
    program(chip, 7, LEVEL | 0x70)
    chip.set_pin(7, True)
    assert not entry(chip, 7) & IO.REMOTE_IRR
    chip.set_pin(7, True)
    assert len(bus.take()) == 2


def test_switching_to_edge_clears_remote_irr(bus, chip):
    """What Linux's __eoi_ioapic_pin does on an I/O APIC without an EOI register: mask, set edge (remote IRR is
    cleared), set level again; the still-asserted pin is delivered at the unmask."""
    program(chip, 11, LEVEL | 0x71)
    chip.set_pin(11, True)
    bus.take()
    program(chip, 11, IO.MASKED | LEVEL | 0x71)
    program(chip, 11, IO.MASKED | 0x71)
    assert not entry(chip, 11) & IO.REMOTE_IRR
    program(chip, 11, IO.MASKED | LEVEL | 0x71)
    assert bus.take() == []
    program(chip, 11, LEVEL | 0x71)
    assert bus.take() == [(0, True, IO.FIXED, 0x71, True)]


@pytest.mark.parametrize("mode", [IO.SMI, IO.NMI, IO.INIT, IO.EXTINT])
def test_nmi_smi_init_extint_are_edge_triggered(bus, chip, mode):
    """§3.2.4 delivery mode: NMI, SMI, INIT and ExtINT are treated as edge-triggered even when programmed level: a
    message per rising edge, level False, remote IRR never set."""
    program(chip, 0, LEVEL | mode << IO.DELMODE_SHIFT | 0x20, 0x02 << 24)
    chip.set_pin(0, True)
    chip.set_pin(0, True)
    chip.set_pin(0, False)
    chip.pulse_pin(0)
    assert bus.take() == [(0x02, True, mode, 0x20, False)] * 2
    assert not entry(chip, 0) & IO.REMOTE_IRR


def test_pins_outside_the_chip_are_not_wired(bus, chip):
    for pin in (-1, 24, 255):
        chip.set_pin(pin, True)
    assert bus.take() == []


def test_hostile_guest_programming_garbage(bus, chip):
    """Random accesses of every width at random offsets, and random pin changes and EOIs: no exception, and what
    the datasheet fixes stays fixed: the version, the ID's width, delivery status never set, remote IRR only in
    level-triggered entries, and no message from a masked pin."""
    rng = random.Random(5)
    for _ in range(20000):
        what = rng.randrange(6)
        if what == 0:
            chip.mmio_write(rng.randrange(0x1000), rng.choice((1, 2, 4, 8, 3, 16)), rng.getrandbits(64))
        elif what == 1:
            value = chip.mmio_read(rng.randrange(0x1000), rng.choice((1, 2, 4, 8, 0, 16)))
            assert 0 <= value < 1 << 64
        elif what == 2:
            write(chip, rng.randrange(256), rng.getrandbits(32))
        elif what == 3:
            before = list(chip.entries)
            bus.take()
            pin = rng.randrange(-2, 26)
            chip.set_pin(pin, rng.random() < 0.5)
            if 0 <= pin < 24 and before[pin] & IO.MASKED:
                assert bus.take() == []
        elif what == 4:
            chip.eoi(rng.randrange(256))
        else:
            chip.reset() if rng.random() < 0.01 else bus.take()
        assert read(chip, IO.REG_VER) == 0x00170011 and read(chip, IO.REG_ID) & ~0x0F000000 == 0
        assert all(not e & IO.DELIVERY_STATUS and (not e & IO.REMOTE_IRR or e & LEVEL) for e in chip.entries)
        assert all(m[4] is False or m[2] in IO.LEVEL_MODES for m in bus.messages)
