"""RDTSC: what Unicorn 2.1.4's own instruction counts (rate against CLOCK_MONOTONIC), and what a guest RDTSC
costs under raw Unicorn and under webhyve, whose numba hook gives the modeled TSC (cpu/tsc.py).

Prints figures only (best of three); the guest clock's rate is checked by tests/engine/cpu/test_tsc.py.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unicorn import UC_ARCH_X86, UC_MODE_64, Uc  # noqa: E402
from unicorn import x86_const as X  # noqa: E402

from bench.run import BASE64, assemble  # noqa: E402
from engine import Hypervisor  # noqa: E402

N = 2_000_000
LOOP = "mov rsi, %d\n1: rdtsc\ndec rsi\njnz 1b\n" % N
READ = "rdtsc\nshl rdx, 32\nor rax, rdx\n"


def raw(code):
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x400000)
    uc.mem_write(BASE64, code)
    return uc


def native_rate():
    """Ticks of Unicorn's RDTSC per nanosecond of CLOCK_MONOTONIC over a 0.5 s busy loop."""
    uc = raw(assemble(READ + "mov r8, rax\nmov rcx, 300000000\n1: dec rcx\njnz 1b\n" + READ + "mov r9, rax\nhlt"))
    start = time.monotonic_ns()
    uc.emu_start(BASE64, 0xFFFFF000)
    elapsed = time.monotonic_ns() - start
    return (uc.reg_read(X.UC_X86_REG_R9) - uc.reg_read(X.UC_X86_REG_R8)) / elapsed


def native_loop_ns():
    uc = raw(assemble(LOOP + "hlt"))
    best = 1e9
    for _ in range(3):
        start = time.perf_counter()
        uc.emu_start(BASE64, 0xFFFFF000)
        best = min(best, time.perf_counter() - start)
    return best / N * 1e9


def webhyve_loop_ns():
    """The guest times its own loop with its TSC (the guest clock), minus nothing: ns per iteration."""
    hv = Hypervisor(host_mem_mb=64)
    best = 1e9
    for i in range(3):
        vm = hv.create_vm("tsc%d" % i, mem_mb=16)
        vm.load(assemble(READ + "mov r8, rax\n" + LOOP + READ + "mov r9, rax\ncli\nhlt"), "g.bin", kind="flat64")
        vm.start()
        vm.wait(states=("suspended",), timeout=120)
        regs = vm.registers()
        best = min(best, (regs["r9"] - regs["r8"]) / vm.profile.tsc_hz / N * 1e9)
        vm.poweroff()
    return best


def main():
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print("host CPU: %s" % model)
    print("Unicorn's own RDTSC: %.4f ticks per ns of CLOCK_MONOTONIC (the host's TSC, not a modeled rate)" % native_rate())
    raw_ns, ours = native_loop_ns(), webhyve_loop_ns()
    print("rdtsc; dec; jnz loop: raw Unicorn %.1f ns, webhyve %.1f ns per iteration (+%.1f ns for the TSC hook)"
          % (raw_ns, ours, ours - raw_ns))


if __name__ == "__main__":
    main()
