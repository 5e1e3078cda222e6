"""Interrupt-window exiting in the block hook (core/kick.py): the STI shadow's block runs once, at any address."""
import numpy as np
import pytest

from engine.core import ctx as C
from engine.core import kick


@pytest.mark.parametrize("shadow", [0x1000, 0x7FFF_FFFF_F000, 0xFFFF_FFFF_81A4_8051])   # low, user, kernel
def test_the_shadowed_block_is_let_through_once_wherever_it_is(shadow):
    """The skip compares uint64 addresses exactly (a Linux kernel address does not survive a float64)."""
    ud = C.new()
    ud[C.WINDOW_SKIP] = shadow + 1
    ud[C.KICK] = kick.KICK_WINDOW
    kick._window_check(ud, np.uint64(shadow))
    assert ud[C.WINDOW_SKIP] == 0 and ud[C.KICK] == kick.KICK_WINDOW   # let through, still armed, no stop
