"""A modeled host CPU: the vCPUs that run on it take turns, and it owns per-CPU state (the TLB model).

vCPUs pinned to the same host CPU never run at once, as on hardware: each holds the CPU for one pass
through the vcpu loop, and while others wait the loop runs in timeslices (the host scheduler's quantum),
so a spinning guest cannot starve them. Turns are handed out in order of arrival.
"""
import contextlib
import threading

from .cpu import profiles
from .mmu import tlb

TIMESLICE_US = 10_000                # the host scheduler's quantum while vCPUs share a CPU


class HostCpu:
    """Legend: `vcpus` (who is assigned here) and the turn counters are guarded by `_cond`."""

    def __init__(self, index, profile=profiles.DEFAULT):
        facts = profiles.get(profile).facts
        self.index = index
        self.tlb = tlb.new(facts["tlb_sets"], facts["tlb_ways"])      # the host CPU's model sets the geometry
        self.vcpus = set()
        self._cond = threading.Condition()
        self._next = self._serving = 0
        self._holder = None              # the thread whose turn it is

    def assign(self, vcpu):
        with self._cond:
            self.vcpus.add(vcpu)
            self._retime()

    def unassign(self, vcpu):
        with self._cond:
            self.vcpus.discard(vcpu)
            self._retime()

    def _retime(self):
        shared = len(self.vcpus) > 1
        for v in self.vcpus:
            v.set_timeslice(TIMESLICE_US if shared else 0)
            if shared:
                v.kick()             # an entry begun unshared has no quantum: a spinning guest would keep the CPU

    def acquire(self):
        with self._cond:
            ticket = self._next
            self._next += 1
            self._cond.wait_for(lambda: self._serving == ticket)
            self._holder = threading.get_ident()

    def release(self):
        with self._cond:
            self._holder = None
            self._serving += 1
            self._cond.notify_all()

    @contextlib.contextmanager
    def turn(self):
        """Hold this CPU for a moment: no vCPU runs here meanwhile, so its TLB and L1D stand still. A vCPU's
        thread that holds it already (a visit run during its turn) just goes on."""
        if self._holder == threading.get_ident():
            yield
            return
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def tlb_entries(self):
        return tlb.entries(self.tlb)
