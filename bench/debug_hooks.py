"""What a debugger costs the guest: spin.elf with no debugger, a breakpoint it never reaches, a watchpoint.

A breakpoint is a code hook on one address and should cost nothing elsewhere; a watchpoint adds memory
hooks and the every-instruction trace hook, so the guest runs much slower while one is set. Figures are
best of three, VCPU_TOTAL_RUNTIME of the same guest in the same run, printed as ratios to the first.
Also: single-steps per second through the engine's Debugger (what gdb's `stepi` rides on).
Run from the repo root after `make -C guests`: .venv/bin/python bench/debug_hooks.py
"""
import os
import re
import subprocess
import time

from engine import Hypervisor, stats
from engine.debug import Debugger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPIN_ELF = os.path.join(ROOT, "guests", "build", "spin.elf")
ITERS, RUNS, STEPS = 10_000_000, 3, 2000


def symbols():
    out = subprocess.run(["nm", SPIN_ELF], capture_output=True, text=True, check=True).stdout
    return {m.group(2): int(m.group(1), 16) for m in re.finditer(r"^([0-9a-f]+) \w (\w+)$", out, re.M)}


def spin_runtime(hv, setup):
    """Seconds inside the vCPU loop for one spin run, with `setup(debugger)` applied before the start."""
    vm = hv.create_vm("spin", mem_mb=16)
    vm.load(open(SPIN_ELF, "rb").read(), "spin.elf", cmdline="iters=%d" % ITERS)
    if setup is not None:
        vm.debugger = Debugger(vm)
        setup(vm.debugger)
    vm.start()
    if vm.wait(states=("suspended",), timeout=600) != "suspended" or vm.suspend_reason != "halt":
        raise SystemExit("spin did not finish: %s" % vm.suspend_message)
    seconds = vm.vcpus[0].counters[stats.VCPU_TOTAL_RUNTIME] / 1e9
    hv.destroy_vm(vm.name)
    return seconds


def step_rate(hv, where):
    """Single-steps per second: stop at spin_kernel, then step the vCPU STEPS times."""
    vm = hv.create_vm("step", mem_mb=16)
    vm.load(open(SPIN_ELF, "rb").read(), "spin.elf", cmdline="iters=%d" % ITERS)
    d = vm.debugger = Debugger(vm)
    d.add_breakpoint(where)
    vm.start()
    assert d.next_event(30).reason == "breakpoint"
    d.remove_breakpoint(where)
    start = time.perf_counter()
    for _ in range(STEPS):
        d.resume(steps={0}, others=False)
        event = d.next_event(10)
        assert event is not None and event.reason == "step"
    rate = STEPS / (time.perf_counter() - start)
    hv.destroy_vm(vm.name)
    return rate


def main():
    hv = Hypervisor(host_mem_mb=256)
    sym = symbols()
    cases = (("no debugger", None),
             ("breakpoint never reached (serial_getc)", lambda d: d.add_breakpoint(sym["serial_getc"])),
             ("write watchpoint on an untouched word (stack)", lambda d: d.add_watchpoint("watch", sym["stack"], 4)))
    base = None
    print("spin.elf iters=%d, best of %d, VCPU_TOTAL_RUNTIME" % (ITERS, RUNS))
    for name, setup in cases:
        best = min(spin_runtime(hv, setup) for _ in range(RUNS))
        base = base or best
        print("  %-48s %8.3f s   x%.2f" % (name, best, best / base))
    print("single-steps through Debugger: %.0f steps/s" % max(step_rate(hv, sym["spin_kernel"]) for _ in range(RUNS)))


if __name__ == "__main__":
    main()
