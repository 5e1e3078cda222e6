"""The time-stamp counter a vCPU reads: RDTSC, RDTSCP and IA32_TIME_STAMP_COUNTER at its profile's frequency
against the guest clock, the VMCS TSC offset, IA32_TSC_ADJUST, and the TSC-to-clock sums of the TSC-deadline
timer (SDM vol. 3B 17.17).

The guest clock is CLOCK_MONOTONIC, the one the 8254 and the LAPIC timer count against (io/vpit.py,
io/lapic/timer.py). The modeled host's TSC is that clock in ticks of the profile's frequency (CPUID.15H: the
crystal times the ratio), and a vCPU's TSC is the host's plus the VMCS TSC_OFFSET (SDM 25.3, "use TSC
offsetting"). At power-on every vCPU of a VM gets the same offset, the one that makes the TSC 0 then (RESET
clears it, SDM 17.17; INIT does not): the vCPUs' TSCs are one clock, synchronized, and invariant (CPUID
80000007H:EDX[8]) because the clock never changes rate. Each vCPU's reads also strictly increase, as a real
TSC's do (two reads of the clock can give the same nanosecond).

Unicorn's own RDTSC returns the host CPU's TSC plus its tsc_offset (cpu_get_tsc is cpu_get_host_ticks): the
rate of whatever machine runs webhyve, unrelated to the guest clock (measured: tests/engine/cpu/test_tsc.py).
The hooks here replace it for every RDTSC and RDTSCP, in numba: a clock_gettime and two register writes,
no Python. With hw.vmm.l1d_sim on, RDTSC and RDTSCP read the modeled cycle counter instead (cachesim.py).

A write to IA32_TIME_STAMP_COUNTER moves the offset and adds the same step to IA32_TSC_ADJUST; a write to
IA32_TSC_ADJUST moves the offset by its change (SDM 17.17.3). bhyve keeps an offset per vCPU the same way
(vmx_set_tsc_offset on a guest's WRMSR to the TSC).
"""
import ctypes
import time

import numpy as np
from numba import carray, njit, types
from unicorn import UC_HOOK_INSN
from unicorn import x86_const as X

from .. import tunables as T
from ..core import ctx as C
from ..core import vmcs as V
from ..core.regs import rd_msr, wr
from ..core.sync import CLOCK_GETTIME, CLOCK_MONOTONIC, call_clock
from ..native import NUMBA, hook, hook_add, u64_ptr
from . import msrs as M

NS = 1000000000
MSR_TSC_AUX = 0xC0000103
PROCBASED_TSC_OFFSET = 1 << 3          # primary processor-based control "use TSC offsetting" (SDM 24.6.2)
U64P = types.CPointer(types.uint64)
U = np.uint64


# -- the sums, exact in integers --------------------------------------------------------------------------
@njit(**NUMBA)
def ticks(ns, hz):
    """TSC ticks at `hz` in `ns` nanoseconds, rounded down (no float, no overflow below 2^64 ticks)."""
    ns, hz = U(ns), U(hz)
    return (ns // U(NS)) * hz + ((ns % U(NS)) * hz) // U(NS)


@njit(**NUMBA)
def ns_for(count, hz):
    """Nanoseconds until `count` ticks at `hz` have passed, rounded up: a deadline is never early."""
    count, hz = U(count), U(hz)
    return (count // hz) * U(NS) + ((count % hz) * U(NS) + hz - U(1)) // hz


# -- a vCPU's TSC, on its own thread -------------------------------------------------------------------------
@njit(**NUMBA)
def now_ns(c):
    """The guest clock: CLOCK_MONOTONIC in nanoseconds, through clock_gettime's address."""
    call_clock(c[C.CLOCK_FN], CLOCK_MONOTONIC, c.ctypes.data + U(8 * C.TSC_TIMESPEC))
    return U(c[C.TSC_TIMESPEC]) * U(NS) + U(c[C.TSC_TIMESPEC + 1])


@njit(**NUMBA)
def offset_of(c):
    return carray(u64_ptr(c[C.VMCS]), V.NFIELDS)[V.TSC_OFFSET]


@njit(**NUMBA)
def guest_tsc(c):
    """The host's TSC now plus the VMCS TSC offset (modulo 2^64, as the CPU adds them)."""
    return ticks(now_ns(c), c[C.TSC_HZ]) + offset_of(c)


@njit(**NUMBA)
def read(c):
    """What RDTSC, RDTSCP and RDMSR 0x10 give: the guest TSC, above this vCPU's last read; with
    hw.vmm.l1d_sim the modeled cycle counter."""
    params = carray(u64_ptr(c[C.PARAMS]), T.COUNT)
    if params[T.L1D_SIM]:
        return c[C.CYCLES]
    value = guest_tsc(c)
    last = c[C.TSC_LAST]
    if last != 0 and np.int64(value - last) <= 0:
        value = last + U(1)
    c[C.TSC_LAST] = value
    return value


@njit(**NUMBA)
def move(c, delta):
    """Step this vCPU's TSC by `delta` (modulo 2^64): the offset moves; the next read is not held above
    the last one (a write may set the TSC back)."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    vmcs[V.TSC_OFFSET] = vmcs[V.TSC_OFFSET] + U(delta)
    c[C.TSC_LAST] = 0


@njit(**NUMBA)
def write_tsc(c, table, adjust_row, value):
    """WRMSR IA32_TIME_STAMP_COUNTER: the TSC becomes `value` and IA32_TSC_ADJUST takes the same step
    (SDM 17.17.3). `adjust_row` is IA32_TSC_ADJUST's row, or -1 when the CPU has none."""
    delta = U(value) - guest_tsc(c)
    move(c, delta)
    if adjust_row >= 0:
        at = M.COLUMNS * adjust_row + M.COL_VALUE
        table[at] = table[at] + delta


@njit(**NUMBA)
def write_adjust(c, table, row, value):
    """WRMSR IA32_TSC_ADJUST: the TSC moves by the change of the adjustment (SDM 17.17.3)."""
    at = M.COLUMNS * row + M.COL_VALUE
    move(c, U(value) - table[at])
    table[at] = U(value)


@njit(**NUMBA)
def deadline_ns(c, deadline):
    """The guest-clock time at which this vCPU's TSC reaches `deadline` (now if it already has): the
    TSC-deadline timer's expiry. The difference is taken in TSC ticks, so a TSC the guest set anywhere works."""
    now = now_ns(c)
    ahead = np.int64(U(deadline) - (ticks(now, c[C.TSC_HZ]) + offset_of(c)))
    if ahead <= 0:
        return now
    return now + ns_for(U(ahead), c[C.TSC_HZ])


@njit(**NUMBA)
def give(c, value):
    wr(c, X.UC_X86_REG_RAX, value & U(0xFFFFFFFF))
    wr(c, X.UC_X86_REG_RDX, value >> U(32))


@hook(types.uint32(types.voidptr, U64P))
def rdtsc_hook(uc, ud):
    c = carray(ud, C.SIZE)
    give(c, read(c))
    return 1                                     # skip Unicorn's own RDTSC (the host machine's counter)


@hook(types.uint32(types.voidptr, U64P))
def rdtscp_hook(uc, ud):
    c = carray(ud, C.SIZE)
    give(c, read(c))
    wr(c, X.UC_X86_REG_RCX, rd_msr(c, MSR_TSC_AUX) & U(0xFFFFFFFF))
    return 1


# -- the Python side ----------------------------------------------------------------------------------------
def attach(vcpu):
    """The context slots the kernels read, and the RDTSC/RDTSCP hooks (at build time)."""
    c = vcpu.ctx
    c[C.TSC_HZ], c[C.CLOCK_FN], c[C.TSC_LAST] = vcpu.vm.profile.tsc_hz, CLOCK_GETTIME, 0
    ud = c.ctypes.data
    hook_add(vcpu.uc, UC_HOOK_INSN, rdtsc_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSC))
    hook_add(vcpu.uc, UC_HOOK_INSN, rdtscp_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_RDTSCP))


def host_tsc(hz, ns=None):
    """The modeled host's TSC at CLOCK_MONOTONIC `ns` (now by default): the kernels' `ticks`, in Python."""
    ns = time.monotonic_ns() if ns is None else ns
    return (ns // NS) * hz + (ns % NS) * hz // NS


def power_on(vcpus):
    """RESET: every vCPU's TSC is 0 at the same instant (one offset for all), its IA32_TSC_ADJUST 0."""
    if not vcpus:
        return
    offset = -host_tsc(vcpus[0].vm.profile.tsc_hz) & ((1 << 64) - 1)
    for vcpu in vcpus:
        set_offset(vcpu, offset)


def set_offset(vcpu, offset):
    vcpu.vmcs["TSC_OFFSET"] = offset
    vcpu.vmcs["PRI_PROC_BASED_CTLS"] = vcpu.vmcs["PRI_PROC_BASED_CTLS"] | PROCBASED_TSC_OFFSET
    vcpu.ctx[C.TSC_LAST] = 0


def value(vcpu):
    """The vCPU's TSC now (for snapshots and readers; the vCPU stands still or it is a moment's value)."""
    return (host_tsc(vcpu.vm.profile.tsc_hz) + vcpu.vmcs["TSC_OFFSET"]) & ((1 << 64) - 1)


def set_value(vcpu, tsc):
    """Make the vCPU's TSC `tsc` now (a restored snapshot goes on from the TSC it was saved with)."""
    set_offset(vcpu, (tsc - host_tsc(vcpu.vm.profile.tsc_hz)) & ((1 << 64) - 1))
