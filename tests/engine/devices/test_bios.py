"""Tests for the real-mode BIOS services, called the way the vcpu's VMCALL exit calls them."""
import time

import pytest

from engine.devices import bios as B
from engine.devices.bios import DONE, STUB_BASE, WAIT_INPUT, Bios
from engine.devices.console import Console
from engine.devices.vga_text import VgaText
from engine.errors import ConfigError

STACK_SS, STACK_SP = 0x0000, 0x7000          # the INT pushed IP, CS, FLAGS at 0000:7000
FLAGS_AT = STACK_SS * 16 + STACK_SP + 4


class Memory:
    """Guest-physical memory as a bytearray; touching outside it is an error, as it would be for the engine."""

    def __init__(self, size=1 << 20):
        self.data = bytearray(size)

    def __len__(self):
        return len(self.data)

    def read(self, gpa, n):
        assert 0 <= gpa and gpa + n <= len(self.data), f"read {gpa:#x}+{n} outside memory"
        return bytes(self.data[gpa:gpa + n])

    def write(self, gpa, data):
        assert 0 <= gpa and gpa + len(data) <= len(self.data), f"write {gpa:#x}+{len(data)} outside memory"
        self.data[gpa:gpa + len(data)] = data


class Regs:
    """The engine's register file as the BIOS sees it: 16-bit registers and their 8-bit halves by name."""

    HALVES = {"al": ("ax", 0), "ah": ("ax", 8), "bl": ("bx", 0), "bh": ("bx", 8),
              "cl": ("cx", 0), "ch": ("cx", 8), "dl": ("dx", 0), "dh": ("dx", 8)}

    def __init__(self, **values):
        self.r = dict.fromkeys(("ax", "bx", "cx", "dx", "si", "di", "bp", "es", "ds", "cs", "flags"), 0)
        self.r.update(ss=STACK_SS, sp=STACK_SP)
        for name, value in values.items():
            self[name] = value

    def __getitem__(self, name):
        if name in self.HALVES:
            full, shift = self.HALVES[name]
            return (self.r[full] >> shift) & 0xFF
        return self.r[name]

    def __setitem__(self, name, value):
        if name in self.HALVES:
            full, shift = self.HALVES[name]
            self.r[full] = (self.r[full] & ~(0xFF << shift) & 0xFFFF) | ((value & 0xFF) << shift)
        else:
            self.r[name] = value & 0xFFFF


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def stacked_flags(mem):
    return int.from_bytes(mem.read(FLAGS_AT, 2), "little")


def set_stacked_flags(mem, value):
    mem.write(FLAGS_AT, value.to_bytes(2, "little"))


DISK = b"".join(bytes([n & 0xFF]) * 512 for n in range(2 * 16 * 63))     # sector n filled with n & 0xFF


@pytest.fixture
def machine():
    mem, console, clock = Memory(), Console(), Clock()
    vga = VgaText(mem)
    bios = Bios(vga, console, DISK, clock=clock, ext_mem_kb=64512)
    bios.install(mem)
    return bios, mem, console, clock


def call(machine, vector, **values):
    bios, mem, _, _ = machine
    regs = Regs(**values)
    return bios.call(vector, regs, mem), regs


# -- power-on -------------------------------------------------------------------------------------
def test_install_points_every_vector_at_its_vmcall_iret_stub(machine):
    """After power-on, INT 13h's IVT entry is F000:014C and the four bytes there are vmcall; iret."""
    _, mem, _, _ = machine
    assert mem.read(0x13 * 4, 4) == bytes((0x4C, 0x01, 0x00, 0xF0))
    for n in set(range(256)) - {0x1E}:                  # 1Eh is data: the diskette parameter table
        assert mem.read(4 * n, 4) == (0x100 + 4 * n).to_bytes(2, "little") + b"\x00\xf0"
    assert mem.read(STUB_BASE + 4 * 0x13, 4) == bytes.fromhex("0F01C1CF")
    assert mem.read(STUB_BASE, 1024) == bytes.fromhex("0F01C1CF") * 256


def test_install_fills_the_bios_data_area(machine):
    """A boot sector reads COM1, equipment, 639 KiB base memory, mode 3, 80 columns, cursor 0,0, one disk."""
    _, mem, _, _ = machine
    word = lambda addr: int.from_bytes(mem.read(addr, 2), "little")
    assert word(0x400) == 0x3F8 and word(0x413) == 639 and word(0x410) == 0x0222
    assert mem.read(0x449, 1)[0] == 3 and word(0x44A) == 80 and word(0x450) == 0
    assert mem.read(0x46C, 4) == bytes(4) and mem.read(0x475, 1)[0] == 1


def test_install_refuses_memory_below_one_mebibyte():
    """A 512 KiB VM cannot hold the stubs at F000:0100; install says so and how to fix it."""
    mem = Memory(512 * 1024)
    with pytest.raises(ConfigError, match="at least 1 MiB"):
        Bios(VgaText(mem), Console(), DISK).install(mem)


def test_vector_at_recognises_only_stub_starts(machine):
    """The vmcall of INT 10h's stub maps to 10h; a byte inside a stub or outside the block maps to None."""
    bios = machine[0]
    assert bios.vector_at(STUB_BASE + 4 * 0x10) == 0x10
    assert bios.vector_at(STUB_BASE) == 0 and bios.vector_at(STUB_BASE + 4 * 255) == 255
    assert bios.vector_at(STUB_BASE + 4 * 0x10 + 1) is None
    assert bios.vector_at(STUB_BASE + 1024) is None and bios.vector_at(0x7C00) is None


# -- INT 10h --------------------------------------------------------------------------------------
def test_teletype_writes_advances_and_mirrors_to_serial(machine):
    """A boot sector prints "Hi\\r\\n" with AH=0Eh: the screen shows Hi, the cursor is at 1,0, serial got the bytes."""
    bios, mem, console, _ = machine
    reader = console.reader()
    for ch in b"Hi\r\n":
        assert call(machine, 0x10, ah=0x0E, al=ch)[0] == DONE
    assert bios.vga.text()[0].startswith("Hi ") and bios.vga.cells()[0][0] == (ord("H"), 0x07)
    assert bios.vga.cursor == (1, 0) and mem.read(0x450, 2) == bytes((0, 1))
    assert reader.read(timeout=0) == b"Hi\r\n"


def test_teletype_backspace_and_bell(machine):
    """'ab', BS, 'c', BEL: BS moves left without erasing, BEL writes nothing, so the line reads 'ac'."""
    bios = machine[0]
    for ch in b"ab\bc\a":
        call(machine, 0x10, ah=0x0E, al=ch)
    assert bios.vga.text()[0][:3] == "ac " and bios.vga.cursor == (0, 2)


def test_teletype_keeps_the_cell_attribute(machine):
    """Coloured text idiom: AH=09h paints attribute 1Eh, then AH=0Eh writes the char in that colour."""
    bios = machine[0]
    call(machine, 0x10, ah=0x09, al=0x20, bl=0x1E, cx=1)
    call(machine, 0x10, ah=0x0E, al=ord("X"))
    assert bios.vga.cells()[0][0] == (ord("X"), 0x1E)


def test_teletype_line_feed_on_the_bottom_row_scrolls(machine):
    """With the cursor on row 24, 'Z' then LF scrolls the screen: Z is on row 23, the cursor stays on row 24."""
    bios = machine[0]
    call(machine, 0x10, ah=0x02, bh=0, dh=0, dl=0)
    call(machine, 0x10, ah=0x0E, al=ord("T"))
    call(machine, 0x10, ah=0x02, bh=0, dh=24, dl=0)
    for ch in b"Z\n":
        call(machine, 0x10, ah=0x0E, al=ch)
    assert bios.vga.text()[23].startswith("Z") and bios.vga.text()[24] == " " * 80
    assert bios.vga.cursor == (24, 1)
    assert not bios.vga.text()[0].startswith("T")


def test_teletype_wraps_at_the_last_column(machine):
    """81 characters: the 81st lands at row 1, column 0."""
    bios = machine[0]
    for _ in range(81):
        call(machine, 0x10, ah=0x0E, al=ord("x"))
    assert bios.vga.cursor == (1, 1) and bios.vga.text()[1][0] == "x"


def test_write_char_attr_repeats_without_moving_the_cursor(machine):
    """AH=09h '*' attr 4Fh CX=3 at 0,78 paints two cells on row 0 and one on row 1; the cursor stays."""
    bios = machine[0]
    call(machine, 0x10, ah=0x02, dh=0, dl=78)
    call(machine, 0x10, ah=0x09, al=ord("*"), bl=0x4F, cx=3)
    cells = bios.vga.cells()
    assert cells[0][78] == cells[0][79] == cells[1][0] == (ord("*"), 0x4F) and cells[1][1] == (0x20, 7)
    assert bios.vga.cursor == (0, 78)


def test_write_char_keeps_attributes(machine):
    """AH=0Ah writes '#' twice over cells painted 1Eh and 07h; each keeps its own attribute."""
    bios = machine[0]
    call(machine, 0x10, ah=0x09, al=0x20, bl=0x1E, cx=1)
    call(machine, 0x10, ah=0x0A, al=ord("#"), bl=0x70, cx=2)
    assert bios.vga.cells()[0][:2] == [(ord("#"), 0x1E), (ord("#"), 0x07)]


def test_get_cursor_returns_position_and_shape(machine):
    """AH=02h to 5,7 then AH=03h gives DH=5, DL=7 and CX=0607h."""
    call(machine, 0x10, ah=0x02, bh=0, dh=5, dl=7)
    _, regs = call(machine, 0x10, ah=0x03, bh=0)
    assert (regs["dh"], regs["dl"], regs["cx"]) == (5, 7, 0x0607)


def test_set_cursor_on_another_page_is_reported(machine):
    """AH=02h with BH=1 names the unsupported page on the console and leaves the cursor alone."""
    bios, _, console, _ = machine
    call(machine, 0x10, ah=0x02, bh=1, dh=5, dl=7)
    assert b"page 1" in console.contents() and bios.vga.cursor == (0, 0)


def test_scroll_window_and_clear(machine):
    """AH=06h AL=0 BH=1Fh over 0,0-24,79 clears the screen in white on blue."""
    bios = machine[0]
    call(machine, 0x10, ah=0x0E, al=ord("q"))
    call(machine, 0x10, ah=0x06, al=0, bh=0x1F, cx=0x0000, dx=0x184F)
    assert all(cell == (0x20, 0x1F) for row in bios.vga.cells() for cell in row)


def test_get_and_set_video_mode(machine):
    """AH=0Fh reports mode 3, 80 columns, page 0; AH=00h AL=03h clears the screen and homes the cursor."""
    bios = machine[0]
    _, regs = call(machine, 0x10, ah=0x0F, bh=7)
    assert (regs["al"], regs["ah"], regs["bh"]) == (3, 80, 0)
    call(machine, 0x10, ah=0x0E, al=ord("q"))
    call(machine, 0x10, ah=0x00, al=0x03)
    assert bios.vga.text()[0] == " " * 80 and bios.vga.cursor == (0, 0)


def test_set_graphics_mode_is_reported(machine):
    """AH=00h AL=13h (320x200x256) is named on the console as not supported."""
    console = machine[2]
    call(machine, 0x10, ah=0x00, al=0x13)
    assert b"bios: INT 10h AH=00h (set video mode 13h) is not supported" in console.contents()


def test_unknown_service_is_named_once_on_the_console(machine):
    """A guest probes VESA twice: the console names 'VESA SuperVGA' once and the BIOS counts both."""
    bios, _, console, _ = machine
    for _ in range(2):
        assert call(machine, 0x10, ax=0x4F00)[0] == DONE
    message = b"\r\nbios: INT 10h AH=4Fh (VESA SuperVGA) is not supported\r\n"
    assert console.contents().count(message) == 1
    assert bios.unsupported[message.decode()] == 2


def test_unnamed_function_and_vector_are_still_reported(machine):
    """INT 10h AH=77h and INT 47h have no names: the messages say 'unknown function' / 'no BIOS service'."""
    console = machine[2]
    call(machine, 0x10, ah=0x77)
    call(machine, 0x47)
    assert b"INT 10h AH=77h (unknown function)" in console.contents()
    assert b"INT 47h (no BIOS service)" in console.contents()


def test_boot_failure_vectors_are_reported(machine):
    """INT 18h and INT 19h say what they are on the console."""
    console = machine[2]
    call(machine, 0x18)
    call(machine, 0x19)
    assert b"INT 18h (no bootable device" in console.contents()
    assert b"INT 19h (bootstrap loader (reboot)) is not supported" in console.contents()


# -- INT 11h, 12h, 15h ----------------------------------------------------------------------------
def test_equipment_and_memory_size(machine):
    """INT 11h gives the equipment word, INT 12h 639 KiB."""
    assert call(machine, 0x11)[1]["ax"] == 0x0222
    assert call(machine, 0x12)[1]["ax"] == 639


def test_extended_memory_size_clears_carry(machine):
    """INT 15h AH=88h gives the extended memory in KiB with CF=0."""
    set_stacked_flags(machine[1], 0x0203)
    _, regs = call(machine, 0x15, ah=0x88)
    assert regs["ax"] == 64512 and stacked_flags(machine[1]) == 0x0202


def test_e801_splits_memory_at_16_mib(machine):
    """INT 15h AX=E801h: 15 MiB below 16 MiB in KiB, the rest in 64 KiB blocks."""
    _, regs = call(machine, 0x15, ax=0xE801)
    assert regs["ax"] == regs["cx"] == 15 * 1024 and regs["bx"] == regs["dx"] == (64512 - 15360) // 64


def test_e820_is_reported_and_fails_with_86h(machine):
    """INT 15h AX=E820h is named on the console; AH=86h and CF=1 tell the caller to fall back."""
    _, regs = call(machine, 0x15, ax=0xE820)
    assert regs["ah"] == 0x86 and stacked_flags(machine[1]) & 1
    assert b"INT 15h AX=E820h (query system address map) is not supported" in machine[2].contents()


def test_a20_is_always_enabled(machine):
    """INT 15h AX=2401h succeeds; AX=2402h reports the gate enabled."""
    set_stacked_flags(machine[1], 0x0001)
    _, regs = call(machine, 0x15, ax=0x2401)
    assert regs["ah"] == 0 and stacked_flags(machine[1]) == 0
    assert call(machine, 0x15, ax=0x2402)[1]["al"] == 1


# -- INT 16h --------------------------------------------------------------------------------------
def test_read_key_without_input_waits_and_changes_nothing(machine):
    """INT 16h AH=00h with no key: WAIT_INPUT, registers and memory untouched; after typing 'a': AX=1E61h."""
    bios, mem, console, _ = machine
    regs = Regs(ax=0x0000, bx=0x1234)
    before_regs, before_mem = dict(regs.r), bytes(mem.data)
    assert bios.call(0x16, regs, mem) == WAIT_INPUT
    assert regs.r == before_regs and bytes(mem.data) == before_mem
    console.send_input(b"a")
    assert bios.call(0x16, regs, mem) == DONE and regs["ax"] == 0x1E61


@pytest.mark.parametrize("typed, ax", [(b"\r", 0x1C0D), (b"\x7f", 0x0E08), (b"\x1b", 0x011B),
                                       (b"7", 0x0837), (b"Q", 0x1051), (b"\x01", 0x1E01), (b"\xe9", 0x00E9)])
def test_read_key_scan_codes(machine, typed, ax):
    """Enter, a terminal's Backspace (DEL), Escape, digits, capitals, Ctrl-A get PC scan codes; others 0."""
    machine[2].send_input(typed)
    assert call(machine, 0x16, ah=0x10)[1]["ax"] == ax


def test_peek_sets_zf_and_the_peeked_key_is_read_once(machine):
    """AH=01h with no key sets ZF; after typing 'x', AH=01h clears ZF and shows it, AH=00h returns it once."""
    bios, mem, console, _ = machine
    set_stacked_flags(mem, 0x0202)
    _, regs = call(machine, 0x16, ah=0x01, al=0x55)
    assert stacked_flags(mem) & 0x40 and regs["ax"] == 0x0155
    console.send_input(b"xy")
    _, regs = call(machine, 0x16, ah=0x01)
    assert not stacked_flags(mem) & 0x40 and regs["ax"] == 0x2D78
    assert call(machine, 0x16, ah=0x11)[1]["ax"] == 0x2D78
    assert call(machine, 0x16, ah=0x00)[1]["ax"] == 0x2D78
    assert call(machine, 0x16, ah=0x00)[1]["al"] == ord("y")
    assert call(machine, 0x16, ah=0x00)[0] == WAIT_INPUT


def test_shift_flags_are_zero(machine):
    """INT 16h AH=02h: no shift keys held."""
    assert call(machine, 0x16, ax=0x02FF)[1]["al"] == 0


# -- INT 1Ah --------------------------------------------------------------------------------------
def test_tick_count_follows_the_clock(machine):
    """Ten seconds after power-on INT 1Ah AH=00h gives 182 ticks in CX:DX, AL=0, mirrored at 0040:006C."""
    _, mem, _, clock = machine
    clock.now += 10
    _, regs = call(machine, 0x1A, ah=0x00, al=0x55)
    assert (regs["cx"], regs["dx"], regs["al"]) == (0, 182, 0)
    assert int.from_bytes(mem.read(0x46C, 4), "little") == 182


def test_tick_count_wraps_after_a_day(machine):
    """An hour in, the count needs CX; a day and ten seconds in, it has wrapped to about 182 (1800B0h a day)."""
    _, _, _, clock = machine
    clock.now += 3600
    _, regs = call(machine, 0x1A, ah=0x00)
    assert regs["cx"] == 1 and (regs["cx"] << 16 | regs["dx"]) == int(3600 * B.TICK_HZ)
    clock.now += 86400 - 3600 + 10
    _, regs = call(machine, 0x1A, ah=0x00)
    assert regs["cx"] == 0 and regs["dx"] == int(86410 * B.TICK_HZ) - 0x1800B0 < 190


def test_rtc_time_and_date_in_bcd():
    """With the host clock at 2024-03-09 13:45:07, AH=02h gives 13:45:07 and AH=04h 20 24 03 09, in BCD."""
    mem = Memory()
    now = time.struct_time((2024, 3, 9, 13, 45, 7, 5, 69, 0))
    bios = Bios(VgaText(mem), Console(), DISK, wall_clock=lambda: now)
    bios.install(mem)
    regs = Regs(ah=0x02)
    bios.call(0x1A, regs, mem)
    assert (regs["ch"], regs["cl"], regs["dh"], regs["dl"]) == (0x13, 0x45, 0x07, 0)
    regs = Regs(ah=0x04)
    bios.call(0x1A, regs, mem)
    assert (regs["ch"], regs["cl"], regs["dh"], regs["dl"]) == (0x20, 0x24, 0x03, 0x09)


# -- INT 13h --------------------------------------------------------------------------------------
def read_chs(machine, cyl, head, sector, count, es=0x1000, bx=0, drive=0x80):
    return call(machine, 0x13, ah=0x02, al=count, ch=cyl & 0xFF, cl=sector | ((cyl >> 2) & 0xC0),
                dh=head, dl=drive, es=es, bx=bx)[1]


@pytest.mark.parametrize("cyl, head, sector, lba", [(0, 0, 1, 0), (0, 0, 63, 62), (0, 1, 1, 63),
                                                    (1, 0, 1, 1008), (1, 15, 63, 2015)])
def test_read_chs_maps_to_lba(machine, cyl, head, sector, lba):
    """AH=02h reads C/H/S with 16 heads and 63 sectors per track: sector n of the image is filled with n."""
    mem = machine[1]
    set_stacked_flags(mem, 0x0203)
    regs = read_chs(machine, cyl, head, sector, 1)
    assert (regs["ah"], regs["al"]) == (0, 1) and stacked_flags(mem) == 0x0202
    assert mem.read(0x10000, 512) == bytes([lba & 0xFF]) * 512


def test_read_chs_cylinder_high_bits():
    """Cylinder 300 is 12Ch: CH=2Ch and CL bits 6-7 = 01; the sector read is LBA 300*16*63."""
    mem = Memory()
    lba = 300 * 16 * 63
    disk = bytes(lba * 512) + b"\xab" * 512
    bios = Bios(VgaText(mem), Console(), disk)
    bios.install(mem)
    regs = Regs(ah=0x02, al=1, ch=0x2C, cl=0x41, dh=0, dl=0x80, es=0x2000, bx=0)
    bios.call(0x13, regs, mem)
    assert regs["ah"] == 0 and mem.read(0x20000, 512) == b"\xab" * 512


def test_read_several_sectors(machine):
    """AL=3 from 0/0/1 reads sectors 0, 1, 2 back to back into 1000:0000."""
    mem = machine[1]
    assert read_chs(machine, 0, 0, 1, 3)["al"] == 3
    assert mem.read(0x10000, 1536) == bytes([0]) * 512 + bytes([1]) * 512 + bytes([2]) * 512


def test_read_past_the_end_of_the_disk_fails_with_04h(machine):
    """The image has 2 cylinders: reading cylinder 2 gives AH=04h, CF=1, AL=0 and writes nothing."""
    mem = machine[1]
    regs = read_chs(machine, 2, 0, 1, 1)
    assert (regs["ah"], regs["al"]) == (0x04, 0) and stacked_flags(mem) & 1
    assert mem.read(0x10000, 512) == bytes(512)
    assert read_chs(machine, 1, 15, 63, 2)["ah"] == 0x04


def test_read_with_a_bad_sector_number_fails_with_01h(machine):
    """Sector 0 does not exist in CHS: AH=01h, CF=1."""
    assert read_chs(machine, 0, 0, 0, 1)["ah"] == 0x01 and stacked_flags(machine[1]) & 1


@pytest.mark.parametrize("es, bx, count", [(0xFFF0, 0x0000, 2), (0x1000, 0xFF00, 1), (0x9FC0, 0xFFFF, 127)])
def test_buffers_that_wrap_or_pass_one_mebibyte_fail_with_09h(machine, es, bx, count):
    """A buffer crossing 1 MiB or wrapping its segment gives AH=09h (DMA boundary) and writes nothing."""
    mem = machine[1]
    before = bytes(mem.data)
    regs = read_chs(machine, 0, 0, 1, count, es=es, bx=bx)
    assert regs["ah"] == 0x09 and stacked_flags(mem) & 1 and bytes(mem.data)[:FLAGS_AT] == before[:FLAGS_AT]


def test_buffer_beyond_small_guest_memory_is_refused():
    """In a VM with exactly 1 MiB, a read into F000:F000 would run past memory: AH=09h, no write outside."""
    mem = Memory(1 << 20)
    bios = Bios(VgaText(mem), Console(), DISK)
    bios.install(mem)
    regs = Regs(ah=0x02, al=16, cx=0x0001, dx=0x0080, es=0xF000, bx=0xF000)
    bios.call(0x13, regs, mem)
    assert regs["ah"] == 0x09


def test_other_drive_is_refused(machine):
    """Booted from 80h, a read from drive 81h fails with AH=01h and CF=1."""
    regs = read_chs(machine, 0, 0, 1, 1, drive=0x81)
    assert regs["ah"] == 0x01 and stacked_flags(machine[1]) & 1


def test_reset_and_status(machine):
    """AH=00h succeeds with CF=0; after a failed read AH=01h reports that read's status."""
    mem = machine[1]
    set_stacked_flags(mem, 1)
    assert call(machine, 0x13, ah=0x00, dl=0x80)[1]["ah"] == 0 and stacked_flags(mem) == 0
    read_chs(machine, 9, 0, 1, 1)
    assert call(machine, 0x13, ah=0x01, dl=0x80)[1]["ah"] == 0x04


def test_drive_parameters_hard_disk(machine):
    """AH=08h on the 2-cylinder image: CH=1 (max cylinder), CL=63, DH=15, DL=1 drive."""
    regs = call(machine, 0x13, ah=0x08, dl=0x80)[1]
    assert (regs["ch"], regs["cl"], regs["dh"], regs["dl"], regs["ah"]) == (1, 63, 15, 1, 0)


def test_floppy_geometry_parameters_and_type():
    """A 1.44 MB floppy boot from drive 0: 80 cylinders, 2 heads, 18 sectors; CHS 1/1/18 is LBA 71."""
    mem = Memory()
    disk = b"".join(bytes([n & 0xFF]) * 512 for n in range(2880))
    bios = Bios(VgaText(mem), Console(), disk, drive=0x00)
    bios.install(mem)
    regs = Regs(ah=0x08, dl=0)
    bios.call(0x13, regs, mem)
    assert (regs["ch"], regs["cl"], regs["dh"], regs["bl"]) == (79, 18, 1, 4)
    assert mem.read(regs["es"] * 16 + regs["di"], 11) == B.DPT_1440K
    regs = Regs(ah=0x02, al=1, ch=1, cl=18, dh=1, dl=0, es=0x1000)
    bios.call(0x13, regs, mem)
    assert regs["ah"] == 0 and mem.read(0x10000, 1)[0] == (1 * 2 + 1) * 18 + 17
    regs = Regs(ah=0x15, dl=0)
    bios.call(0x13, regs, mem)
    assert regs["ah"] == 0x01


def test_disk_type_hard_disk_reports_sector_count(machine):
    """AH=15h on the hard disk: AH=03h and CX:DX = 2016 sectors, CF=0."""
    regs = call(machine, 0x13, ah=0x15, dl=0x80)[1]
    assert (regs["ah"], regs["cx"], regs["dx"]) == (3, 0, 2016) and not stacked_flags(machine[1]) & 1


def test_extensions_check(machine):
    """AH=41h with BX=55AAh answers BX=AA55h, CX=1, AH=30h, CF=0; without the signature it fails."""
    regs = call(machine, 0x13, ah=0x41, bx=0x55AA, dl=0x80)[1]
    assert (regs["bx"], regs["cx"], regs["ah"]) == (0xAA55, 1, 0x30) and not stacked_flags(machine[1]) & 1
    assert call(machine, 0x13, ah=0x41, bx=0, dl=0x80)[1]["ah"] == 0x01


def packet(count, offset, segment, lba, size=0x10):
    return bytes((size, 0)) + count.to_bytes(2, "little") + offset.to_bytes(2, "little") + \
        segment.to_bytes(2, "little") + lba.to_bytes(8, "little")


def test_extended_read_from_packet(machine):
    """AH=42h with a packet at 0000:0600 for 2 sectors from LBA 1500 into 2000:0100."""
    mem = machine[1]
    mem.write(0x600, packet(2, 0x0100, 0x2000, 1500))
    regs = call(machine, 0x13, ah=0x42, dl=0x80, ds=0, si=0x600)[1]
    assert regs["ah"] == 0 and not stacked_flags(mem) & 1
    assert mem.read(0x20100, 1024) == bytes([1500 & 0xFF]) * 512 + bytes([1501 & 0xFF]) * 512


def test_extended_read_past_the_end_zeroes_the_packet_count(machine):
    """AH=42h for LBA 2015 + 2 sectors runs off the image: AH=04h, CF=1, the packet's count becomes 0."""
    mem = machine[1]
    mem.write(0x600, packet(2, 0, 0x2000, 2015))
    regs = call(machine, 0x13, ah=0x42, dl=0x80, si=0x600)[1]
    assert regs["ah"] == 0x04 and stacked_flags(mem) & 1 and mem.read(0x602, 2) == b"\0\0"


def test_extended_read_rejects_a_short_packet(machine):
    """A packet whose size byte is 8 is invalid: AH=01h."""
    machine[1].write(0x600, packet(1, 0, 0x2000, 0, size=8))
    assert call(machine, 0x13, ah=0x42, dl=0x80, si=0x600)[1]["ah"] == 0x01


def test_unsupported_disk_function_fails_with_carry(machine):
    """AH=03h (write sectors) is named on the console and fails with AH=01h, CF=1."""
    regs = call(machine, 0x13, ah=0x03, dl=0x80)[1]
    assert regs["ah"] == 0x01 and stacked_flags(machine[1]) & 1
    assert b"INT 13h AH=03h (write sectors (CHS)) is not supported" in machine[2].contents()


def test_timer_irq_refreshes_the_tick_count_silently(machine):
    """IRQ 0 delivered through vector 08h updates 0040:006C and prints nothing."""
    _, mem, console, clock = machine
    clock.now += 1
    call(machine, 0x08)
    assert int.from_bytes(mem.read(0x46C, 4), "little") == 18 and console.contents() == b""
