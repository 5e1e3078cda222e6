"""The port 0xE9 debug console (the Bochs/QEMU convention): every byte written goes to a Console.

There is no status and no input: a guest detects the port by reading it back as 0xE9, then simply
writes characters to it. A bus places it, normally at I/O port 0xE9, one byte wide.
"""

DETECT_VALUE = 0xE9     # what a read returns; Bochs and QEMU guests probe for it


class DebugCon:
    """A write-only byte sink in front of `console`."""

    def __init__(self, console):
        self.console = console

    def read(self, offset=0):
        """Reading the port identifies it: always 0xE9."""
        self._check_offset(offset)
        return DETECT_VALUE

    def write(self, offset, value):
        """The byte the guest wrote goes straight to the console."""
        self._check_offset(offset)
        if not 0 <= value <= 0xFF:
            raise ValueError(f"debugcon: value {value:#x} is not a byte; split wider port accesses")
        self.console.output(bytes([value]))

    @staticmethod
    def _check_offset(offset):
        if offset != 0:
            raise ValueError(f"debugcon: offset {offset} is outside its one port; "
                             "the bus must pass offsets relative to the port")
