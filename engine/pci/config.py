"""A PCI function's configuration space: 256 bytes, the type 0 header's fields, which bits software may write and
which it clears by writing 1 (PCI Local Bus Specification 3.0, chapter 6, "Configuration Space").

A function is what a configuration cycle reaches: the bus (host.py) hands it reads and writes of 1, 2 or 4
bytes that stay inside one dword of its space, at any byte offset within that dword (the cycle's byte
enables). A device model subclasses PciFunction, fills its read-only fields at creation and widens
`wmask` / `w1cmask` for the registers it implements (BARs, capabilities, MSI), overriding `cfg_write` where a
write has side effects. Bits outside both masks are read-only; unimplemented registers read 0 (§6.1).
"""
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION_ID, PROG_IF, SUBCLASS, CLASS = 0x08, 0x09, 0x0A, 0x0B
CACHE_LINE_SIZE, LATENCY_TIMER, HEADER_TYPE, BIST = 0x0C, 0x0D, 0x0E, 0x0F
BAR0, SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID, ROM_ADDRESS, CAPABILITIES = 0x10, 0x2C, 0x2E, 0x30, 0x34
INTERRUPT_LINE, INTERRUPT_PIN = 0x3C, 0x3D
CONFIG_SIZE = 256
HEADER_NORMAL, HEADER_MULTIFUNCTION = 0x00, 0x80

# Command register bits a function implements by default (QEMU's pci_init_wmask makes the same choice): I/O and
# memory space, bus master, SERR# enable, interrupt disable (§6.2.2).
CMD_IO, CMD_MEMORY, CMD_MASTER, CMD_SERR, CMD_INTX_DISABLE = 0x0001, 0x0002, 0x0004, 0x0100, 0x0400
COMMAND_WRITABLE = CMD_IO | CMD_MEMORY | CMD_MASTER | CMD_SERR | CMD_INTX_DISABLE
# Status register error bits, "set by hardware, cleared by writing 1" (§6.2.3): master data parity error,
# signaled / received target abort, received master abort, signaled system error, detected parity error.
STATUS_W1C = 0x0100 | 0x0800 | 0x1000 | 0x2000 | 0x4000 | 0x8000


class PciFunction:
    """One function. Legend: `config`, `wmask`, `w1cmask` are made at creation; `config` changes only through
    `cfg_write` (the vCPU thread of the access, under the bus's lock) and `reset`."""

    def __init__(self, vendor, device, class_code, subclass, prog_if=0, revision=0, header_type=HEADER_NORMAL,
                 subsystem_vendor=0, subsystem=0, interrupt_pin=0):
        self.config = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)
        self._set(VENDOR_ID, vendor, 2)
        self._set(DEVICE_ID, device, 2)
        self._set(REVISION_ID, revision, 1)
        self._set(PROG_IF, prog_if, 1)
        self._set(SUBCLASS, subclass, 1)
        self._set(CLASS, class_code, 1)
        self._set(HEADER_TYPE, header_type, 1)
        self._set(SUBSYSTEM_VENDOR_ID, subsystem_vendor, 2)
        self._set(SUBSYSTEM_ID, subsystem, 2)
        self._set(INTERRUPT_PIN, interrupt_pin, 1)
        self._set(COMMAND, COMMAND_WRITABLE, 2, self.wmask)
        self._set(STATUS, STATUS_W1C, 2, self.w1cmask)
        for offset in (CACHE_LINE_SIZE, LATENCY_TIMER, INTERRUPT_LINE):
            self.wmask[offset] = 0xFF
        self._power_on = bytes(self.config)

    def _set(self, offset, value, size, into=None):
        (self.config if into is None else into)[offset:offset + size] = value.to_bytes(size, "little")

    def reset(self):
        """Power-on (RST#): the configuration space as made."""
        self.config[:] = self._power_on

    # -- configuration cycles -----------------------------------------------------------------------------------
    def cfg_read(self, offset, size):
        """`size` bytes at `offset` (inside one dword), little-endian."""
        return int.from_bytes(self.config[offset:offset + size], "little")

    def cfg_write(self, offset, value, size):
        """Write what the masks let through: writable bits take the value, W1C bits written 1 clear."""
        for i in range(size):
            at, byte = offset + i, value >> 8 * i & 0xFF
            old = self.config[at]
            new = old & ~self.wmask[at] | byte & self.wmask[at]
            self.config[at] = new & ~(byte & self.w1cmask[at])

    # -- what a panel shows -------------------------------------------------------------------------------------
    def describe(self):
        """The header as the guest reads it now (`lspci -nn -vv`'s first lines): IDs, class, command and status."""
        read = self.cfg_read
        return {"vendor": read(VENDOR_ID, 2), "device": read(DEVICE_ID, 2), "revision": read(REVISION_ID, 1),
                "class": read(CLASS, 1) << 16 | read(SUBCLASS, 1) << 8 | read(PROG_IF, 1),
                "subsystem_vendor": read(SUBSYSTEM_VENDOR_ID, 2), "subsystem": read(SUBSYSTEM_ID, 2),
                "command": read(COMMAND, 2), "status": read(STATUS, 2),
                "interrupt_line": read(INTERRUPT_LINE, 1), "interrupt_pin": read(INTERRUPT_PIN, 1)}

    # -- snapshots ---------------------------------------------------------------------------------------------
    def state(self):
        return list(self.config)

    def load_state(self, saved):
        """Only what software or the device can change comes from the file; the rest stays as built."""
        for at, byte in enumerate(saved):
            keep = self.wmask[at] | self.w1cmask[at]
            self.config[at] = self._power_on[at] & ~keep | byte & keep
