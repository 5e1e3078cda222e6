"""The Intel 8042 keyboard controller of the PC/AT and PS/2 (ports 0x60 and 0x64), with nothing plugged into its
keyboard and auxiliary (mouse) ports, modeled on bhyve's usr.sbin/bhyve/atkbdc.c and QEMU's hw/input/pckbd.c.

What a guest sees is the controller's firmware (IBM PS/2 Technical Reference, "Keyboard/Auxiliary Device
Controller"): the status register at 0x64, commands written to 0x64, their parameters written and their answers
read at 0x60, the command byte ("controller RAM" byte 0: interrupt enables, port disables, system flag,
scan-code translation), the output port (bit 0 the CPU's reset line, bit 1 the A20 gate), the self-test (0xAA
answers 0x55), the interface tests (0xAB, 0xA9 answer 0x00: the lines are fine), and 0xF0-0xFF, which pulse
the output port's low bits: bit 0 pulsed low (0xFE, what Linux's reboot=k writes) resets the machine.

A byte for the keyboard (a write to 0x60 with no command pending) or for the mouse (command 0xD4) finds no
device: the controller gives up and answers 0xFE with the time-out bit set, as a controller with an empty port
does, so a driver's probe fails at once instead of waiting. The output buffer raises IRQ 1 (keyboard and
controller bytes) or IRQ 12 (mouse bytes, and what 0xD3 loops back) while it is full and the command byte
enables that interrupt. The A20 gate is remembered, not enforced: guest memory never wraps at 1 MiB.
The device knows its two ports by offset (0: data, 4: status/command), not where they are mapped.
"""
import threading
from collections import deque

DATA, COMMAND = 0, 4                                # port offsets from 0x60

# status register (IBM PS/2 TR; Linux's I8042_STR_*)
ST_OBF, ST_IBF, ST_SYS, ST_CMD, ST_UNLOCKED, ST_AUXDATA, ST_TIMEOUT, ST_PARITY = (1 << b for b in range(8))
# command byte
CB_KBDINT, CB_AUXINT, CB_SYS, CB_KBDDIS, CB_AUXDIS, CB_XLATE = 0x01, 0x02, 0x04, 0x10, 0x20, 0x40
# output port
OUT_RESET, OUT_A20, OUT_KBD_OBF, OUT_AUX_OBF = 0x01, 0x02, 0x10, 0x20
OUT_ONES = 0xCC                                     # the clock and data lines, idle high
INPUT_PORT = 0x80                                   # bit 7: the keyboard is not inhibited (no keylock)

# What firmware leaves for an OS when it found no keyboard and no mouse: both ports disabled, translation on,
# the system flag set (POST passed), the keylock open; A20 on and the reset line released.
POWER_ON_COMMAND_BYTE = CB_XLATE | CB_AUXDIS | CB_KBDDIS | CB_SYS
POWER_ON_OUTPUT_PORT = OUT_ONES | OUT_A20 | OUT_RESET
NO_DEVICE = 0xFE                                    # the controller's answer when the device does not respond
SELF_TEST_OK, INTERFACE_OK, NO_PASSWORD = 0x55, 0x00, 0xF1
QUEUE_MAX = 16
KBD, AUX = "kbd", "aux"                             # where a byte in the output buffer came from

# Commands that take a parameter byte at 0x60 (controller RAM bytes 1-31 at 0x61-0x7F besides 0x60).
WRITE_RAM, WRITE_OUTPUT, WRITE_KBD_OBF, WRITE_AUX_OBF, WRITE_AUX = 0x60, 0xD1, 0xD2, 0xD3, 0xD4


class I8042:
    """The controller: `read(offset)` / `write(offset, value)` from vCPU threads.

    Legend: every field is guarded by `_lock`; `irq(line, level)` (ISA IRQ 1 or 12) and `reset_line()` (the CPU
    reset the output port's bit 0 drives) are the platform's and are called with the lock held, never calling
    back in. `queue` holds (byte, source, timeout) tuples: its head is the output buffer.
    """

    def __init__(self, irq, reset_line):
        self._irq, self._reset_line = irq, reset_line
        self._lock = threading.RLock()
        self._levels = {1: False, 12: False}
        self.reset()

    def reset(self):
        """Power-on state, as firmware leaves it (POWER_ON_*); the IRQ lines drop."""
        with self._lock:
            self.ram = bytearray(32)
            self.ram[0] = POWER_ON_COMMAND_BYTE
            self.output_port = POWER_ON_OUTPUT_PORT
            self.queue = deque()
            self.last = 0                          # what the data port reads with the output buffer empty
            self.pending = None                    # a command waiting for its parameter byte
            self.last_was_command = False          # status bit 3: the last write went to 0x64
            self.sys_flag = bool(POWER_ON_COMMAND_BYTE & CB_SYS)   # status bit 2
            self._update_irqs()

    @property
    def a20(self):
        return bool(self.output_port & OUT_A20)

    # -- the two ports ---------------------------------------------------------------------------------------
    def read(self, offset):
        with self._lock:
            if offset == COMMAND:
                return self._status()
            if offset != DATA:
                return 0xFF
            if self.queue:
                self.last = self.queue.popleft()[0]
                self._update_irqs()
            return self.last

    def write(self, offset, value):
        value &= 0xFF
        with self._lock:
            if offset == COMMAND:
                self.last_was_command = True
                self.pending = None
                self._command(value)
            elif offset == DATA:
                self.last_was_command = False
                command, self.pending = self.pending, None
                if command is None:
                    self._to_device(KBD)           # a byte for the keyboard
                else:
                    self._parameter(command, value)
            self._update_irqs()

    def _status(self):
        status = ST_UNLOCKED | (ST_CMD if self.last_was_command else 0)
        if self.sys_flag:
            status |= ST_SYS
        if self.queue:
            _, source, timeout = self.queue[0]
            status |= ST_OBF | (ST_AUXDATA if source == AUX else 0) | (ST_TIMEOUT if timeout else 0)
        return status

    # -- commands (written to 0x64) ------------------------------------------------------------------------------
    def _command(self, command):
        if 0x20 <= command <= 0x3F:                # read controller RAM byte (0x20: the command byte)
            self._answer(self.ram[command & 0x1F])
        elif 0x60 <= command <= 0x7F or command in (WRITE_OUTPUT, WRITE_KBD_OBF, WRITE_AUX_OBF, WRITE_AUX):
            self.pending = command
        elif command == 0xA4:                      # password installed? no
            self._answer(NO_PASSWORD)
        elif command in (0xA7, 0xA8):              # disable / enable the auxiliary port
            self._set_command_bit(CB_AUXDIS, command == 0xA7)
        elif command in (0xA9, 0xAB):              # test the auxiliary / keyboard interface
            self._answer(INTERFACE_OK)
        elif command == 0xAA:                      # self-test
            self.sys_flag = True                   # a passed self-test sets the system flag
            self._answer(SELF_TEST_OK)
        elif command in (0xAD, 0xAE):              # disable / enable the keyboard port
            self._set_command_bit(CB_KBDDIS, command == 0xAD)
        elif command == 0xC0:                      # read the input port
            self._answer(INPUT_PORT)
        elif command == 0xD0:                      # read the output port
            self._answer(self._output_port())
        elif command in (0xDD, 0xDF):              # A20 off / on (the gate in the output port)
            self.output_port = self.output_port & ~OUT_A20 | (OUT_A20 if command == 0xDF else 0)
        elif command >= 0xF0:                      # pulse output port bits 3-0 low where the command's are 0
            if not command & OUT_RESET:
                self._reset_line()
        # anything else is not a command of this controller: ignored, as the firmware does

    def _parameter(self, command, value):
        if 0x60 <= command <= 0x7F:
            self.ram[command & 0x1F] = value
            if command == WRITE_RAM:
                self.sys_flag = bool(value & CB_SYS)
        elif command == WRITE_OUTPUT:
            self.output_port = value
            if not value & OUT_RESET:              # the reset line is active low
                self._reset_line()
        elif command == WRITE_KBD_OBF:
            self._answer(value, KBD)
        elif command == WRITE_AUX_OBF:             # the auxiliary loop-back: as if the mouse had sent it
            self._answer(value, AUX)
        elif command == WRITE_AUX:
            self._to_device(AUX)

    def _set_command_bit(self, bit, on):
        self.ram[0] = self.ram[0] | bit if on else self.ram[0] & ~bit

    def _to_device(self, source):
        """A byte sent to a port with no device: the transmission times out and the controller says so."""
        self._answer(NO_DEVICE, source, timeout=True)

    def _answer(self, value, source=KBD, timeout=False):
        if len(self.queue) < QUEUE_MAX:
            self.queue.append((value & 0xFF, source, timeout))

    def _output_port(self):
        port = self.output_port & ~(OUT_KBD_OBF | OUT_AUX_OBF)
        if self.queue:
            port |= OUT_AUX_OBF if self.queue[0][1] == AUX else OUT_KBD_OBF
        return port

    # -- interrupts ------------------------------------------------------------------------------------------
    def _update_irqs(self):
        """IRQ 1 / IRQ 12 follow the output port's OBF bits, gated by the command byte's interrupt enables."""
        full = self._output_port()
        for line, obf, enable in ((1, OUT_KBD_OBF, CB_KBDINT), (12, OUT_AUX_OBF, CB_AUXINT)):
            level = bool(full & obf and self.ram[0] & enable)
            if level != self._levels[line]:
                self._levels[line] = level
                self._irq(line, level)

    def irq_level(self, line):
        return self._levels[line]

    # -- snapshots -----------------------------------------------------------------------------------------------
    def state(self):
        with self._lock:
            return {"ram": list(self.ram), "output_port": self.output_port,
                    "queue": [[b, s == AUX, t] for b, s, t in self.queue], "last": self.last,
                    "pending": self.pending, "last_was_command": self.last_was_command,
                    "sys_flag": self.sys_flag, "irq1": self._levels[1], "irq12": self._levels[12]}

    def load_state(self, state):
        with self._lock:
            self.ram[:] = bytes(state["ram"])
            self.output_port, self.last, self.pending = state["output_port"], state["last"], state["pending"]
            self.queue = deque((b, AUX if aux else KBD, t) for b, aux, t in state["queue"])
            self.last_was_command, self.sys_flag = state["last_was_command"], state["sys_flag"]
            self._levels = {1: state["irq1"], 12: state["irq12"]}
