"""Kicks at random moments never replay or skip a guest instruction: the `kickstress` guest counts exactly."""
import re

import numpy as np
import pytest
from numba import carray, njit

from engine import Hypervisor, stats
from engine.core import ctx as C
from engine.core import kick
from engine.core.sync import CLOCK_GETTIME, CLOCK_MONOTONIC, call_clock
from engine.io.hosttimer import HOST_TIMER_VECTOR
from engine.native import u64_ptr
from tests.engine.conftest import guest
from tests.engine.debug.conftest import symbol

KICKS_PER_RUN = 500_000                     # 10^6 over the two runs below
LANDED = 1000                               # kicks that must have landed in the guest as exits, kicking on until then
CPUID0_EBX = 0x756E6547                     # "Genu", what the modeled CPU answers to CPUID leaf 0
LINE = re.compile(r"cpu (\d+) iters (\d+) ipis (\d+) incs (\d+) msr (\d+) cpuid (\d+) errors (\d+)")


def twin(iters):
    """The guest's loop in plain Python (guests/kickstress.c stress()): what one CPU reports after `iters`."""
    ipis = incs = msr_sum = cpuid_sum = errors = 0
    post = msr = None
    for i in range(iters):
        ipis += 1                                         # the self-IPI's handler
        post = i & 0xFF
        errors += post != i & 0xFF
        msr = (i, ~i & 0xFFFFFFFF)
        errors += msr != (i, ~i & 0xFFFFFFFF)
        msr_sum = (msr_sum + msr[0]) & 0xFFFFFFFF
        cpuid_sum = (cpuid_sum + CPUID0_EBX) & 0xFFFFFFFF
        incs += 1
    return {"iters": iters, "ipis": ipis, "incs": incs, "msr": msr_sum, "cpuid": cpuid_sum, "errors": errors}


@njit(nogil=True)
def now_ns(clock, timespec):
    call_clock(clock, CLOCK_MONOTONIC, timespec.ctypes.data)
    return np.int64(timespec[0]) * 1_000_000_000 + np.int64(timespec[1])


@njit(nogil=True)
def kick_randomly(ctxs, kicks, seed, vector, clock, timespec):
    """Another host CPU kicking: `kicks` kicks of random vCPUs after random gaps, no GIL held. Mostly host
    interrupts (the timer's kind, handled in the kernel loop); one in twenty a request (REQ, a pause's kind)
    that goes out to the vCPU's thread. Returns how many were requests."""
    x = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) | np.uint64(1)
    requests = 0
    for _ in range(kicks):
        x ^= x << np.uint64(13)
        x ^= x >> np.uint64(7)
        x ^= x << np.uint64(17)
        c = carray(u64_ptr(ctxs[np.int64(x % np.uint64(len(ctxs)))]), C.SIZE)
        if c[C.RUNSTATE] == C.RUN_GUEST:
            if (x >> np.uint64(20)) % np.uint64(20) == 0:
                c[C.REQ] |= np.uint64(C.REQ_STOP)
                requests += 1
            elif c[C.NOTIFY] == 0:
                c[C.NOTIFY] = vector
            kick.kick(c)
        until = now_ns(clock, timespec) + np.int64((x >> np.uint64(32)) % np.uint64(4000))
        while now_ns(clock, timespec) < until:           # a random gap of up to 4 µs: kicks land anywhere
            pass
    return requests


@pytest.mark.parametrize("cpus", [1, 2])
def test_kicked_guest_counts_every_instruction_exactly_once(cpus):
    hv = Hypervisor(host_mem_mb=256)
    vm = hv.create_vm("kickstress", mem_mb=32, cpus=cpus)
    vm.load(guest("kickstress.elf"), "kickstress.elf", cmdline="cpus=%d host_stop=1" % cpus)
    reader = vm.console.reader()
    vm.start()
    seen = b""
    while b"kickstress: go" not in seen:
        seen += reader.read(1)
        assert vm.state != "suspended", vm.suspend_message
    ctxs = np.array([v.ctx.ctypes.data for v in vm.vcpus], np.uint64)
    requests = kick_randomly(ctxs, KICKS_PER_RUN, cpus, HOST_TIMER_VECTOR, CLOCK_GETTIME, np.zeros(2, np.uint64))
    kicks = KICKS_PER_RUN
    # How many kicks find a vCPU in the guest depends on how the host schedules the two threads (505 of 500,000
    # under two CPU burners, thousands on a quiet machine): kick on until LANDED have, or the guest ends.
    while extint_exits(vm) < LANDED and vm.state != "suspended" and kicks < 40 * KICKS_PER_RUN:
        requests += kick_randomly(ctxs, KICKS_PER_RUN // 10, cpus, HOST_TIMER_VECTOR, CLOCK_GETTIME,
                                  np.zeros(2, np.uint64))
        kicks += KICKS_PER_RUN // 10
    vm.memory_access.write(symbol("kick_stop", "kickstress.elf"), (1).to_bytes(4, "little"))
    assert vm.wait(states=("suspended",), timeout=120) == "suspended", vm.state
    assert vm.suspend_reason == "halt", vm.suspend_message
    text = vm.console.contents().decode()
    reports = {int(m[0]): dict(zip(("iters", "ipis", "incs", "msr", "cpuid", "errors"), map(int, m[1:])))
               for m in LINE.findall(text)}
    assert sorted(reports) == list(range(cpus)), text
    for cpu, report in reports.items():
        assert report["iters"] > 0 and report == twin(report["iters"]), (cpu, report)
    assert "shared %d" % sum(r["iters"] for r in reports.values()) in text
    extint = extint_exits(vm)
    ipis = sum(int(v.counters[stats.VLAPIC_IPI_SEND]) for v in vm.vcpus)
    assert ipis == sum(r["iters"] for r in reports.values()) + (cpus - 1) * 3    # + INIT, SIPI, SIPI per AP
    assert extint >= LANDED, (extint, kicks)  # kicks landed in the guest (others merged with exits under way)
    print("cpus %d: %d kicks (%d requests), %d external-interrupt exits, %d iterations"
          % (cpus, kicks, requests, extint, sum(r["iters"] for r in reports.values())))


def extint_exits(vm):
    return sum(int(v.counters[stats.VMEXIT_EXTINT]) for v in vm.vcpus)
