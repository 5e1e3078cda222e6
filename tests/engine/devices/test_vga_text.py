"""Tests for the VGA text screen over guest memory and its CRTC cursor registers."""
import pytest

from engine.devices.vga_text import BASE, PALETTE, VgaText, WHITE


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


@pytest.fixture
def vga():
    return VgaText(Memory())


def test_put_is_seen_by_cells_and_text(vga):
    """The BIOS puts 'A' in light red at row 2, column 5; cells() and text() show it at that place."""
    vga.clear()
    vga.put(2, 5, ord("A"), 0x0C)
    assert vga.cells()[2][5] == (ord("A"), 0x0C)
    assert vga.cells()[0][0] == (0x20, 0x07)
    assert vga.text()[2] == " " * 5 + "A" + " " * 74
    assert len(vga.text()) == 25 and all(len(line) == 80 for line in vga.text())


def test_text_decodes_cp437_and_shows_nul_as_blank(vga):
    """A guest writes a box-drawing corner (0xC9) straight into 0xB8000 over never-touched (zero) memory."""
    vga._mem.write(BASE, bytes((0xC9, 0x1F)))
    assert vga.text()[0] == "╔" + " " * 79


def test_guest_moves_hardware_cursor_through_crtc(vga):
    """A guest writes location 12*80+40 to CRTC 0Eh/0Fh via 3D4h/3D5h; the cursor is row 12, column 40."""
    location = 12 * 80 + 40
    vga.port_write(0x3D4, 0x0E)
    vga.port_write(0x3D5, location >> 8)
    vga.port_write(0x3D4, 0x0F)
    vga.port_write(0x3D5, location & 0xFF)
    assert vga.cursor == (12, 40)
    assert vga.port_read(0x3D5) == location & 0xFF and vga.port_read(0x3D4) == 0x0F


def test_cursor_setter_and_shape_registers_read_back(vga):
    """The BIOS sets the cursor to (24, 79) and a guest reads shape 0Ah/0Bh and an unrelated index back."""
    vga.cursor = (24, 79)
    vga.port_write(0x3D4, 0x0E)
    assert vga.port_read(0x3D5) == (24 * 80 + 79) >> 8
    vga.port_write(0x3D4, 0x0A)
    assert vga.port_read(0x3D5) == 0x06
    vga.port_write(0x3D4, 0x14)
    vga.port_write(0x3D5, 0x1F)
    assert vga.port_read(0x3D5) == 0x1F


def test_unknown_port_is_refused_by_name(vga):
    """A bus wired wrongly hands port 3C0h to the CRTC model; it refuses and names the ports it decodes."""
    with pytest.raises(ValueError, match="0x3c0.*0x3D4"):
        vga.port_write(0x3C0, 0)


def test_scroll_up_window_moves_rows_and_blanks_the_bottom(vga):
    """Rows 0-2 hold 'a','b','c'; scrolling columns 0-9 of rows 0-2 up by one leaves b,c and a blank line."""
    vga.clear()
    for row, ch in enumerate(b"abc"):
        vga.put(row, 0, ch, 0x07)
        vga.put(row, 20, ch, 0x07)
    vga.scroll_up(1, 0x1E, 0, 0, 2, 9)
    assert [vga.cells()[r][0] for r in range(3)] == [(ord("b"), 7), (ord("c"), 7), (0x20, 0x1E)]
    assert [vga.cells()[r][20][0] for r in range(3)] == list(b"abc")


def test_scroll_zero_lines_clears_the_window(vga):
    """INT 10h AH=06h with AL=0 clears its window to the attribute given."""
    vga.put(5, 5, ord("x"), 0x07)
    vga.scroll_up(0, 0x4F, 4, 4, 6, 6)
    assert vga.cells()[5][5] == (0x20, 0x4F) and vga.cells()[3][5] == (0, 0)


def test_scroll_down_mirrors_scroll_up(vga):
    """Rows 0-1 hold 'a','b'; scrolling rows 0-2 down by one gives blank, a, b."""
    vga.clear()
    vga.put(0, 0, ord("a"), 7)
    vga.put(1, 0, ord("b"), 7)
    vga.scroll_down(1, 0x07, 0, 0, 2, 79)
    assert [vga.cells()[r][0][0] for r in range(3)] == [0x20, ord("a"), ord("b")]


def test_palette_has_the_sixteen_standard_colours():
    """Screenshots colour attribute nibbles with the standard VGA text palette."""
    assert len(PALETTE) == 16 and PALETTE[15] == WHITE == (255, 255, 255) and PALETTE[6] == (170, 85, 0)
