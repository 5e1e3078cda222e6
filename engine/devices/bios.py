"""Real-mode PC BIOS services (INT 10h/11h/12h/13h/15h/16h/1Ah) reached through `vmcall; iret` stubs in segment F000."""
import collections
import time

from engine.errors import ConfigError
from engine.devices import vga_text
from engine.devices.vga_text import COLS, ROWS, DEFAULT_ATTR

DONE = "done"                   # service finished: move RIP past the vmcall so the stub's iret returns
WAIT_INPUT = "wait_input"       # INT 16h read found no key: nothing changed; call again once input arrives

STUB_SEGMENT, STUB_OFFSET = 0xF000, 0x100
STUB_BASE = STUB_SEGMENT * 16 + STUB_OFFSET
STUB = bytes((0x0F, 0x01, 0xC1, 0xCF))          # vmcall; iret
STUB_END = STUB_BASE + 256 * len(STUB)
DPT_ADDR = 0xFEFC7                              # diskette parameter table, where the IBM AT BIOS keeps it
DPT_1440K = bytes((0xDF, 0x02, 0x25, 0x02, 0x12, 0x1B, 0xFF, 0x6C, 0xF6, 0x0F, 0x08))
REAL_MODE_LIMIT = 0x100000                      # disk buffers must end below 1 MiB
SECTOR = 512
TICK_HZ = 1193182 / 65536                       # 18.2065 Hz: PIT channel 0 with a divisor of 65536
TICKS_PER_DAY = 0x1800B0

# BIOS data area (segment 0040h), offsets as physical addresses.
BDA_COM1 = 0x400
BDA_EQUIPMENT = 0x410
BDA_BASE_MEM_KB = 0x413
BDA_EBDA_SEGMENT = 0x40E
BDA_VIDEO_MODE = 0x449
BDA_COLUMNS = 0x44A
BDA_PAGE_SIZE = 0x44C
BDA_CURSOR_PAGE0 = 0x450
BDA_CURSOR_SHAPE = 0x460
BDA_CRTC_BASE = 0x463
BDA_TICKS = 0x46C
BDA_HARD_DISKS = 0x475
BDA_LAST_ROW = 0x484

# INT 13h status codes (Ralf Brown's Interrupt List, INT 13h AH=01h table).
DISK_OK, DISK_BAD_COMMAND, DISK_NOT_FOUND, DISK_DMA_BOUNDARY = 0x00, 0x01, 0x04, 0x09
NOT_SUPPORTED = 0x86            # INT 15h "function not supported"
CF, ZF = 0x0001, 0x0040

# (vector, AH) -> (name users know from Ralf Brown's list, method or None when not provided).
# AH None: the vector is one service whatever AH holds.
SERVICES = {
    (0x08, None): ("timer tick (IRQ 0)", "_timer_tick"),
    (0x10, 0x00): ("set video mode", "_set_mode"),
    (0x10, 0x01): ("set cursor shape", "_set_cursor_shape"),
    (0x10, 0x02): ("set cursor position", "_set_cursor"),
    (0x10, 0x03): ("get cursor position and shape", "_get_cursor"),
    (0x10, 0x05): ("select display page", None),
    (0x10, 0x06): ("scroll window up", "_scroll_up"),
    (0x10, 0x07): ("scroll window down", "_scroll_down"),
    (0x10, 0x08): ("read character and attribute", "_read_char"),
    (0x10, 0x09): ("write character and attribute", "_write_char_attr"),
    (0x10, 0x0A): ("write character", "_write_char"),
    (0x10, 0x0B): ("set palette / border", None),
    (0x10, 0x0C): ("write graphics pixel", None),
    (0x10, 0x0D): ("read graphics pixel", None),
    (0x10, 0x0E): ("teletype output", "_teletype"),
    (0x10, 0x0F): ("get video mode", "_get_mode"),
    (0x10, 0x10): ("set palette registers", None),
    (0x10, 0x11): ("character generator", None),
    (0x10, 0x12): ("alternate function select", None),
    (0x10, 0x13): ("write string", None),
    (0x10, 0x1A): ("display combination code", None),
    (0x10, 0x4F): ("VESA SuperVGA", None),
    (0x11, None): ("equipment list", "_equipment"),
    (0x12, None): ("base memory size", "_memory_size"),
    (0x13, 0x00): ("reset disk system", "_disk_reset"),
    (0x13, 0x01): ("get status of last operation", "_disk_status"),
    (0x13, 0x02): ("read sectors (CHS)", "_disk_read_chs"),
    (0x13, 0x03): ("write sectors (CHS)", None),
    (0x13, 0x04): ("verify sectors", None),
    (0x13, 0x08): ("get drive parameters", "_disk_params"),
    (0x13, 0x15): ("get disk type", "_disk_type"),
    (0x13, 0x41): ("extensions installation check", "_disk_ext_check"),
    (0x13, 0x42): ("extended read", "_disk_ext_read"),
    (0x13, 0x43): ("extended write", None),
    (0x13, 0x48): ("extended get drive parameters", None),
    (0x14, None): ("serial port services", None),
    (0x15, 0x24): ("A20 gate", "_a20"),
    (0x15, 0x4F): ("keyboard intercept", None),
    (0x15, 0x53): ("APM", None),
    (0x15, 0x86): ("wait", None),
    (0x15, 0x87): ("copy extended memory", None),
    (0x15, 0x88): ("extended memory size", "_ext_memory_size"),
    (0x15, 0x89): ("switch to protected mode", None),
    (0x15, 0xC0): ("get system configuration", None),
    (0x15, 0xE8): ("memory map (E801h/E820h)", "_memory_map"),
    (0x16, 0x00): ("read key", "_read_key"),
    (0x16, 0x01): ("check for key", "_peek_key"),
    (0x16, 0x02): ("get shift flags", "_shift_flags"),
    (0x16, 0x03): ("set typematic rate", None),
    (0x16, 0x05): ("store key in buffer", None),
    (0x16, 0x10): ("read extended key", "_read_key"),
    (0x16, 0x11): ("check for extended key", "_peek_key"),
    (0x16, 0x12): ("get extended shift flags", "_shift_flags"),
    (0x17, None): ("printer services", None),
    (0x18, None): ("no bootable device, ROM BASIC", None),
    (0x19, None): ("bootstrap loader (reboot)", None),
    (0x1A, 0x00): ("get tick count", "_get_ticks"),
    (0x1A, 0x01): ("set tick count", None),
    (0x1A, 0x02): ("get RTC time", "_rtc_time"),
    (0x1A, 0x03): ("set RTC time", None),
    (0x1A, 0x04): ("get RTC date", "_rtc_date"),
    (0x1A, 0x05): ("set RTC date", None),
    (0x21, None): ("DOS services", None),
}

# How each vector signals "not supported" to its caller: (status put in AH or None, set CF).
UNSUPPORTED_STATUS = {0x13: (DISK_BAD_COMMAND, True), 0x15: (NOT_SUPPORTED, True), 0x1A: (None, True)}


def _scan_codes():
    """ASCII -> set-1 scan code of the US key that types it (shifted and Ctrl forms share the key)."""
    rows = ((0x02, "1234567890-=", "!@#$%^&*()_+"), (0x10, "qwertyuiop[]", "QWERTYUIOP{}"),
            (0x1E, "asdfghjkl;'`", 'ASDFGHJKL:"~'), (0x2B, "\\zxcvbnm,./", "|ZXCVBNM<>?"))
    table = {}
    for first, plain, shifted in rows:
        for i, (a, b) in enumerate(zip(plain, shifted)):
            table[ord(a)] = table[ord(b)] = first + i
    for letter in range(26):
        table[letter + 1] = table[ord("a") + letter]          # Ctrl-A..Ctrl-Z
    table.update({0x08: 0x0E, 0x09: 0x0F, 0x0D: 0x1C, 0x0A: 0x1C, 0x1B: 0x01, 0x20: 0x39})
    return table


SCAN_CODES = _scan_codes()
AH_VECTORS = {vector for vector, ah in SERVICES if ah is not None}


def _label(vector, ah):
    """How a console message names INT `vector` with `ah`, e.g. "INT 10h AH=4Fh (VESA SuperVGA)"."""
    if vector in AH_VECTORS:
        return f"INT {vector:02X}h AH={ah:02X}h ({SERVICES.get((vector, ah), ('unknown function',))[0]})"
    return f"INT {vector:02X}h ({SERVICES.get((vector, None), ('no BIOS service',))[0]})"


def _bcd(value):
    return ((value // 10) << 4) | (value % 10)


class Bios:
    """The firmware a boot sector expects, answering one INT per `call()` from the vcpu's VMCALL exit."""

    def __init__(self, vga, console, disk, drive=0x80, low_mem_kb=639, clock=time.monotonic,
                 ext_mem_kb=0, wall_clock=time.localtime):
        self.vga = vga
        self.console = console
        self.disk = bytes(disk)
        self.drive = drive
        self.low_mem_kb = low_mem_kb
        self.ext_mem_kb = ext_mem_kb
        self.clock = clock
        self.wall_clock = wall_clock
        self.unsupported = collections.Counter()   # message -> times asked; each is printed the first time
        self._start = None
        self._peeked = None
        self._disk_last = DISK_OK
        self.heads, self.sectors_per_track = (16, 63) if drive >= 0x80 else (2, 18)
        self.total_sectors = -(-len(self.disk) // SECTOR)
        per_cylinder = self.heads * self.sectors_per_track
        self.cylinders = min(1024, max(1, -(-self.total_sectors // per_cylinder))) if drive >= 0x80 else 80

    @property
    def equipment(self):
        """INT 11h word: FPU, 80x25 colour, one serial port, and a floppy when we boot from one."""
        return 0x0002 | 0x0020 | 0x0200 | (0x0001 if self.drive < 0x80 else 0)

    # -- power-on --------------------------------------------------------------------------------
    def install(self, mem):
        """Write the IVT, the stubs and the BIOS data area, clear the screen; call once before the guest runs."""
        if len(mem) < REAL_MODE_LIMIT:
            raise ConfigError(f"guest memory of {len(mem) // 1024} KiB is too small for the BIOS, whose stubs "
                              f"sit at F000:0100; give the VM at least 1 MiB")
        ivt = b"".join((STUB_OFFSET + 4 * n).to_bytes(2, "little") + STUB_SEGMENT.to_bytes(2, "little")
                       for n in range(256))
        mem.write(0, ivt)
        mem.write(STUB_BASE, STUB * 256)
        mem.write(DPT_ADDR, DPT_1440K)
        mem.write(0x1E * 4, (DPT_ADDR - STUB_SEGMENT * 16).to_bytes(2, "little") + b"\x00\xf0")
        mem.write(0xFFFF5, b"01/01/24\0\xfc")       # BIOS date and model byte FCh (AT)
        mem.write(0x400, bytes(0x100))
        for addr, value, size in ((BDA_COM1, 0x3F8, 2), (BDA_EQUIPMENT, self.equipment, 2),
                                  (BDA_BASE_MEM_KB, self.low_mem_kb, 2), (BDA_EBDA_SEGMENT, self.low_mem_kb * 64, 2),
                                  (BDA_VIDEO_MODE, 3, 1), (BDA_COLUMNS, COLS, 2), (BDA_PAGE_SIZE, 0x1000, 2),
                                  (BDA_CURSOR_SHAPE, 0x0607, 2), (BDA_CRTC_BASE, vga_text.CRTC_INDEX, 2),
                                  (BDA_HARD_DISKS, 1 if self.drive >= 0x80 else 0, 1), (BDA_LAST_ROW, ROWS - 1, 1)):
            mem.write(addr, value.to_bytes(size, "little"))
        self._start = self.clock()
        self.vga.clear()
        self._move_cursor(mem, 0, 0)
        self.update_ticks(mem)

    def vector_at(self, linear):
        """The vector whose stub's vmcall sits at `linear`, or None for a VMCALL the BIOS did not plant."""
        if STUB_BASE <= linear < STUB_END and (linear - STUB_BASE) % len(STUB) == 0:
            return (linear - STUB_BASE) // len(STUB)
        return None

    def update_ticks(self, mem):
        """Refresh the tick count at 0040:006C from the clock (what IRQ 0's handler does); returns it."""
        ticks = int((self.clock() - self._start) * TICK_HZ) % TICKS_PER_DAY
        mem.write(BDA_TICKS, ticks.to_bytes(4, "little"))
        return ticks

    # -- dispatch --------------------------------------------------------------------------------
    def call(self, vector, regs, mem):
        """Run the service for INT `vector` with the caller's registers; DONE or WAIT_INPUT."""
        ah = regs["ah"]
        _, method = SERVICES.get((vector, ah if vector in AH_VECTORS else None), (None, None))
        if method is None:
            return self._unsupported(vector, regs, mem, _label(vector, ah))
        return getattr(self, method)(regs, mem) or DONE

    def _unsupported(self, vector, regs, mem, label):
        """Say on the console (once per service) what the guest asked for; fail it the way that vector fails."""
        message = f"\r\nbios: {label} is not supported\r\n"
        if not self.unsupported[message]:
            self.console.output(message.encode())
        self.unsupported[message] += 1
        status, carry = UNSUPPORTED_STATUS.get(vector, (None, False))
        if status is not None:
            regs["ah"] = status
        if carry:
            self._set_flag(regs, mem, CF, True)
        return DONE

    def _set_flag(self, regs, mem, bit, value):
        """Change `bit` in the FLAGS image the INT pushed (SS:SP+4), which the stub's iret restores."""
        linear = regs["ss"] * 16 + ((regs["sp"] + 4) & 0xFFFF)
        if linear + 2 > len(mem):
            return
        flags = int.from_bytes(mem.read(linear, 2), "little")
        flags = flags | bit if value else flags & ~bit
        mem.write(linear, flags.to_bytes(2, "little"))

    # -- INT 10h video ---------------------------------------------------------------------------
    def _cursor(self, mem):
        col, row = mem.read(BDA_CURSOR_PAGE0, 2)
        return row, col

    def _move_cursor(self, mem, row, col):
        mem.write(BDA_CURSOR_PAGE0, bytes((col & 0xFF, row & 0xFF)))
        self.vga.cursor = (row, col)

    def _teletype(self, regs, mem):
        ch = regs["al"]
        self.console.output(bytes((ch,)))
        row, col = self._cursor(mem)
        row, col = min(row, ROWS - 1), min(col, COLS - 1)
        if ch == 0x07:
            return
        if ch == 0x08:
            col = max(col - 1, 0)
        elif ch == 0x0D:
            col = 0
        elif ch == 0x0A:
            row += 1
        else:
            self.vga.put(row, col, ch, self.vga.cell(row, col)[1])
            row, col = (row + 1, 0) if col + 1 == COLS else (row, col + 1)
        if row == ROWS:
            self.vga.scroll_up(1, DEFAULT_ATTR, 0, 0, ROWS - 1, COLS - 1)
            row = ROWS - 1
        self._move_cursor(mem, row, col)

    def _write_cells(self, mem, ch, attr, count):
        row, col = self._cursor(mem)
        for cell in range(row * COLS + col, min(row * COLS + col + count, ROWS * COLS)):
            r, c = divmod(cell, COLS)
            self.vga.put(r, c, ch, self.vga.cell(r, c)[1] if attr is None else attr)

    def _write_char_attr(self, regs, mem):
        self._write_cells(mem, regs["al"], regs["bl"], regs["cx"])

    def _write_char(self, regs, mem):
        self._write_cells(mem, regs["al"], None, regs["cx"])

    def _read_char(self, regs, mem):
        row, col = self._cursor(mem)
        regs["al"], regs["ah"] = self.vga.cell(min(row, ROWS - 1), min(col, COLS - 1))

    def _set_cursor(self, regs, mem):
        if regs["bh"] != 0:
            return self._unsupported(0x10, regs, mem, f"INT 10h AH=02h (set cursor position on page {regs['bh']})")
        self._move_cursor(mem, regs["dh"], regs["dl"])

    def _get_cursor(self, regs, mem):
        regs["dh"], regs["dl"] = self._cursor(mem)
        start, end = self.vga.cursor_shape
        regs["ch"], regs["cl"] = start, end

    def _set_cursor_shape(self, regs, mem):
        self.vga.cursor_shape = (regs["ch"], regs["cl"])
        mem.write(BDA_CURSOR_SHAPE, bytes((regs["cl"], regs["ch"])))

    def _scroll_up(self, regs, mem):
        self.vga.scroll_up(regs["al"], regs["bh"], regs["ch"], regs["cl"], regs["dh"], regs["dl"])

    def _scroll_down(self, regs, mem):
        self.vga.scroll_down(regs["al"], regs["bh"], regs["ch"], regs["cl"], regs["dh"], regs["dl"])

    def _get_mode(self, regs, mem):
        regs["al"], regs["ah"], regs["bh"] = mem.read(BDA_VIDEO_MODE, 1)[0], COLS, 0

    def _set_mode(self, regs, mem):
        mode = regs["al"] & 0x7F                    # bit 7: keep the screen contents
        if mode not in (2, 3):
            return self._unsupported(0x10, regs, mem, f"INT 10h AH=00h (set video mode {mode:02X}h)")
        if not regs["al"] & 0x80:
            self.vga.clear()
        mem.write(BDA_VIDEO_MODE, b"\x03")
        self._move_cursor(mem, 0, 0)

    # -- INT 11h, 12h, 15h: configuration --------------------------------------------------------
    def _equipment(self, regs, mem):
        regs["ax"] = self.equipment

    def _memory_size(self, regs, mem):
        regs["ax"] = self.low_mem_kb

    def _ext_memory_size(self, regs, mem):
        regs["ax"] = min(self.ext_mem_kb, 0xFFFF)
        self._set_flag(regs, mem, CF, False)

    def _memory_map(self, regs, mem):
        if regs["al"] != 0x01:
            note = "query system address map" if regs["al"] == 0x20 else "unknown function"
            return self._unsupported(0x15, regs, mem, f"INT 15h AX=E8{regs['al']:02X}h ({note})")
        below_16m = min(self.ext_mem_kb, 15 * 1024)
        above_16m = max(self.ext_mem_kb - 15 * 1024, 0) // 64
        regs["ax"] = regs["cx"] = below_16m
        regs["bx"] = regs["dx"] = min(above_16m, 0xFFFF)
        self._set_flag(regs, mem, CF, False)

    def _a20(self, regs, mem):
        """The modeled machine's A20 line is always on: enable/disable succeed, query says enabled."""
        if regs["al"] > 0x03:
            return self._unsupported(0x15, regs, mem, f"INT 15h AX=24{regs['al']:02X}h (A20 gate)")
        regs["ah"] = 0
        if regs["al"] == 0x02:
            regs["al"] = 1
        elif regs["al"] == 0x03:
            regs["bx"] = 0x0003                         # keyboard controller and port 92h
        self._set_flag(regs, mem, CF, False)

    # -- INT 16h keyboard ------------------------------------------------------------------------
    def _next_key(self):
        """The waiting key as AX (scan code << 8 | ASCII), filling the peek buffer; None without one."""
        if self._peeked is None and self.console.has_input():
            ch = self.console.take_input(1)[0]
            ch = 0x08 if ch == 0x7F else ch             # a terminal's Backspace sends DEL
            self._peeked = (SCAN_CODES.get(ch, 0) << 8) | ch
        return self._peeked

    def _read_key(self, regs, mem):
        key = self._next_key()
        if key is None:
            return WAIT_INPUT
        self._peeked = None
        regs["ax"] = key

    def _peek_key(self, regs, mem):
        key = self._next_key()
        if key is not None:
            regs["ax"] = key
        self._set_flag(regs, mem, ZF, key is None)

    def _shift_flags(self, regs, mem):
        if regs["ah"] == 0x12:
            regs["ah"] = 0
        regs["al"] = 0

    # -- INT 08h, 1Ah time -----------------------------------------------------------------------
    def _timer_tick(self, regs, mem):
        self.update_ticks(mem)

    def _get_ticks(self, regs, mem):
        ticks = self.update_ticks(mem)
        regs["cx"], regs["dx"], regs["al"] = ticks >> 16, ticks & 0xFFFF, 0

    def _rtc_time(self, regs, mem):
        now = self.wall_clock()
        regs["ch"], regs["cl"], regs["dh"], regs["dl"] = (_bcd(now.tm_hour), _bcd(now.tm_min),
                                                          _bcd(min(now.tm_sec, 59)), 0)
        self._set_flag(regs, mem, CF, False)

    def _rtc_date(self, regs, mem):
        now = self.wall_clock()
        regs["ch"], regs["cl"] = _bcd(now.tm_year // 100), _bcd(now.tm_year % 100)
        regs["dh"], regs["dl"] = _bcd(now.tm_mon), _bcd(now.tm_mday)
        self._set_flag(regs, mem, CF, False)

    # -- INT 13h disk ----------------------------------------------------------------------------
    def _disk_done(self, regs, mem, status, count=0):
        """Return an INT 13h status the standard way: AH, AL = sectors moved, CF set on error."""
        self._disk_last = status
        regs["ah"], regs["al"] = status, count
        self._set_flag(regs, mem, CF, status != DISK_OK)

    def _wrong_drive(self, regs, mem):
        if regs["dl"] == self.drive:
            return False
        self._disk_last = DISK_BAD_COMMAND
        regs["ah"] = DISK_BAD_COMMAND
        self._set_flag(regs, mem, CF, True)
        return True

    def _transfer(self, mem, lba, count, segment, offset):
        """Copy `count` sectors from `lba` to segment:offset; the INT 13h status. Nothing is written on error."""
        buffer, size = segment * 16 + offset, count * SECTOR
        if count == 0:
            return DISK_BAD_COMMAND
        if lba + count > self.total_sectors:
            return DISK_NOT_FOUND
        if offset + size > 0x10000 or buffer + size > min(len(mem), REAL_MODE_LIMIT):
            return DISK_DMA_BOUNDARY                        # would wrap inside the segment or leave memory
        data = self.disk[lba * SECTOR:(lba + count) * SECTOR]
        mem.write(buffer, data.ljust(count * SECTOR, b"\0"))
        return DISK_OK

    def _disk_reset(self, regs, mem):
        if not self._wrong_drive(regs, mem):
            self._disk_done(regs, mem, DISK_OK)

    def _disk_status(self, regs, mem):
        last = self._disk_last
        self._disk_done(regs, mem, last)

    def _disk_read_chs(self, regs, mem):
        if self._wrong_drive(regs, mem):
            return
        cyl = regs["ch"] | ((regs["cl"] & 0xC0) << 2)
        sector, head, count = regs["cl"] & 0x3F, regs["dh"], regs["al"]
        if not 1 <= sector <= self.sectors_per_track or head >= self.heads:
            return self._disk_done(regs, mem, DISK_BAD_COMMAND)
        lba = (cyl * self.heads + head) * self.sectors_per_track + sector - 1
        status = self._transfer(mem, lba, count, regs["es"], regs["bx"])
        self._disk_done(regs, mem, status, count if status == DISK_OK else 0)

    def _disk_params(self, regs, mem):
        if self._wrong_drive(regs, mem):
            return
        max_cyl = self.cylinders - 1
        regs["ch"], regs["cl"] = max_cyl & 0xFF, self.sectors_per_track | ((max_cyl >> 2) & 0xC0)
        regs["dh"], regs["dl"] = self.heads - 1, 1
        if self.drive < 0x80:
            regs["bl"], regs["es"], regs["di"] = 0x04, STUB_SEGMENT, DPT_ADDR - STUB_SEGMENT * 16
        self._disk_done(regs, mem, DISK_OK)

    def _disk_type(self, regs, mem):
        if self._wrong_drive(regs, mem):
            return
        if self.drive >= 0x80:
            regs["ah"], regs["cx"], regs["dx"] = 0x03, self.total_sectors >> 16, self.total_sectors & 0xFFFF
        else:
            regs["ah"] = 0x01                               # floppy without change-line support
        self._set_flag(regs, mem, CF, False)

    def _disk_ext_check(self, regs, mem):
        if self._wrong_drive(regs, mem):
            return
        if regs["bx"] != 0x55AA:
            return self._disk_done(regs, mem, DISK_BAD_COMMAND)
        regs["bx"], regs["cx"], regs["ah"] = 0xAA55, 0x0001, 0x30     # EDD 3.0, packet calls 42h-44h,47h,48h
        self._set_flag(regs, mem, CF, False)

    def _disk_ext_read(self, regs, mem):
        if self._wrong_drive(regs, mem):
            return
        packet_at = regs["ds"] * 16 + regs["si"]
        if packet_at + 16 > len(mem):
            return self._disk_done(regs, mem, DISK_BAD_COMMAND)
        packet = mem.read(packet_at, 16)
        count, offset, segment = (int.from_bytes(packet[i:i + 2], "little") for i in (2, 4, 6))
        lba = int.from_bytes(packet[8:16], "little")
        if packet[0] < 0x10:
            return self._disk_done(regs, mem, DISK_BAD_COMMAND)
        status = self._transfer(mem, lba, count, segment, offset)
        if status != DISK_OK:
            mem.write(packet_at + 2, b"\0\0")                  # the packet reports the blocks moved
        self._disk_done(regs, mem, status)
