"""The ACPI fixed hardware against ACPI 6.5 §4.8 and the reset control register against Intel's RST_CNT: the PM timer's
rate, width and wrap, PM1 status write-1-to-clear, enables, SCI_EN, SLP_TYP/SLP_EN soft-off, and the 0-to-1 edge of
RST_CPU."""
import time

import pytest

from engine.devices.acpi_pm import (AcpiPm, PMTMR_HZ, PWRBTN_EN, RST_CPU, RTC_EN, SCI_EN, SLP_EN, SYS_RST, TMR_EN,
                                    TMR_STS, ResetControl, timer_count)

S = 10**9


class FakeClock:
    """A CLOCK_MONOTONIC the test moves by hand, in nanoseconds."""

    def __init__(self, now=123 * S):
        self.now = now

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def pm(clock):
    pm = AcpiPm(power_off=lambda: pm.offs.append(True), clock=clock)
    pm.offs = []
    return pm


def ns_for_ticks(ticks):
    """The first nanosecond at which the timer has counted `ticks`."""
    return -(-ticks * S // PMTMR_HZ)


# -- the PM timer (§4.8.3.3) ------------------------------------------------------------------------------
def test_timer_counts_at_3_579545_mhz_from_power_on(pm, clock):
    """0 at power-on, 3,579,545 after one second, 3 after one microsecond (rounded down), as a dword, words or
    bytes: a wide access and the pieces the port bus cuts it into read the same value."""
    assert pm.timer_read(0, 4) == 0
    clock.now += S
    assert pm.timer_read(0, 4) == PMTMR_HZ
    assert pm.timer_read(0, 2) | pm.timer_read(2, 2) << 16 == PMTMR_HZ
    assert sum(pm.timer_read(k) << 8 * k for k in range(4)) == PMTMR_HZ
    pm.reset()
    clock.now += 1000
    assert pm.timer_read(0, 4) == 3


def test_timer_wraps_at_32_bits(pm, clock):
    """The FADT says 32 bits (TMR_VAL_EXT): after 2^32 ticks (about 20 minutes) the count starts again from 0."""
    clock.now += ns_for_ticks(2**32 - 1)
    assert pm.timer_read(0, 4) == 2**32 - 1
    clock.now = clock.now - ns_for_ticks(2**32 - 1) + ns_for_ticks(2**32 + 5)
    assert pm.timer_read(0, 4) == 5


def test_timer_ignores_writes(pm, clock):
    clock.now += S
    pm.timer_write(0, 0, 4)
    pm.timer_write(1, 0xFF)
    assert pm.timer_read(0, 4) == PMTMR_HZ


def test_timer_rate_matches_the_engines_clock():
    """On the real clock (CLOCK_MONOTONIC, what the 8254 and the LAPIC timer count on): the ticks between two reads
    lie between what the inner and the outer interval, measured on that clock around the reads, allow. The reads
    in between never go backwards."""
    pm = AcpiPm(power_off=lambda: None)
    before_first = time.monotonic_ns()
    first = pm.timer_read(0, 4)
    after_first = time.monotonic_ns()
    last = first
    deadline = time.monotonic() + 0.2
    while time.monotonic() < deadline:
        value = pm.timer_read(0, 4)
        assert value >= last
        last = value
    before_last = time.monotonic_ns()
    final = pm.timer_read(0, 4)
    after_last = time.monotonic_ns()
    ticks = final - first
    assert timer_count(before_last - after_first) - 1 <= ticks <= timer_count(after_last - before_first) + 1


# -- PM1 event block (§4.8.3.1) -----------------------------------------------------------------------------
def test_tmr_sts_is_set_when_the_timers_msb_changes_and_cleared_by_writing_1(pm, clock):
    """TMR_STS comes up when bit 31 of the count changes (every 2^31 ticks), stays up until software writes 1 to
    it (a 0 changes nothing), and comes up again at the next change of bit 31."""
    clock.now += ns_for_ticks(2**31 - 1)
    assert pm.event_read(0, 2) == 0
    clock.now = clock.now - ns_for_ticks(2**31 - 1) + ns_for_ticks(2**31)
    assert pm.event_read(0, 2) == TMR_STS
    pm.event_write(0, 0, 2)
    assert pm.event_read(0, 2) == TMR_STS
    pm.event_write(0, TMR_STS, 2)
    assert pm.event_read(0, 2) == 0
    clock.now += ns_for_ticks(2**31)
    assert pm.event_read(0) == TMR_STS                   # the low byte alone
    pm.event_write(0, TMR_STS)
    assert pm.event_read(0, 4) == 0


def test_enables_hold_what_the_spec_lets_software_write(pm):
    """PM1_EN at offset 2: GBL_EN, PWRBTN_EN, SLPBTN_EN and RTC_EN hold what is written; TMR_EN reads 0 (the timer
    carry interrupt is not modeled, as in bhyve); reserved bits read 0; a byte write changes its byte only."""
    pm.event_write(2, 0xFFFF, 2)
    assert pm.event_read(2, 2) == 0x0720
    assert pm.event_read(0, 4) >> 16 == 0x0720
    pm.event_write(3, 0)                                 # the high byte alone: PWRBTN/SLPBTN/RTC off
    assert pm.event_read(2, 2) == 0x0020
    pm.event_write(2, TMR_EN, 2)
    assert pm.event_read(2, 2) & TMR_EN == 0
    pm.event_write(0, (PWRBTN_EN | RTC_EN) << 16, 4)     # one dword: status (nothing set) and enable
    assert pm.event_read(2, 2) == PWRBTN_EN | RTC_EN


# -- PM1 control block (§4.8.3.2.1) -------------------------------------------------------------------------
def test_sci_en_is_set_from_power_on_and_software_cannot_clear_it(pm):
    """No SMM, no SMI_CMD in the FADT: the hardware is in ACPI mode from power-on, SCI_EN reads 1 whatever is
    written; SLP_TYP and BM_RLD hold; GBL_RLS and SLP_EN are write-only; reserved bits read 0."""
    assert pm.control_read(0, 2) == SCI_EN
    pm.control_write(0, 0, 2)
    assert pm.control_read(0, 2) == SCI_EN
    pm.control_write(0, 0xFFFF & ~SLP_EN, 2)
    assert pm.control_read(0, 2) == SCI_EN | 0b10 | 0b111 << 10
    pm.control_write(0, 0x1C00 | SLP_EN, 2)              # SLP_TYP 7: no such sleep state here
    assert pm.control_read(0, 2) & SLP_EN == 0 and pm.offs == []


def test_s5_with_slp_en_powers_off_once(pm):
    """ACPICA's sequence (hwsleep.c): SLP_TYP = 5 alone, then SLP_TYP | SLP_EN: power_off runs at the second write,
    and only then."""
    pm.control_write(0, 5 << 10, 2)
    assert pm.offs == []
    pm.control_write(0, 5 << 10 | SLP_EN, 2)
    assert pm.offs == [True]


def test_s5_written_a_byte_at_a_time(pm):
    """The high byte alone carries SLP_TYP and SLP_EN: a byte write of it is the same soft-off."""
    pm.control_write(1, (5 << 10 | SLP_EN) >> 8)
    assert pm.offs == [True]


@pytest.mark.parametrize("sleep_type", [0, 1, 3, 4, 6])
def test_other_sleep_types_do_nothing(pm, sleep_type):
    """Only \\_S5 is in the DSDT: SLP_EN with another SLP_TYP leaves the VM running."""
    pm.control_write(0, sleep_type << 10 | SLP_EN, 2)
    assert pm.offs == []


def test_power_on_state_after_reset(pm, clock):
    pm.event_write(2, PWRBTN_EN, 2)
    pm.control_write(0, 5 << 10, 2)
    clock.now += 7 * S
    pm.reset()
    assert (pm.event_read(0, 4), pm.control_read(0, 2), pm.timer_read(0, 4)) == (0, SCI_EN, 0)


# -- the reset control register at 0xCF9 ----------------------------------------------------------------
@pytest.fixture
def rst():
    resets = []
    device = ResetControl(lambda: resets.append(True))
    device.resets = resets
    return device


def test_reset_value_6_resets(rst):
    """The FADT's RESET_VALUE 6 (SYS_RST | RST_CPU) written once: RST_CPU goes from 0 to 1, a hard reset."""
    rst.write(0, 6)
    assert rst.resets == [True] and rst.read(0) == 6


def test_linux_cf9_sequence_resets_once(rst):
    """reboot=pci writes SYS_RST (2), then SYS_RST | RST_CPU (6): one reset, on the second write."""
    rst.write(0, SYS_RST)
    assert rst.resets == [] and rst.read(0) == SYS_RST
    rst.write(0, SYS_RST | RST_CPU)
    assert rst.resets == [True]


def test_only_the_0_to_1_edge_of_rst_cpu_resets(rst):
    """A write that leaves RST_CPU at 1 starts nothing; after it goes back to 0, the next 1 resets again. A soft
    reset (SYS_RST 0) resets the VM too (bhyve treats both alike). Other bits read back as written."""
    rst.write(0, RST_CPU)
    rst.write(0, RST_CPU | 0x08)
    assert rst.resets == [True] and rst.read(0) == 0x0C
    rst.write(0, 0xF1)
    assert rst.resets == [True] and rst.read(0) == 0xF1
    rst.write(0, RST_CPU)
    assert rst.resets == [True, True]
    rst.reset()
    assert rst.read(0) == 0
