"""The Motorola MC146818A real-time clock and its CMOS RAM, the PC/AT's RTC: an index port (0x70 on a PC, bit 7
the chipset's NMI mask) and a data port (0x71), 128 bytes behind them, the periodic, alarm and update-ended
interrupts on its IRQ pin (ISA IRQ 8).

The registers are those of the data sheet (Motorola MC146818A, "Address Map" and "Registers A-D"): 0x00-0x09
the time, alarm and calendar bytes in BCD or binary and 12- or 24-hour form as register B says, 0x0A-0x0D the
control and status registers, the rest battery-backed RAM; the PC/AT keeps the century at 0x32 (IBM's CMOS
map), which this model counts with the year, as bhyve's vrtc.c and QEMU's mc146818rtc.c do.

The clock is what the data sheet's divider chain makes of a 32.768 kHz crystal, computed when asked instead of
ticked: the time counts only while the divider runs (DV2-0 = 010) and SET is clear; the update cycle that
advances it comes once a second, the first one half a second after the divider leaves reset; UIP is high for
the 244 us before an update and the 1984 us it lasts; periodic edges come at the rate RS3-0 select from the
same chain. The clock source is the host's CLOCK_MONOTONIC, the one the 8254 and the vLAPIC timer count
against (the VM's guest time), started from the host's wall clock (UTC) when the VM is made: `date` in a
guest agrees with the host, and a guest that sets the clock keeps its offset. The flags PF, AF and UF are set
whether or not their interrupt is enabled (data sheet, register C), so they are worked out when register C is
read; only an enabled interrupt that has not fired yet gives the VM's host timer a deadline (`deadline_ns`,
`expire`), and the IRQ line follows IRQF until register C is read, as the chip's IRQ pin does.

Where this model is kinder than the chip: the time bytes always read in the format register B selects now
(the chip keeps the bytes it has and a format change needs the time written again); a time written with
invalid contents (a BCD digit above 9, an hour of 25, February 30) is held as written and does not count,
where the chip would count through garbage; only DV2-0 = 010 counts, as on a PC, whose crystal is the
32.768 kHz one. The device knows its two ports by offset (0: index, 1: data), not where they are mapped.
"""
import threading
import time

NS = 10**9
CMOS_BYTES = 128
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM, DAY_OF_WEEK, DATE, MONTH, YEAR = range(10)
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32                                     # IBM PC/AT CMOS map
TIME_BYTES = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DATE, MONTH, YEAR, CENTURY)
ALARM_BYTES = (SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM)
INDEX_MASK, NMI_MASK = 0x7F, 0x80                  # port 0x70: the register index, the chipset's NMI mask

A_UIP, A_DV, A_RS = 0x80, 0x70, 0x0F
DV_RUNNING = 0x20                                  # 010: the 32.768 kHz time base, the oscillator on, counting
B_SET, B_PIE, B_AIE, B_UIE, B_SQWE, B_DM, B_24H, B_DSE = 0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01
C_IRQF, C_PF, C_AF, C_UF = 0x80, 0x40, 0x20, 0x10
D_VRT = 0x80                                       # valid RAM and time: the battery is good
RESET_CLEARS = B_PIE | B_AIE | B_UIE | B_SQWE      # what the RESET pin clears in register B
ENABLES = ((B_PIE, C_PF), (B_AIE, C_AF), (B_UIE, C_UF))
DONT_CARE = 0xC0                                   # an alarm byte 11xxxxxx matches every value
PM = 0x80                                          # the hours byte's PM bit in 12-hour mode

# What the BIOS leaves (SeaBIOS's rtc_setup; bhyve's firmware the same): the 32.768 kHz divider running with
# RS = 0110 (1024 Hz, the PC's usual rate), 24-hour BCD, no interrupts, and a good battery.
POWER_ON_A, POWER_ON_B, POWER_ON_D = DV_RUNNING | 0x06, B_24H, D_VRT

CRYSTAL_HZ = 32768
UIP_NS = 244000 + 1984000                          # UIP before an update cycle, and the update cycle itself
FIRST_UPDATE_NS = NS // 2                          # "the first update cycle begins one-half second later"
DAY = 86400
# Periodic rates (data sheet Table 5, 32.768 kHz time base) as crystal cycles per edge: RS = 1 and 2 give 256 Hz
# and 128 Hz like 8 and 9; 3-15 divide 32768 by 2^(RS-1); 0 gives none.
PERIOD_CYCLES = (0, 128, 256) + tuple(1 << (rs - 1) for rs in range(3, 16))


# -- calendar arithmetic (proleptic Gregorian, days since 1970-01-01) -----------------------------------------
def days_from_civil(year, month, day):
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def civil_from_days(days):
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def days_in_month(year, month):
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def to_bcd(value):
    return (value // 10) << 4 | value % 10


def from_bcd(byte):
    """The value of a BCD byte, or None if a digit is above 9."""
    high, low = byte >> 4, byte & 0xF
    return None if high > 9 or low > 9 else high * 10 + low


class Mc146818:
    """One RTC: `read(offset)` / `write(offset, value)` on its two ports from vCPU threads, `deadline_ns()` and
    `expire(now)` from the VM's host timer thread.

    Legend: everything below is guarded by `_lock` (device state; the IRQ callback runs under it, and never
    calls back in). `ram` holds every byte but the time bytes while the clock counts, which are computed from
    `_secs` (the standard-time seconds since 1970 at monotonic `_at`) and the divider origin `_origin`: the
    updates come at _origin + 0.5 s + k s, the periodic edges at _origin + j periods. While `_held` (SET, or
    invalid time bytes) the time bytes in `ram` are the time. `_flags` are PF/AF/UF latched up to `_seen`.
    """

    def __init__(self, irq, clock=time.monotonic_ns, wall_ns=time.time_ns):
        self._irq = irq                                # callback(level): the IRQ pin, active while IRQF is set
        self.clock = clock
        self._lock = threading.RLock()
        now, wall = clock(), wall_ns()
        self.ram = bytearray(CMOS_BYTES)
        self.ram[REG_A], self.ram[REG_B], self.ram[REG_D] = POWER_ON_A, POWER_ON_B, POWER_ON_D
        self.index, self.nmi_masked = REG_D, False     # bhyve's vrtc_init: "a safe value"
        self._secs, self._at = wall // NS, now
        self._origin = now - (wall % NS + FIRST_UPDATE_NS) % NS     # updates land on the wall clock's seconds
        self._held, self._dow_offset = False, 0
        self._flags, self._seen, self._line, self._deadline = 0, now, False, 0

    # -- the two ports ---------------------------------------------------------------------------------------
    def read(self, offset):
        """Offset 0 (the index port) is write-only: it reads as an undriven bus. Offset 1 reads the indexed byte."""
        if offset != 1:
            return 0xFF
        with self._lock:
            return self.read_register(self.index)

    def write(self, offset, value):
        """Offset 0 selects a byte (bits 6-0) and sets the NMI mask (bit 7); offset 1 writes the selected byte."""
        value &= 0xFF
        with self._lock:
            if offset == 0:
                self.index, self.nmi_masked = value & INDEX_MASK, bool(value & NMI_MASK)
            elif offset == 1:
                self.write_register(self.index, value)

    # -- registers by index -------------------------------------------------------------------------------------
    def read_register(self, index):
        with self._lock:
            index &= INDEX_MASK
            now = self.clock()
            if index in TIME_BYTES and not self._held:
                return self._time_bytes(self._display(self._secs_at(now)))[index]
            if index == REG_A:
                return self.ram[REG_A] | (A_UIP if self._update_pending(now) else 0)
            if index == REG_C:
                return self._read_c(now)
            return self.ram[index]

    def write_register(self, index, value):
        with self._lock:
            index, value = index & INDEX_MASK, value & 0xFF
            now = self.clock()
            if index == REG_A:
                self._write_a(value, now)
            elif index == REG_B:
                self._write_b(value, now)
            elif index in (REG_C, REG_D):
                return                                      # read-only
            elif index in TIME_BYTES:
                self._write_time_byte(index, value, now)
            else:
                self._advance(now)
                self.ram[index] = value
                if index in ALARM_BYTES:
                    self._schedule(now)

    def _read_c(self, now):
        """Register C: the flags and IRQF; reading it clears them all and releases the IRQ pin."""
        self._advance(now)
        value = self._flags | (C_IRQF if self._irqf() else 0)
        self._flags = 0
        self._set_line(False)
        self._schedule(now)
        return value

    def _write_a(self, value, now):
        """UIP is read-only. The divider leaving reset (or any other setting) for 010 restarts the chain: the
        first update comes half a second later and the periodic edges count from now."""
        self._advance(now)
        self._rebase(now)
        was_running = self._divider_running()
        self.ram[REG_A] = value & ~A_UIP
        if self._divider_running() and not was_running:
            self._origin, self._at = now, now
        self._update(now)

    def _write_b(self, value, now):
        """SET going high freezes the time bytes as they read now and clears UIE (data sheet, UIE); SET going low
        takes the bytes written meanwhile as the new time. DSE changing keeps the displayed time."""
        self._advance(now)
        self._rebase(now)
        old = self.ram[REG_B]
        if value & B_SET and not old & B_SET:
            if not self._held:
                self._store_time_bytes(self._secs)
            self._held = True
            value &= ~B_UIE
        if (old ^ value) & B_DSE and not self._held:
            shown = self._display(self._secs)
            self.ram[REG_B] = value
            self._secs = self._standard(shown)
        self.ram[REG_B] = value
        if old & B_SET and not value & B_SET:
            self._take_time_bytes(now)
        self._update(now)

    def _write_time_byte(self, index, value, now):
        """A time byte written: with SET the bytes are the guest's until SET clears; without it, the counter
        continues from the new contents (bit 7 of the seconds is read-only)."""
        self._advance(now)
        self._rebase(now)
        if not self._held:
            self._store_time_bytes(self._secs)
        self.ram[index] = value & 0x7F if index == SECONDS else value
        if not self.ram[REG_B] & B_SET:
            self._take_time_bytes(now)
        self._update(now)

    # -- the clock ------------------------------------------------------------------------------------------------
    def _divider_running(self):
        return self.ram[REG_A] & A_DV == DV_RUNNING

    def _counting(self):
        return self._divider_running() and not self._held

    def _updates_by(self, t):
        """How many update cycles of the chain have ended by monotonic time `t` (since a fixed one)."""
        return (t - self._origin - FIRST_UPDATE_NS) // NS + 1

    def _next_update(self, t):
        return self._origin + FIRST_UPDATE_NS + self._updates_by(t) * NS

    def _secs_at(self, t):
        if not self._counting():
            return self._secs
        return self._secs + self._updates_by(t) - self._updates_by(self._at)

    def _rebase(self, now):
        self._secs, self._at = self._secs_at(now), now

    def _update_pending(self, now):
        return self._counting() and self._next_update(now) - now <= UIP_NS

    def _edges_by(self, t):
        cycles = PERIOD_CYCLES[self.ram[REG_A] & A_RS]
        return (t - self._origin) * CRYSTAL_HZ // (cycles * NS)

    def _next_edge(self, t):
        cycles = PERIOD_CYCLES[self.ram[REG_A] & A_RS]
        return self._origin - (-(self._edges_by(t) + 1) * cycles * NS // CRYSTAL_HZ)

    def _periodic(self):
        return self._divider_running() and self.ram[REG_A] & A_RS

    # -- daylight saving (register B's DSE): the MC146818A's last Sundays of April and October ------------------
    def _dst_span(self, year):
        """[start, end) in standard seconds: from 2:00 standard on the last Sunday in April (1:59:59 becomes
        3:00:00) to 1:00 standard on the last Sunday in October (1:59:59 daylight becomes 1:00:00), the Sundays
        as the chip's own day-of-week register counts them."""
        def last_sunday(month, last):
            for day in range(last, last - 7, -1):
                if self._dow(days_from_civil(year, month, day)) == 1:
                    return days_from_civil(year, month, day) * DAY
        return last_sunday(4, 30) + 2 * 3600, last_sunday(10, 31) + 3600

    def _display(self, secs):
        """The time the counters show for standard seconds `secs`."""
        if self.ram[REG_B] & B_DSE:
            start, end = self._dst_span(civil_from_days(secs // DAY)[0])
            if start <= secs < end:
                return secs + 3600
        return secs

    def _standard(self, shown):
        """The standard seconds behind a shown time (in the repeated hour of October, the first of the two)."""
        if self.ram[REG_B] & B_DSE:
            start, end = self._dst_span(civil_from_days(shown // DAY)[0])
            if start + 3600 <= shown < end + 3600:
                return shown - 3600
        return shown

    def _dow(self, days):
        """The day-of-week register for a day (Sunday = 1), with the offset a guest's write gave it."""
        return (days + 4 + self._dow_offset) % 7 + 1                # 1970-01-01 was a Thursday

    # -- the time bytes ---------------------------------------------------------------------------------------
    def _encode(self, value):
        return value if self.ram[REG_B] & B_DM else to_bcd(value)

    def _decode(self, byte):
        return byte if self.ram[REG_B] & B_DM else from_bcd(byte)

    def _encode_hours(self, hour):
        if self.ram[REG_B] & B_24H:
            return self._encode(hour)
        return self._encode(hour % 12 or 12) | (PM if hour >= 12 else 0)

    def _decode_hours(self, byte):
        if self.ram[REG_B] & B_24H:
            hour = self._decode(byte)
            return hour if hour is not None and hour < 24 else None
        hour = self._decode(byte & ~PM)
        if hour is None or not 1 <= hour <= 12:
            return None
        return hour % 12 + (12 if byte & PM else 0)

    def _time_bytes(self, shown):
        """{index: byte} of the time bytes showing `shown` (seconds since 1970) in the current format."""
        days, rest = divmod(shown, DAY)
        year, month, day = civil_from_days(days)
        return {SECONDS: self._encode(rest % 60), MINUTES: self._encode(rest // 60 % 60),
                HOURS: self._encode_hours(rest // 3600), DAY_OF_WEEK: self._encode(self._dow(days)),
                DATE: self._encode(day), MONTH: self._encode(month), YEAR: self._encode(year % 100),
                CENTURY: self._encode(year // 100 % 100)}

    def _store_time_bytes(self, secs):
        for index, byte in self._time_bytes(self._display(secs)).items():
            self.ram[index] = byte

    def _parse_time_bytes(self):
        """The shown time the time bytes in RAM spell (seconds since 1970), or None if they spell none."""
        fields = [self._decode(self.ram[i]) for i in (SECONDS, MINUTES, DATE, MONTH, YEAR, CENTURY)]
        hour = self._decode_hours(self.ram[HOURS])
        if hour is None or None in fields:
            return None
        sec, minute, day, month, year, century = fields
        if sec > 59 or minute > 59 or year > 99 or century > 99 or not 1 <= month <= 12:
            return None
        year += 100 * century
        if not 1 <= day <= days_in_month(year, month):
            return None
        return days_from_civil(year, month, day) * DAY + hour * 3600 + minute * 60 + sec

    def _take_time_bytes(self, now):
        """Count on from the time bytes in RAM, or hold them if they are not a time (bhyve's VRTC_BROKEN_TIME)."""
        shown = self._parse_time_bytes()
        if shown is None:
            self._held = True
            return
        dow = self._decode(self.ram[DAY_OF_WEEK])
        self._dow_offset = 0
        if dow is not None:
            self._dow_offset = (dow - self._dow(shown // DAY)) % 7
        self._held = False
        self._secs, self._at = self._standard(shown), now

    # -- flags, the IRQ pin and the host timer --------------------------------------------------------------------
    def _advance(self, now):
        """Latch PF, UF and AF for what happened since `_seen` (the settings did not change meanwhile)."""
        if now <= self._seen:
            return
        if self._periodic() and self._edges_by(now) > self._edges_by(self._seen):
            self._flags |= C_PF
        if self._counting():
            before, after = self._secs_at(self._seen), self._secs_at(now)
            if after > before:
                self._flags |= C_UF
                if not self._flags & C_AF:
                    match = self._next_alarm(before)
                    if match is not None and match <= after:
                        self._flags |= C_AF
        self._seen = now

    def _alarm_matches(self, field, byte):
        return byte >= DONT_CARE or byte == field

    def _next_alarm(self, after):
        """The first standard second after `after` whose shown time matches the alarm bytes, or None (an alarm
        no time matches). Time of day repeats daily, so two days (and a DST hour) are enough to look at."""
        alarm_s, alarm_m, alarm_h = (self.ram[i] for i in ALARM_BYTES)
        hour_start = after - after % 3600
        for h in range(hour_start, hour_start + 49 * 3600, 3600):
            shown = self._display(h)
            if not self._alarm_matches(self._encode_hours(shown // 3600 % 24), alarm_h):
                continue
            for m in range(h, h + 3600, 60):
                if m + 59 <= after or not self._alarm_matches(self._encode((m - h) // 60), alarm_m):
                    continue
                for s in range(max(m, after + 1), m + 60):
                    if self._alarm_matches(self._encode(s % 60), alarm_s):
                        return s
        return None

    def _irqf(self):
        return any(self._flags & flag and self.ram[REG_B] & enable for enable, flag in ENABLES)

    def _set_line(self, level):
        if level != self._line:
            self._line = level
            self._irq(level)

    def _update(self, now):
        self._set_line(self._irqf())
        self._schedule(now)

    def _schedule(self, now):
        """The next time an enabled interrupt would raise IRQF (none while it is raised: the pin stays active
        until register C is read)."""
        b, soonest = self.ram[REG_B], []
        if not self._line:
            if b & B_PIE and self._periodic():
                soonest.append(self._next_edge(now))
            if b & B_UIE and self._counting():
                soonest.append(self._next_update(now))
            if b & B_AIE and self._counting():
                match = self._next_alarm(self._secs_at(now))
                if match is not None:
                    soonest.append(self._next_update(now) + (match - self._secs_at(now) - 1) * NS)
        self._deadline = min(soonest) if soonest else 0

    def deadline_ns(self):
        """When the host timer should call `expire` (CLOCK_MONOTONIC ns), or 0."""
        return self._deadline

    def expire(self, now):
        with self._lock:
            if not self._deadline or now < self._deadline:
                return
            self._advance(now)
            self._update(now)

    # -- the platform's side ------------------------------------------------------------------------------------
    @property
    def irq_level(self):
        return self._line

    def reset(self):
        """The RESET pin (a VM reset, not a power cycle: the battery keeps the time and the RAM): PIE, AIE, UIE,
        SQWE and the flags clear, the IRQ pin is released (data sheet, RESET)."""
        with self._lock:
            now = self.clock()
            self._advance(now)
            self.ram[REG_B] &= ~RESET_CLEARS
            self._flags = 0
            self._update(now)

    def time(self):
        """The time the clock shows now, as seconds since 1970 (the guest's view), or None while it is held."""
        with self._lock:
            return None if self._held else self._display(self._secs_at(self.clock()))

    def set_memory_size(self, low, high):
        """The memory-size bytes of the PC/AT CMOS map, as firmware fills them (QEMU's pc_cmos_init, bhyve's
        rtc_init): KiB of base memory (0x15-0x16, at most 640), KiB above 1 MiB (0x17-0x18 and 0x30-0x31, at most
        65535), 64 KiB blocks above 16 MiB below 4 GiB (0x34-0x35), 64 KiB blocks above 4 GiB (0x5B-0x5D); then
        the checksum of 0x10-0x2D at 0x2E-0x2F. `low` and `high` are the bytes of RAM below and above 4 GiB."""
        kib = 1024
        base = min(low // kib, 640)
        extended = min(max(low - 1024 * kib, 0) // kib, 0xFFFF)
        above16 = min(max(low - (16 << 20), 0) // (64 * kib), 0xFFFF)
        above4g = min(high // (64 * kib), 0xFFFFFF)
        with self._lock:
            for index, value, size in ((0x15, base, 2), (0x17, extended, 2), (0x30, extended, 2),
                                       (0x34, above16, 2), (0x5B, above4g, 3)):
                self.ram[index:index + size] = value.to_bytes(size, "little")
            checksum = sum(self.ram[0x10:0x2E])
            self.ram[0x2E], self.ram[0x2F] = checksum >> 8 & 0xFF, checksum & 0xFF

    # -- snapshots -----------------------------------------------------------------------------------------------
    def state(self):
        """Everything, times relative to now: what a restore on another host continues from."""
        with self._lock:
            now = self.clock()
            self._advance(now)
            self._rebase(now)
            return {"ram": list(self.ram), "index": self.index, "nmi_masked": self.nmi_masked, "held": self._held,
                    "dow_offset": self._dow_offset, "flags": self._flags, "line": self._line, "secs": self._secs,
                    "origin": self._origin - now}

    def load_state(self, state):
        with self._lock:
            now = self.clock()
            self.ram[:] = bytes(state["ram"])
            self.index, self.nmi_masked = state["index"], state["nmi_masked"]
            self._held, self._dow_offset, self._flags = state["held"], state["dow_offset"], state["flags"]
            self._secs, self._at, self._seen = state["secs"], now, now
            self._origin = now + state["origin"]
            self._line = state["line"]
            self._schedule(now)
