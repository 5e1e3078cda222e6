"""`python -m engine.precompile`: compile the engine's numba kernels into the cache at build time, by running once
each kind of guest work that calls them, so the first VM a server or a test boots starts at full speed.

numba compiles a kernel on its first call, for the argument types of that call, and `cache=True` keeps the
result in NUMBA_CACHE_DIR (engine/__init__.py: a folder per digest of the engine's sources). Nothing in the
engine names every kernel with its signatures ahead of time, and writing them out would be a second copy of what
the calls already say. So this runs the calls: the bundled guests that reach the paths a server's first minutes
reach (the shell's console, exits and I/O; SMP start-up and IPIs; the APIC timer and HLT; the L1D model and its
flush; a virtio-blk function's BARs), the panels the page reads, and a snapshot and its restore.

Before the guests, the big kernels (the Unicorn hooks and the vcpu loop, native.AHEAD: nine tenths of the
compile) compile side by side, one process per core: numba compiles on one thread, and one after another they
took 170 s of a cold run. A stamp in the cache folder says it is done for these sources; a second run costs one
import. The Linux boot's own paths (virtio queues under load, x2APIC) compile on their first use.
"""
import argparse
import concurrent.futures
import multiprocessing
import os
import sys
import tempfile
import time

from . import _numba_cache_dir, native
from .door import PARTS, Host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "guests", "build")
STAMP = "precompiled"
AHEAD_STAMP = "ahead"                  # native.AHEAD compiled (ensure_ahead); STAMP says that and the guests' kernels
TIMEOUT = 600                          # a deadline for a hang, not a measure of speed


def say(text):
    print("precompile: " + text, flush=True)


def guest(name):
    with open(os.path.join(GUESTS, name), "rb") as f:
        return f.read()


def finish(vm, states=("suspended",)):
    """Wait for the VM to stop by itself; a guest that does not is an error worth stopping the build for."""
    if vm.wait(states=states, timeout=TIMEOUT) not in states:
        vm.poweroff()
        raise SystemExit("precompile: VM %r did not finish within %d s (still %s): %r"
                         % (vm.name, TIMEOUT, vm.state, vm.console_contents()[-300:]))


def wait_for(vm, text):
    reader, seen, deadline = vm.console_reader(), b"", time.monotonic() + TIMEOUT
    while text not in seen:
        if time.monotonic() > deadline:
            vm.poweroff()
            raise SystemExit("precompile: VM %r never printed %r: %r" % (vm.name, text, seen[-300:]))
        seen += reader.read(0.1)


def read_panels(vm):
    """What the VM page reads: every part of every vCPU, a translation, the EPT map and lookups, the devices."""
    for vcpu in vm.vcpus():
        got = vcpu.read(*PARTS)
        vcpu.next_instructions(got["registers"])
        vcpu.translate(got["registers"]["rip"])
        vcpu.stats()
        vcpu.bhyve_state()
    vm.memmap()
    vm.gpa_pmap(0)
    vm.ept_stats()
    vm.counter_totals()
    vm.devices()
    vm.vga()


def shell(host, scratch):
    """The demo guest: console input and output, port and MSR exits, CPUID, a snapshot and its restore."""
    vm = host.create_vm("shell", mem_mb=64)
    vm.load(guest("shell.elf"), "shell.elf")
    vm.start()
    wait_for(vm, b"webhyve> ")
    vm.send_input(b"echo warm\rcpuid 0\rrdmsr 1b\rdate\rlspci\r")
    wait_for(vm, b"webhyve> ")
    read_panels(vm)
    vm.pause()
    path = os.path.join(scratch, "shell.snap")
    vm.snapshot(path)
    host.destroy_vm("shell")
    again = host.restore_vm(path, name="shell2")
    again.send_input(b"halt\r")
    finish(again)
    read_panels(again)


def smp(host, scratch):
    """INIT-SIPI-SIPI and IPIs between 4 vCPUs sharing the host's CPUs, a counter under a bus lock."""
    vm = host.create_vm("smp", mem_mb=32, cpus=4)
    vm.load(guest("smp.elf"), "smp.elf", cmdline="cpus=4 work=2000")
    vm.start()
    finish(vm)


def timer(host, scratch):
    """The local APIC timer at 1 kHz and HLT between its ticks, in the kernel and in user mode."""
    vm = host.create_vm("timer", mem_mb=32)
    vm.load(guest("timer.elf"), "timer.elf", cmdline="hz=1000 seconds=1")
    vm.start()
    finish(vm)


def l1tf(host, scratch):
    """The L1D model with its flush on VM entry (the l1tf demo's tunables, put back afterwards)."""
    before = {t["name"]: t["value"] for t in host.tunables()}
    for name in ("hw.vmm.l1d_sim", "hw.vmm.l1d_flush"):
        host.set_tunable(name, 1)
    try:
        vm = host.create_vm("l1tf", mem_mb=32)
        secret = host.place_secret(b"precompile" * 4)
        vm.load(guest("l1tf.elf"), "l1tf.elf", cmdline="secret=%#x len=40 rounds=2" % secret)
        vm.start()
        finish(vm)
    finally:
        for name in ("hw.vmm.l1d_sim", "hw.vmm.l1d_flush"):
            host.set_tunable(name, before[name])


def virtio(host, scratch):
    """A virtio-blk function on bus 0: configuration cycles and the BAR accesses of a driver probing it."""
    image = os.path.join(scratch, "disk.img")
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    vm = host.create_vm("virtio", mem_mb=64, slots=["3,virtio-blk,%s" % image])
    vm.load(guest("shell.elf"), "shell.elf")
    vm.start()
    wait_for(vm, b"webhyve> ")
    vm.send_input(b"lspci\rhalt\r")
    finish(vm)
    read_panels(vm)


WORK = (shell, smp, timer, l1tf, virtio)


def compile_one(name):
    """In a worker process: compile (or load) one kernel of native.AHEAD; its CPU seconds."""
    began = time.process_time()
    native.AHEAD[name]()
    return time.process_time() - began


def compile_ahead():
    """native.AHEAD's kernels over one process per core, the vcpu loop (the longest) first. Kernels they share
    may compile twice; the cache keeps one."""
    names = sorted(native.AHEAD, key=lambda name: not name.endswith(".vmx_run"))
    workers = max(1, min(len(os.sched_getaffinity(0)), len(names)))
    context = multiprocessing.get_context("spawn")        # a fresh interpreter: no numba state forked half-made
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        seconds = dict(zip(names, pool.map(compile_one, names)))
    slowest = sorted(seconds, key=seconds.get, reverse=True)[:3]
    return workers, sum(seconds.values()), ", ".join("%s %.0f s" % (name, seconds[name]) for name in slowest)


def cache_folder():
    """This process's numba cache folder: NUMBA_CACHE_DIR, or the one engine/__init__.py names for these sources."""
    return os.environ.get("NUMBA_CACHE_DIR") or _numba_cache_dir()


def ensure_ahead():
    """native.AHEAD compiled into this process's cache folder, here and one after another, unless a stamp there
    says it is done: what a test session does before its first test (tests/conftest.py), so that no test's
    deadline pays for a compile (the bounds-checked run has a cache folder of its own that precompile never
    fills). One after another: a session's tests keep the cores busy already, and side by side the kernels'
    shared callees compile twice (a cold precompile: 249 s of CPU on 2 cores, 187 s on one)."""
    cache = cache_folder()
    if any(os.path.exists(os.path.join(cache, name)) for name in (STAMP, AHEAD_STAMP)):
        return
    began = time.process_time()
    for name in sorted(native.AHEAD):
        compile_one(name)
    os.makedirs(cache, exist_ok=True)
    with open(os.path.join(cache, AHEAD_STAMP), "w") as f:
        f.write("%.0f s of CPU\n" % (time.process_time() - began))


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m engine.precompile", description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="run the guests even when the stamp says done")
    args = parser.parse_args(argv)
    cache = cache_folder()
    stamp = os.path.join(cache, STAMP)
    if os.path.exists(stamp) and not args.force:
        return 0
    say("compiling the engine's numba kernels into %s (once per change of the engine's sources)"
        % os.path.relpath(cache, ROOT))
    began = time.monotonic()
    workers, cpu, slowest = compile_ahead()
    say("kernels %5.1f s  (%d hooks and the vcpu loop on %d cores, %.0f s of CPU; the longest: %s)"
        % (time.monotonic() - began, len(native.AHEAD) - 1, workers, cpu, slowest))
    host = Host(host_mem_mb=512)
    with tempfile.TemporaryDirectory(prefix="webhyve-precompile-") as scratch:
        for work in WORK:
            t = time.monotonic()
            work(host, scratch)
            say("%-7s %5.1f s  (%s)" % (work.__name__, time.monotonic() - t, work.__doc__.split(",")[0].rstrip(".")))
    os.makedirs(cache, exist_ok=True)
    with open(stamp, "w") as f:
        f.write("%.1f s\n" % (time.monotonic() - began))
    say("done in %.0f s, and %.0f s of CPU in all" % (time.monotonic() - began, time.process_time() + cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
