"""Tests for engine/devices/debugcon.py: the port 0xE9 debug console."""
import pytest

from engine.devices.console import Console
from engine.devices.debugcon import DebugCon


@pytest.fixture
def console():
    return Console()


def test_read_identifies_the_port(console):
    """Reading the port returns 0xE9, which is how guests detect a debug console."""
    assert DebugCon(console).read() == 0xE9


def test_writes_reach_the_console_in_order(console):
    """Each byte written appears in the console output, in order, with nothing added."""
    debugcon = DebugCon(console)
    for byte in b"E9 ok\n\x00\xff":
        debugcon.write(0, byte)
    assert console.contents() == b"E9 ok\n\x00\xff"


def test_other_offsets_are_refused(console):
    """The device is one port wide: offset 1 is a bus mistake and is named as such."""
    debugcon = DebugCon(console)
    with pytest.raises(ValueError, match="outside its one port"):
        debugcon.read(1)
    with pytest.raises(ValueError, match="outside its one port"):
        debugcon.write(1, 0x41)


def test_values_wider_than_a_byte_are_refused(console):
    """A 16-bit OUT must be split by the bus; the device refuses 0x4142 instead of truncating it."""
    with pytest.raises(ValueError, match="not a byte"):
        DebugCon(console).write(0, 0x4142)
    assert console.contents() == b""
