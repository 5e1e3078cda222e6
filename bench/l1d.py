"""The L1D model's costs: cache simulation on against off, the flush methods' modeled cycles, exits with each flush.

Every figure is the best of three runs, and each ratio's baseline is measured in the same run. Wall time is
VCPU_TOTAL_RUNTIME (time inside the vCPU run loop); modeled cycles are the vCPU's cycle counter and the
L1D_FLUSH_* stats. Run: .venv/bin/python bench/l1d.py
"""
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from engine import Hypervisor, stats  # noqa: E402
from engine.core import ctx as C  # noqa: E402
from run import assemble  # noqa: E402  (bench/run.py, beside this script)

RUNS = 3
ALU_N, LOAD_N, CPUID_N = 5_000_000, 1_000_000, 100_000
L1TF_ELF = os.path.join(ROOT, "guests", "build", "l1tf.elf")


# Loop bodies; each iteration also runs `dec rsi; jnz`. The load loop walks 64 lines of one page (hits).
ALU = assemble("mov rsi, %d\n1: add rax, rbx\nxor rcx, rax\ndec rsi\njnz 1b\ncli\nhlt" % ALU_N)
LOOP = ("lea rbx, [rip + data]\nmov rsi, %d\n1: mov rdx, rsi\nand rdx, 0xFC0\n{op} rax, [rbx + rdx]\n"
        "{op} rcx, [rbx + rdx + 8]\ndec rsi\njnz 1b\ncli\nhlt\n.balign 4096\ndata: .fill 4096, 1, 0" % LOAD_N)
LOADS, LEAS = assemble(LOOP.format(op="mov")), assemble(LOOP.format(op="lea"))   # the same loop, with and without loads
CPUIDS = assemble("mov rsi, %d\n1: xor eax, eax\ncpuid\ndec rsi\njnz 1b\ncli\nhlt" % CPUID_N)


def run(code, profile="haswell", toggle_sim=False, **tunables):
    """Boot a flat64 loop; returns (seconds in the run loop, counters, modeled cycles)."""
    hv = Hypervisor(host_mem_mb=128, tunables=tunables)
    vm = hv.create_vm("bench", mem_mb=16, profile=profile)
    if toggle_sim:                               # on and off again before the guest runs: must cost nothing
        hv.tunables.set("hw.vmm.l1d_sim", 1)
        hv.tunables.set("hw.vmm.l1d_sim", 0)
    vm.load(code, "bench.bin", kind="flat64")
    vm.start()
    if vm.wait(states=("suspended",), timeout=600) != "suspended" or vm.suspend_reason != "halt":
        raise RuntimeError("the loop did not halt: %s" % vm.suspend_message)
    counters = vm.vcpus[0].counters
    return counters[stats.VCPU_TOTAL_RUNTIME] / 1e9, counters, int(vm.vcpus[0].ctx[C.CYCLES])


def attack(profile, flush):
    """The l1tf demo on a random 64-byte secret: (seconds in the run loop, bytes recovered, windows)."""
    hv = Hypervisor(host_mem_mb=128, tunables={"hw.vmm.l1d_sim": 1, "hw.vmm.l1d_flush": flush})
    secret = os.urandom(64)
    vm = hv.create_vm("l1tf", mem_mb=16, profile=profile)
    with open(L1TF_ELF, "rb") as f:
        vm.load(f.read(), "l1tf.elf", cmdline="secret=%#x" % hv.l1d.place_secret(secret))
    vm.start()
    vm.wait(states=("suspended",), timeout=600)
    found = re.search(r"l1tf: leaked ([0-9a-f]+)", vm.console.contents().decode())
    if not found:
        raise RuntimeError("l1tf printed no result: %s" % vm.suspend_message)
    counters = vm.vcpus[0].counters
    recovered = sum(a == b for a, b in zip(bytes.fromhex(found.group(1)), secret))
    return counters[stats.VCPU_TOTAL_RUNTIME] / 1e9, recovered, counters[stats.L1D_L1TF_WINDOWS]


def best(*args, **kwargs):
    return min((run(*args, **kwargs) for _ in range(RUNS)), key=lambda r: r[0])


def main():
    print("command: %s" % " ".join([sys.executable] + sys.argv))
    print("machine: nproc=%d, %s; best of %d runs\n" % (os.cpu_count(), os.uname().machine, RUNS))

    alu_off, _, _ = best(ALU)
    alu_on, _, alu_cycles = best(ALU, **{"hw.vmm.l1d_sim": 1})
    alu_toggled, _, _ = best(ALU, toggle_sim=True)
    insns = 4 * ALU_N
    per_insn = (alu_on - alu_off) / insns * 1e9
    print("ALU loop, %d instructions: sim off %.3f s, on %.3f s (x%.1f): %.1f ns per instruction; "
          "modeled cycles %d (%.2f per instruction)" % (insns, alu_off, alu_on, alu_on / alu_off, per_insn,
                                                        alu_cycles, alu_cycles / insns))
    print("ALU loop, sim switched on and off before the run: %.3f s against never on %.3f s (x%.2f)"
          % (alu_toggled, alu_off, alu_toggled / alu_off))

    load_off, _, _ = best(LOADS)
    load_on, counters, load_cycles = best(LOADS, **{"hw.vmm.l1d_sim": 1})
    lea_off, _, _ = best(LEAS)
    lea_on, _, _ = best(LEAS, **{"hw.vmm.l1d_sim": 1})
    loads = 2 * LOAD_N
    per_load = ((load_on - load_off) - (lea_on - lea_off)) / loads * 1e9
    print("load loop, %d loads: sim off %.3f s, on %.3f s (x%.1f); the same loop with LEA for the loads: off %.3f s, "
          "on %.3f s; the memory hook: %.1f ns per guest load; hits %d, misses %d"
          % (loads, load_off, load_on, load_on / load_off, lea_off, lea_on, per_load,
             counters[stats.L1D_GUEST_HITS], counters[stats.L1D_GUEST_MISSES]))

    rows = {}
    for name, profile, tunables in (("flush off", "haswell", {"hw.vmm.l1d_flush": 0}),
                                    ("MSR flush", "skylake", {}), ("software flush", "haswell", {})):
        seconds, counters, _ = best(CPUIDS, profile, **tunables)
        _, _, cycles = best(CPUIDS, profile, **tunables, **{"hw.vmm.l1d_sim": 1})
        flushes = counters[stats.L1D_FLUSH_MSR] + counters[stats.L1D_FLUSH_SW]
        per_flush = counters[stats.L1D_FLUSH_CYCLES] / flushes if flushes else 0
        rows[name] = (seconds, cycles, per_flush)
    off_s, off_cycles, _ = rows["flush off"]
    print("\n%-16s %12s %10s %16s %10s %18s" % ("CPUID exits", "wall s", "vs off", "modeled cycles", "vs off",
                                                 "cycles per flush"))
    for name, (seconds, cycles, per_flush) in rows.items():
        print("%-16s %12.3f %10.2f %16d %10.2f %18.0f" % (name, seconds, seconds / off_s, cycles,
                                                          cycles / off_cycles, per_flush))
    msr, sw = rows["MSR flush"][2], rows["software flush"][2]
    print("software flush / MSR flush, modeled cycles: %.1f" % (sw / msr))

    print("\nl1tf demo (64 bytes, 3 rounds, hw.vmm.l1d_sim=1): run-loop seconds, bytes recovered, transient windows")
    base = None
    for name, profile, flush in (("flush off", "haswell", 0), ("software flush", "haswell", -1),
                                 ("MSR flush", "skylake", -1), ("RDCL_NO", "cascadelake", -1)):
        seconds, recovered, windows = min((attack(profile, flush) for _ in range(RUNS)), key=lambda r: r[0])
        base = base or seconds
        print("%-16s %8.3f s (x%.2f)  %2d/64  %d" % (name, seconds, seconds / base, recovered, windows))


if __name__ == "__main__":
    main()
