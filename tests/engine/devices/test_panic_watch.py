"""Linux's panic read from its console (vm/panic.py): the panic line remembered, the end marker Linux prints when
it will not reboot reported with the kernel's own reason, whatever the chunks the UART hands over."""
import random

from engine.vm.panic import MAX_LINE, PanicWatch

CONSOLE = (b"[    3.101] sysrq: Trigger a crash\r\n"
           b"[    3.102] Kernel panic - not syncing: sysrq triggered crash\r\n"
           b"[    3.103] CPU: 0 PID: 71 Comm: sh Not tainted 6.1.0-28-amd64 #1  Debian 6.1.119-1\r\n"
           b"[    3.110] Kernel Offset: 0x2a000000 from 0xffffffff81000000\r\n"
           b"[    3.111] ---[ end Kernel panic - not syncing: sysrq triggered crash ]---\r\n")


def test_the_end_marker_reports_the_reason_once_in_any_chunking():
    rng = random.Random(7)
    for _ in range(200):
        ended = []
        watch = PanicWatch(ended.append)
        at = 0
        while at < len(CONSOLE):
            step = rng.choice((1, 1, 2, 7, 64))
            watch.feed(CONSOLE[at:at + step])
            at += step
        assert ended == ["Kernel panic - not syncing: sysrq triggered crash"]
        assert watch.seen == "Kernel panic - not syncing: sysrq triggered crash"


def test_a_panic_line_alone_is_remembered_until_the_next_boot():
    """panic=N: the kernel resets after its panic line, with no end marker; the reset's message names it."""
    ended = []
    watch = PanicWatch(ended.append)
    watch.feed(CONSOLE.split(b"\n")[1] + b"\n" + b"[    3.2] Rebooting in 1 seconds..\r\n")
    assert ended == [] and watch.seen == "Kernel panic - not syncing: sysrq triggered crash"
    watch.clear()
    assert watch.seen is None


def test_ordinary_lines_and_endless_ones_are_nothing():
    ended = []
    watch = PanicWatch(ended.append)
    watch.feed(b"panic=-1 is on the command line\nnot syncing: here\n" + b"x" * (10 * MAX_LINE) + b"\n")
    watch.feed(b"y" * (MAX_LINE - 5) + b"Kernel panic - not syncing: cut off\n")   # past the kept part of a line
    assert ended == [] and watch.seen is None
