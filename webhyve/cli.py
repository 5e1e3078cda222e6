"""vmmctl: bhyvectl's cousin. `vmmctl run IMAGE` boots a guest with its serial console on this terminal."""
import os
import time
import select
import sys
import termios
import threading
import tty

import click

from engine import EngineError, Hypervisor
from engine import stats as engine_stats
from engine.loaders import KINDS

ESCAPE = b"\x1d"            # Ctrl-], as telnet and virsh console use
ESCAPE_NAME = "Ctrl-]"
CLEAN_STOPS = ("halt", "poweroff")


@click.group()
def main():
    """Control webhyve virtual machines."""


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--mem", "mem_mb", default=64, show_default=True, help="Guest memory in MiB.")
@click.option("--cpus", default=1, show_default=True, help="Number of vCPUs.")
@click.option("--cmdline", default="", help="Kernel command line (multiboot).")
@click.option("--kind", type=click.Choice(KINDS), help="Image kind, when it cannot be detected (flat64).")
@click.option("--load-addr", type=lambda s: int(s, 0), help="Load address of a flat64 image.")
@click.option("--host-mem", "host_mem_mb", default=2048, show_default=True, help="Modeled host memory in MiB.")
@click.option("--stats", "show_stats", is_flag=True, help="Print bhyve-style per-vCPU stats when the VM stops.")
@click.option("--timeout", type=float, help="Power the VM off after this many seconds.")
@click.option("--gdb", "gdb", metavar="[w]PORT", callback=lambda ctx, param, value: _gdb_port(value),
              help="Serve gdb on 127.0.0.1:PORT (bhyve's -G); wPORT holds the guest at its entry for gdb.")
def run(image, mem_mb, cpus, cmdline, kind, load_addr, host_mem_mb, show_stats, timeout, gdb):
    """Boot IMAGE (multiboot kernel, boot sector / raw disk, or --kind flat64) with its console here.

    On a terminal the console is raw; press Ctrl-] to power the VM off and leave. With piped stdin the
    input is typed into the guest and vmmctl waits for the VM to stop (or --timeout).
    """
    try:
        hv = Hypervisor(host_mem_mb=host_mem_mb)
        vm = hv.create_vm(os.path.basename(image).split(".")[0] or "vm", mem_mb=mem_mb, cpus=cpus)
        with open(image, "rb") as f:
            vm.load(f.read(), image, kind=kind, cmdline=cmdline, load_addr=load_addr)
        if gdb is not None:
            port = vm.gdb_listen(gdb[1], wait=gdb[0])
            click.echo("vmmctl: gdb stub on 127.0.0.1:%d; in gdb: target remote 127.0.0.1:%d%s"
                       % (port, port, " (the guest waits at its entry)" if gdb[0] else ""), err=True)
    except (EngineError, OSError) as problem:
        raise click.ClickException(str(problem))
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo("vmmctl: console of %s; press %s to power off and leave" % (vm.name, ESCAPE_NAME), err=True)
    reader = vm.console.reader()
    done = threading.Event()
    threading.Thread(target=_pump_output, args=(reader, done), daemon=True).start()
    vm.start()
    state = _attach_terminal(vm, timeout) if interactive else _type_until_stopped(vm, sys.stdin.fileno(), timeout)
    vm.poweroff()
    done.set()
    sys.stdout.buffer.write(reader.read(0))
    sys.stdout.flush()
    reason = vm.suspend_reason
    click.echo("\r\nvmmctl: VM %s stopped: %s" % (vm.name, vm.suspend_message or state), err=True)
    if show_stats:
        for vcpu in vm.vcpus:
            click.echo(engine_stats.format_stats(vcpu.index, vcpu.counters))
    sys.exit(0 if reason in CLEAN_STOPS else 2)


def _gdb_port(value):
    """bhyve's -G syntax: PORT, or wPORT to wait for the debugger before the guest's first instruction."""
    if value is None:
        return None
    wait = value.startswith("w")
    digits = value[1:] if wait else value
    if not digits.isdigit() or int(digits) > 65535:
        raise click.BadParameter("%r is not [w]PORT (a TCP port 0-65535, w to wait for gdb)" % value)
    return wait, int(digits)


def _pump_output(reader, done):
    while not done.is_set():
        data = reader.read(0.05)
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


def _attach_terminal(vm, timeout):
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        return _type_until_stopped(vm, fd, timeout)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _type_until_stopped(vm, fd, timeout):
    """Copy stdin to the guest until the VM stops, the escape key, or the timeout; returns the VM state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    open_input = True
    while True:
        state = vm.wait(states=("suspended", "idle"), timeout=0.05)
        if state in ("suspended", "idle"):
            return state
        if deadline is not None and time.monotonic() > deadline:
            return "timeout after %gs" % timeout
        if open_input and select.select([fd], [], [], 0)[0]:
            data = os.read(fd, 1024)
            if not data:
                open_input = False             # end of piped input: the guest runs on until it stops
            elif ESCAPE in data:
                vm.console.send_input(data.split(ESCAPE)[0])
                return "left with %s" % ESCAPE_NAME
            else:
                vm.console.send_input(data.replace(b"\n", b"\r"))


if __name__ == "__main__":
    main()
