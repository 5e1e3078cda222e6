"""The server-side terminal: a pyte screen with scrollback that a VM's serial output is fed into.

It is what a late joiner sees first (replayed as ANSI text into their xterm.js), what the serial
screenshot draws, and what survives when a viewer falls further behind than the console ring holds.
"""
import threading

import pyte
from pyte import graphics

COLS, ROWS = 80, 25
HISTORY = 2000

_FG = {name: code for code, name in graphics.FG_ANSI.items()}
_FG.update({name: code for code, name in graphics.FG_AIXTERM.items()})
_BG = {name: code for code, name in graphics.BG_ANSI.items()}
_BG.update({name: code for code, name in graphics.BG_AIXTERM.items()})


def _colour(value, table, extended):
    """SGR parameters for a pyte colour: a named one, or 24-bit hex as pyte stores 256-colour values."""
    if value in table:
        return [str(table[value])]
    if len(value) == 6:
        return [str(extended), "2", str(int(value[0:2], 16)), str(int(value[2:4], 16)), str(int(value[4:6], 16))]
    return []


def sgr(char):
    """The SGR escape that selects a pyte Char's attributes, starting from a reset."""
    params = ["0"]
    for flag, code in (("bold", "1"), ("italics", "3"), ("underscore", "4"), ("blink", "5"), ("reverse", "7"),
                       ("strikethrough", "9")):
        if getattr(char, flag):
            params.append(code)
    if char.fg != "default":
        params += _colour(char.fg, _FG, 38)
    if char.bg != "default":
        params += _colour(char.bg, _BG, 48)
    return "\x1b[" + ";".join(params) + "m"


def line_ansi(line, width):
    """One pyte line as text with SGR changes, trailing default blanks dropped."""
    chars = [line[x] for x in range(width)]
    while chars and chars[-1].data == " " and sgr(chars[-1]) == "\x1b[0m":
        chars.pop()
    out, current = [], "\x1b[0m"
    for char in chars:
        style = sgr(char)
        if style != current:
            out.append(style)
            current = style
        out.append(char.data)
    if current != "\x1b[0m":
        out.append("\x1b[0m")
    return "".join(out)


class ServerTerminal:
    """pyte HistoryScreen + ByteStream behind a lock; fed by the VM's output pump, read by anyone."""

    def __init__(self, cols=COLS, rows=ROWS, history=HISTORY):
        self.screen = pyte.HistoryScreen(cols, rows, history=history)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()

    def feed(self, data):
        with self.lock:
            self.stream.feed(data)

    def lines(self):
        """The visible screen as plain text lines (trailing blanks kept to the width)."""
        with self.lock:
            return list(self.screen.display)

    def cells(self):
        """Rows of pyte Chars, and the cursor (row, col): what the screenshot draws."""
        with self.lock:
            s = self.screen
            rows = [[s.buffer[y][x] for x in range(s.columns)] for y in range(s.lines)]
            return rows, (s.cursor.y, s.cursor.x)

    def text(self):
        """Scrollback and screen as plain text, oldest line first, trailing blank lines dropped."""
        with self.lock:
            s = self.screen
            lines = ["".join(line[x].data for x in range(s.columns)).rstrip() for line in s.history.top]
            lines += [row.rstrip() for row in s.display]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines)

    def replay(self):
        """ANSI text that rebuilds scrollback, screen and cursor in a fresh terminal of at least ROWS rows.

        The cursor is placed relative to the last line written, so a taller browser terminal works too.
        """
        with self.lock:
            s = self.screen
            history = [line_ansi(line, s.columns) for line in s.history.top]
            screen = [line_ansi(s.buffer[y], s.columns) for y in range(s.lines)]
            cy, cx = s.cursor.y, s.cursor.x
        last = max([cy] + [y for y, text in enumerate(screen) if text])
        body = "\r\n".join(history + screen[:last + 1])
        up = "\x1b[%dA" % (last - cy) if last > cy else ""
        return body + up + "\x1b[%dG" % (cx + 1)
