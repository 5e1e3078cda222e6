"""The 8259A pair (master at 0x20, slave at 0xA0 on the master's IRQ 2), modeled on bhyve's io/vatpic.c.

Each chip knows its registers — the ICW1-4 initialization sequence, IMR (OCW1), EOI (OCW2), the
IRR/ISR read select (OCW3) — not where it is mapped. Edge-triggered inputs, fixed priority (IRQ 0
highest), the slave cascaded into the master's IRQ 2. The master's INT output is the ExtINT line of
the bootstrap vCPU: when it rises the VM notifies that vCPU, whose injection step asks `acknowledge()`
for the vector (the INTA cycle) when no local-APIC interrupt is ahead of it.
"""
import threading

ICW1_INIT, ICW1_SNGL, ICW1_IC4 = 0x10, 0x02, 0x01
ICW4_AEOI = 0x02
OCW2_EOI, OCW2_SPECIFIC = 0x20, 0x40
OCW3_SELECT, OCW3_RR, OCW3_RIS = 0x08, 0x02, 0x01
CASCADE_IRQ = 2


class I8259:
    """One chip: `write(offset, value)`/`read(offset)` for offsets 0 (command) and 1 (data)."""

    def __init__(self, name):
        self.name = name
        self.reset()

    def reset(self):
        self.irr = self.isr = self.imr = 0
        self.vector_base, self.icw_step, self.icw4_wanted, self.single, self.aeoi = 0, 0, False, False, False
        self.read_isr = False
        self.lines = 0                                  # input levels, for edge detection

    # -- registers ---------------------------------------------------------------------------------
    def write(self, offset, value):
        if offset == 0:
            self._command(value)
        elif self.icw_step:
            self._icw(value)
        else:
            self.imr = value                            # OCW1

    def read(self, offset):
        if offset == 1:
            return self.imr
        return self.isr if self.read_isr else self.irr

    def _command(self, value):
        if value & ICW1_INIT:                           # ICW1: start the initialization sequence
            self.irr = self.isr = self.imr = 0
            self.icw_step, self.icw4_wanted, self.read_isr = 2, bool(value & ICW1_IC4), False
            self.single = bool(value & ICW1_SNGL)
        elif value & OCW3_SELECT:                       # OCW3
            if value & OCW3_RR:
                self.read_isr = bool(value & OCW3_RIS)
        elif value & OCW2_EOI:                          # OCW2: specific or non-specific EOI
            if value & OCW2_SPECIFIC:
                self.isr &= ~(1 << (value & 7))
            elif self.isr:
                self.isr &= ~(self.isr & -self.isr)     # the highest-priority (lowest-numbered) in service

    def _icw(self, value):
        if self.icw_step == 2:                          # ICW2: vector base (bits 7:3); ICW3 only when cascaded
            self.vector_base = value & 0xF8
            self.icw_step = 3 if not self.single else 4 if self.icw4_wanted else 0
        elif self.icw_step == 3:                        # ICW3: cascade wiring (fixed here)
            self.icw_step = 4 if self.icw4_wanted else 0
        else:                                           # ICW4
            self.aeoi, self.icw_step = bool(value & ICW4_AEOI), 0

    # -- interrupt lines ---------------------------------------------------------------------------
    def set_line(self, irq, level):
        bit = 1 << irq
        if level and not self.lines & bit:
            self.irr |= bit                             # a rising edge requests
        self.lines = self.lines | bit if level else self.lines & ~bit

    def pending_irq(self):
        """The IRQ the chip would present: highest-priority unmasked request above everything in service."""
        requests = self.irr & ~self.imr
        for irq in range(8):
            if self.isr & (1 << irq):
                return None
            if requests & (1 << irq):
                return irq
        return None

    def accept(self, irq):
        self.irr &= ~(1 << irq)
        if not self.aeoi:
            self.isr |= 1 << irq
        return self.vector_base + irq


class Vpic:
    """The pair, with the lock bhyve's vatpic takes: lines rise from device threads, INTA from a vCPU."""

    def __init__(self, on_output):
        self.master, self.slave = I8259("master"), I8259("slave")
        self.lock = threading.RLock()
        self.on_output = on_output                      # callback(level) when the master's INT changes
        self.output = False

    def port_read(self, chip, offset):
        with self.lock:
            return (self.master if chip == 0 else self.slave).read(offset)

    def port_write(self, chip, offset, value):
        with self.lock:
            (self.master if chip == 0 else self.slave).write(offset, value)
            self._update()

    def set_irq(self, irq, level):
        """ISA IRQ 0-15: 0-7 on the master, 8-15 on the slave."""
        with self.lock:
            if irq < 8:
                self.master.set_line(irq, level)
            else:
                self.slave.set_line(irq - 8, level)
            self._update()

    def pulse(self, irq):
        self.set_irq(irq, True)
        self.set_irq(irq, False)

    def acknowledge(self):
        """The INTA cycle: the vector of the highest-priority request (the slave's through IRQ 2), or None."""
        with self.lock:
            irq = self.master.pending_irq()
            if irq is None:
                return None
            if irq == CASCADE_IRQ:
                slave_irq = self.slave.pending_irq()
                if slave_irq is not None:
                    self.master.accept(CASCADE_IRQ)
                    vector = self.slave.accept(slave_irq)
                    self._update()
                    return vector
            vector = self.master.accept(irq)
            self._update()
            return vector

    def _update(self):
        self.master.set_line(CASCADE_IRQ, self.slave.pending_irq() is not None)
        level = self.master.pending_irq() is not None
        if level != self.output:
            self.output = level
            self.on_output(level)
