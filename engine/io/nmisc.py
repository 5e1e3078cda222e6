"""Port 0x61, the PC's system control port B (the PC/AT's 8255 port B; "NMI Status and Control" in Intel's
chipsets, bhyve's vatpit_nmisc_handler): the 8254 counter 2's GATE and the speaker, read back with counter 2's
OUT and the refresh toggle.

Bits (Intel ICH9 data sheet, NMI_SC at I/O 61h): 0 counter 2 GATE (read/write), 1 speaker data enable (r/w),
2 PCI SERR# NMI disable (r/w), 3 IOCHK# NMI disable (r/w), 4 refresh cycle toggle (read-only: flips every
15.085 us, the DRAM refresh period of counter 1 as a PC BIOS programs it), 5 counter 2 OUT (read-only),
6 IOCHK# NMI status and 7 SERR# NMI status (read-only, 0: nothing here raises them). Linux's PIT calibration
of the TSC sets GATE and waits for OUT in bit 5. The speaker is silent: bit 1 is kept, no sound is made.
"""
import time

GATE2, SPEAKER, SERR_DISABLE, IOCHK_DISABLE, REFRESH, OUT2 = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
WRITABLE = GATE2 | SPEAKER | SERR_DISABLE | IOCHK_DISABLE
REFRESH_NS = 15085


class NmiStatusControl:
    """Legend: `bits` (the writable ones) changes on the vCPU thread of the write; the 8254 keeps GATE itself."""

    def __init__(self, pit, clock=time.monotonic_ns):
        self.pit, self.clock = pit, clock
        self.bits = 0

    def read(self, offset=0):
        value = self.bits & ~GATE2 | (GATE2 if self.pit.gate2() else 0)
        if self.clock() // REFRESH_NS & 1:
            value |= REFRESH
        if self.pit.out2():
            value |= OUT2
        return value

    def write(self, offset, value):
        self.bits = value & WRITABLE
        self.pit.set_gate2(value & GATE2)

    def reset(self):
        self.bits = 0
        self.pit.set_gate2(False)
