"""Fixtures for the debugger tests: the debugme guest waiting for gdb at its entry, and the real gdb in batch mode."""
import os
import re
import signal
import subprocess
import time

import pytest

from tests.engine.conftest import GUESTS, guest

DEBUGME = os.path.join(GUESTS, "debugme.elf")
GDB_SETUP = ("set pagination off", "set confirm off", "set width 0")


@pytest.fixture
def debugme(hv):
    """debugme.elf with a GDB stub (bhyve's -G w<port>): started, stopped at its entry; returns (vm, port)."""
    vms = []

    def boot(cpus=1, name="debugme"):
        vm = hv.create_vm(name, mem_mb=16, cpus=cpus)
        vm.load(guest("debugme.elf"), "debugme.elf")
        port = vm.gdb_listen(0, wait=True)
        vm.start()
        vms.append(vm)
        return vm, port
    yield boot
    for vm in vms:
        vm.destroy()


def gdb_args(port, commands, elf=DEBUGME):
    """gdb -batch connecting to the stub, then `commands` one -ex each."""
    # gdb gives a remote 2 s per reply by default; under `make stress` a reply can take longer, and gdb then
    # reads it as the answer to its next packet ("Remote replied unexpectedly to 'vMustReplyEmpty'")
    args = ["gdb", "-nx", "-batch", "-iex", "set debuginfod enabled off", "-iex", "set remotetimeout 120"]
    for command in GDB_SETUP + ("target remote 127.0.0.1:%d" % port,) + tuple(commands):
        args += ["-ex", command]
    return args + ([elf] if elf else [])


def run_gdb(port, commands, elf=DEBUGME, timeout=300):      # a deadline for a hang: under load a watchpoint run takes minutes
    """Run gdb to the end of `commands`; returns everything it printed."""
    done = subprocess.run(gdb_args(port, commands, elf), capture_output=True, text=True, timeout=timeout)
    return done.stdout + done.stderr


def run_gdb_interrupted(port, commands, ready, waiting_for, elf=DEBUGME):
    """Start gdb on `commands` (the first a `continue`), wait until ready() says the guest is where the test
    wants it, then Ctrl-C gdb (SIGINT: it sends the stub its interrupt); returns everything gdb printed."""
    gdb = subprocess.Popen(gdb_args(port, commands, elf), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    try:
        deadline = time.monotonic() + 30
        while not ready():
            assert time.monotonic() < deadline, waiting_for
            time.sleep(0.05)
        gdb.send_signal(signal.SIGINT)
        return gdb.communicate(timeout=300)[0]
    finally:
        gdb.kill()


def symbol(name, elf="debugme.elf"):
    """Where the linker put a guest's symbol (nm), for checks made without gdb."""
    out = subprocess.run(["nm", os.path.join(GUESTS, elf)], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"^([0-9a-f]+) [TtBbDd] %s$" % name, out, re.M).group(1), 16)
