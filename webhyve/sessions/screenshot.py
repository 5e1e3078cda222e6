"""PNG screenshots drawn on the server with Pillow: the VGA text screen and the serial terminal.

Both are character grids: the VGA one from guest memory (cp437 characters, attribute bytes in the 16 VGA
colours), the serial one from the pyte server terminal (ANSI colours, bold, reverse video).
"""
import io
import os

from PIL import Image, ImageDraw, ImageFont

from engine.door.tables import VGA_CURSOR, VGA_PALETTE

FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)
FONT_SIZE = 15
# xterm's default 16 colours, by the names pyte gives them.
ANSI = {"black": (0, 0, 0), "red": (205, 0, 0), "green": (0, 205, 0), "brown": (205, 205, 0),
        "blue": (0, 0, 238), "magenta": (205, 0, 205), "cyan": (0, 205, 205), "white": (229, 229, 229),
        "brightblack": (127, 127, 127), "brightred": (255, 0, 0), "brightgreen": (0, 255, 0),
        "brightbrown": (255, 255, 0), "brightblue": (92, 92, 255), "brightmagenta": (255, 0, 255),
        "brightcyan": (0, 255, 255), "brightwhite": (255, 255, 255)}
DEFAULT_FG, DEFAULT_BG = (229, 229, 229), (0, 0, 0)


def font(bold=False):
    """DejaVu Sans Mono (Debian's fonts-dejavu-core) when installed, else Pillow's built-in font."""
    name = "DejaVuSansMono-Bold.ttf" if bold else "DejaVuSansMono.ttf"
    for directory in FONT_DIRS:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return ImageFont.truetype(path, FONT_SIZE)
    return ImageFont.load_default(FONT_SIZE)


class Grid:
    """A canvas of cols x rows character cells."""

    def __init__(self, cols, rows):
        self.font, self.bold_font = font(), font(bold=True)
        self.cw = max(1, round(self.font.getlength("M")))
        self.ch = FONT_SIZE + 4
        self.image = Image.new("RGB", (cols * self.cw, rows * self.ch), DEFAULT_BG)
        self.draw = ImageDraw.Draw(self.image)

    def cell(self, row, col, text, fg, bg, bold=False):
        x, y = col * self.cw, row * self.ch
        if bg != DEFAULT_BG:
            self.draw.rectangle((x, y, x + self.cw - 1, y + self.ch - 1), fill=bg)
        if text.strip():
            self.draw.text((x, y + 1), text, fill=fg, font=self.bold_font if bold else self.font)

    def cursor(self, row, col, colour):
        x, y = col * self.cw, row * self.ch
        self.draw.rectangle((x, y + self.ch - 3, x + self.cw - 1, y + self.ch - 1), fill=colour)

    def png(self):
        out = io.BytesIO()
        self.image.save(out, "PNG")
        return out.getvalue()


def vga_png(screen):
    """The 80x25 text screen (a VM's vga()) in its attribute colours, with the hardware cursor unless the guest
    hid it."""
    cells = screen["cells"]
    grid = Grid(len(cells[0]), len(cells))
    for r, row in enumerate(cells):
        for c, (ch, attr) in enumerate(row):
            grid.cell(r, c, bytes((ch or 0x20,)).decode("cp437"), VGA_PALETTE[attr & 0xF], VGA_PALETTE[(attr >> 4) & 0x7])
    row, col = screen["cursor"]
    if row < len(cells) and not screen["cursor_hidden"]:
        grid.cursor(row, col, VGA_CURSOR)
    return grid.png()


def _rgb(name, default):
    if name == "default":
        return default
    if name in ANSI:
        return ANSI[name]
    try:
        return tuple(int(name[i:i + 2], 16) for i in (0, 2, 4))
    except ValueError:
        return default


def serial_png(terminal):
    """The serial terminal's visible screen as pyte holds it, with its cursor."""
    rows, (cy, cx) = terminal.cells()
    grid = Grid(len(rows[0]), len(rows))
    for r, row in enumerate(rows):
        for c, char in enumerate(row):
            fg, bg = _rgb(char.fg, DEFAULT_FG), _rgb(char.bg, DEFAULT_BG)
            if char.reverse:
                fg, bg = bg, fg
            grid.cell(r, c, char.data, fg, bg, bold=char.bold)
    if cy < len(rows):
        grid.cursor(cy, cx, DEFAULT_FG)
    return grid.png()
