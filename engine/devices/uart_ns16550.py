"""An NS16550A UART with the register model of bhyve's usr.sbin/bhyve/uart_emul.c, fed by a Console.

The device knows its eight registers by offset, not where it is mapped: a bus places it at 0x3F8
(COM1, IRQ 4) or 0x2F8 (COM2, IRQ 3). Transmit is immediate, so the transmitter is always empty;
receive goes through a FIFO that is topped up from the console whenever it has room.
"""
import threading
from collections import deque

# Register offsets (dev/ic/ns16550.h). Offsets 0/1 are DLL/DLM while LCR.DLAB is set; 2 is IIR on
# read and FCR on write.
REG_DATA, REG_IER, REG_IIR, REG_LCR, REG_MCR, REG_LSR, REG_MSR, REG_SCR = range(8)
REG_DLL, REG_DLM, REG_FCR = REG_DATA, REG_IER, REG_IIR
REGISTER_NAMES = ("RBR/THR", "IER", "IIR/FCR", "LCR", "MCR", "LSR", "MSR", "SCR")

IER_ERXRDY, IER_ETXRDY, IER_ERLS, IER_EMSC = 0x01, 0x02, 0x04, 0x08
IER_MASK = 0x0F                      # uart_write: "bits 4-7 are 0"

IIR_NOPEND, IIR_TXRDY, IIR_RLS, IIR_RXTOUT, IIR_MLSC = 0x01, 0x02, 0x06, 0x0C, 0x00
IIR_FIFO_MASK = 0xC0

FCR_ENABLE, FCR_RCV_RST, FCR_XMT_RST, FCR_DMA, FCR_RX_MASK = 0x01, 0x02, 0x04, 0x08, 0xC0

LCR_DLAB = 0x80

MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOPBACK = 0x01, 0x02, 0x04, 0x08, 0x10
MCR_MASK = 0x1F                      # uart_write: "bits 5-7 are 0"

LSR_RXRDY, LSR_OE, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x20, 0x40

MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
MSR_DELTA_MASK = 0x0F

FIFO_SIZE = 16
# uart_reset: DEFAULT_RCLK / DEFAULT_BAUD / 16, i.e. 1843200 Hz / 9600 baud / 16 = 12.
POWER_ON_DIVISOR = 1843200 // 9600 // 16

# Loopback wiring (modem_status in uart_emul.c): each MCR output drives one MSR input.
LOOPBACK_WIRING = ((MCR_RTS, MSR_CTS), (MCR_DTR, MSR_DSR), (MCR_OUT1, MSR_RI), (MCR_OUT2, MSR_DCD))

# Outside loopback the line always has carrier and a ready peer. uart_emul.c asserts DCD|DSR "so tty
# open doesn't block even if CLOCAL is turned off"; we also assert CTS so that guests doing hardware
# flow control are never held off by a peer that does not exist.
MSR_IDLE_LINE = MSR_DCD | MSR_DSR | MSR_CTS


def modem_status(mcr):
    """MSR status bits (no deltas) for a given MCR, as uart_emul.c's modem_status()."""
    if not mcr & MCR_LOOPBACK:
        return MSR_IDLE_LINE
    return sum(msr_bit for mcr_bit, msr_bit in LOOPBACK_WIRING if mcr & mcr_bit)


def msr_deltas(old, new):
    """Delta bits raised when the MSR status bits go from `old` to `new` (uart_write, REG_MCR)."""
    deltas = 0
    for status, delta in ((MSR_CTS, MSR_DCTS), (MSR_DSR, MSR_DDSR), (MSR_DCD, MSR_DDCD)):
        if (old ^ new) & status:
            deltas |= delta
    if old & MSR_RI and not new & MSR_RI:       # TERI is the trailing edge of RI only
        deltas |= MSR_TERI
    return deltas


class Uart16550:
    """One 16550A: `read(offset)`/`write(offset, value)` from the vCPU thread, input from the console.

    Fields: the registers (ier, lcr, mcr, lsr, msr, fcr, scr, dll, dlm), thre_int_pending, the
    receive FIFO `_rx`/`_rx_size` and `_irq_level` are guarded by `_lock`, an RLock so that an IRQ
    callback may read `irq_asserted`. `console` and `name` are set here and never change.
    """

    def __init__(self, console, name="com1"):
        self.console = console
        self.name = name
        self._lock = threading.RLock()
        self._irq_callbacks = []
        self._irq_level = False
        self._claimed = False          # input flows in only once the guest drives this UART (see _pull_input)
        self.reset()
        console.on_input(self._input_arrived)

    def __repr__(self):
        return f"<Uart16550 {self.name}>"

    # -- public -----------------------------------------------------------------------------------
    def reset(self):
        """Power-on state (uart_init/uart_reset): LSR reads 0x60, IIR 0x01, 1-byte FIFO, 9600 baud."""
        with self._lock:
            self.ier = self.lcr = self.mcr = self.lsr = self.fcr = self.scr = 0
            self.dll, self.dlm = POWER_ON_DIVISOR & 0xFF, POWER_ON_DIVISOR >> 8
            self.msr = modem_status(self.mcr)
            self.thre_int_pending = False
            self._rx_reset(1)                       # "no fifo until enabled by software"
            self._update()

    def read(self, offset):
        """The guest reads register `offset` (0-7); returns 0-255. Reads of IIR, LSR, MSR, RBR have side effects."""
        self._check_offset(offset)
        with self._lock:
            if offset in (REG_DATA, REG_LSR) and not self.lcr & LCR_DLAB:
                self._claim()                # the guest looks for input: from now on it flows in
            if self.lcr & LCR_DLAB and offset in (REG_DLL, REG_DLM):
                value = self.dll if offset == REG_DLL else self.dlm
            else:
                value = self._READERS[offset](self)
            self._update()
            return value

    def write(self, offset, value):
        """The guest writes `value` (0-255) to register `offset` (0-7)."""
        self._check_offset(offset)
        if not 0 <= value <= 0xFF:
            raise ValueError(f"{self.name}: value {value:#x} does not fit an 8-bit register; "
                             "split wider port accesses into bytes")
        with self._lock:
            if self.lcr & LCR_DLAB and offset in (REG_DLL, REG_DLM):
                setattr(self, "dll" if offset == REG_DLL else "dlm", value)
            else:
                self._WRITERS[offset](self, value)
            self._update()

    @property
    def irq_asserted(self):
        """The level of the IRQ line: an interrupt is pending and MCR.OUT2 is set.

        On a PC the UART's INTR pin reaches the 8259 through a buffer enabled by OUT2, so drivers
        set OUT2 to get interrupts. bhyve's uart_toggle_intr does not gate on OUT2; we do, because
        guests written for real PCs (and Linux's 8250 driver) rely on it to mask the line.
        """
        with self._lock:
            return self._intr_reason() != IIR_NOPEND and bool(self.mcr & MCR_OUT2)

    def clear_irq_listeners(self):
        """Forget who hears the interrupt line (the board is being rewired, as at a VM reset)."""
        with self._lock:
            self._irq_callbacks.clear()

    def on_irq_change(self, callback):
        """Call `callback(level)` whenever `irq_asserted` changes, with the UART lock held.

        It runs on whichever thread caused the change (vCPU or typing thread), like uart_emul.c's
        intr_assert/intr_deassert; it must not wait on another thread that may touch this UART.
        """
        self._irq_callbacks.append(callback)

    # -- register reads (uart_read) ---------------------------------------------------------------
    def _read_rbr(self):
        # An empty FIFO reads 0xFF: uart_emul.c stores rxfifo_getchar()'s -1 in a uint8_t.
        return self._rx.popleft() if self._rx else 0xFF

    def _read_ier(self):
        return self.ier

    def _read_iir(self):
        reason = self._intr_reason()
        if reason == IIR_TXRDY:         # reading IIR acknowledges a THRE interrupt, as on the chip
            self.thre_int_pending = False
        return reason | (IIR_FIFO_MASK if self.fcr & FCR_ENABLE else 0)

    def _read_lcr(self):
        return self.lcr

    def _read_mcr(self):
        return self.mcr

    def _read_lsr(self):
        self.lsr |= LSR_TEMT | LSR_THRE           # "Transmitter is always ready for more data"
        self.lsr = (self.lsr | LSR_RXRDY) if self._rx else (self.lsr & ~LSR_RXRDY)
        value = self.lsr
        self.lsr &= ~LSR_OE                       # "The LSR_OE bit is cleared on LSR read"
        return value

    def _read_msr(self):
        value = self.msr
        self.msr &= ~MSR_DELTA_MASK               # "MSR delta bits are cleared on read"
        return value

    def _read_scr(self):
        return self.scr

    _READERS = (_read_rbr, _read_ier, _read_iir, _read_lcr, _read_mcr, _read_lsr, _read_msr, _read_scr)

    # -- register writes (uart_write) -------------------------------------------------------------
    def _write_thr(self, value):
        if self.mcr & MCR_LOOPBACK:
            if len(self._rx) < self._rx_size:
                self._rx.append(value)
            else:
                self.lsr |= LSR_OE
        else:
            self.console.output(bytes([value]))
        self.thre_int_pending = True

    def _write_ier(self, value):
        # "Assert an interrupt if re-enabling the THRE intr, since we always report THRE as active."
        if not self.ier & IER_ETXRDY and value & IER_ETXRDY:
            self.thre_int_pending = True
        self.ier = value & IER_MASK

    def _write_fcr(self, value):
        # Moving between FIFO and 16450 mode resets the FIFO; other bits need FCR_ENABLE to count.
        if (self.fcr ^ value) & FCR_ENABLE:
            self._rx_reset(FIFO_SIZE if value & FCR_ENABLE else 1)
        if not value & FCR_ENABLE:
            self.fcr = 0
            return
        if value & FCR_RCV_RST:
            self._rx_reset(FIFO_SIZE)
        # FCR_XMT_RST has nothing to clear: transmit is immediate, so there is no TX FIFO.
        self.fcr = value & (FCR_ENABLE | FCR_DMA | FCR_RX_MASK)

    def _write_lcr(self, value):
        self.lcr = value

    def _write_mcr(self, value):
        self.mcr = value & MCR_MASK
        status = modem_status(self.mcr)
        self.msr = (self.msr & MSR_DELTA_MASK) | msr_deltas(self.msr, status) | status

    def _write_ignored(self, value):
        """LSR and MSR are read-only: uart_emul.c drops writes to them."""

    def _write_scr(self, value):
        self.scr = value

    _WRITERS = (_write_thr, _write_ier, _write_fcr, _write_lcr, _write_mcr, _write_ignored,
                _write_ignored, _write_scr)

    # -- receive side ---------------------------------------------------------------------------
    def _input_arrived(self):
        """Console callback on the typing thread (uart_drain in the mevent thread)."""
        with self._lock:
            self._pull_input()
            self._update()

    def _claim(self):
        if not self._claimed:
            self._claimed = True
            self._pull_input()

    def _pull_input(self):
        """Top the FIFO up from the console; input never overruns, it waits in the console.

        Until the guest first looks for input (reads RBR or LSR) the console's input is left alone: a boot sector reads
        the same console through the BIOS keyboard, and an untouched UART must not swallow its keys.
        """
        if not self._claimed:
            return
        if self.mcr & MCR_LOOPBACK:
            # uart_drain reads and drops backend input while in loopback: the line is disconnected.
            while self.console.has_input():
                self.console.take_input(4096)
            return
        room = self._rx_size - len(self._rx)
        if room > 0:
            self._rx.extend(self.console.take_input(room))

    def _rx_reset(self, size):
        # Unlike rxfifo_reset we do not flush the backend: typed bytes not yet in the FIFO have not
        # reached the wire, and a shared web console should not lose them to a guest's FCR write.
        self._rx = deque()
        self._rx_size = size

    # -- interrupt ------------------------------------------------------------------------------
    def _intr_reason(self):
        """uart_intr_reason: RLS > RXTOUT > TXRDY > MLSC. Received data is reported as RXTOUT (0x0C)."""
        if self.lsr & LSR_OE and self.ier & IER_ERLS:
            return IIR_RLS
        if self._rx and self.ier & IER_ERXRDY:
            return IIR_RXTOUT
        if self.thre_int_pending and self.ier & IER_ETXRDY:
            return IIR_TXRDY
        if self.msr & MSR_DELTA_MASK and self.ier & IER_EMSC:
            return IIR_MLSC
        return IIR_NOPEND

    def _update(self):
        """After every access (uart_toggle_intr): refill the FIFO, then tell listeners of an IRQ edge."""
        self._pull_input()
        level = self.irq_asserted
        if level != self._irq_level:
            self._irq_level = level
            for callback in self._irq_callbacks:
                callback(level)

    def _check_offset(self, offset):
        if not 0 <= offset < len(REGISTER_NAMES):
            raise ValueError(f"{self.name}: register offset {offset} is outside 0-7; "
                             "the bus must pass offsets relative to the UART's base port")
