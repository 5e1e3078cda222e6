"""A VM's debugger: breakpoints and watchpoints on every vCPU, all-stop control, stop events, guest memory.

What bhyve's gdb stub does around vmm: all vCPUs stop together (all-stop), a stop event names the
vCPU and why, memory is read and written at guest-linear addresses through that vCPU's page tables.
The protocol (gdbstub.py) and any other front end drive the VM through this class only; it touches a
vCPU's Unicorn instance, hooks and page walks only by a visit (vcpu.visit), on the vCPU's own thread.
"""
import queue
from dataclasses import dataclass

import numpy as np

from ..errors import StateError
from ..mmu import access
from ..vcpu import RUNNING
from . import target, traps
from .vcpu_debug import VcpuDebug

MAX_WATCHPOINTS = 16
WATCH_KINDS = {"watch": traps.WATCH_WRITE, "rwatch": traps.WATCH_READ, "awatch": traps.WATCH_READ | traps.WATCH_WRITE}


@dataclass
class StopEvent:
    vcpu: int
    reason: str             # breakpoint, step, watchpoint, interrupt, suspended
    address: int = 0        # the breakpoint, or the watched address the access touched
    watch_kind: str = ""


@dataclass(frozen=True)
class Watchpoint:
    kind: str               # watch (write), rwatch (read), awatch (access): gdb's names
    address: int            # guest-linear
    length: int


class Debugger:
    """Legend: breakpoints/watchpoints change only while every vCPU is stopped; `events` is any thread's."""

    def __init__(self, vm):
        self.vm = vm
        self.events = queue.Queue()
        self.breakpoints = set()
        self.watchpoints = []                    # Watchpoint, with its host-physical pieces in watch_pieces
        self.watch_pieces = []                   # (watchpoint index, hpa first, hpa end), one per page
        self.watch_rows = np.zeros(3 * 2 * MAX_WATCHPOINTS, np.uint64)
        self.entry = None                        # a breakpoint of our own at the image entry (bhyve -G w)
        for vcpu in vm.vcpus:
            vcpu.debug = VcpuDebug(vcpu, self)

    # -- stop events (vCPU threads) ------------------------------------------------------------------
    def vcpu_stopped(self, vcpu, reason, detail):
        if reason == "breakpoint" and detail == self.entry and detail not in self.breakpoints:
            vcpu.debug.remove_breakpoint(detail)
            self.entry = None
            self.events.put(StopEvent(vcpu.index, "entry", detail))
        elif reason == "watchpoint":
            watch = self.watchpoints[self.watch_pieces[detail[0]][0]]
            self.events.put(StopEvent(vcpu.index, reason, watch.address, watch.kind))
        elif reason != "interrupt":
            self.events.put(StopEvent(vcpu.index, reason, detail or 0))
        self.vm.notify()

    def next_event(self, timeout):
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            return None

    # -- all-stop control ----------------------------------------------------------------------------
    def stop_at_entry(self):
        """Stop vCPU 0 at the loaded image's entry point, before its first instruction (bhyve's -G w)."""
        if self.vm.image is None:
            raise StateError("VM %r has no image loaded: nothing to stop at" % self.vm.name)
        if any(v.thread is not None for v in self.vm.vcpus):
            raise StateError("VM %r has started: waiting for gdb at the entry point is asked for before "
                             "the start" % self.vm.name)
        self.entry = self.vm.image.entry
        self.vm.vcpus[0].visit(lambda vcpu: vcpu.debug.add_breakpoint(self.entry))

    def stop_all(self, timeout=10):
        """Stop every vCPU; returns once none is running (halted ones count as stopped)."""
        for vcpu in self.vm.vcpus:
            if vcpu.thread is not None and vcpu.thread.is_alive():
                vcpu.post(("debug", "stop"))
        with self.vm.lock:
            done = self.vm.changed.wait_for(self._all_stopped, timeout)
        if not done:
            raise StateError("VM %r: a vCPU did not stop within %gs" % (self.vm.name, timeout))

    def _all_stopped(self):
        return all(v.state != RUNNING and v.parked.is_set() for v in self.vm.vcpus
                   if v.thread is not None and v.thread.is_alive())

    def resume(self, steps=(), others=True):
        """Step the vCPUs in `steps`; continue the others if `others`, else leave them stopped.

        Returns how many vCPUs were told to go (vCPUs never started, waiting for INIT-SIPI, or whose thread
        ended, are not)."""
        while self.next_event(0) is not None:    # stops not reported before this resume are moot now
            pass
        told = 0
        for vcpu in self.vm.vcpus:
            if vcpu.thread is None or not vcpu.thread.is_alive() or vcpu.waiting_sipi:
                continue
            if vcpu.index in steps:
                vcpu.post(("debug", "step"))
            elif others:
                vcpu.post(("debug", "continue"))
            else:
                continue
            told += 1
        return told

    def detach(self):
        """Drop every breakpoint and watchpoint and let the guest run on."""
        self._require_stopped()
        for vcpu in self.vm.vcpus:
            vcpu.visit(lambda v: v.debug.detach())
        self.breakpoints.clear()
        self.watchpoints, self.watch_pieces = [], []
        self.resume()

    def _require_stopped(self):
        for vcpu in self.vm.vcpus:
            vcpu.debug.require_parked()

    # -- breakpoints and watchpoints -----------------------------------------------------------------
    def add_breakpoint(self, address):
        self._require_stopped()
        self.breakpoints.add(address)
        for vcpu in self.vm.vcpus:
            vcpu.visit(lambda v: v.debug.add_breakpoint(address))

    def remove_breakpoint(self, address):
        self._require_stopped()
        self.breakpoints.discard(address)
        if address != self.entry:
            for vcpu in self.vm.vcpus:
                vcpu.visit(lambda v: v.debug.remove_breakpoint(address))

    def add_watchpoint(self, kind, address, length, vcpu=0):
        """Watch guest-linear [address, address+length) for `kind` accesses; mapped through vcpu's tables."""
        self._require_stopped()
        if len(self.watchpoints) >= MAX_WATCHPOINTS:
            raise StateError("at most %d watchpoints" % MAX_WATCHPOINTS)
        pieces = [(len(self.watchpoints), hpa, hpa + n)
                  for hpa, n in self.vm.vcpus[vcpu].visit(lambda v: list(_host_pieces(v, address, length)))]
        if len(self.watch_pieces) + len(pieces) > len(self.watch_rows) // 3:
            raise StateError("watchpoints cover too many pages: at most %d page pieces" % (len(self.watch_rows) // 3))
        self.watchpoints.append(Watchpoint(kind, address, length))
        self.watch_pieces += pieces
        self._apply_watches()

    def remove_watchpoint(self, kind, address, length):
        self._require_stopped()
        keep = [w for w in self.watchpoints if w != Watchpoint(kind, address, length)]
        old = self.watchpoints
        self.watchpoints = keep
        self.watch_pieces = [(keep.index(old[i]), first, end) for i, first, end in self.watch_pieces if old[i] in keep]
        self._apply_watches()

    def _apply_watches(self):
        ranges = []
        for row, (index, first, end) in enumerate(self.watch_pieces):
            kinds = WATCH_KINDS[self.watchpoints[index].kind]
            self.watch_rows[3 * row:3 * row + 3] = (first, end, kinds)
            ranges.append((first, end, kinds))
        for vcpu in self.vm.vcpus:
            vcpu.visit(lambda v: v.debug.set_watches(ranges))

    # -- registers, by the selected vCPU's thread ----------------------------------------------------------
    def vcpu_count(self):
        return len(self.vm.vcpus)

    def describe(self, vcpu):
        """`vcpuN state (why it stopped)`: what gdb's `info threads` shows."""
        v = self.vm.vcpus[vcpu]
        why = v.debug.stop_reason
        return "vcpu%d %s%s" % (v.index, v.state, " (%s)" % why[0] if why else "")

    def architecture(self, vcpu):
        """The target description's register file (target.py): the same in every mode."""
        return self.vm.vcpus[vcpu].visit(lambda v: target.architecture_of(v.uc))

    def mode(self, vcpu):
        """The gdb architecture that decodes the vCPU's code now: i8086, i386 or i386:x86-64."""
        return self.vm.vcpus[vcpu].visit(lambda v: target.mode_of(v.uc))

    def read_registers(self, vcpu, arch, number=None):
        """gdb's bytes of every register of `arch` (a `g` packet), or of register `number` (a `p` packet)."""
        if number is None:
            return self.vm.vcpus[vcpu].visit(lambda v: target.read_all(v.uc, arch))
        return self.vm.vcpus[vcpu].visit(lambda v: target.read_register(v.uc, target.ARCHITECTURES[arch][number]))

    def write_registers(self, vcpu, arch, data, number=None):
        if number is None:
            self.vm.vcpus[vcpu].visit(lambda v: target.write_all(v.uc, arch, data))
        else:
            self.vm.vcpus[vcpu].visit(lambda v: target.write_register(v.uc, target.ARCHITECTURES[arch][number], data))

    # -- guest memory ----------------------------------------------------------------------------------
    def read_memory(self, vcpu, linear, size):
        """Bytes at guest-linear addresses, up to the first unmapped page (b"" if the first one is)."""
        mem = self.vm.hypervisor.memory
        pieces = self.vm.vcpus[vcpu].visit(lambda v: _mapped_pieces(v, linear, size))
        return b"".join(mem[hpa:hpa + n].tobytes() for hpa, n in pieces)

    def write_memory(self, vcpu, linear, data):
        """Write guest-linear bytes; translated code for them is dropped, as after any host write."""
        pieces = self.vm.vcpus[vcpu].visit(lambda v: list(_host_pieces(v, linear, len(data))))
        done = 0
        for hpa, n in pieces:
            self.vm.hypervisor.memory[hpa:hpa + n] = np.frombuffer(data[done:done + n], np.uint8)
            self.vm.code_written(self._gpa(hpa), n)
            done += n

    def _gpa(self, hpa):
        for s in self.vm.segments:
            if s.hpa <= hpa < s.hpa + s.size:
                return s.gpa + hpa - s.hpa
        raise StateError("host-physical %#x is outside VM %r's memory" % (hpa, self.vm.name))


def _host_pieces(vcpu, linear, size):
    """(hpa, length) per page of a guest-linear range, on the vCPU's thread; StateError if a page is not mapped."""
    while size > 0:
        n = min(size, 0x1000 - (linear & 0xFFF))
        hpa = access.linear_to_hpa(vcpu.ctx, access.u64(linear))
        if hpa < 0:
            raise StateError("guest-linear %#x is not mapped by vcpu%d's page tables" % (linear, vcpu.index))
        yield int(hpa), n
        linear, size = linear + n, size - n


def _mapped_pieces(vcpu, linear, size):
    """_host_pieces up to the first page that is not mapped."""
    out = []
    try:
        for piece in _host_pieces(vcpu, linear, size):
            out.append(piece)
    except StateError:
        pass
    return out
