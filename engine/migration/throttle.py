"""Auto-converge: a guest that dirties memory faster than the pre-copy sends it is slowed down until it does not.

As QEMU's auto-converge (cpu-throttle-initial 20, cpu-throttle-increment 10, max 99): once a round's dirty set stops
shrinking, every vCPU spends `percent` of each 10 ms slice asleep on its own thread (a visit, engine/vcpu/thread.py:
it leaves the guest at a block boundary, sleeps, and goes back in), and the percentage rises by 10 with each round
that still does not shrink. The guest sees only time pass more slowly; the throttle ends before the stop-and-copy.
"""
import threading
import time

SLICE = 0.010                    # seconds: QEMU's CPU_THROTTLE_TIMESLICE_NS
INITIAL, INCREMENT, MAXIMUM = 20, 10, 99


class Throttle:
    """Legend: `percent` is written by the migration's thread and read by one thread per vCPU."""

    def __init__(self, vm):
        self.vm, self.percent = vm, 0
        self._stop = threading.Event()
        self._threads = []

    def tighten(self):
        """Throttle more (or start at INITIAL); False when already at the maximum."""
        if self.percent >= MAXIMUM:
            return False
        self.percent = INITIAL if self.percent == 0 else min(MAXIMUM, self.percent + INCREMENT)
        if not self._threads:
            for vcpu in self.vm.vcpus:
                thread = threading.Thread(target=self._run, args=(vcpu,), name="%s-throttle" % vcpu.vm.name, daemon=True)
                thread.start()
                self._threads.append(thread)
        return True

    def _run(self, vcpu):
        while not self._stop.is_set():
            asleep = SLICE * self.percent / 100
            vcpu.visit(lambda v: time.sleep(asleep))
            self._stop.wait(SLICE - asleep)

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join()
