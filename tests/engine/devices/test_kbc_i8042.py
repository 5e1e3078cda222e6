"""The 8042 keyboard controller with empty ports against its command set (IBM PS/2 Technical Reference): status,
command byte, self and interface tests, port enables, the output port and A20, the reset pulse, the loop-back
commands and their IRQs, Linux's i8042 probe step by step, and every command and data byte a guest can send."""
import pytest

from engine.devices import kbc_i8042 as K


class Rig:
    def __init__(self):
        self.irqs, self.resets = [], 0
        self.kbc = K.I8042(lambda line, level: self.irqs.append((line, level)), self._reset)

    def _reset(self):
        self.resets += 1

    def status(self):
        return self.kbc.read(K.COMMAND)

    def command(self, command, *params):
        self.kbc.write(K.COMMAND, command)
        for p in params:
            self.kbc.write(K.DATA, p)

    def answer(self):
        assert self.status() & K.ST_OBF
        return self.kbc.read(K.DATA)

    def level(self, line):
        return self.kbc.irq_level(line)


def test_power_on_state():
    """Status: the keylock open, the system flag set, nothing to read; command byte 0x74: both ports disabled,
    translation on, no interrupts; output port: A20 on, the reset line released."""
    rig = Rig()
    assert rig.status() == K.ST_UNLOCKED | K.ST_SYS
    rig.command(0x20)
    assert rig.status() == K.ST_UNLOCKED | K.ST_SYS | K.ST_CMD | K.ST_OBF
    assert rig.answer() == 0x74
    rig.command(0xD0)
    assert rig.answer() == 0xCF and rig.kbc.a20
    assert rig.status() & K.ST_OBF == 0 and rig.resets == 0


def test_command_byte_and_controller_ram():
    rig = Rig()
    rig.command(0x60, 0x41)
    assert not rig.status() & K.ST_CMD                        # the last write went to the data port
    rig.command(0x20)
    assert rig.answer() == 0x41
    assert not rig.status() & K.ST_SYS                        # the command byte's bit 2 is the status's
    rig.command(0x60, 0x45)
    assert rig.status() & K.ST_SYS
    for n in range(1, 32):
        rig.command(0x60 + n, n * 7)
    for n in range(1, 32):
        rig.command(0x20 + n)
        assert rig.answer() == n * 7


def test_self_test_interface_tests_and_port_enables():
    rig = Rig()
    rig.command(0x60, 0x00)
    rig.command(0xAA)
    assert rig.answer() == 0x55 and rig.status() & K.ST_SYS   # a passed self-test sets the system flag
    rig.command(0xAB)
    assert rig.answer() == 0x00
    rig.command(0xA9)
    assert rig.answer() == 0x00
    rig.command(0xA4)
    assert rig.answer() == 0xF1
    rig.command(0xC0)
    assert rig.answer() == 0x80
    for command, bit, on in ((0xAE, K.CB_KBDDIS, False), (0xAD, K.CB_KBDDIS, True), (0xA8, K.CB_AUXDIS, False),
                             (0xA7, K.CB_AUXDIS, True)):
        rig.command(command)
        rig.command(0x20)
        assert bool(rig.answer() & bit) == on, hex(command)


def test_output_port_a20_and_the_reset_line():
    rig = Rig()
    rig.command(0xD1, 0xCD)                                   # A20 off, the reset line still high
    assert not rig.kbc.a20 and rig.resets == 0
    rig.command(0xD0)
    assert rig.answer() == 0xCD
    rig.command(0xDF)
    assert rig.kbc.a20
    rig.command(0xDD)
    assert not rig.kbc.a20
    rig.command(0xD1, 0xCE)                                   # bit 0 low: the CPU's reset line pulled
    assert rig.resets == 1


@pytest.mark.parametrize("command", range(0xF0, 0x100))
def test_pulse_output_port_resets_when_bit_0_is_pulsed(command):
    rig = Rig()
    rig.command(command)
    assert rig.resets == (0 if command & 1 else 1)
    assert rig.kbc.output_port == K.POWER_ON_OUTPUT_PORT     # a pulse, not a write


def test_bytes_for_absent_devices_time_out_with_0xfe():
    """A byte for the keyboard or (0xD4) for the mouse: nobody answers; the controller reports the time-out with
    0xFE, the mouse's with the auxiliary-data bit set."""
    rig = Rig()
    rig.kbc.write(K.DATA, 0xF2)                               # the keyboard's "read ID"
    assert rig.status() & (K.ST_OBF | K.ST_TIMEOUT | K.ST_AUXDATA) == K.ST_OBF | K.ST_TIMEOUT
    assert rig.kbc.read(K.DATA) == 0xFE
    rig.command(0xD4, 0xF2)
    assert rig.status() & (K.ST_OBF | K.ST_TIMEOUT | K.ST_AUXDATA) == K.ST_OBF | K.ST_TIMEOUT | K.ST_AUXDATA
    assert rig.kbc.read(K.DATA) == 0xFE
    assert rig.status() & (K.ST_OBF | K.ST_TIMEOUT) == 0
    assert rig.kbc.read(K.DATA) == 0xFE                       # an empty buffer reads its last byte


def test_loop_back_commands_raise_irq_1_and_12_when_enabled():
    rig = Rig()
    rig.command(0xD2, 0x1C)
    assert rig.irqs == [] and rig.answer() == 0x1C           # KBDINT off: no IRQ 1
    rig.command(0x60, K.CB_KBDINT | K.CB_AUXINT)
    rig.command(0xD2, 0x1C)
    assert rig.level(1) and not rig.level(12)
    assert rig.kbc.read(K.DATA) == 0x1C and not rig.level(1)
    rig.command(0xD3, 0x5A)
    assert rig.level(12) and rig.status() & K.ST_AUXDATA
    assert rig.kbc.read(K.DATA) == 0x5A and not rig.level(12)
    assert rig.irqs == [(1, True), (1, False), (12, True), (12, False)]
    rig.command(0x20)                                         # controller answers raise IRQ 1 too
    assert rig.level(1) and rig.answer() == K.CB_KBDINT | K.CB_AUXINT


def i8042_command(rig, command, params=b"", results=1):
    """Linux's i8042_command (drivers/input/serio/i8042.c): wait for IBF clear, write the command, then each
    parameter, then read each result once OBF is set; -1 if a wait ends without it."""
    out = []
    assert not rig.status() & K.ST_IBF
    rig.kbc.write(K.COMMAND, command)
    for p in params:
        assert not rig.status() & K.ST_IBF
        rig.kbc.write(K.DATA, p)
    for _ in range(results):
        if not rig.status() & K.ST_OBF:
            return None
        out.append(rig.kbc.read(K.DATA))
    return out


def test_linux_i8042_probe_finds_a_controller_with_both_ports_and_no_device():
    """The probe of Linux 6.1's i8042 driver, in its order: flush, self-test, CTR read twice and written back,
    the AUX loop test, the AUX disable/enable bit test, the AUX IRQ test (IRQ 12 for the looped byte), the MUX
    test (a controller that loops 0xA4 back is no MUX); then each port's first command is NAKed."""
    rig = Rig()
    while rig.status() & K.ST_OBF:
        rig.kbc.read(K.DATA)
    assert i8042_command(rig, 0xAA) == [0x55]
    ctr = i8042_command(rig, 0x20)
    assert i8042_command(rig, 0x20) == ctr
    assert rig.status() & K.ST_UNLOCKED                       # else "Warning: Keylock active"
    ctr = (ctr[0] | K.CB_KBDDIS) & ~K.CB_KBDINT
    assert i8042_command(rig, 0x60, [ctr], results=0) == []
    assert i8042_command(rig, 0xD3, [0x5A]) == [0x5A]        # AUX loop: an AUX port is there
    i8042_command(rig, 0xA7, results=0)
    assert i8042_command(rig, 0x20)[0] & K.CB_AUXDIS
    i8042_command(rig, 0xA8, results=0)
    assert not i8042_command(rig, 0x20)[0] & K.CB_AUXDIS
    ctr = i8042_command(rig, 0x20)[0] & ~K.CB_AUXDIS | K.CB_AUXINT
    i8042_command(rig, 0x60, [ctr], results=0)
    i8042_command(rig, 0xD3, [0xA5], results=0)               # the IRQ test: the byte arrives with IRQ 12
    assert rig.level(12) and rig.status() & K.ST_AUXDATA and rig.kbc.read(K.DATA) == 0xA5
    assert [i8042_command(rig, 0xD3, [b])[0] for b in (0xF0, 0x56, 0xA4)] == [0xF0, 0x56, 0xA4]   # no MUX
    ctr = (ctr & ~K.CB_KBDDIS) | K.CB_KBDINT
    i8042_command(rig, 0x60, [ctr], results=0)
    rig.irqs.clear()
    rig.kbc.write(K.DATA, 0xF2)                               # atkbd: GETID
    assert rig.irqs == [(1, True)] and rig.kbc.read(K.DATA) == 0xFE
    i8042_command(rig, 0xD4, [0xF2], results=0)               # psmouse: GETID
    assert rig.level(12) and rig.kbc.read(K.DATA) == 0xFE


def test_every_command_and_data_byte_gives_an_architected_answer():
    """Every command byte followed by every data byte, reading status and data after each: no exception, the
    output buffer never holds more than its queue, and afterwards the self-test still answers."""
    rig = Rig()
    for command in range(256):
        for value in range(0, 256, 15):
            rig.kbc.write(K.COMMAND, command)
            rig.kbc.write(K.DATA, value)
            rig.status()
            rig.kbc.read(K.DATA)
            rig.kbc.read(1)
            rig.kbc.write(3, value)
            assert len(rig.kbc.queue) <= K.QUEUE_MAX
    while rig.status() & K.ST_OBF:
        rig.kbc.read(K.DATA)
    rig.command(0xAA)
    assert rig.answer() == 0x55


def test_reset_and_state_round_trip():
    rig = Rig()
    rig.command(0x60, 0x47)
    rig.command(0xD3, 0x12)
    rig.command(0xD1)
    state = rig.kbc.state()
    other = Rig()
    other.kbc.load_state(state)
    assert other.status() == rig.status() and other.level(12) == rig.level(12)
    other.kbc.write(K.DATA, 0xCF)                             # the pending 0xD1 takes it
    assert other.kbc.read(K.DATA) == 0x12 and other.kbc.output_port == 0xCF
    rig.kbc.reset()
    assert rig.status() == K.ST_UNLOCKED | K.ST_SYS and not rig.level(12) and rig.kbc.pending is None
