"""vm_handle_hlt's userspace half: when a vCPU halted in userspace may wake, and how long it sleeps.

The kernel loop waits first (vmx/halt.py); a HLT it hands back halts here: the vCPU's thread sleeps on its
mailbox until a wake-up, or its own LAPIC timer's deadline, and goes on only when an interrupt can end the
halt. A pause, a debugger stop or a snapshot interrupts a halt without ending it (back_into_halt).
"""
import time

from ..core import ctx as C
from ..core.sync import full_fence
from ..io.lapic import timer
from ..vmx import halt
from .states import HALTED, RUNNING


def back_into_halt(vcpu):
    """Return to a HLT that a pause, a debugger stop or a snapshot interrupted. It ends only as a HLT ends
    (vm_handle_hlt): by an interrupt that arrived meanwhile (its wake-up found the vCPU paused), or by
    input for a BIOS keyboard wait; never by the pause itself."""
    vcpu.state = HALTED
    if vcpu.vm.console.has_input() if vcpu.halt_for_input else wakes(vcpu):
        vcpu.state = RUNNING
        vcpu.ctx[C.RUNSTATE] = C.RUN_HOST


def interrupt_pending(vcpu):
    """Marked halted first, then checked: a notifier either sees the mark (and wakes us) or we see its bit."""
    c = vcpu.ctx
    c[C.RUNSTATE] = C.RUN_HALTED
    full_fence()
    if halt.can_end_halt(c, time.monotonic_ns()):        # the kernel loop's own test (vmx/halt.py)
        c[C.RUNSTATE] = C.RUN_HOST
        return True
    return False


def wakes(vcpu):
    """vm_handle_hlt's loop condition: a guest HLT ends only when an interrupt can end it (RFLAGS.IF set
    and one pending or the timer due); NMI, INIT and SIPI come as their own messages. A wake-up that
    finds nothing (a notifier's second kick, a host-timer retry, a sleep that ended a little early)
    leaves the vCPU halted. A BIOS wait for a key ends on any wake-up."""
    if vcpu.halt_for_input:
        return True
    return vcpu.halt_interruptible and interrupt_pending(vcpu)


def timeout(vcpu):
    """Seconds until a halted vCPU's own LAPIC timer fires (vm_handle_hlt sleeps at most that long), or None."""
    deadline = int(timer.timer_wakes(vcpu.ctx)) if vcpu.ctx[C.APIC_PAGE] else 0
    if vcpu.state != HALTED or not deadline or not vcpu.halt_interruptible:
        return None                                      # with RFLAGS.IF clear only an NMI or INIT ends HLT
    return max(deadline - time.monotonic_ns(), 0) / 1e9
