"""The 8254 programmable interval timer (ports 0x40-0x43) and its three counters, modeled on bhyve's io/vatpit.c
and the Intel 8254 data sheet (231164, "Operation" and "Modes").

On a PC counter 0 drives ISA IRQ 0; counter 1 is the DRAM refresh timer (its output goes nowhere); counter 2's
GATE is bit 0 of port 0x61 and its OUT is read back in bit 5 there (io/nmisc.py), which is how Linux calibrates
the TSC against it. Counters 0 and 1 have GATE tied high. Each counts at 1.193182 MHz against the host's
CLOCK_MONOTONIC (the clock of the vLAPIC timer: the VM's guest time), computed when read instead of ticked:
modes 0-5 with OUT and GATE as the data sheet defines them, counts written LSB, MSB or LSB then MSB, the counter
latch command and the read-back command (count and status). The modeled host timer calls `expire()` when
counter 0's OUT next rises (an IRQ 0 edge).

Simplifications, each invisible to the guests we run: counting is binary (the BCD bit is kept and reported in
the status byte); a new count written in mode 2 or 3 takes effect at once, not at the end of the current
period; a count is loaded the moment it is written, not at the next CLK; in mode 3 an odd count's two half
periods are (N + 1) / 2 and (N - 1) / 2 clocks with the count read as in the even case.
"""
import threading
import time

PIT_HZ = 1193182
NS = 10**9
CONTROL = 3
ACCESS_LATCH, ACCESS_LSB, ACCESS_MSB, ACCESS_WORD = 0, 1, 2, 3
READ_BACK = 3                                       # SC1-SC0 = 11 in a control word
RB_NO_COUNT, RB_NO_STATUS = 0x20, 0x10              # read-back: active low "latch count" / "latch status"
ST_OUT, ST_NULL = 0x80, 0x40                        # status byte: OUT pin, null count


class Counter:
    """One counter. Legend: guarded by its Vpit's lock. `start` is the CLOCK_MONOTONIC ns at which the elapsed
    count was 0 while it runs; `frozen` the elapsed ns while GATE holds it (None while running); `start` 0 means
    not counting (no count written since the control word, or modes 1 and 5 not triggered yet)."""

    def __init__(self, gate=True):
        self.gate = gate
        self.mode, self.access, self.bcd, self.reload = 0, ACCESS_WORD, 0, 0x10000
        self.low_written = self.latched = self.status = None
        self.read_high, self.null_count = False, True
        self.start, self.frozen = 0, None
        self.out_before = False                    # OUT before the count starts: low in mode 0, high otherwise

    # -- programming -----------------------------------------------------------------------------------------
    def control(self, value):
        """A control word for this counter (access 1-3): the counter stops, OUT takes the mode's initial level."""
        self.access, self.mode, self.bcd = value >> 4 & 3, value >> 1 & 7, value & 1
        if self.mode > 5:
            self.mode -= 4                          # 6 and 7 are aliases of 2 and 3
        self.low_written = self.latched = self.status = None
        self.read_high, self.null_count = False, True
        self.start, self.frozen = 0, None
        self.out_before = self.mode != 0

    def write_count(self, value, now):
        if self.access == ACCESS_WORD and self.low_written is None:
            self.low_written = value
            if self.mode == 0:
                self._stop(now, out=False)          # "writing the first byte disables counting" (mode 0)
            return
        if self.access == ACCESS_WORD:
            count, self.low_written = self.low_written | value << 8, None
        elif self.access == ACCESS_MSB:
            count = value << 8
        else:
            count = value
        self.load(count or 0x10000, now)

    def load(self, count, now):
        self.reload, self.null_count = count, False
        if self.mode in (1, 5) or self.mode in (2, 3) and not self.gate:
            self._stop(now, out=True)               # waits for a rising edge of GATE
        else:
            self.start, self.frozen = now, (None if self.gate else 0)    # modes 0 and 4 hold while GATE is low

    def _stop(self, now, out):
        self.start, self.frozen, self.out_before = 0, None, out

    def set_gate(self, level, now):
        """GATE (data sheet Figure 9): modes 0 and 4 count only while it is high; in 2 and 3 low stops counting
        and holds OUT high, and a rising edge reloads; in 1 and 5 a rising edge (re)triggers the count."""
        if level == self.gate:
            return
        self.gate = level
        if self.null_count:
            return                                  # no count yet: nothing to start or stop
        if self.mode in (0, 4) and self.start:
            if level:
                self.start, self.frozen = now - self.frozen, None
            else:
                self.frozen = now - self.start
        elif self.mode in (2, 3):
            if level:
                self.start, self.frozen = now, None
            else:
                self._stop(now, out=True)
        elif level:                                 # modes 1 and 5: a rising edge triggers
            self.start, self.frozen = now, None

    # -- reading ---------------------------------------------------------------------------------------------
    def elapsed(self, now):
        """CLK pulses counted since the count started, or None while not counting."""
        if not self.start:
            return None
        ns = self.frozen if self.frozen is not None else now - self.start
        return max(ns, 0) * PIT_HZ // NS

    def count(self, now):
        n = self.elapsed(now)
        if n is None:
            return self.reload & 0xFFFF
        if self.mode in (2, 3):
            phase = n % self.reload
            if self.mode == 3:
                high = (self.reload + 1) // 2
                phase = 2 * (phase if phase < high else phase - high)
            return (self.reload - phase) & 0xFFFF
        return (self.reload - n) & 0xFFFF           # modes 0, 1, 4, 5 count on through 0 (wrapping)

    def out(self, now):
        n = self.elapsed(now)
        if n is None:
            return self.out_before
        if self.mode in (0, 1):
            return n >= self.reload
        if self.mode == 2:
            return n % self.reload != self.reload - 1 or self.reload == 1
        if self.mode == 3:
            return n % self.reload < (self.reload + 1) // 2
        return n != self.reload                     # modes 4 and 5: low for the one CLK at terminal count

    def status_byte(self, now):
        return ((ST_OUT if self.out(now) else 0) | (ST_NULL if self.null_count else 0) | self.access << 4 |
                self.mode << 1 | self.bcd)

    def read(self, now):
        if self.status is not None:                 # a latched status is read first (read-back command)
            value, self.status = self.status, None
            return value
        count = self.latched if self.latched is not None else self.count(now)
        if self.access == ACCESS_MSB or (self.access == ACCESS_WORD and self.read_high):
            byte = count >> 8 & 0xFF
        else:
            byte = count & 0xFF
        if self.access == ACCESS_WORD:
            self.read_high = not self.read_high
            if not self.read_high:
                self.latched = None
        else:
            self.latched = None
        return byte

    def latch(self, now):
        if self.latched is None:                    # a second latch before reading is ignored
            self.latched, self.read_high = self.count(now), False

    # -- OUT's rising edges (counter 0: IRQ 0) ---------------------------------------------------------------
    def rising_after(self, now):
        """CLOCK_MONOTONIC ns of OUT's next rising edge after `now`, or 0 if none is coming."""
        n = self.elapsed(now)
        if n is None or self.frozen is not None:
            return 0
        if self.mode in (2, 3):
            target = (n // self.reload + 1) * self.reload
        elif self.mode in (0, 1):                   # OUT rises at terminal count, once
            target = self.reload if n < self.reload else None
        else:                                       # modes 4 and 5: OUT goes high again one CLK after terminal count
            target = self.reload + 1 if n <= self.reload else None
        if target is None:
            return 0
        return self.start - (-target * NS // PIT_HZ)

    # -- snapshots ---------------------------------------------------------------------------------------------
    FIELDS = ("gate", "mode", "access", "bcd", "reload", "low_written", "latched", "status", "read_high",
              "null_count", "frozen", "out_before")

    def state(self, now):
        state = {f: getattr(self, f) for f in self.FIELDS}
        state["start"] = self.start - now if self.start else None
        return state

    def load_state(self, state, now):
        for f in self.FIELDS:
            setattr(self, f, state[f])
        self.start = max(now + state["start"], 1) if state["start"] is not None else 0


class Vpit:
    """The 8254: `read(offset)` / `write(offset, value)` for ports 0x40-0x43, counter 2's GATE and OUT for port
    0x61, counter 0's IRQ 0 edges for the host timer. Legend: `lock` guards the counters; `deadline` is counter
    0's next rising edge (CLOCK_MONOTONIC ns, 0 = none), read by the host timer thread without the lock."""

    def __init__(self, raise_irq0, clock=time.monotonic_ns):
        self.raise_irq0 = raise_irq0                # callback(): a pulse on IRQ 0
        self.clock = clock
        self.lock = threading.Lock()
        self.counters = [Counter(), Counter(), Counter(gate=False)]     # counter 2's GATE: port 0x61 bit 0, clear
        self.deadline = 0

    # -- registers ---------------------------------------------------------------------------------------------
    def write(self, offset, value):
        with self.lock:
            now = self.clock()
            if offset == CONTROL:
                self._control(value, now)
            elif 0 <= offset < 3:
                self.counters[offset].write_count(value & 0xFF, now)
            self._schedule(now)

    def read(self, offset):
        with self.lock:
            if not 0 <= offset < 3:
                return 0xFF                         # the control word register cannot be read
            return self.counters[offset].read(self.clock())

    def _control(self, value, now):
        select = value >> 6
        if select == READ_BACK:
            for i, counter in enumerate(self.counters):
                if value & (2 << i):
                    if not value & RB_NO_STATUS and counter.status is None:
                        counter.status = counter.status_byte(now)
                    if not value & RB_NO_COUNT:
                        counter.latch(now)
        elif value >> 4 & 3 == ACCESS_LATCH:
            self.counters[select].latch(now)
        else:
            self.counters[select].control(value)

    # -- counter 2's pins, for port 0x61 -------------------------------------------------------------------------
    def set_gate2(self, level):
        with self.lock:
            self.counters[2].set_gate(bool(level), self.clock())

    def gate2(self):
        return self.counters[2].gate

    def out2(self):
        with self.lock:
            return self.counters[2].out(self.clock())

    # -- the host timer's view -------------------------------------------------------------------------------------
    def _schedule(self, now):
        self.deadline = self.counters[0].rising_after(now)

    def deadline_ns(self):
        return self.deadline

    def expire(self, now):
        """Counter 0's OUT rose (once, however many edges the host timer missed): pulse IRQ 0, find the next."""
        with self.lock:
            if not self.deadline or now < self.deadline:
                return
            self._schedule(now)
        self.raise_irq0()

    # -- snapshots ---------------------------------------------------------------------------------------------
    def state(self):
        with self.lock:
            now = self.clock()
            return {"counters": [c.state(now) for c in self.counters]}

    def load_state(self, state):
        with self.lock:
            now = self.clock()
            for counter, saved in zip(self.counters, state["counters"]):
                counter.load_state(saved, now)
            self._schedule(now)
