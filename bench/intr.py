"""Interrupt figures: LAPIC timer interrupts a guest takes per second, interrupts from another thread with and
without posted interrupts, the IPI round trip between two vCPUs, and the CPU-bound part of `smp` on 2 vCPUs
against 1 — each against a baseline measured in the same run.
Run from the repo root after `make -C guests`: .venv/bin/python bench/intr.py
"""
import os
import pathlib
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine import Hypervisor, stats  # noqa: E402
from tests.engine.io.test_vlapic_guest import stress  # noqa: E402

GUESTS = os.path.join(ROOT, "guests", "build")
RUNS = 3
SMP_ROUNDS = 5000           # private work per locked increment: the CPU-bound part dominates


def guest(name):
    with open(os.path.join(GUESTS, name), "rb") as f:
        return f.read()


def boot(name, cmdline, cpus=1, tunables=None, timeout=300):
    hv = Hypervisor(host_mem_mb=256, tunables=tunables)
    vm = hv.create_vm(name.split(".")[0], mem_mb=32, cpus=cpus)
    vm.load(guest(name), name, cmdline=cmdline)
    started = time.monotonic()
    vm.start()
    if vm.wait(states=("suspended",), timeout=timeout) != "suspended" or vm.suspend_reason != "halt":
        raise SystemExit("%s did not finish: %s %s" % (name, vm.state, vm.suspend_message))
    return vm, time.monotonic() - started, vm.console.contents().decode(errors="replace")


def timer_rate(hz, seconds=2):
    """Ticks the timer guest took per second of wall time when asked for `hz`, and exits per tick."""
    vm, elapsed, text = boot("timer.elf", "hz=%d seconds=%d" % (hz, seconds))
    ticks = int(re.search(r"done, (\d+) ticks", text).group(1))
    v = vm.vcpus[0]
    return ticks / elapsed, v.counters[stats.VMEXIT_COUNT] / max(ticks, 1)


def posted_rate(posted, count=10000):
    """Interrupts per second sent from two other threads to a spinning guest, and VM exits per interrupt
    (the guest and the senders are the stress test's, tests/engine/io/test_vlapic_guest.py)."""
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.vmx.cap.posted_interrupts": int(posted)})
    with tempfile.TemporaryDirectory() as tmp:
        vm, elapsed = stress(hv, pathlib.Path(tmp), count // 2, (0x50, 0x60))
    v = vm.vcpus[0]
    return count / elapsed, v.counters[stats.VMEXIT_COUNT] / count, v.counters[stats.VMEXIT_EXTINT] / count


def console_span(name, cpus, cmdline, begin, end):
    """Boot a guest and time its console from the first `begin` to the line matching `end` (a regex whose
    group 1 is "ok" or "WRONG"); a WRONG result stops the bench."""
    hv = Hypervisor(host_mem_mb=256)
    vm = hv.create_vm(name.split(".")[0], mem_mb=32, cpus=cpus)
    vm.load(guest(name), name, cmdline=cmdline)
    reader = vm.console.reader()
    vm.start()
    seen, started = b"", None
    while not re.search(end, seen):
        seen += reader.read(0.001)
        if started is None and begin in seen:
            started = time.monotonic()
    finished = time.monotonic()
    vm.wait(states=("suspended",), timeout=60)
    if re.search(end, seen).group(1) != b"ok":
        raise SystemExit("%s finished wrong: %r" % (name, seen[-200:]))
    return finished - started


def smp_time(cpus, work):
    """Wall time from 'counting' to the counter line: the CPU-bound part, split across `cpus` vCPUs."""
    return console_span("smp.elf", cpus, "cpus=%d work=%d rounds=%d" % (cpus, work // cpus, SMP_ROUNDS),
                        b"counting", rb"counter \d+ (ok|WRONG)")


def ipi_round_trip(flag, count):
    """Seconds per round trip of the `ipi` guest, timed from its console: from the line it prints before the
    first ping to its "done" line. flag=1 is the baseline: the same ping-pong through a word in memory."""
    return console_span("ipi.elf", 2, "count=%d flag=%d" % (count, flag), b" round trips\r\n",
                        rb"ipi: done.* (ok|WRONG)\r\n") / count


def best(fn, *args, key=lambda r: r):
    results = [fn(*args) for _ in range(RUNS)]
    return max(results, key=key)


def main():
    print("%-52s %14s %14s %8s" % ("figure", "webhyve", "baseline", "ratio"))
    asked = 10000
    rate, exits = best(timer_rate, asked, key=lambda r: r[0])
    print("%-52s %14.0f %14.0f %8.2f   (%.1f exits per tick)" % (
        "LAPIC timer interrupts/s taken (asked %d Hz)" % asked, rate, asked, rate / asked, exits))
    on = best(posted_rate, True, key=lambda r: r[0])
    off = best(posted_rate, False, key=lambda r: r[0])
    print("%-52s %14.0f %14.0f %8.2f" % ("interrupts/s from another thread, posted vs not", on[0], off[0],
                                        on[0] / off[0]))
    print("%-52s %14.2f %14.2f" % ("  VM exits per interrupt (posted, not)", on[1], off[1]))
    print("%-52s %14.2f %14.2f" % ("  external-interrupt exits per interrupt", on[2], off[2]))
    ipi = min(ipi_round_trip(0, 2000) for _ in range(RUNS))
    flag = min(ipi_round_trip(1, 200000) for _ in range(RUNS))         # ~1 us each: many, to time them
    print("%-52s %12.1fus %12.1fus %8.2f   (%.0f vs %.0f round trips/s)" % (
        "IPI round trip vCPU 0 -> 1 -> 0, against memory", ipi * 1e6, flag * 1e6, flag / ipi, 1 / ipi, 1 / flag))
    work = 4000
    one = min(smp_time(1, work) for _ in range(RUNS))
    two = min(smp_time(2, work) for _ in range(RUNS))
    print("%-52s %13.3fs %13.3fs %8.2f   (target >= 1.6)" % ("smp CPU-bound part, 2 vCPUs against 1", two, one,
                                                            one / two))


if __name__ == "__main__":
    main()
