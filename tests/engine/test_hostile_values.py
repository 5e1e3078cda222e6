"""Runs the hostile-value tests (tests/engine/hostile/) with numba's bounds checking on, in a subprocess.

numba does not check array bounds: a kernel indexing past an array with a guest-controlled value would read
or write host memory silently. With NUMBA_BOUNDSCHECK=1 every array index is checked and a bad one raises
IndexError (in a @cfunc hook it surfaces as an unraisable exception, which -W error turns into a failure).
The checked kernels are slower, and numba's cache does not tell them apart from the unchecked ones, so they
are compiled into a cache directory of their own, beside the normal one, and the normal suite keeps its
kernels. Raw pointer arithmetic through a carray over the whole host memory is not covered by the check:
the hostile tests compare every host address a kernel computes with the buffers it may touch instead.
"""
import os

import pytest

from tests.engine import hostile_run


@pytest.mark.skipif(os.environ.get("NUMBA_BOUNDSCHECK") == "1", reason="already bounds-checked")
def test_hostile_values_bounds_checked():
    """Every hostile-value test passes with bounds checking on, and no kernel raised IndexError anywhere."""
    done = hostile_run.wait(timeout=1800)
    assert done is not None, "the bounds-checked run did not finish in 1800 s"
    returncode, output = done
    assert returncode == 0, output[-6000:]
    assert "passed" in output and "skipped" not in output, output[-2000:]
    assert "IndexError" not in output, output[-6000:]
