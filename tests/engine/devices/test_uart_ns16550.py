"""Tests for engine/devices/uart_ns16550.py: the 16550A register model of bhyve's uart_emul.c."""
import threading

import pytest

from engine.devices.console import Console
from engine.devices.uart_ns16550 import (
    FCR_ENABLE, FCR_RCV_RST, FCR_XMT_RST, FIFO_SIZE, IER_EMSC, IER_ERLS, IER_ERXRDY, IER_ETXRDY,
    LCR_DLAB, LSR_OE, LSR_RXRDY, LSR_TEMT, LSR_THRE, MCR_DTR, MCR_LOOPBACK, MCR_OUT1, MCR_OUT2,
    MCR_RTS, MSR_CTS, MSR_DCD, MSR_DCTS, MSR_DDCD, MSR_DDSR, MSR_DSR, MSR_RI, MSR_TERI, REG_DATA,
    REG_DLL, REG_DLM, REG_FCR, REG_IER, REG_IIR, REG_LCR, REG_LSR, REG_MCR, REG_MSR, REG_SCR,
    Uart16550,
)

IIR_NONE, IIR_THRE, IIR_RLS, IIR_RX, IIR_MODEM, IIR_FIFOS = 0x01, 0x02, 0x06, 0x0C, 0x00, 0xC0


@pytest.fixture
def console():
    return Console()


@pytest.fixture
def uart(console):
    """A UART whose guest driver has started polling it (reading LSR), so typed input flows in."""
    u = Uart16550(console)
    u.read(REG_LSR)
    return u


def read_all(uart):
    """Every byte the receive side holds, via RBR while LSR.DR says there is one."""
    data = bytearray()
    while uart.read(REG_LSR) & LSR_RXRDY:
        data.append(uart.read(REG_DATA))
    return bytes(data)


# -- access checks ----------------------------------------------------------------------------------
@pytest.mark.parametrize("offset", [-1, 8, 0x3F8])
def test_offsets_outside_0_to_7_are_refused(uart, offset):
    """A bus that passes an absolute port instead of an offset gets a ValueError naming the range."""
    with pytest.raises(ValueError, match="outside 0-7"):
        uart.read(offset)
    with pytest.raises(ValueError, match="outside 0-7"):
        uart.write(offset, 0)


def test_values_wider_than_a_byte_are_refused(uart):
    """Writing 0x100 to a register is refused rather than silently truncated."""
    with pytest.raises(ValueError, match="8-bit"):
        uart.write(REG_SCR, 0x100)


# -- power-on and reset -----------------------------------------------------------------------------
POWER_ON = {REG_IER: 0x00, REG_IIR: 0x01, REG_LCR: 0x00, REG_MCR: 0x00, REG_LSR: 0x60,
            REG_MSR: MSR_DCD | MSR_DSR | MSR_CTS, REG_SCR: 0x00}


def assert_power_on(uart):
    for offset, value in POWER_ON.items():
        assert uart.read(offset) == value, f"register {offset}"
    uart.write(REG_LCR, LCR_DLAB)
    assert (uart.read(REG_DLL), uart.read(REG_DLM)) == (12, 0)      # 9600 baud, as uart_reset
    uart.write(REG_LCR, 0)


def test_power_on_register_values(uart):
    """A fresh UART reads LSR=0x60, IIR=0x01, MSR=DCD|DSR|CTS, divisor 12 and zero elsewhere."""
    assert_power_on(uart)


def test_reset_restores_power_on_values(uart, console):
    """After a guest has programmed every register and queued data, reset() gives power-on values."""
    uart.write(REG_LCR, LCR_DLAB)
    uart.write(REG_DLL, 1)
    uart.write(REG_DLM, 2)
    uart.write(REG_LCR, 0x1B)
    uart.write(REG_IER, 0x0F)
    uart.write(REG_FCR, FCR_ENABLE)
    uart.write(REG_MCR, MCR_LOOPBACK | MCR_OUT2 | MCR_DTR)
    uart.write(REG_SCR, 0x5A)
    for byte in b"abc":
        uart.write(REG_DATA, byte)
    uart.reset()
    assert_power_on(uart)
    assert uart.read(REG_DATA) == 0xFF                  # the loopback bytes are gone
    assert not uart.irq_asserted


def test_reset_returns_to_a_one_byte_fifo(uart, console):
    """A FIFO enabled before reset() is 1 byte again afterwards, until FCR enables it."""
    uart.write(REG_FCR, FCR_ENABLE)
    uart.reset()
    console.send_input(b"xyz")
    assert console.take_input(10) == b"yz"


# -- transmit ---------------------------------------------------------------------------------------
def test_thr_write_goes_to_the_console(uart, console):
    """Bytes written to THR appear in the console's output in order."""
    for byte in b"hello\n":
        uart.write(REG_DATA, byte)
    assert console.contents() == b"hello\n"


def test_transmitter_is_always_empty(uart):
    """LSR reports THRE|TEMT straight after a THR write: transmit is immediate."""
    uart.write(REG_DATA, ord("x"))
    assert uart.read(REG_LSR) & (LSR_THRE | LSR_TEMT) == LSR_THRE | LSR_TEMT


def test_lsr_and_msr_ignore_writes(uart):
    """LSR and MSR are read-only: writing 0xFF to them changes nothing."""
    uart.write(REG_LSR, 0xFF)
    uart.write(REG_MSR, 0xFF)
    assert uart.read(REG_LSR) == 0x60
    assert uart.read(REG_MSR) == POWER_ON[REG_MSR]


# -- receive from the console ----------------------------------------------------------------------
def test_console_input_reads_back_in_order(uart, console):
    """Typed bytes come out of RBR one by one, in order, with LSR.DR set until the last."""
    console.send_input(b"boot\r")
    assert read_all(uart) == b"boot\r"
    assert uart.read(REG_LSR) & LSR_RXRDY == 0


def test_input_typed_before_the_uart_exists_is_received(console):
    """Bytes already waiting in the console reach RBR of a UART created afterwards."""
    console.send_input(b"ok")
    assert read_all(Uart16550(console)) == b"ok"


def test_untouched_uart_leaves_input_to_others(console):
    """A UART the guest never polled takes no input: a boot sector's BIOS keyboard reads the same console."""
    uart = Uart16550(console)
    uart.write(REG_IER, 0)
    console.send_input(b"xy")
    assert console.take_input(10) == b"xy"


def test_empty_rbr_reads_ff(uart):
    """Reading RBR with nothing received gives 0xFF, as uart_emul.c's -1 in a uint8_t."""
    assert uart.read(REG_DATA) == 0xFF


def test_without_fcr_the_fifo_holds_one_byte(uart, console):
    """In 16450 mode only one typed byte enters the UART; the rest wait in the console."""
    console.send_input(b"abc")
    assert console.take_input(10) == b"bc"
    assert read_all(uart) == b"a"


def test_fcr_enable_gives_a_16_byte_fifo(uart, console):
    """With FCR_ENABLE, 16 of 20 typed bytes enter the FIFO and 4 wait in the console."""
    uart.write(REG_FCR, FCR_ENABLE)
    data = bytes(range(0x41, 0x41 + 20))
    console.send_input(data)
    assert console.take_input(100) == data[FIFO_SIZE:]
    assert read_all(uart) == data[:FIFO_SIZE]


def test_fcr_disable_returns_to_a_one_byte_fifo(uart, console):
    """Clearing FCR_ENABLE after enabling it brings back the 1-byte 16450 receiver."""
    uart.write(REG_FCR, FCR_ENABLE)
    uart.write(REG_FCR, 0)
    console.send_input(b"abc")
    assert console.take_input(10) == b"bc"


def test_console_input_never_overruns(uart, console):
    """More typing than the FIFO holds is delivered later, not lost, and OE stays clear."""
    uart.write(REG_FCR, FCR_ENABLE)
    data = bytes(range(40))
    console.send_input(data)
    assert uart.read(REG_LSR) & LSR_OE == 0
    assert read_all(uart) == data


def test_typing_thread_and_vcpu_thread_together(uart, console):
    """Bytes typed from another thread while the vCPU polls arrive complete and in order."""
    data = bytes(i % 256 for i in range(2000))
    typist = threading.Thread(target=lambda: [console.send_input(data[i:i + 7])
                                              for i in range(0, len(data), 7)])
    typist.start()
    received = bytearray()
    while len(received) < len(data):
        if uart.read(REG_LSR) & LSR_RXRDY:
            received.append(uart.read(REG_DATA))
    typist.join()
    assert bytes(received) == data


# -- FIFO control -----------------------------------------------------------------------------------
def loopback_fill(uart, data):
    uart.write(REG_MCR, MCR_LOOPBACK)
    for byte in data:
        uart.write(REG_DATA, byte)


def test_overrun_without_fifo_sets_oe(uart):
    """In 16450 mode a second loopback byte overruns: LSR shows OE|DR and keeps the first byte."""
    loopback_fill(uart, b"12")
    assert uart.read(REG_LSR) & (LSR_OE | LSR_RXRDY) == LSR_OE | LSR_RXRDY
    assert uart.read(REG_LSR) & LSR_OE == 0                  # reading LSR cleared OE
    assert read_all(uart) == b"1"


def test_overrun_with_fifo_at_the_17th_byte(uart):
    """With FIFOs on, 16 loopback bytes fit and the 17th sets OE and is dropped."""
    uart.write(REG_FCR, FCR_ENABLE)
    loopback_fill(uart, bytes(range(16)))
    assert uart.read(REG_LSR) & LSR_OE == 0
    uart.write(REG_DATA, 0xEE)
    assert uart.read(REG_LSR) & LSR_OE
    assert read_all(uart) == bytes(range(16))


def test_fcr_rx_reset_empties_the_fifo(uart):
    """FCR_ENABLE|FCR_RCV_RST discards received bytes."""
    uart.write(REG_FCR, FCR_ENABLE)
    loopback_fill(uart, b"abc")
    uart.write(REG_FCR, FCR_ENABLE | FCR_RCV_RST)
    assert read_all(uart) == b""


def test_fcr_tx_reset_leaves_received_bytes(uart):
    """FCR_XMT_RST has no transmit FIFO to clear and does not touch received bytes."""
    uart.write(REG_FCR, FCR_ENABLE)
    loopback_fill(uart, b"abc")
    uart.write(REG_FCR, FCR_ENABLE | FCR_XMT_RST)
    assert read_all(uart) == b"abc"


def test_fcr_reset_bits_need_fcr_enable(uart):
    """In 16450 mode FCR_RCV_RST without FCR_ENABLE is ignored, as uart_emul.c."""
    loopback_fill(uart, b"a")
    uart.write(REG_FCR, FCR_RCV_RST)
    assert read_all(uart) == b"a"


@pytest.mark.parametrize("first, then", [(0, FCR_ENABLE), (FCR_ENABLE, 0)])
def test_switching_fifo_mode_empties_the_fifo(uart, first, then):
    """Moving between 16450 and FIFO mode resets the receive FIFO."""
    uart.write(REG_FCR, first)
    loopback_fill(uart, b"a")
    uart.write(REG_FCR, then)
    assert read_all(uart) == b""


def test_fcr_reset_refills_from_the_console(uart, console):
    """After FCR empties the FIFO, bytes still waiting in the console move in."""
    console.send_input(b"ab")
    uart.write(REG_FCR, FCR_ENABLE)          # drops "a" (as the chip would), pulls "b"
    assert read_all(uart) == b"b"


@pytest.mark.parametrize("fcr, iir", [(0, 0x01), (FCR_ENABLE, 0xC1)])
def test_iir_reports_fifo_enabled_bits(uart, fcr, iir):
    """IIR bits 6-7 are set exactly when FCR has enabled the FIFOs."""
    uart.write(REG_FCR, fcr)
    assert uart.read(REG_IIR) == iir


# -- interrupt identification -----------------------------------------------------------------------
def test_iir_priorities_rls_rx_thre_modem(uart):
    """With all four causes pending IIR reports RLS, then RX data, THRE, modem status, none."""
    uart.write(REG_FCR, FCR_ENABLE)
    uart.write(REG_IER, IER_ERLS | IER_ERXRDY | IER_ETXRDY | IER_EMSC)
    loopback_fill(uart, bytes(17))          # MSR deltas, data, overrun, THRE latch
    assert uart.read(REG_IIR) == IIR_FIFOS | IIR_RLS
    uart.read(REG_LSR)                      # clears OE
    assert uart.read(REG_IIR) == IIR_FIFOS | IIR_RX
    for _ in range(16):
        uart.read(REG_DATA)
    assert uart.read(REG_IIR) == IIR_FIFOS | IIR_THRE
    assert uart.read(REG_IIR) == IIR_FIFOS | IIR_MODEM
    uart.read(REG_MSR)                      # clears the delta bits
    assert uart.read(REG_IIR) == IIR_FIFOS | IIR_NONE


def test_pending_causes_with_ier_clear_raise_nothing(uart):
    """Overrun, data, THRE and modem deltas all pending with IER=0: IIR says none, no IRQ."""
    uart.write(REG_MCR, MCR_OUT2)
    loopback_fill(uart, b"12")
    uart.write(REG_MCR, MCR_LOOPBACK | MCR_OUT2)
    assert uart.read(REG_IIR) == IIR_NONE
    assert not uart.irq_asserted


@pytest.mark.parametrize("ier, iir", [(IER_ERLS, IIR_RLS), (IER_ERXRDY, IIR_RX),
                                      (IER_ETXRDY, IIR_THRE), (IER_EMSC, IIR_MODEM)])
def test_each_ier_bit_selects_its_cause(uart, ier, iir):
    """With every cause pending, enabling a single IER bit makes IIR report that cause only."""
    loopback_fill(uart, b"12")
    uart.write(REG_IER, ier)
    assert uart.read(REG_IIR) == iir


def test_received_data_is_reported_as_character_timeout(uart, console):
    """A typed byte with IER.ERXRDY shows IIR 0x0C (uart_emul.c reports RXTOUT), gone once read."""
    uart.write(REG_IER, IER_ERXRDY)
    console.send_input(b"k")
    assert uart.read(REG_IIR) == IIR_RX
    uart.read(REG_DATA)
    assert uart.read(REG_IIR) == IIR_NONE


def test_thre_latch_set_by_enabling_ier_and_cleared_by_iir_read(uart):
    """Enabling IER.ETXRDY raises THRE once; the IIR read that reports it clears it."""
    uart.write(REG_IER, IER_ETXRDY)
    assert uart.read(REG_IIR) == IIR_THRE
    assert uart.read(REG_IIR) == IIR_NONE


def test_thre_latch_set_by_thr_write(uart):
    """After the latch was acknowledged, each THR write raises THRE again."""
    uart.write(REG_IER, IER_ETXRDY)
    uart.read(REG_IIR)
    uart.write(REG_DATA, ord("x"))
    assert uart.read(REG_IIR) == IIR_THRE


def test_thre_latch_only_on_ier_rising_edge(uart):
    """Rewriting IER with ETXRDY already set does not re-arm THRE; clearing and setting does."""
    uart.write(REG_IER, IER_ETXRDY)
    uart.read(REG_IIR)
    uart.write(REG_IER, IER_ETXRDY)
    assert uart.read(REG_IIR) == IIR_NONE
    uart.write(REG_IER, 0)
    uart.write(REG_IER, IER_ETXRDY)
    assert uart.read(REG_IIR) == IIR_THRE


def test_thre_latch_survives_an_iir_read_reporting_something_else(uart, console):
    """An IIR read that reports RX data leaves the THRE latch pending for later."""
    uart.write(REG_IER, IER_ETXRDY | IER_ERXRDY)
    console.send_input(b"z")
    assert uart.read(REG_IIR) == IIR_RX
    uart.read(REG_DATA)
    assert uart.read(REG_IIR) == IIR_THRE


# -- IRQ line ---------------------------------------------------------------------------------------
def test_irq_needs_out2(uart):
    """A pending interrupt raises the IRQ line only while MCR.OUT2 is set (the PC's gate)."""
    uart.write(REG_IER, IER_ETXRDY)
    assert not uart.irq_asserted
    uart.write(REG_MCR, MCR_OUT2)
    assert uart.irq_asserted
    uart.write(REG_MCR, 0)
    assert not uart.irq_asserted


def test_irq_callback_follows_edges(uart):
    """on_irq_change hears True when THRE is armed with OUT2 and False when IIR acknowledges it."""
    levels = []
    uart.on_irq_change(levels.append)
    uart.write(REG_MCR, MCR_OUT2)
    uart.write(REG_IER, IER_ETXRDY)
    uart.write(REG_SCR, 1)                  # no change, no call
    uart.read(REG_IIR)
    assert levels == [True, False]


def test_irq_raised_from_the_typing_thread(uart, console):
    """Input typed on another thread asserts the IRQ there; reading RBR deasserts it."""
    levels = []
    uart.on_irq_change(lambda level: levels.append((level, threading.current_thread().name)))
    uart.write(REG_MCR, MCR_OUT2)
    uart.write(REG_IER, IER_ERXRDY)
    typist = threading.Thread(target=console.send_input, args=(b"q",), name="typist")
    typist.start()
    typist.join()
    assert levels == [(True, "typist")]
    assert uart.read(REG_DATA) == ord("q")
    assert levels[-1] == (False, threading.current_thread().name)


# -- loopback and modem status ----------------------------------------------------------------------
def test_loopback_thr_goes_to_rbr_not_the_console(uart, console):
    """In loopback a THR byte is received back and never reaches the console."""
    loopback_fill(uart, b"L")
    assert read_all(uart) == b"L"
    assert console.contents() == b""


def test_loopback_drops_console_input(uart, console):
    """Typing during loopback is discarded (uart_drain); after loopback, typing arrives again."""
    uart.write(REG_MCR, MCR_LOOPBACK)
    console.send_input(b"lost")
    assert not console.has_input()
    assert read_all(uart) == b""
    uart.write(REG_MCR, 0)
    console.send_input(b"kept")
    assert read_all(uart) == b"kept"


@pytest.mark.parametrize("mcr, msr", [(MCR_RTS, MSR_CTS), (MCR_DTR, MSR_DSR), (MCR_OUT1, MSR_RI),
                                      (MCR_OUT2, MSR_DCD), (0, 0)])
def test_loopback_msr_reflects_mcr(uart, mcr, msr):
    """In loopback RTS drives CTS, DTR DSR, OUT1 RI and OUT2 DCD."""
    uart.write(REG_MCR, MCR_LOOPBACK | mcr)
    assert uart.read(REG_MSR) & 0xF0 == msr


def test_msr_outside_loopback_ignores_mcr(uart):
    """Without loopback MSR stays DCD|DSR|CTS whatever MCR says, with no deltas."""
    uart.write(REG_MCR, MCR_DTR | MCR_RTS | MCR_OUT1 | MCR_OUT2)
    assert uart.read(REG_MSR) == MSR_DCD | MSR_DSR | MSR_CTS


def test_msr_deltas_set_on_change_and_cleared_on_read(uart):
    """Entering loopback drops CTS, DSR, DCD: MSR shows their deltas once, then 0."""
    uart.write(REG_MCR, MCR_LOOPBACK)
    assert uart.read(REG_MSR) == MSR_DCTS | MSR_DDSR | MSR_DDCD
    assert uart.read(REG_MSR) == 0


def test_msr_teri_only_on_trailing_edge_of_ri(uart):
    """RI rising raises no delta; RI falling raises TERI."""
    uart.write(REG_MCR, MCR_LOOPBACK)
    uart.read(REG_MSR)
    uart.write(REG_MCR, MCR_LOOPBACK | MCR_OUT1)
    assert uart.read(REG_MSR) == MSR_RI
    uart.write(REG_MCR, MCR_LOOPBACK)
    assert uart.read(REG_MSR) == MSR_TERI


def test_msr_deltas_accumulate_until_read(uart):
    """CTS then DSR rising in two MCR writes leave both DCTS and DDSR for the next MSR read."""
    uart.write(REG_MCR, MCR_LOOPBACK)
    uart.read(REG_MSR)
    uart.write(REG_MCR, MCR_LOOPBACK | MCR_RTS)
    uart.write(REG_MCR, MCR_LOOPBACK | MCR_RTS | MCR_DTR)
    assert uart.read(REG_MSR) == MSR_CTS | MSR_DSR | MSR_DCTS | MSR_DDSR


# -- plain registers --------------------------------------------------------------------------------
def test_dlab_switches_offsets_0_and_1_to_the_divisor_latch(uart, console):
    """With LCR.DLAB, offsets 0/1 are DLL/DLM: writes there neither transmit nor change IER."""
    uart.write(REG_IER, IER_ERXRDY)
    uart.write(REG_LCR, LCR_DLAB | 0x03)
    uart.write(REG_DLL, 0x01)
    uart.write(REG_DLM, 0xC2)
    assert (uart.read(REG_DLL), uart.read(REG_DLM)) == (0x01, 0xC2)
    uart.write(REG_LCR, 0x03)
    assert uart.read(REG_IER) == IER_ERXRDY
    assert console.contents() == b""
    uart.write(REG_LCR, LCR_DLAB)
    assert (uart.read(REG_DLL), uart.read(REG_DLM)) == (0x01, 0xC2)


def test_dlab_does_not_hide_other_registers(uart):
    """With LCR.DLAB, IIR, LCR and SCR still answer at offsets 2, 3 and 7."""
    uart.write(REG_LCR, LCR_DLAB)
    uart.write(REG_SCR, 0x77)
    assert uart.read(REG_IIR) == IIR_NONE
    assert uart.read(REG_LCR) == LCR_DLAB
    assert uart.read(REG_SCR) == 0x77


@pytest.mark.parametrize("value", [0x00, 0x5A, 0xA5, 0xFF])
def test_scratch_round_trips(uart, value):
    """SCR returns whatever was written."""
    uart.write(REG_SCR, value)
    assert uart.read(REG_SCR) == value


@pytest.mark.parametrize("offset, written, read_back", [(REG_IER, 0xFF, 0x0F), (REG_LCR, 0x7F, 0x7F),
                                                        (REG_MCR, 0xEF, 0x0F)])
def test_register_write_masks(uart, offset, written, read_back):
    """IER keeps bits 0-3, MCR bits 0-4, LCR all eight, as uart_write."""
    uart.write(offset, written)
    assert uart.read(offset) == read_back
