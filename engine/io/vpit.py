"""The 8254 programmable interval timer's counter 0 (ports 0x40-0x43), modeled on bhyve's io/vatpit.c.

Counter 0 drives ISA IRQ 0. It counts at 1.193182 MHz against the host clock: modes 0 (interrupt on
terminal count, once) and 2/3 (rate generator / square wave, periodic); the count is written LSB then
MSB (access mode 3) or one byte, and read back through a latch (control word with access 0). The
modeled host timer calls `expire()` when the deadline passes; counters 1 and 2 are accepted and ignored.
"""
import threading
import time

PIT_HZ = 1193182
CONTROL = 3
ACCESS_LATCH, ACCESS_LSB, ACCESS_MSB, ACCESS_WORD = 0, 1, 2, 3


class Vpit:
    def __init__(self, raise_irq0):
        self.raise_irq0 = raise_irq0                    # callback(): a pulse on IRQ 0
        self.lock = threading.Lock()
        self.mode, self.access, self.reload = 0, ACCESS_WORD, 0x10000
        self.start = self.deadline = self.period = 0    # CLOCK_MONOTONIC ns; 0 = not counting
        self.low_written = None
        self.latched, self.read_high = None, False

    # -- registers ---------------------------------------------------------------------------------
    def write(self, offset, value):
        with self.lock:
            if offset == CONTROL:
                self._control(value)
            elif offset == 0:
                self._count_byte(value)

    def read(self, offset):
        with self.lock:
            if offset != 0:
                return 0xFF
            count = self.latched if self.latched is not None else self._current()
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

    def _control(self, value):
        if value >> 6 != 0:
            return                                      # counters 1, 2 and read-back: not modeled
        access = (value >> 4) & 3
        if access == ACCESS_LATCH:
            self.latched, self.read_high = self._current(), False
            return
        self.access, self.mode = access, (value >> 1) & 7
        if self.mode > 5:
            self.mode -= 4                              # 6 and 7 are aliases of 2 and 3
        self.low_written, self.deadline = None, 0

    def _count_byte(self, value):
        if self.access == ACCESS_WORD and self.low_written is None:
            self.low_written = value
            return
        if self.access == ACCESS_WORD:
            count = self.low_written | value << 8
            self.low_written = None
        elif self.access == ACCESS_MSB:
            count = value << 8
        else:
            count = value
        self._load(count or 0x10000)

    def _load(self, count):
        self.reload = count
        period = count * 10**9 // PIT_HZ
        self.start = time.monotonic_ns()
        self.deadline = self.start + period
        self.period = period if self.mode in (2, 3) else 0

    def _current(self):
        if not self.deadline:
            return 0
        elapsed = time.monotonic_ns() - self.start
        ticks = elapsed * PIT_HZ // 10**9
        return (self.reload - ticks % self.reload) & 0xFFFF if self.period else max(self.reload - ticks, 0)

    # -- the host timer's view ---------------------------------------------------------------------
    def deadline_ns(self):
        return self.deadline

    def expire(self, now):
        """The deadline passed: pulse IRQ 0 once, and rearm a periodic counter past `now`."""
        with self.lock:
            if not self.deadline or now < self.deadline:
                return
            if self.period:
                missed = (now - self.deadline) // self.period
                self.deadline += (missed + 1) * self.period
                self.start = self.deadline - self.period
            else:
                self.deadline = 0
        self.raise_irq0()
