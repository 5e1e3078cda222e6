"""The Intel 82093AA I/O APIC, modeled on bhyve's io/vioapic.c: 24 interrupt pins, each turned by its redirection
table entry into an interrupt message to the local APICs.

Register layout and behaviour from the 82093AA datasheet (Intel, 1996), section 3:
- §3.1: two registers in memory space. IOREGSEL (offset 0x00, bits 7:0 R/W, 31:8 reserved) selects an
  internal register; IOWIN (offset 0x10) reads or writes the selected one and "must be accessed as a Dword
  quantity". Where the datasheet is silent this follows QEMU's hw/intc/ioapic.c: the two registers repeat every
  256 bytes of the page, IOREGSEL reads and writes at any width (a byte write loads it, §3.0), IOWIN at other
  widths and every other offset read 0 and ignore writes, an access not aligned to its width is refused the same
  way, and an 8-byte access is two 4-byte ones.
- §3.2.1 IOAPICID (0x00): the ID in bits 27:24, R/W. §3.2.2 IOAPICVER (0x01): 0x00170011, version 0x11, maximum
  redirection entry 0x17 (23), read-only. §3.2.3 IOAPICARB (0x02): the arbitration ID, loaded from the ID when
  the ID is written, read-only. Other indexes read 0 and ignore writes.
- §3.2.4 IOREDTBL[0:23] (0x10-0x3F, the low dword at the even index): vector 7:0, delivery mode 10:8 (fixed,
  lowest priority, SMI, NMI, INIT, ExtINT), destination mode 11 (physical/logical), delivery status 12 (RO),
  polarity 13, remote IRR 14 (RO), trigger mode 15, mask 16 (set at reset), destination 63:56.

Pins: an edge-triggered pin delivers on a rising edge while unmasked; an edge on a masked pin is lost. A
level-triggered pin delivers while asserted and unmasked and its remote IRR is clear; the remote IRR is set when a
local APIC accepts the interrupt and cleared by the EOI broadcast for its vector (io/lapic/deliver.py eoi), after
which a pin still asserted delivers again. Writing an entry that leaves it edge-triggered clears its remote IRR (what
QEMU and bhyve do, and what Linux's __eoi_ioapic_pin relies on for an I/O APIC without an EOI register); writing
one that unmasks an asserted level-triggered pin delivers. NMI, SMI, INIT and ExtINT are edge-triggered whatever
the trigger mode bit says (§3.2.4, delivery mode). Delivery is immediate, so delivery status always reads idle.

Where bhyve differs from the datasheet this follows the datasheet, and says so: bhyve's vioapic has 32 pins,
drops NMI and INIT messages, and sets remote IRR for every level-triggered message, accepted or not.
Polarity is stored and read back but does not invert a pin: the platform's sources assert their logical level,
as bhyve's and QEMU's do, and the firmware's tables tell the guest the polarity to program. The destination is
8 bits in both modes (bhyve's `high >> APIC_ID_SHIFT`): the 82093AA's physical destination is bits 59:56, too few
for 255 vCPUs.
"""
import threading

PINS = 24
VERSION = 0x11
IOREGSEL, IOWIN = 0x00, 0x10
REG_ID, REG_VER, REG_ARB, REG_REDTBL = 0x00, 0x01, 0x02, 0x10
# Redirection entry fields (§3.2.4)
VECTOR = 0xFF
DELMODE_SHIFT = 8
DESTMODE_LOGICAL = 1 << 11
DELIVERY_STATUS = 1 << 12
POLARITY_LOW = 1 << 13
REMOTE_IRR = 1 << 14
TRIGGER_LEVEL = 1 << 15
MASKED = 1 << 16
DEST_SHIFT = 56
READ_ONLY = DELIVERY_STATUS | REMOTE_IRR
FIXED, LOWEST_PRIORITY, SMI, NMI, INIT, EXTINT = 0, 1, 2, 4, 5, 7
LEVEL_MODES = (FIXED, LOWEST_PRIORITY)       # the others are edge-triggered whatever bit 15 says
MODE_NAMES = {FIXED: "fixed", LOWEST_PRIORITY: "lowest priority", SMI: "SMI", NMI: "NMI", INIT: "INIT",
              EXTINT: "ExtINT", 3: "reserved", 6: "reserved"}


def pieces(offset, size):
    """The accesses an access of `size` bytes at `offset` of the page makes (QEMU's memory core for a region of
    4-byte registers): none when it is not aligned to its width, 4-byte pieces of a wider one; each as (offset
    within the 256-byte block the registers repeat in, size, bit position in the access's value)."""
    if size not in (1, 2, 4, 8) or offset % size:
        return []
    step = min(size, 4)
    return [((offset + at) & 0xFF, step, 8 * at) for at in range(0, size, step)]


def level_triggered(entry):
    return bool(entry & TRIGGER_LEVEL) and (entry >> DELMODE_SHIFT) & 7 in LEVEL_MODES


class Vioapic:
    """The chip: registers through `mmio_read`/`mmio_write` (offsets in its page), pins through `set_pin`/`pulse_pin`,
    the local APICs' EOI broadcast through `eoi`. It sends a message with `deliver(dest, physical, mode, vector,
    level)`, which returns how many local APICs accepted it (io/apicbus.py), and calls `update_tmr(entries)` when
    an entry's vector, delivery mode, destination or trigger mode changes (bhyve's vioapic_write: the local APICs'
    TMR and EOI-exit bitmaps follow the table).

    Legend: made at power-on by the platform; every method takes `lock` (pins change on device threads, the
    registers and EOIs on vCPU threads). Lock order: the 8259's lock, then this one; this one never calls out
    to the 8259."""

    def __init__(self, deliver, update_tmr=lambda entries: None):
        self.deliver, self.update_tmr = deliver, update_tmr
        self.lock = threading.RLock()
        self.reset()

    def reset(self):
        """Power-on state: ID 0, IOREGSEL 0, every entry masked and otherwise 0 (§3.2.4: xxx1 xxxx xxxx xxxxh),
        every pin deasserted."""
        with self.lock:
            self.id = 0
            self.ioregsel = 0
            self.entries = [MASKED] * PINS
            self.lines = 0                       # pin levels, a bit per pin
            self.delivered = [0] * PINS          # messages sent per pin, for views and tests

    # -- memory space (§3.1) -----------------------------------------------------------------------------
    def mmio_read(self, offset, size):
        with self.lock:
            value = 0
            for at, width, shift in pieces(offset, size):
                if at == IOREGSEL:
                    value |= self.ioregsel << shift
                elif at == IOWIN and width == 4:
                    value |= self.read_register(self.ioregsel) << shift
            return value

    def mmio_write(self, offset, size, value):
        with self.lock:
            for at, width, shift in pieces(offset, size):
                part = (value >> shift) & ((1 << 8 * width) - 1)
                if at == IOREGSEL:
                    self.ioregsel = part & 0xFF
                elif at == IOWIN and width == 4:
                    self.write_register(self.ioregsel, part)

    # -- the registers IOWIN reaches (§3.2) --------------------------------------------------------------
    def read_register(self, index):
        with self.lock:
            if index in (REG_ID, REG_ARB):
                return self.id << 24
            if index == REG_VER:
                return VERSION | (PINS - 1) << 16
            if REG_REDTBL <= index < REG_REDTBL + 2 * PINS:
                entry = self.entries[(index - REG_REDTBL) >> 1]
                return entry >> 32 if index & 1 else entry & 0xFFFFFFFF
            return 0

    def write_register(self, index, value):
        with self.lock:
            value &= 0xFFFFFFFF
            if index == REG_ID:
                self.id = (value >> 24) & 0xF
            elif REG_REDTBL <= index < REG_REDTBL + 2 * PINS:
                self.write_entry((index - REG_REDTBL) >> 1, index & 1, value)

    def write_entry(self, pin, high, value):
        old = self.entries[pin]
        entry = (old & 0xFFFFFFFF) | value << 32 if high else (old & ~0xFFFFFFFF) | value
        entry = (entry & ~READ_ONLY) | (old & READ_ONLY)
        if not entry & TRIGGER_LEVEL:
            entry &= ~REMOTE_IRR                 # edge-triggered: remote IRR means nothing and is cleared
        self.entries[pin] = entry
        if (old ^ entry) & ~(MASKED | POLARITY_LOW | REMOTE_IRR):
            self.update_tmr(list(self.entries))  # bhyve's vioapic_update_tmr: which vectors are level-triggered
        if level_triggered(entry) and self.lines >> pin & 1:
            self._send(pin)                      # unmasked (or re-aimed) while asserted: delivered now

    # -- the pins ----------------------------------------------------------------------------------------
    def set_pin(self, pin, level):
        """A device drives pin `pin` to `level` (asserted or not). Pins outside 0-23 are not wired."""
        if not 0 <= pin < PINS:
            return
        with self.lock:
            rising = bool(level) and not self.lines >> pin & 1
            self.lines = self.lines | 1 << pin if level else self.lines & ~(1 << pin)
            if level and (rising or level_triggered(self.entries[pin])):
                self._send(pin)

    def pulse_pin(self, pin):
        """A rising then a falling edge (an edge-triggered source: the 8254, the 8259's INT output)."""
        with self.lock:
            self.set_pin(pin, True)
            self.set_pin(pin, False)

    def eoi(self, vector):
        """The EOI broadcast from a local APIC: every pin whose remote IRR is set for `vector` is done; one still
        asserted delivers again (bhyve's vioapic_process_eoi)."""
        with self.lock:
            for pin in range(PINS):
                entry = self.entries[pin]
                if entry & REMOTE_IRR and entry & VECTOR == vector:
                    self.entries[pin] = entry & ~REMOTE_IRR
                    if self.lines >> pin & 1:
                        self._send(pin)

    def _send(self, pin):
        """vioapic_send_intr: the pin's message, unless the pin is masked or its last level-triggered interrupt
        awaits its EOI."""
        entry = self.entries[pin]
        if entry & MASKED:
            return
        level = level_triggered(entry)
        if level and entry & REMOTE_IRR:
            return
        accepted = self.deliver(entry >> DEST_SHIFT, not entry & DESTMODE_LOGICAL, (entry >> DELMODE_SHIFT) & 7,
                                entry & VECTOR, level)
        self.delivered[pin] += 1
        if level and accepted:
            self.entries[pin] |= REMOTE_IRR

    # -- snapshots ---------------------------------------------------------------------------------------
    def state(self):
        with self.lock:
            return {"id": self.id, "ioregsel": self.ioregsel, "entries": list(self.entries), "lines": self.lines}

    def load_state(self, state):
        with self.lock:
            self.id, self.ioregsel, self.lines = state["id"], state["ioregsel"], state["lines"]
            self.entries = list(state["entries"])
            self.update_tmr(list(self.entries))

    def table(self):
        """The redirection table decoded, for views: one dict per pin."""
        with self.lock:
            return [{"pin": pin, "vector": e & VECTOR, "mode": MODE_NAMES[(e >> DELMODE_SHIFT) & 7],
                     "logical": bool(e & DESTMODE_LOGICAL), "dest": e >> DEST_SHIFT,
                     "level": bool(e & TRIGGER_LEVEL), "active_low": bool(e & POLARITY_LOW),
                     "remote_irr": bool(e & REMOTE_IRR), "masked": bool(e & MASKED),
                     "asserted": bool(self.lines >> pin & 1), "delivered": self.delivered[pin]}
                    for pin, e in enumerate(self.entries)]
