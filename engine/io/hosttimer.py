"""The modeled host's timer interrupt for one VM: what brings a vCPU out of the guest when its LAPIC timer is due.

bhyve arms a callout on a host CPU for each vLAPIC timer; when it fires while the vCPU runs, the host
CPU takes an external-interrupt exit. Here one thread per VM sleeps until the earliest vLAPIC deadline
and then kicks every vCPU whose deadline has passed: an external-interrupt exit (reason 1, the vector
below in the exit interruption information) for a vCPU in the guest, a wake-up for a halted one. The
vCPU fires the LVT itself at its next injection step. The same thread is the host scheduler's tick: while
vCPUs share a host CPU (hostcpu.py), it ends the turn of each one in the guest every timeslice (RESCHED).
"""
import threading
import time

from ..core import ctx as C
from ..core import kick
from .lapic import timer

HOST_TIMER_VECTOR = 0xEF          # the modeled host's local APIC timer vector
IDLE_WAIT = 0.05                  # seconds to sleep when no timer is armed
RETRY_NS = 200000                 # a kicked vCPU that has not exited yet is looked at again after this


class HostTimer:
    """Legend: `vm` fixed; `_stop` set by the VM's lifecycle; `_kicked` and `_ticks` are the thread's own."""

    def __init__(self, vm):
        self.vm = vm
        self._stop = threading.Event()
        self._wakeup = threading.Event()
        self._kicked = {}
        self._ticks = {}                  # vCPU index -> when its timeslice ends (while its host CPU is shared)
        self.devices = []                 # platform timers (the 8254): deadline_ns() and expire(now)
        self.thread = threading.Thread(target=self._main, name="%s-hosttimer" % vm.name, daemon=True)

    def start(self):
        self.thread.start()

    def stop(self):
        self._stop.set()
        self._wakeup.set()
        if self.thread.is_alive():
            self.thread.join(5)

    def rearm(self):
        """A deadline moved earlier: recompute the sleep."""
        self._wakeup.set()

    def _main(self):
        while not self._stop.is_set():
            now = time.monotonic_ns()
            soonest = now + int(IDLE_WAIT * 1e9)
            for vcpu in self.vm.vcpus:
                soonest = min(soonest, self._visit(vcpu, now))
            for device in self.devices:
                deadline = device.deadline_ns()
                if deadline and deadline <= now:
                    device.expire(now)
                    deadline = device.deadline_ns()
                if deadline:
                    soonest = min(soonest, deadline)
            self._wakeup.wait(max(soonest - time.monotonic_ns(), 0) / 1e9)
            self._wakeup.clear()

    def _visit(self, vcpu, now):
        """Kick or wake `vcpu` if its timer is due; returns when to look at it again."""
        c = vcpu.ctx
        deadline = int(timer.timer_wakes(c)) if c[C.APIC_PAGE] else 0      # a masked timer interrupts nothing
        if vcpu.state not in ("running", "halted"):
            return now + int(IDLE_WAIT * 1e9)            # paused, stopped or waiting for SIPI: nothing runs
        if vcpu.state == "halted" and not vcpu.halt_interruptible:
            return now + int(IDLE_WAIT * 1e9)            # RFLAGS.IF clear: the timer cannot end this HLT
        if int(c[C.HALT_IN_KERNEL]):
            return deadline if deadline > now else now + RETRY_NS    # it sleeps until its deadline itself
        soonest = deadline if deadline else now + int(IDLE_WAIT * 1e9)
        if deadline and deadline <= now:
            self._kick(vcpu, HOST_TIMER_VECTOR, now)
            soonest = now + RETRY_NS
        slice_ns = int(c[C.TIMESLICE]) * 1000
        if slice_ns:                                     # a shared host CPU: the scheduler's periodic tick
            tick = self._ticks.get(vcpu.index, 0)
            if now >= tick:
                if tick and int(c[C.RUNSTATE]) == C.RUN_GUEST:
                    c[C.RESCHED] = 1                     # this turn is over: the next vCPU's
                    kick.kick(c)
                tick = self._ticks[vcpu.index] = now + slice_ns
            soonest = min(soonest, tick)
        return soonest

    def _kick(self, vcpu, vector, now):
        c = vcpu.ctx
        seq, when = self._kicked.get(vcpu.index, (None, 0))
        if seq == int(c[C.EXIT_SEQ]) and now - when < RETRY_NS:
            return
        self._kicked[vcpu.index] = (int(c[C.EXIT_SEQ]), now)
        state = int(c[C.RUNSTATE])
        if state == C.RUN_GUEST:
            kick.host_interrupt(c, vector)
        elif state == C.RUN_HALTED:
            vcpu.mailbox.put(("wake",))
