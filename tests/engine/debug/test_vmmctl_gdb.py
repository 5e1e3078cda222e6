"""vmmctl run --gdb: bhyve's -G for the CLI; gdb attaches to the guest that waits at its entry."""
import os
import re
import subprocess
import sys

from tests.engine.debug.conftest import DEBUGME, run_gdb

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def test_run_with_gdb_wait_then_break_and_leave():
    """--gdb w0: vmmctl names the port; gdb breaks in tick(); after gdb leaves the guest prints and runs on."""
    vmmctl = subprocess.Popen([sys.executable, "-m", "webhyve.cli", "run", DEBUGME, "--gdb", "w0", "--timeout", "15"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    try:
        line = vmmctl.stderr.readline().decode()
        port = int(re.search(r"target remote 127\.0\.0\.1:(\d+)", line).group(1))
        assert "waits at its entry" in line
        out = run_gdb(port, ["break tick", "continue", "print ticks"])
        stdout, stderr = vmmctl.communicate(timeout=60)
    finally:
        vmmctl.kill()
    assert "Breakpoint 1, tick (step=1)" in out and re.search(r"^\$1 = 0$", out, re.M), out
    assert b"debugme: counting" in stdout
    assert b"vmmctl: VM debugme stopped" in stderr


def test_bad_gdb_port_is_one_clear_line():
    """--gdb with something that is not [w]PORT: a usage error naming the value, no traceback."""
    done = subprocess.run([sys.executable, "-m", "webhyve.cli", "run", DEBUGME, "--gdb", "w12x"],
                          capture_output=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2
    assert b"'w12x' is not [w]PORT" in done.stderr and b"Traceback" not in done.stderr
