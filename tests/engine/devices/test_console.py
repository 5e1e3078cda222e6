"""Tests for engine/devices/console.py: one output ring, many readers, one writer."""
import threading

from engine.devices.console import Console


def test_every_reader_sees_all_output():
    """Two readers following the same console each get every byte, independently."""
    console = Console()
    first, second = console.reader(), console.reader()
    console.output(b"abc")
    assert first.read(timeout=0) == b"abc"
    console.output(b"def")
    assert first.read(timeout=0) == b"def"
    assert second.read(timeout=0) == b"abcdef"


def test_late_joiner_sees_scrollback():
    """A reader created after output was written starts from the oldest byte still held."""
    console = Console()
    console.output(b"boot banner\n")
    assert console.reader().read(timeout=0) == b"boot banner\n"


def test_reader_from_now_skips_scrollback():
    """reader(from_start=False) sees only output written after it joined."""
    console = Console()
    console.output(b"old")
    reader = console.reader(from_start=False)
    console.output(b"new")
    assert reader.read(timeout=0) == b"new"


def test_history_keeps_only_the_newest_bytes():
    """With history=4, contents() and a late joiner hold the last four bytes."""
    console = Console(history=4)
    console.output(b"abcdef")
    assert console.contents() == b"cdef"
    assert console.end == 6
    assert console.reader().read(timeout=0) == b"cdef"


def test_slow_reader_skips_ahead_and_counts_lost():
    """A reader that falls more than the history behind skips to the oldest byte held, counting the gap."""
    console = Console(history=4)
    reader = console.reader()
    console.output(b"ab")
    console.output(b"cdefgh")
    assert reader.read(timeout=0) == b"efgh"
    assert reader.lost == 4
    console.output(b"i")
    assert reader.read(timeout=0) == b"i"
    assert reader.lost == 4


def test_read_with_nothing_new_returns_empty_at_once():
    """read(timeout=0) on a caught-up reader returns b'' without blocking."""
    console = Console()
    assert console.reader().read(timeout=0) == b""


def test_read_waits_for_output_from_another_thread():
    """A blocking read wakes up when the device thread writes."""
    console = Console()
    reader = console.reader()
    writer = threading.Timer(0.05, console.output, args=(b"late",))
    writer.start()
    assert reader.read(timeout=5) == b"late"
    writer.join()


def test_input_is_taken_oldest_first_and_announced():
    """send_input queues bytes, calls each on_input listener, and take_input returns them in order."""
    console = Console()
    calls = []
    console.on_input(lambda: calls.append(console.has_input()))
    assert console.send_input(b"hello")
    assert calls == [True]
    assert console.take_input(2) == b"he"
    assert console.take_input(10) == b"llo"
    assert not console.has_input()


def test_claimed_writer_excludes_others():
    """Once a writer is claimed, others can neither claim nor type until it releases."""
    console = Console()
    assert console.claim_writer("alice")
    assert console.claim_writer("alice")             # re-claiming your own is fine
    assert not console.claim_writer("bob")
    assert not console.send_input(b"x", owner="bob")
    assert not console.send_input(b"x")
    assert not console.has_input()
    console.release_writer("bob")                     # only the holder can release
    assert not console.claim_writer("bob")
    assert console.send_input(b"a", owner="alice")
    console.release_writer("alice")
    assert console.claim_writer("bob")
    assert console.take_input(10) == b"a"


def test_refused_input_does_not_wake_listeners():
    """Input refused because another writer holds the console calls no on_input listener."""
    console = Console()
    calls = []
    console.on_input(lambda: calls.append(1))
    console.claim_writer("alice")
    console.send_input(b"x", owner="bob")
    assert calls == []
