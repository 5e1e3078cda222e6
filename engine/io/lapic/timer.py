"""The local APIC timer (SDM §10.5.4): one-shot, periodic and TSC-deadline, against the host clock.

The timer counts down at the core crystal clock divided by the DCR: the profile's CPUID.15H:ECX (SDM 10.5.4: the
APIC timer runs at the bus or core crystal clock frequency), so a guest that reads it there programs the timer
right; bhyve counts at 2^27 Hz and hides leaf 0x15 instead. In TSC-deadline mode (LVT timer bits 18:17 = 10b, SDM
10.5.4.1) the timer is armed by WRMSR IA32_TSC_DEADLINE (vmx/hooks.py, cpu/tsc.py turns the TSC value into a
clock time); the initial count is ignored and the current count reads 0.
"""
import numpy as np
from numba import carray, njit

from ... import stats as S
from ...core import ctx as C
from ...native import NUMBA, call_host, u64_ptr
from .deliver import fire_lvt
from .regs import (CB_TIMER, IB_CALLBACK, IB_TIMER_HZ, LVT_MASKED, LVT_TIMER, LVT_TIMER_INDEX, NS, TIMER_DCR,
                   TIMER_MODE_MASK, TIMER_MODE_SHIFT, TIMER_PERIODIC, TIMER_TSC_DEADLINE, U, block, page_of)


@njit(**NUMBA)
def divisor(dcr):
    """DCR bits 0, 1 and 3 select 2, 4, ... 128, or 1 (SDM Figure 10-10)."""
    code = (np.int64(dcr) & 3) | ((np.int64(dcr) & 8) >> 1)
    return np.int64(1) if code == 7 else np.int64(2) << code


@njit(**NUMBA)
def count_to_ns(count, div, hz):
    """Nanoseconds for `count` ticks of the `hz` clock divided by `div` (no float: exact to the ns)."""
    ticks = U(count) * U(div)
    return np.int64((ticks // U(hz)) * U(NS) + ((ticks % U(hz)) * U(NS)) // U(hz))


@njit(**NUMBA)
def ns_to_count(ns, div, hz):
    """Ticks of the `hz` clock divided by `div` in `ns` nanoseconds, rounded down."""
    ns = U(ns)
    per = U(hz) // U(div)
    return np.int64((ns // U(NS)) * per + ((ns % U(NS)) * per) // U(NS))


@njit(**NUMBA)
def timer_mode(lvt):
    """The LVT timer entry's mode: 0 one-shot, 1 periodic, 2 TSC-deadline."""
    return (np.int64(lvt) >> TIMER_MODE_SHIFT) & TIMER_MODE_MASK


@njit(**NUMBA)
def tsc_deadline_mode(c):
    return timer_mode(page_of(c)[LVT_TIMER >> 2]) == TIMER_TSC_DEADLINE


@njit(**NUMBA)
def timer_start(c, count, now):
    regs = page_of(c)
    if count == 0:
        c[C.TIMER_DEADLINE] = 0
        return
    period = max(count_to_ns(count, divisor(regs[TIMER_DCR >> 2]), block(c)[IB_TIMER_HZ]), np.int64(1))
    c[C.TIMER_START] = now
    c[C.TIMER_PERIOD] = period if regs[LVT_TIMER >> 2] & TIMER_PERIODIC else 0
    c[C.TIMER_DEADLINE] = now + period


@njit(**NUMBA)
def timer_wakes(c):
    """The deadline at which the timer can end a HLT, or 0: none armed, or its LVT entry masked (it still
    counts, and the current count still runs down)."""
    if page_of(c)[LVT_TIMER >> 2] & LVT_MASKED:
        return np.int64(0)
    return np.int64(c[C.TIMER_DEADLINE])


@njit(**NUMBA)
def timer_ccr(c, now):
    """The current count: what is left of the period at the divided bus frequency. A periodic timer whose
    deadline passed before the vCPU rearmed it has already reloaded: the count wraps."""
    deadline = np.int64(c[C.TIMER_DEADLINE])
    if deadline == 0:
        return np.int64(0)
    remaining = deadline - now
    if remaining <= 0:
        period = np.int64(c[C.TIMER_PERIOD])
        if period == 0:
            return np.int64(0)
        remaining = period - (now - deadline) % period
    return ns_to_count(remaining, divisor(page_of(c)[TIMER_DCR >> 2]), block(c)[IB_TIMER_HZ])


@njit(**NUMBA)
def tsc_deadline_arm(c, when):
    """IA32_TSC_DEADLINE written in TSC-deadline mode (SDM 10.5.4.1): fire once at guest-clock time `when`
    (ns), or disarm for 0. A deadline already passed fires at the next injection step."""
    c[C.TIMER_PERIOD] = 0
    if when == 0:
        c[C.TIMER_DEADLINE] = 0
        return
    c[C.TIMER_START] = when
    c[C.TIMER_DEADLINE] = max(np.int64(when), np.int64(1))
    call_host(block(c)[IB_CALLBACK], c[C.VCPUID], U(CB_TIMER), U(0), U(0))   # the host timer rearms


@njit(**NUMBA)
def timer_check(c, now):
    """On the vCPU's own thread: fire the timer if its deadline passed; periodic mode rearms with lag
    compensation, and a timer more than a period behind restarts from now (vlapic_callout_handler)."""
    deadline = np.int64(c[C.TIMER_DEADLINE])
    if deadline == 0 or now < deadline:
        return False
    period = np.int64(c[C.TIMER_PERIOD])
    if period == 0:
        c[C.TIMER_DEADLINE] = 0
    else:
        deadline += period
        if now - deadline > period:
            deadline = now + period
        c[C.TIMER_START] = deadline - period
        c[C.TIMER_DEADLINE] = deadline
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    counters[S.VLAPIC_INTR_TIMER] += 1
    return fire_lvt(c, LVT_TIMER, LVT_TIMER_INDEX)
