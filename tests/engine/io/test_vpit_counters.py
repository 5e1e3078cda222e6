"""The 8254's three counters and port 0x61 against the 8254 data sheet's modes, on a clock the test moves: GATE
and OUT of counter 2 through port 0x61 as Linux's PIT calibration of the TSC uses them, the read-back command,
modes 0-5, and counter 0's IRQ 0 edges."""
import pytest

from engine.io import nmisc
from engine.io.vpit import NS, PIT_HZ, Vpit

START = 10**15


class Rig:
    def __init__(self):
        self.now = START
        self.pulses = 0
        self.pit = Vpit(self._pulse, clock=lambda: self.now)
        self.port61 = nmisc.NmiStatusControl(self.pit, clock=lambda: self.now)

    def _pulse(self):
        self.pulses += 1

    def ticks(self, n):
        """Move the clock by n PIT clocks (exactly: to the instant the n-th has counted)."""
        self.now += -(-n * NS // PIT_HZ)

    def program(self, counter, mode, count, access=3):
        self.pit.write(3, counter << 6 | access << 4 | mode << 1)
        if access in (1, 3):
            self.pit.write(counter, count & 0xFF)
        if access in (2, 3):
            self.pit.write(counter, count >> 8 & 0xFF)

    def read_count(self, counter):
        self.pit.write(3, counter << 6)                       # counter latch command
        return self.pit.read(counter) | self.pit.read(counter) << 8


def test_linux_pit_calibrate_tsc_waits_for_counter_2_through_port_0x61():
    """pit_calibrate_tsc (arch/x86/kernel/tsc.c): gate high, speaker off; counter 2 in mode 0 with 50 ms worth of
    clocks; poll port 0x61 until bit 5 (OUT) rises. Here each poll takes 10 us of guest time: OUT rises after
    50 ms, so the loop polls ~5000 times, more than Linux's minimum of 1000."""
    rig = Rig()
    rig.port61.write(0, rig.port61.read() & ~nmisc.SPEAKER | nmisc.GATE2)
    latch = PIT_HZ // 20
    rig.program(2, 0, latch)
    polls = 0
    while not rig.port61.read() & nmisc.OUT2:
        polls += 1
        rig.now += 10_000
    assert 4990 <= polls <= 5010
    assert rig.port61.read() & (nmisc.GATE2 | nmisc.SPEAKER) == nmisc.GATE2


def test_linux_quick_pit_calibrate_sees_the_msb_count_down_by_one_every_256_clocks():
    """quick_pit_calibrate: counter 2, mode 0, 0xFFFF; reading LSB then MSB of port 0x42 (no latch) the MSB goes
    0xFF, 0xFE, ... once every 256 clocks."""
    rig = Rig()
    rig.port61.write(0, nmisc.GATE2)
    rig.pit.write(3, 0xB0)
    rig.pit.write(2, 0xFF)
    rig.pit.write(2, 0xFF)
    msbs = []
    for _ in range(8):
        rig.pit.read(2)
        msbs.append(rig.pit.read(2))
        rig.ticks(256)
    assert msbs == [0xFF - i for i in range(8)]


def test_gate_low_holds_mode_0_and_gate_high_resumes():
    rig = Rig()
    rig.program(2, 0, 1000)
    rig.ticks(500)
    assert rig.read_count(2) == 1000 and not rig.pit.out2()  # GATE2 is low at power-on: not counting
    rig.port61.write(0, nmisc.GATE2)
    rig.ticks(400)
    rig.port61.write(0, 0)
    rig.ticks(5000)
    assert rig.read_count(2) == 600 and not rig.pit.out2()
    rig.port61.write(0, nmisc.GATE2)
    rig.ticks(599)
    assert not rig.pit.out2()
    rig.ticks(1)
    assert rig.pit.out2() and rig.read_count(2) == 0
    rig.ticks(1)
    assert rig.read_count(2) == 0xFFFF                        # mode 0 counts on through terminal count


@pytest.mark.parametrize("mode", [1, 5])
def test_modes_1_and_5_wait_for_a_rising_edge_of_gate(mode):
    rig = Rig()
    rig.program(2, mode, 100)
    rig.ticks(1000)
    assert rig.pit.out2()
    rig.port61.write(0, nmisc.GATE2)                           # the trigger
    rig.ticks(50)
    assert rig.read_count(2) == 50
    assert rig.pit.out2() == (mode == 5)                       # mode 1: OUT low for the whole count
    rig.ticks(50)
    assert rig.pit.out2() == (mode == 1)                       # mode 5: the one-clock strobe
    rig.ticks(1)
    assert rig.pit.out2()


def test_mode_2_pulses_low_for_one_clock_and_gate_low_reloads():
    rig = Rig()
    rig.port61.write(0, nmisc.GATE2)
    rig.program(2, 2, 10)
    outs = []
    for _ in range(20):
        outs.append(rig.pit.out2())
        rig.ticks(1)
    assert outs == ([True] * 9 + [False]) * 2
    rig.ticks(3)
    rig.port61.write(0, 0)
    assert rig.pit.out2()                                      # GATE low forces OUT high
    rig.port61.write(0, nmisc.GATE2)
    assert rig.read_count(2) == 10                             # and its rising edge reloads


def test_mode_3_square_wave():
    rig = Rig()
    rig.port61.write(0, nmisc.GATE2)
    rig.program(2, 3, 6)
    outs = []
    for _ in range(12):
        outs.append(rig.pit.out2())
        rig.ticks(1)
    assert outs == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3


def test_mode_4_software_strobe():
    rig = Rig()
    rig.port61.write(0, nmisc.GATE2)
    rig.program(2, 4, 5)
    outs = []
    for _ in range(8):
        outs.append(rig.pit.out2())
        rig.ticks(1)
    assert outs == [True] * 5 + [False] + [True] * 2


def test_read_back_latches_status_and_count():
    """Read-back (0xC0 | bits): status first (OUT, null count, access, mode, BCD), then the count latched at the
    command, whatever happens after."""
    rig = Rig()
    rig.program(0, 2, 1000)
    rig.ticks(300)
    rig.pit.write(3, 0xC2)                                    # count and status of counter 0
    rig.ticks(100)
    status = rig.pit.read(0)
    assert status == 0x80 | 3 << 4 | 2 << 1                   # OUT high, count loaded, LSB/MSB, mode 2
    assert rig.pit.read(0) | rig.pit.read(0) << 8 == 700
    rig.pit.write(3, 0xB0)                                     # counter 2: new control word, no count yet
    rig.pit.write(3, 0xE8)                                     # status only, counter 2
    assert rig.pit.read(2) == 0x40 | 3 << 4                    # null count, OUT low (mode 0)


def test_counter_0_rising_edges_are_irq_0_at_the_programmed_rate():
    rig = Rig()
    rig.program(0, 2, 1193)
    end = rig.now + NS // 10
    while rig.pit.deadline_ns() <= end:
        rig.now = rig.pit.deadline_ns()
        rig.pit.expire(rig.now)
    assert rig.pulses == 100
    rig.program(0, 0, 1193)                                   # mode 0: one edge
    rig.now += NS
    rig.pit.expire(rig.now)
    assert rig.pulses == 101 and rig.pit.deadline_ns() == 0


def test_port_0x61_bits():
    """Bits 0-3 read back as written; 4 toggles every 15.085 us (refresh); 5 is OUT2; 6-7 read 0."""
    rig = Rig()
    rig.port61.write(0, 0xFF)
    toggles = set()
    for _ in range(8):
        toggles.add(rig.port61.read() & nmisc.REFRESH)
        rig.now += nmisc.REFRESH_NS
    assert toggles == {0, nmisc.REFRESH}
    assert rig.port61.read() & 0xCF == 0x0F
    rig.port61.reset()
    assert rig.port61.read() & 0xEF == 0 and not rig.pit.gate2()


def test_every_port_and_value_then_state_round_trip():
    rig = Rig()
    for port in range(4):
        for value in range(256):
            rig.pit.write(port, value)
            rig.pit.read(port)
            rig.port61.write(0, value)
            rig.port61.read()
            rig.ticks(7)
            rig.pit.expire(rig.now)
    rig.program(0, 2, 500)
    rig.program(2, 0, 4000)
    rig.port61.write(0, nmisc.GATE2)
    rig.ticks(100)
    other = Rig()
    other.now += 777 * NS
    other.pit.load_state(rig.pit.state())
    for r in (rig, other):
        r.ticks(1000)
    assert other.read_count(0) == rig.read_count(0) and other.read_count(2) == rig.read_count(2)
    assert other.pit.deadline_ns() - other.now == rig.pit.deadline_ns() - rig.now
