"""System calls and page faults per second: the usermode guest under webhyve and under QEMU's TCG in the same run.

The guest (guests/usermode.c + usermode.S) enters ring 3 with SYSRETQ, makes SYS_ADD SYSCALLs in a loop, then
runs rounds of demand paging (each round touches `pages` pages, each touch a #PF the kernel's handler maps, then
SYS_UNMAP). Each rate comes from two runs that differ only in that part (the difference cancels the boot, the
probes and the report), best of RUNS; webhyve's time is the wall time from start to the VM's halt, QEMU's the
wall time of its process (qemu-system-x86_64 -kernel, leaving through isa-debug-exit). Raw Unicorn cannot run
this guest: it performs neither SYSCALL nor exception delivery (that is what is measured here).
Run from the repo root after `make -C guests`: .venv/bin/python bench/syscall.py
"""
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine import Hypervisor, stats  # noqa: E402
from engine.core import ctx as C  # noqa: E402

KERNEL = os.path.join(ROOT, "guests", "build", "usermode.elf")
RUNS = 3
PAGES = 256
# (SYSCALL loop small and large, demand-paging rounds small and large): each large run takes about a second
SIZES = {"webhyve": ((20_000, 1_020_000), (2, 802)), "qemu tcg": ((20_000, 20_020_000), (2, 4002))}
REPORT = re.compile(r"usermode: calls=(\w+) .* errors=(\w+) faults=(\w+)")


def webhyve(syscalls, rounds):
    """(seconds, calls, faults, events userspace delivered) for one run."""
    hv = Hypervisor(host_mem_mb=256)
    vm = hv.create_vm("usermode", mem_mb=32)
    with open(KERNEL, "rb") as f:
        vm.load(f.read(), "usermode.elf", cmdline="syscalls=%d rounds=%d pages=%d" % (syscalls, rounds, PAGES))
    started = time.monotonic()
    vm.start()
    if vm.wait(states=("suspended",), timeout=600) != "suspended" or vm.suspend_reason != "halt":
        raise SystemExit("usermode did not finish: %s %s" % (vm.state, vm.suspend_message))
    elapsed = time.monotonic() - started
    calls, faults = report(vm.console.contents().decode(errors="replace"))
    v = vm.vcpus[0]
    user = int(v.ctx[C.DELIVERED_USER])
    exits = int(v.counters[stats.VMEXIT_COUNT])
    vm.poweroff()
    return elapsed, calls, faults, user, exits


def qemu(syscalls, rounds):
    started = time.monotonic()
    run = subprocess.run(["qemu-system-x86_64", "-m", "64", "-display", "none", "-serial", "stdio", "-no-reboot",
                          "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-kernel", KERNEL,
                          "-append", "syscalls=%d rounds=%d pages=%d" % (syscalls, rounds, PAGES)],
                         capture_output=True, timeout=600)
    elapsed = time.monotonic() - started
    calls, faults = report(run.stdout.decode(errors="replace"))
    return elapsed, calls, faults, 0, None


def report(text):
    found = REPORT.search(text)
    if not found or int(found.group(2), 16):
        raise SystemExit("usermode finished wrong: %r" % text[-400:])
    return int(found.group(1), 16), int(found.group(3), 16)


def best(runner, syscalls, rounds):
    return min((runner(syscalls, rounds) for _ in range(RUNS)), key=lambda r: r[0])


def rates(runner, sizes):
    """(system calls/s, page faults/s, events userspace delivered, VM exits per page fault) from the differences."""
    (few_calls, many_calls), (few_rounds, many_rounds) = sizes
    base = best(runner, few_calls, few_rounds)
    calls = best(runner, many_calls, few_rounds)
    faults = best(runner, few_calls, many_rounds)
    per_call = (calls[0] - base[0]) / (calls[1] - base[1])
    per_fault = (faults[0] - base[0]) / (faults[2] - base[2])
    exits_per_fault = None if base[4] is None else (faults[4] - base[4]) / (faults[2] - base[2])
    return 1 / per_call, 1 / per_fault, base[3] + calls[3] + faults[3], exits_per_fault


def main():
    rows = [("webhyve", rates(webhyve, SIZES["webhyve"]))]
    if shutil.which("qemu-system-x86_64"):
        rows.append(("qemu tcg", rates(qemu, SIZES["qemu tcg"])))
    print("%-10s %14s %14s %10s %12s" % ("", "syscalls/s", "page faults/s", "in python", "exits/fault"))
    for name, (calls, faults, user, exits) in rows:
        print("%-10s %14.0f %14.0f %10d %12s" % (name, calls, faults, user, "-" if exits is None else "%.2f" % exits))
    if len(rows) == 2:
        print("webhyve / qemu: system calls %.3f, page faults %.3f" % (rows[0][1][0] / rows[1][1][0],
                                                                      rows[0][1][1] / rows[1][1][1]))


if __name__ == "__main__":
    main()
