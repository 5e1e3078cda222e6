"""The server terminal's replay rebuilds screen, scrollback, colours and cursor in a fresh terminal."""
import pyte

from webhyve.sessions.terminal import ServerTerminal


def replayed(terminal, rows):
    fresh = pyte.HistoryScreen(80, rows, history=5000)
    pyte.Stream(fresh).feed(terminal.replay())
    return fresh


def test_replay_matches_screen_scrollback_and_cursor():
    term = ServerTerminal()
    for n in range(60):
        term.feed(b"line %d \x1b[1;31mred\x1b[0m \x1b[44mon blue\x1b[0m\r\n" % n)
    term.feed(b"webhyve> hel")
    for rows in (25, 40):                       # the browser's terminal may be taller than the server's
        fresh = replayed(term, rows)
        text = [("".join(l[x].data for x in range(80))).rstrip() for l in fresh.history.top] + \
               [row.rstrip() for row in fresh.display]
        assert [t for t in text if t] == [t for t in term.text().split("\n") if t]
        last = max(y for y in range(rows) if fresh.display[y].strip())
        assert (fresh.cursor.y, fresh.cursor.x) == (last, len("webhyve> hel"))
        cells = fresh.buffer[last - 1]
        assert cells[8].fg == "red" and cells[8].bold and cells[12].bg == "blue" and cells[0].fg == "default"


def test_replay_of_an_empty_terminal_is_just_a_cursor():
    assert ServerTerminal().replay() == "\x1b[1G"
