"""webhyve's benchmark: exit and execution rates, each against raw Unicorn measured in the same run.

Every figure is the best of three runs. webhyve's time is VCPU_TOTAL_RUNTIME (time inside the vCPU run
loop); the baseline's is the wall time of one `emu_start` on a bare Unicorn with numba cfunc hooks.
Exits non-zero only when a run fails or disagrees with its baseline, not when a target is missed.
"""
import ctypes
import os
import re
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
from numba import carray, cfunc, njit, types
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_HOOK_INSN, UC_MODE_32, UC_MODE_64, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from engine import Hypervisor, stats  # noqa: E402
from engine.native import FN_REG_WRITE, call_reg, function_table  # noqa: E402
from engine.vmx import hooks  # noqa: E402

SPIN_ELF = os.path.join(ROOT, "guests", "build", "spin.elf")
MEMTOUCH_ELF = os.path.join(ROOT, "guests", "build", "memtouch.elf")
MT_BASE, MT_PAGES, MT_PASSES = 16 << 20, 8192, 4          # 32 MiB touched at random, 4 passes
BASE64 = 0x200000                        # where flat64 images are linked and the raw runs map them
RUNS = 3
CPUID_N, POST_N, USER_N, SPIN_N = 2_000_000, 2_000_000, 200_000, 20_000_000
U64P = types.CPointer(types.uint64)

# The state block the raw hooks receive: [count, uc handle, uc_reg_write address, scratch address, scratch...].
ST_COUNT, ST_UC, ST_REG_WRITE, ST_SCRATCH_ADDR, ST_SCRATCH = range(5)


class BenchError(Exception):
    """A run failed or its result disagrees with the baseline."""


# -- guests ---------------------------------------------------------------------------------------------
def assemble(source, base=BASE64):
    """GNU as (Intel syntax, .code64) linked at `base` into flat binary bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        src, obj, out = (os.path.join(tmp, name) for name in ("g.s", "g.o", "g.bin"))
        with open(src, "w") as f:
            f.write(".intel_syntax noprefix\n.code64\n" + source + "\n")
        subprocess.run(["as", "--64", "-o", obj, src], check=True)
        subprocess.run(["ld", "-Ttext=0x%x" % base, "--oformat=binary", "-e", "0", "-z", "noexecstack",
                        "-o", out, obj], check=True, stderr=subprocess.DEVNULL)
        with open(out, "rb") as f:
            return f.read()


def loop_guest(n, body):
    return assemble("mov rsi, %d\n1: %s\ndec rsi\njnz 1b\ncli\nhlt" % (n, body))


# -- raw Unicorn hooks (numba cfuncs, registered through libunicorn directly) ---------------------------
@cfunc(types.int32(types.voidptr, U64P))
def raw_cpuid_hook(uc, ud):
    state = carray(ud, ST_SCRATCH + 1)
    state[ST_COUNT] += 1
    for reg in (X.UC_X86_REG_RAX, X.UC_X86_REG_RBX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX):
        state[ST_SCRATCH] = state[ST_COUNT]
        call_reg(state[ST_REG_WRITE], state[ST_UC], reg, state[ST_SCRATCH_ADDR])
    return 1


@cfunc(types.void(types.voidptr, types.uint32, types.int32, types.uint32, U64P))
def raw_out_hook(uc, port, size, value, ud):
    state = carray(ud, ST_SCRATCH + 1)
    state[ST_COUNT] += 1


def raw_state(uc):
    state = np.zeros(ST_SCRATCH + 1, np.uint64)
    state[ST_UC] = uc._uch.value
    state[ST_REG_WRITE] = function_table()[FN_REG_WRITE]
    state[ST_SCRATCH_ADDR] = state.ctypes.data + 8 * ST_SCRATCH
    return state


def raw_hook(uc, hook, state, insn):
    handle = ctypes.c_size_t()
    err = uclib.uc_hook_add(uc._uch, ctypes.byref(handle), UC_HOOK_INSN, ctypes.c_void_p(hook.address),
                            ctypes.c_void_p(state.ctypes.data), ctypes.c_uint64(1), ctypes.c_uint64(0),
                            ctypes.c_int(insn))
    if err:
        raise BenchError("uc_hook_add failed with error %d" % err)


def raw_loop_seconds(code, hook, insn, n):
    """Wall time of the loop guest on a bare 64-bit Unicorn; checks the hook saw all n exits."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(BASE64, 2 << 20)
    uc.mem_write(BASE64, code)
    state = raw_state(uc)
    raw_hook(uc, hook, state, insn)
    start = time.perf_counter()
    uc.emu_start(BASE64, 0)              # the HLT ends emulation
    seconds = time.perf_counter() - start
    if int(state[ST_COUNT]) != n:
        raise BenchError("raw Unicorn hook counted %d exits, expected %d" % (state[ST_COUNT], n))
    return seconds


# -- webhyve runs ---------------------------------------------------------------------------------------
# The exit path is measured without the L1D flush on entry: on the default (Haswell) profile bhyve's rule
# turns the software flush on, ~4 us per entry, which bench/l1d.py measures on its own.
TUNABLES = {"hw.vmm.l1d_flush": 0}


def webhyve_run(data, filename, kind=None, cmdline=""):
    """Boot one image to its `cli; hlt`; returns (runtime seconds, counters, console bytes)."""
    hv = Hypervisor(host_mem_mb=512, tunables=TUNABLES)
    vm = hv.create_vm("b1", mem_mb=64)
    try:
        vm.load(data, filename, kind=kind, cmdline=cmdline)
        vm.start()
        if vm.wait(states=("suspended",), timeout=120) != "suspended" or vm.suspend_reason != "halt":
            raise BenchError("%s did not halt: state %s, %s" % (filename, vm.state, vm.suspend_message))
        counters = vm.vcpus[0].counters.copy()
        return counters[stats.SLOTS["VCPU_TOTAL_RUNTIME"]] / 1e9, counters, vm.console.contents()
    finally:
        hv.destroy_vm("b1")


def webhyve_loop_seconds(code, slot, n):
    seconds, counters, _ = webhyve_run(code, "loop.bin", kind="flat64")
    if int(counters[stats.SLOTS[slot]]) < n:
        raise BenchError("%s is %d, expected at least %d" % (slot, counters[stats.SLOTS[slot]], n))
    return seconds


# -- spin: the multiboot guest against its spin_kernel alone on a bare 32-bit Unicorn -------------------
def symbol(elf, name):
    out = subprocess.run(["nm", elf], check=True, capture_output=True, text=True).stdout
    return next(int(line.split()[0], 16) for line in out.splitlines() if line.endswith(" " + name))


def spin_text(path=SPIN_ELF):
    """(vaddr, bytes) of a guest ELF's first PT_LOAD segment (its text)."""
    with open(path, "rb") as f:
        elf = f.read()
    phoff, = struct.unpack_from("<I", elf, 0x1C)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x2A)
    for i in range(phnum):
        ptype, offset, vaddr, _, filesz, _, _, _ = struct.unpack_from("<8I", elf, phoff + i * phentsize)
        if ptype == 1:
            return vaddr, elf[offset:offset + filesz]
    raise BenchError("%s has no PT_LOAD segment (rebuild it with make -C guests)" % SPIN_ELF)


HLT_AT, STACK = 0x2FF000, 0x80000


def raw_spin(iters, count_insns=False):
    """Run spin_kernel(iters) to the HLT it returns to; (seconds, checksum, instructions executed)."""
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0x100000, 2 << 20)
    uc.mem_map(STACK, 0x1000)
    vaddr, text = spin_text()
    uc.mem_write(vaddr, text)
    uc.mem_write(HLT_AT, b"\xf4")
    esp = STACK + 0x1000 - 16
    uc.mem_write(esp, HLT_AT.to_bytes(4, "little") + iters.to_bytes(4, "little"))
    uc.reg_write(X.UC_X86_REG_ESP, esp)
    insns = [0]
    if count_insns:
        uc.hook_add(UC_HOOK_CODE, lambda *_: insns.__setitem__(0, insns[0] + 1))
    start = time.perf_counter()
    uc.emu_start(symbol(SPIN_ELF, "spin_kernel"), 0)
    return time.perf_counter() - start, uc.reg_read(X.UC_X86_REG_EAX), insns[0]


def spin_insns_per_iter():
    """Instructions per loop iteration, counted on the raw kernel (difference of two short runs)."""
    return (raw_spin(2000, True)[2] - raw_spin(1000, True)[2]) / 1000


def webhyve_spin():
    with open(SPIN_ELF, "rb") as f:
        data = f.read()
    seconds, _, console = webhyve_run(data, "spin.elf", cmdline="iters=%d" % SPIN_N)
    found = re.search(rb"spin: iters=(\d+) checksum=0x([0-9a-fA-F]+)", console)
    if not found or int(found.group(1)) != SPIN_N:
        raise BenchError("spin.elf printed no checksum for iters=%d: %r" % (SPIN_N, console[-200:]))
    return seconds, int(found.group(2), 16)


# -- memtouch: the guest's touch loop against touch_kernel alone on bare Unicorn and its own walker -------
def raw_memtouch():
    """touch_kernel(MT_BASE, MT_PAGES, random, MT_PASSES) on a 64-bit Unicorn with 4-level 4 KiB paging
    (Unicorn's softmmu walker); returns (seconds, checksum)."""
    size = MT_BASE + MT_PAGES * 4096
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, size + (4 << 20))
    tables = size                                            # PML4, PDPT, PD, then the PTs
    npt = size // 4096 // 512
    uc.mem_write(tables, struct.pack("<Q", (tables + 0x1000) | 3))
    uc.mem_write(tables + 0x1000, struct.pack("<Q", (tables + 0x2000) | 3))
    uc.mem_write(tables + 0x2000, struct.pack("<%dQ" % npt, *((tables + 0x3000 + 0x1000 * i) | 3 for i in range(npt))))
    uc.mem_write(tables + 0x3000, struct.pack("<%dQ" % (npt * 512), *((i << 12) | 3 for i in range(npt * 512))))
    vaddr, text = spin_text(MEMTOUCH_ELF)
    uc.mem_write(vaddr, text)
    uc.mem_write(HLT_AT, b"\xf4")
    uc.mem_write(STACK + 0xFF8, HLT_AT.to_bytes(8, "little"))
    uc.reg_write(X.UC_X86_REG_CR3, tables)
    uc.reg_write(X.UC_X86_REG_CR4, 1 << 5)
    uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | 1 << 31 | 1)
    for reg, value in ((X.UC_X86_REG_RSP, STACK + 0xFF8), (X.UC_X86_REG_RDI, MT_BASE), (X.UC_X86_REG_RSI, MT_PAGES),
                       (X.UC_X86_REG_RDX, 2), (X.UC_X86_REG_RCX, MT_PASSES)):
        uc.reg_write(reg, value)
    start = time.perf_counter()
    uc.emu_start(symbol(MEMTOUCH_ELF, "touch_kernel"), 0)
    return time.perf_counter() - start, uc.reg_read(X.UC_X86_REG_RAX)


def webhyve_memtouch():
    """The whole guest (table building, long mode, touch loop) under webhyve; (seconds, checksum, counters)."""
    with open(MEMTOUCH_ELF, "rb") as f:
        data = f.read()
    cmdline = "pages=%d pattern=random passes=%d" % (MT_PAGES, MT_PASSES)
    seconds, counters, console = webhyve_run(data, "memtouch.elf", cmdline=cmdline)
    found = re.search(rb"checksum=0x([0-9a-f]+)", console)
    if not found:
        raise BenchError("memtouch printed no checksum: %r" % console[-200:])
    return seconds, int(found.group(1), 16), counters


def fig_memtouch():
    ours = [webhyve_memtouch() for _ in range(RUNS)]
    raws = [raw_memtouch() for _ in range(RUNS)]
    if ours[0][1] != raws[0][1]:
        raise BenchError("memtouch checksums differ: webhyve 0x%x, raw Unicorn 0x%x" % (ours[0][1], raws[0][1]))
    touches = MT_PAGES * MT_PASSES
    fastest, raw = min(ours, key=lambda r: r[0]), min(seconds for seconds, _ in raws)
    counters = fastest[2]
    return [("memtouch page touches/s (random)", touches / fastest[0], touches / raw, 0.5),
            ("  first-touch faults/s", counters[stats.SLOTS["EPT_FIRST_TOUCH"]] / fastest[0], None, None),
            ("  TLB fill, model miss (us)", best(lambda: fill_seconds(FILL_N)) / FILL_N * 1e6, None, ("<=", 0.3))]


FILL_N = 200_000


@njit(nogil=True)
def _fills(c, base, pages, n):
    """n fills of random pages among `pages` (8 times the TLB model's reach: nearly every one walks)."""
    x, ok = np.uint64(12345), 0
    for _ in range(n):
        x = x * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
        linear = np.uint64(base) + ((x >> np.uint64(33)) % np.uint64(pages)) * np.uint64(4096)
        if hooks.tlb_fill(c, linear, 16)[0]:
            ok += 1
    return ok


def fill_seconds(n):
    """Time n calls of the TLB-fill kernel on a paused memtouch guest (4-level guest tables, EPT)."""
    hv = Hypervisor(host_mem_mb=512, tunables=TUNABLES)
    vm = hv.create_vm("fills", mem_mb=64)
    with open(MEMTOUCH_ELF, "rb") as f:
        vm.load(f.read(), "memtouch.elf", cmdline="pages=%d pattern=seq" % MT_PAGES)
    vm.start()
    vm.wait(states=("suspended",), timeout=120)
    ctx = vm.vcpus[0].ctx
    _fills(ctx, MT_BASE, MT_PAGES, 1000)
    start = time.perf_counter()
    ok = _fills(ctx, MT_BASE, MT_PAGES, n)
    seconds = time.perf_counter() - start
    hv.destroy_vm("fills")
    if ok != n:
        raise BenchError("%d of %d fills failed" % (n - ok, n))
    return seconds


# -- the figures ----------------------------------------------------------------------------------------
def best(run):
    return min(run() for _ in range(RUNS))


def fig_cpuid():
    code = loop_guest(CPUID_N, "mov eax, 1\nxor ecx, ecx\ncpuid")
    ours = best(lambda: webhyve_loop_seconds(code, "VMEXIT_CPUID", CPUID_N))
    raw = best(lambda: raw_loop_seconds(code, raw_cpuid_hook, X.UC_X86_INS_CPUID, CPUID_N))
    return "CPUID exits/s", CPUID_N / ours, CPUID_N / raw, 0.5


def fig_port(port, n, target):
    code = loop_guest(n, "out 0x%x, al" % port)
    ours = best(lambda: webhyve_loop_seconds(code, "VMEXIT_INOUT", n))
    raw = best(lambda: raw_loop_seconds(code, raw_out_hook, X.UC_X86_INS_OUT, n))
    where = "in-kernel 0x80" if port == 0x80 else "userspace 0xE9"
    return "port I/O exits/s, %s" % where, n / ours, n / raw, target


def fig_spin():
    per_iter = spin_insns_per_iter()
    results = [webhyve_spin() for _ in range(RUNS)]
    ours = min(seconds for seconds, _ in results)
    raws = [raw_spin(SPIN_N) for _ in range(RUNS)]
    raw = min(seconds for seconds, _, _ in raws)
    checksum, raw_checksum = results[0][1], raws[0][1]
    if checksum != raw_checksum:
        raise BenchError("spin checksums differ: webhyve 0x%08x, raw Unicorn 0x%08x" % (checksum, raw_checksum))
    insns = SPIN_N * per_iter
    return "spin instructions/s", insns / ours, insns / raw, 0.9


def fig_port_kernel():
    return fig_port(0x80, POST_N, 0.5)


def fig_port_user():
    return fig_port(0xE9, USER_N, None)


FIGURES = (fig_cpuid, fig_port_kernel, fig_port_user, fig_spin, fig_memtouch)


def row(name, ours, raw, target):
    if raw is None:                              # an absolute figure: no baseline, maybe an upper bound
        verdict = "-" if target is None else "%s %.2f %s" % (target[0], target[1], "ok" if ours <= target[1] else "MISSED")
        return "%-34s %14.2f %14s %8s  %s" % (name, ours, "-", "-", verdict)
    ratio = ours / raw
    verdict = "-" if target is None else ">= %.2fx %s" % (target, "ok" if ratio >= target else "MISSED")
    return "%-34s %14.0f %14.0f %7.2fx  %s" % (name, ours, raw, ratio, verdict)


def main():
    print("command: %s" % " ".join([sys.executable] + sys.argv))
    print("machine: nproc=%d, %s" % (os.cpu_count(), os.uname().machine))
    print("best of %d runs; webhyve time = VCPU_TOTAL_RUNTIME, baseline = raw Unicorn emu_start wall time" % RUNS)
    print("tunables: %s (the L1D flush's own cost: bench/l1d.py)\n" % TUNABLES)
    print("%-34s %14s %14s %8s  %s" % ("figure", "webhyve", "baseline", "ratio", "target"))
    failed = False
    for figure in FIGURES:
        try:
            result = figure()
            for line in result if isinstance(result, list) else [result]:
                print(row(*line), flush=True)
        except Exception as problem:
            print("%-34s FAILED: %s" % (figure.__name__, problem), flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
