"""Debian's kernel and our initramfs under webhyve and under QEMU TCG in the same run: the time to poweroff.

For each vCPU count (1 and 2 unless given) both boot `guests/build/linux/{vmlinuz,initrd.gz}` (`make linux`)
with the same command line; /init runs `WHRUN` (forks, a tmpfs file) and powers off. Printed per count:
QEMU's wall time to its exit, webhyve's wall time to "powered off" and the ratio; webhyve's split
(decompression until the kernel's first console line, kernel init until "Run /init", user space until poweroff);
exits per second by reason; the share of the vCPU threads' time spent outside the numba loop (Python exit
handling and userspace waits). A boot that does not reach poweroff within --deadline is reported with
its last console line, and the ratio is not printed. Usage: python bench/linux.py [--cpus 1 2] [--deadline s]
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine import Hypervisor, stats  # noqa: E402

KERNEL = os.path.join(ROOT, "guests", "build", "linux", "vmlinuz")
INITRD = os.path.join(ROOT, "guests", "build", "linux", "initrd.gz")
WHRUN = "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; echo forks done; " \
        "mount -t tmpfs tmpfs /mnt && echo hello > /mnt/f && cat /mnt/f"
# Not `quiet`: the split needs the kernel's own lines from its first on (the same for QEMU, so the ratio is fair).
CMDLINE = 'console=ttyS0 panic=-1 whrun="%s"' % WHRUN
MARK_INIT, MARK_DONE = b"Run /init", b"webhyve-init: done"


def qemu(cpus, deadline):
    """Wall seconds from QEMU's start to its exit (poweroff with -no-reboot), and whether init finished."""
    started = time.monotonic()
    run = subprocess.run(["qemu-system-x86_64", "-accel", "tcg", "-m", "256", "-smp", str(cpus), "-nographic",
                          "-no-reboot", "-nic", "none", "-kernel", KERNEL, "-initrd", INITRD, "-append", CMDLINE],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=deadline)
    return time.monotonic() - started, MARK_DONE in run.stdout


def webhyve(cpus, deadline):
    """Wall seconds to poweroff (None if not reached), the milestones, the counters summed over vCPUs."""
    hv = Hypervisor(host_mem_mb=1024)
    vm = hv.create_vm("linux", mem_mb=256, cpus=cpus)
    with open(KERNEL, "rb") as kernel, open(INITRD, "rb") as initrd:
        vm.load(kernel.read(), "vmlinuz", cmdline=CMDLINE, initrd=initrd.read())
    started = time.monotonic()
    vm.start()
    marks = {}
    while time.monotonic() - started < deadline:
        state = vm.wait(states=("suspended",), timeout=0.2)
        text = vm.console.contents()
        now = time.monotonic() - started
        if text and "booted" not in marks:           # the decompressor prints nothing without earlyprintk
            marks["booted"] = now
        if MARK_INIT in text and "init" not in marks:
            marks["init"] = now
        if state == "suspended":              # powered off, or stopped by a panic or an error
            break
    wall = time.monotonic() - started
    finished = MARK_DONE in vm.console.contents() and vm.state == "suspended"
    counters = sum(v.counters.astype("int64") for v in vm.vcpus)
    tsc_hz = vm.profile.tsc_hz
    last = vm.console.contents().decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
    vm.destroy()
    return (wall if finished else None), wall, marks, counters, last[0], tsc_hz


def report(cpus, deadline):
    q_wall, q_ok = qemu(cpus, deadline)
    w_wall, spent, marks, counters, last, tsc_hz = webhyve(cpus, deadline)
    print("== %d vCPU(s)" % cpus)
    print("  qemu-system-x86_64 TCG: %.1f s to exit%s" % (q_wall, "" if q_ok else " (init did not finish!)"))
    if w_wall is None:
        print("  webhyve: did not reach poweroff in %.0f s; last console line: %s" % (spent, last))
    else:
        print("  webhyve: %.1f s to poweroff; ratio webhyve/QEMU %.2f (target 2.0)" % (w_wall, w_wall / q_wall))
    first, init = marks.get("booted"), marks.get("init")
    print("  split: decompression %s, kernel init %s, user space %s" % (
        "%.1f s" % first if first else "-", "%.1f s" % (init - first) if init and first else "-",
        "%.1f s" % (w_wall - init) if w_wall and init else "-"))
    runtime = counters[stats.VCPU_TOTAL_RUNTIME] / tsc_hz           # bhyve counts it in TSC ticks
    print("  vCPU time in the numba loop: %.1f s of %.1f s x %d vCPU(s); outside it (Python, waits): %.0f%%"
          % (runtime, spent, cpus, 100 * (1 - runtime / (spent * cpus))))
    rates = sorted(((int(counters[getattr(stats, name)]), name) for name in dir(stats)
                    if name.startswith("VMEXIT_") and name != "VMEXIT_COUNT"), reverse=True)
    print("  exits/s: total %.0f; %s" % (counters[stats.VMEXIT_COUNT] / spent,
                                          ", ".join("%s %.0f" % (name[7:].lower(), n / spent)
                                                    for n, name in rates[:8] if n)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--deadline", type=float, default=600)
    args = parser.parse_args()
    for path in (KERNEL, INITRD):
        if not os.path.exists(path):
            sys.exit("bench/linux.py: %s is missing: run `make linux` first" % path)
    for cpus in args.cpus:
        report(cpus, args.deadline)


if __name__ == "__main__":
    main()
