"""vm_handle_hlt in the kernel loop: a HLT first waits here for an interrupt, then in userspace.

bhyve handles HLT in vmm.c: the vCPU sleeps in the kernel until an interrupt can end the halt. Our
userspace side does the same (vcpu/halting.py, "halted" in every view), but the round trip costs tens of
microseconds of Python per halt, and a guest taking a 10 kHz timer halts 10,000 times a second. So
when RFLAGS.IF is set, the loop first sleeps right here on a futex (RUNSTATE halted, HALT_IN_KERNEL
set) for up to hw.vmm.hlt_kernel_wait_us: until the LAPIC timer's deadline or a notifier's wake-up
(io/lapic/deliver.py notify: an IPI, a device interrupt, a posted request), then goes back to the injection
step. A request from another thread (pause, a message, a kick), the wait running out, or a host CPU
shared with other vCPUs (the waiter would hold it) returns the HLT to userspace, which halts as before.
KVM's halt polling (halt_poll_ns) is the same idea.
"""
import numpy as np
from numba import carray, njit
from unicorn import x86_const as X

from .. import stats as S
from .. import tunables as T
from ..core import ctx as C
from ..core.regs import rd
from ..core.sync import fence, futex_wait
from ..io.lapic import deliver, regs as L, timer
from ..native import NUMBA, u64_ptr

EXITCODE_HLT = 5            # bhyve's VM_EXITCODE_HLT: the userspace side halts the vCPU
RFLAGS_IF = 1 << 9
U = np.uint64


@njit(**NUMBA)
def can_end_halt(c, now):
    """What ends a HLT with interrupts enabled, here and in userspace (vcpu/halting.py interrupt_pending): the timer
    due with its LVT entry unmasked, a deliverable vector in the IRR, an ExtINT the LAPIC accepts, a posted
    request, or an NMI/INIT/SIPI for the userspace side."""
    deadline = timer.timer_wakes(c)
    if deadline != 0 and now >= deadline:
        return True
    regs = L.page_of(c)
    if deliver.pending(regs) >= 0 or c[C.PENDING] != 0:
        return True
    if deliver.extint_pending(c, regs):
        return True
    pir = carray(u64_ptr(U(c[C.MEM]) + U(c[C.PIR_DESC])), L.PIR_ON_WORD + 1)
    return (pir[L.PIR_ON_WORD] & U(1)) != 0


@njit(**NUMBA)
def wait(c):
    """After a HLT exit: 0 when an interrupt can end the halt (the loop goes on to inject it), else
    EXITCODE_HLT for the userspace side."""
    if c[C.APIC_PAGE] == 0 or c[C.TIMESLICE] != 0 or c[C.REQ] != 0:
        return EXITCODE_HLT
    params = carray(u64_ptr(c[C.PARAMS]), T.COUNT)
    window = np.int64(params[T.HLT_KERNEL_WAIT_US]) * 1000
    if window <= 0 or not rd(c, X.UC_X86_REG_EFLAGS) & U(RFLAGS_IF):
        return EXITCODE_HLT
    ib = L.block(c)
    start = deliver.now_ns(c)
    limit = start + window
    c[C.HALT_IN_KERNEL] = 1
    c[C.RUNSTATE] = C.RUN_HALTED                   # notifiers now wake the futex (deliver.notify)
    code = EXITCODE_HLT
    while True:
        seq = c[C.HALT_SEQ]
        fence()
        now = deliver.now_ns(c)
        if can_end_halt(c, now):
            code = 0
            break
        if c[C.REQ] != 0 or c[C.TIMESLICE] != 0 or now >= limit:
            break
        until = timer.timer_wakes(c)               # in the future: a due one ended the wait above
        if until == 0 or until > limit:
            until = limit
        ib[L.IB_HALT_TS], ib[L.IB_HALT_TS + 1] = U(until // L.NS), U(until % L.NS)
        futex_wait(ib[L.IB_SYSCALL], c.ctypes.data + U(8 * C.HALT_SEQ), seq,
                   U(c[C.INTR]) + U(8 * L.IB_HALT_TS))
    c[C.HALT_IN_KERNEL] = 0
    c[C.RUNSTATE] = C.RUN_HOST
    idle_ticks(c, start, deliver.now_ns(c))
    return code


@njit(**NUMBA)
def idle_ticks(c, start, end):
    """vm_handle_hlt: vmm_stat_incr(VCPU_IDLE_TICKS, ticks - t) around its sleep, in ticks of kern.hz."""
    hz = np.int64(S.HZ)
    carray(u64_ptr(c[C.STATS]), S.NSLOTS)[S.VCPU_IDLE_TICKS] += U(end * hz // 1000000000 - start * hz // 1000000000)
