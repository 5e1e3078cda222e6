"""The ACPI fixed hardware (ACPI 6.5 §4.8): the PM1 event and control registers and the power management timer,
and the reset register the FADT points at (the chipset's reset control register, RST_CNT), modeled on bhyve's
usr.sbin/bhyve/amd64/pm.c and sys/amd64/vmm/io/vpmtmr.c.

Each block knows its registers by offset; platform.py places them where the FADT says (acpi_tables.py). An access
of any width reaches a block whole or in the pieces the port bus cut it into: each byte of a register is read and
written on its own terms, so a word access and two byte accesses do the same.

- PM1 event block (§4.8.3.1): PM1_STS at offset 0, PM1_EN at 2. Status bits are cleared by writing 1 (§4.8.3.1.1).
  The only event this platform has is the timer's: TMR_STS is set each time the timer's most significant bit
  changes. The enables the spec makes read/write hold what is written, except TMR_EN, which reads 0 as in bhyve
  (the timer carry interrupt is not modeled), so no enabled event ever raises the SCI.
- PM1 control block (§4.8.3.2.1): SCI_EN reads 1 (no SMM: the FADT has no SMI_CMD, the platform is in ACPI mode
  from power-on) and cannot be changed; SLP_TYP and BM_RLD hold what is written; GBL_RLS and SLP_EN are write-only
  and read 0. Writing SLP_EN with SLP_TYP = 5 (the DSDT's \\_S5) is soft-off: `power_off()` runs.
- PM timer (§4.8.3.3): 32 bits (the FADT's TMR_VAL_EXT), counting at 3.579545 MHz from the VM's power-on, on the
  clock the 8254 and the local APIC timers count on (CLOCK_MONOTONIC, time.monotonic_ns); writes are ignored.
- Reset control (Intel ICH RST_CNT at 0xCF9; bhyve's reset_handler): reads back what was written; SYS_RST (bit 1)
  chooses a hard or soft reset, and RST_CPU (bit 2) going from 0 to 1 starts it: `reset_system()` runs. bhyve treats
  both kinds alike, and so does this model: the VM resets.
"""
import threading
import time

PMTMR_HZ = 3579545                      # §4.8.3.3: 3.579545 MHz
TIMER_BITS = 32
TIMER_MASK = (1 << TIMER_BITS) - 1

# PM1_STS (Table 4.16) and PM1_EN (Table 4.17).
TMR_STS, BM_STS, GBL_STS, PWRBTN_STS, SLPBTN_STS, RTC_STS, WAK_STS = 1 << 0, 1 << 4, 1 << 5, 1 << 8, 1 << 9, \
    1 << 10, 1 << 15
STATUS_BITS = TMR_STS | BM_STS | GBL_STS | PWRBTN_STS | SLPBTN_STS | RTC_STS | WAK_STS     # all write-1-to-clear
TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN = 1 << 0, 1 << 5, 1 << 8, 1 << 9, 1 << 10
ENABLE_BITS = GBL_EN | PWRBTN_EN | SLPBTN_EN | RTC_EN                  # TMR_EN: not modeled, reads 0
PM1_STS, PM1_EN = 0, 2                  # byte offsets in the event block

# PM1_CNT (Table 4.18).
SCI_EN, BM_RLD, GBL_RLS, SLP_EN = 1 << 0, 1 << 1, 1 << 2, 1 << 13
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0b111 << 10
CONTROL_BITS = BM_RLD | SLP_TYP_MASK    # what a write changes; reserved bits read 0
SLP_TYP_S5 = 5                          # the DSDT's \_S5 SLP_TYPa (acpi_tables.SLP_TYP_S5)

# RST_CNT (Intel ICH datasheets, "Reset Control Register").
SYS_RST, RST_CPU = 1 << 1, 1 << 2


def timer_count(elapsed_ns):
    """The PM timer's 32-bit value `elapsed_ns` after power-on: 3.579545 ticks per microsecond, rounded down."""
    return elapsed_ns * PMTMR_HZ // 10**9 & TIMER_MASK


def register_bytes(value, offset, size):
    """Bytes `offset`..`offset + size - 1` of a little-endian register file holding `value`."""
    return value >> 8 * offset & ((1 << 8 * size) - 1)


def _byte_writes(offset, value, size):
    """(register offset, byte mask, bits) for each byte an access writes into a file of 16-bit registers."""
    for k in range(size):
        byte = offset + k
        shift = 8 * (byte & 1)
        yield byte & ~1, 0xFF << shift, (value >> 8 * k & 0xFF) << shift


class AcpiPm:
    """PM1a_EVT, PM1a_CNT and PM_TMR. Legend: `power_off` and `clock` are fixed at creation; the registers are
    guarded by `_lock` (any vCPU thread may reach them); `_base` is the clock at power-on."""

    def __init__(self, power_off, clock=time.monotonic_ns):
        self.power_off, self.clock = power_off, clock
        self._lock = threading.Lock()
        self.reset()

    def reset(self):
        """Power-on: no status, no enables, SCI_EN set, SLP_TYP 0; the timer starts again from 0."""
        with self._lock:
            self._base = self.clock()
            self._enable, self._status = 0, 0
            self._timer_carries_seen = 0        # TMR_STS: set while the timer's MSB has changed since last cleared
            self._control = SCI_EN

    def state(self):
        """What a snapshot keeps (engine/snapshot.py): the registers, and the timer as time since power-on."""
        with self._lock:
            return {"elapsed": self.clock() - self._base, "status": self._status, "enable": self._enable,
                    "control": self._control, "carries_seen": self._timer_carries_seen}

    def load_state(self, state):
        """A snapshot's registers; the timer goes on from where it was saved."""
        with self._lock:
            self._base = self.clock() - state["elapsed"]
            self._status, self._enable = state["status"], state["enable"]
            self._control, self._timer_carries_seen = state["control"], state["carries_seen"]

    # -- the PM timer ---------------------------------------------------------------------------------
    def _ticks(self):
        """Ticks since power-on, not wrapped."""
        return (self.clock() - self._base) * PMTMR_HZ // 10**9

    def timer_read(self, offset, size=1):
        return register_bytes(self._ticks() & TIMER_MASK, offset, size)

    def timer_write(self, offset, value, size=1):
        """The timer is read-only (§4.8.3.3): a write changes nothing."""

    # -- PM1 event block: PM1_STS, PM1_EN --------------------------------------------------------------
    def _status_now(self):
        carries = self._ticks() >> (TIMER_BITS - 1)
        return self._status | (TMR_STS if carries > self._timer_carries_seen else 0)

    def event_read(self, offset, size=1):
        with self._lock:
            return register_bytes(self._status_now() | self._enable << 16, offset, size)

    def event_write(self, offset, value, size=1):
        with self._lock:
            for register, mask, bits in _byte_writes(offset, value, size):
                if register == PM1_STS:
                    cleared = bits & STATUS_BITS
                    self._status &= ~cleared
                    if cleared & TMR_STS:
                        self._timer_carries_seen = self._ticks() >> (TIMER_BITS - 1)
                elif register == PM1_EN:
                    self._enable = (self._enable & ~mask) | (bits & ENABLE_BITS)

    # -- PM1 control block: PM1_CNT --------------------------------------------------------------------
    def control_read(self, offset, size=1):
        with self._lock:
            return register_bytes(self._control, offset, size)

    def control_write(self, offset, value, size=1):
        sleep = False
        with self._lock:
            for _, mask, bits in _byte_writes(offset, value, size):
                self._control = (self._control & ~(mask & CONTROL_BITS)) | (bits & CONTROL_BITS)
                sleep |= bool(bits & SLP_EN)
            sleep_type = (self._control & SLP_TYP_MASK) >> SLP_TYP_SHIFT
        if sleep and sleep_type == SLP_TYP_S5:  # S1-S4 are not offered (the DSDT has only \_S5): ignored
            self.power_off()


class ResetControl:
    """RST_CNT: one byte. Legend: `reset_system` is fixed at creation; `_value` is guarded by `_lock`."""

    def __init__(self, reset_system):
        self.reset_system = reset_system
        self._lock = threading.Lock()
        self._value = 0

    def reset(self):
        """Power-on: 0."""
        with self._lock:
            self._value = 0

    def state(self):
        with self._lock:
            return {"value": self._value}

    def load_state(self, state):
        with self._lock:
            self._value = state["value"]

    def read(self, offset=0, size=1):
        with self._lock:
            return self._value

    def write(self, offset, value, size=1):
        with self._lock:
            starts = value & RST_CPU and not self._value & RST_CPU
            self._value = value & 0xFF
        if starts:
            self.reset_system()
