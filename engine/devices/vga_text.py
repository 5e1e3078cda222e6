"""The VGA colour text screen: 80x25 (char, attribute) cells at guest-physical 0xB8000 and the CRTC cursor registers."""

BASE = 0xB8000
ROWS, COLS = 25, 80
CRTC_INDEX, CRTC_DATA = 0x3D4, 0x3D5
PORTS = (CRTC_INDEX, CRTC_DATA)

# CRTC register indexes (IBM VGA Technical Reference, "CRT Controller Registers").
CURSOR_START = 0x0A             # bits 0-4 first scan line, bit 5 cursor off
CURSOR_END = 0x0B
CURSOR_HIGH = 0x0E              # cursor location = row * COLS + col
CURSOR_LOW = 0x0F

DEFAULT_ATTR = 0x07             # light grey on black: what the BIOS clears the screen with

# The 16 attribute colours as the standard VGA DAC programs them for text mode (6-bit values x 255/63).
BLACK = (0, 0, 0)
BLUE = (0, 0, 170)
GREEN = (0, 170, 0)
CYAN = (0, 170, 170)
RED = (170, 0, 0)
MAGENTA = (170, 0, 170)
BROWN = (170, 85, 0)
LIGHT_GREY = (170, 170, 170)
DARK_GREY = (85, 85, 85)
LIGHT_BLUE = (85, 85, 255)
LIGHT_GREEN = (85, 255, 85)
LIGHT_CYAN = (85, 255, 255)
LIGHT_RED = (255, 85, 85)
LIGHT_MAGENTA = (255, 85, 255)
YELLOW = (255, 255, 85)
WHITE = (255, 255, 255)
PALETTE = (BLACK, BLUE, GREEN, CYAN, RED, MAGENTA, BROWN, LIGHT_GREY,
           DARK_GREY, LIGHT_BLUE, LIGHT_GREEN, LIGHT_CYAN, LIGHT_RED, LIGHT_MAGENTA, YELLOW, WHITE)


class VgaText:
    """Text mode 3 over guest memory: the BIOS and the guest write cells, viewers read them back."""

    def __init__(self, mem):
        self._mem = mem
        self._index = 0
        self._crtc = {CURSOR_START: 0x06, CURSOR_END: 0x07, CURSOR_HIGH: 0, CURSOR_LOW: 0}

    # -- CRTC ports ----------------------------------------------------------------------------
    def port_write(self, port, value):
        if port == CRTC_INDEX:
            self._index = value & 0xFF
        elif port == CRTC_DATA:
            self._crtc[self._index] = value & 0xFF
        else:
            raise ValueError(f"VgaText has no port {port:#x}; it decodes only 0x3D4/0x3D5 (CRTC index/data)")

    def port_read(self, port):
        if port == CRTC_INDEX:
            return self._index
        if port == CRTC_DATA:
            return self._crtc.get(self._index, 0)
        raise ValueError(f"VgaText has no port {port:#x}; it decodes only 0x3D4/0x3D5 (CRTC index/data)")

    # -- cursor --------------------------------------------------------------------------------
    @property
    def cursor(self):
        """(row, col) of the hardware cursor; a row of 25 or more means the guest parked it off screen."""
        return divmod((self._crtc[CURSOR_HIGH] << 8) | self._crtc[CURSOR_LOW], COLS)

    @cursor.setter
    def cursor(self, position):
        row, col = position
        location = (row * COLS + col) & 0xFFFF
        self._crtc[CURSOR_HIGH], self._crtc[CURSOR_LOW] = location >> 8, location & 0xFF

    @property
    def cursor_shape(self):
        """(start, end) scan lines from CRTC 0Ah/0Bh; bit 5 of start hides the cursor."""
        return self._crtc[CURSOR_START], self._crtc[CURSOR_END]

    @cursor_shape.setter
    def cursor_shape(self, shape):
        self._crtc[CURSOR_START], self._crtc[CURSOR_END] = shape[0] & 0xFF, shape[1] & 0xFF

    # -- cells ---------------------------------------------------------------------------------
    def cell(self, row, col):
        ch, attr = self._mem.read(BASE + 2 * (row * COLS + col), 2)
        return ch, attr

    def put(self, row, col, ch, attr):
        self._mem.write(BASE + 2 * (row * COLS + col), bytes((ch & 0xFF, attr & 0xFF)))

    def cells(self):
        return _cells(self._mem.read(BASE, ROWS * COLS * 2))

    def text(self):
        """25 lines of 80 characters; NUL cells show blank, as on the screen."""
        return _lines(self._mem.read(BASE, ROWS * COLS * 2))

    def screen(self):
        """The screen as plain values from one read of its memory: lines, cells [[char, attr]...], the cursor
        (row, col) and whether the guest hid it."""
        raw = self._mem.read(BASE, ROWS * COLS * 2)
        return {"lines": _lines(raw), "cells": [[list(cell) for cell in row] for row in _cells(raw)],
                "cursor": list(self.cursor), "cursor_hidden": bool(self.cursor_shape[0] & 0x20)}

    def clear(self, attr=DEFAULT_ATTR):
        self._mem.write(BASE, bytes((0x20, attr)) * (ROWS * COLS))

    def scroll_up(self, lines, attr, top, left, bottom, right):
        """BIOS INT 10h AH=06h on the window top..bottom x left..right; 0 lines (or too many) blanks it."""
        self._scroll(lines, attr, top, left, bottom, right, up=True)

    def scroll_down(self, lines, attr, top, left, bottom, right):
        """BIOS INT 10h AH=07h: the mirror image of scroll_up."""
        self._scroll(lines, attr, top, left, bottom, right, up=False)

    def _scroll(self, lines, attr, top, left, bottom, right, up):
        bottom, right = min(bottom, ROWS - 1), min(right, COLS - 1)
        if top > bottom or left > right:
            return
        height, width = bottom - top + 1, right - left + 1
        if lines == 0 or lines > height:
            lines = height
        rows = range(top, bottom + 1) if up else range(bottom, top - 1, -1)
        step = lines if up else -lines
        blank = bytes((0x20, attr & 0xFF)) * width
        for row in rows:
            source = row + step
            data = self._row_span(source, left, width) if top <= source <= bottom else blank
            self._mem.write(BASE + 2 * (row * COLS + left), data)

    def _row_span(self, row, left, width):
        return self._mem.read(BASE + 2 * (row * COLS + left), 2 * width)


def _cells(raw):
    return [[(raw[i], raw[i + 1]) for i in range(r * COLS * 2, (r + 1) * COLS * 2, 2)] for r in range(ROWS)]


def _lines(raw):
    chars = bytes(raw[0::2]).replace(b"\0", b" ")
    return [chars[r * COLS:(r + 1) * COLS].decode("cp437") for r in range(ROWS)]
