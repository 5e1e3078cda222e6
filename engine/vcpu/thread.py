"""A vCPU's thread and run state: the driver loop, its messages, and how other threads reach it (post,
request, kick, visit).

The driver loop is short: wait while parked, else call the vmx_run kernel and dispatch the VM_EXITCODE it
returns to a handler (handlers.py, bhyve's vm_run userspace dispatch table). Other threads never touch the
Unicorn instance: they post a message and kick the vCPU (an external-interrupt exit), or visit it (the
vCPU's own thread runs their read or change and hands back the result).
"""
import queue
import threading
import time

import numpy as np
from unicorn import x86_const as X

from .. import stats as S
from .. import tunables as T
from ..core import ctx as C
from ..core import kick
from ..core import vmcs as V
from ..cpu import tsc
from ..errors import StateError, UnsupportedByModel
from ..io.lapic import deliver, regs as L, vlapic
from ..mmu import ept as EPT
from ..mmu import tlb as TLB
from ..native import address, load_real_mode_segment
from ..vmx import entrycheck, mmio, vmx
from ..vmx.vpid import vpid_alloc, vpid_free
from . import build, halting, handlers
from .guest import GuestState
from .states import HALTED, IDLE, PAUSED, RUNNING


class Call:
    """A function a vCPU's thread runs for another thread (a visit), and what came of it."""

    def __init__(self, fn):
        self.fn, self.done = fn, threading.Event()
        self.value = self.error = None

    def __call__(self, vcpu):
        try:
            self.value = self.fn(vcpu)
        except Exception as problem:             # the caller's to handle, never the vCPU loop's
            self.error = problem
        finally:
            self.done.set()

    def result(self):
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class Vcpu(GuestState):
    """Legend: `state`, `suspend_reason` change only on the vCPU's own thread (SUSPENDED with the VM's reason, under
    the VM's lock: vm.vcpu_suspended); `mailbox` and `tb_stale` are any thread's; `unstarted` is held by a thread
    that uses the Unicorn instance before the vCPU's own thread exists. `uc`, `ctx`, `fns` and `xtab` are made
    by build.make_uc."""

    def __init__(self, vm, index):
        self.vm, self.index = vm, index
        self.state, self.suspend_reason = IDLE, None
        self.mailbox = queue.Queue()
        self.thread = None
        self.parked = threading.Event()          # set while the thread is not inside vmx_run
        self.parked.set()
        self.vmcs = V.Vmcs()
        self.counters = S.new_counters()
        self.msrs = vm.profile.msr_table()
        self.scratch = np.zeros(8, np.uint64)
        self.ring = C.new_ring()
        self.hooked = set()                      # (cfunc, linear address) code hooks: HLT/RDMSR/WRMSR, LOCK prefixes
        self.boot = None                         # (stub end, BootImage) until the reset stub has run
        self.pending_event = None
        self.hostcpu = min(vm.hypervisor.hostcpus, key=lambda h: (len(h.vcpus), h.index))   # the scheduler's pick
        self.lastcpu = None                      # the host CPU of the last entry (vmx lastcpu; None = NOCPU)
        self.want_hostcpu = None                 # where pin() asked it to run from its next entry
        self.pool = vm.pmap.new_pool()
        self.debug = None                        # debug.vcpu_debug.VcpuDebug while the VM has a debugger
        self.nmi_blocked = False                 # NMI delivered, no IRET yet (interruptibility bit 3)
        self.waiting_sipi = index > 0            # application processors wait for INIT-SIPI (SPINUP_AP)
        self.halt_interruptible = False          # RFLAGS.IF at the last HLT: may an interrupt wake it
        self.halt_for_input = False              # halted in a BIOS keyboard wait, not at a guest HLT
        self.paused_from = RUNNING               # what a resume returns to: RUNNING, or HALTED (still in its HLT)
        self.tb_stale = False                    # the host wrote guest code: drop translated blocks before entering
        self.freed = False                       # the local APIC's and MMIO window's host pages given back (free)
        self.unstarted = threading.RLock()
        self.vpid = vpid_alloc(vm.hypervisor.vpids, index)    # vmx_vcpu_init: unique across VMs (vmx/vpid.py)
        build.make_uc(self)
        self.hostcpu.assign(self)
        self.lapic = vlapic.Vlapic(self, address(vm.intr_callback))
        build.init_apic_vmcs(self, self.lapic)
        self.mmio = mmio.Window(self, vm.mmio_gpa, address(vm.mmio_callback), *vm.pci_window)  # I/O APIC, PCI BARs

    def prepare(self, image):
        """Set up the boot: the reset stub for real/protected32, registers directly for long64."""
        with self.unstarted:
            build.prepare(self, image)

    def reset_to_real_mode(self):
        """Walk this (not yet started) vCPU down to real mode with the reset stub, as firmware would at power on."""
        with self.unstarted:
            self.prepare(build.ResetImage())
            for _ in range(100):
                if self.boot is None:
                    return
                self._run_once()
        raise UnsupportedByModel("vcpu%d did not reach real mode through the reset stub" % self.index)

    # -- control from other threads ----------------------------------------------------------------
    def start(self):
        self._start(RUNNING)

    def start_paused(self, state=PAUSED):
        """Start the thread without running the guest: paused, or halted as a restored vCPU was."""
        self._start(HALTED if state == HALTED else PAUSED)

    def _start(self, state):
        with self.unstarted:
            self.state = IDLE if self.waiting_sipi else state
            self.thread = threading.Thread(target=self._main, name="%s-vcpu%d" % (self.vm.name, self.index),
                                           daemon=True)
            self.thread.start()

    def post(self, message, visit=False):
        """Queue a message and kick the vCPU out of the guest until its thread has taken it.

        Waiting for the message to leave the mailbox, not for the vCPU to park: a message that sets the
        vCPU running ("continue", "resume") is taken and the vCPU is back in the guest before a waiter
        could see it parked, and a kick with no request pending is only an external-interrupt exit."""
        self.request(message, visit)
        while self.thread is not None and self.thread.is_alive() and self._queued(message):
            time.sleep(0.0005)

    def _queued(self, message):
        with self.mailbox.mutex:
            return any(m is message for m in self.mailbox.queue)

    def request(self, message, visit=False):
        """Queue a message and make the vCPU's loop come out to its thread for it, without waiting. A visit's
        message leaves the guest without a VM exit (REQ_PEEK): looking must not change what is looked at."""
        self.mailbox.put(message)
        self.ctx[C.REQ] = int(self.ctx[C.REQ]) | (C.REQ_PEEK if visit else C.REQ_STOP)
        self._leave_kernel()

    def visit(self, fn):
        """fn(self) run on this vCPU's own thread, its result (or its exception) handed back here: the one way
        another thread reads or changes what the thread owns (the Unicorn instance, the VMCS, the exit log).

        A parked vCPU runs it from its mailbox; a running one leaves the guest at its next block boundary, runs
        it and goes straight back in; one halted in the kernel loop halts in userspace instead. Before the thread
        starts, and after it has ended, nothing else uses the instance and fn runs right here."""
        with self.unstarted:
            if self.thread is None or threading.current_thread() is self.thread:
                return fn(self)
        call = Call(fn)
        message = ("call", call)
        self.post(message, visit=True)
        if self._queued(message):                # the thread ended before it took the call
            return fn(self)
        return call.result()

    def kick(self):
        """The host IPI: leave the guest at once and come back through the loop's checks."""
        if self.thread is not None and not self.parked.is_set():
            self.ctx[C.REQ] |= C.REQ_STOP
            self._leave_kernel()

    def _leave_kernel(self):
        """Out of the guest at the next block boundary (core/kick.py; the reason is already in REQ) or out of a
        wait for an interrupt in the kernel loop (vmx/halt.py)."""
        kick.kick(self.ctx)
        if int(self.ctx[C.HALT_IN_KERNEL]):
            deliver.wake_halted(self.ctx)

    def inject_nmi(self):
        """vm_inject_nmi (bhyvectl --inject-nmi): the NMI is delivered through the guest's IDT at the next
        entry, or when NMI blocking ends; it also ends a HLT."""
        if self.thread is None or not self.thread.is_alive():
            raise StateError("vcpu%d of %s is not running: an NMI needs a started vCPU" % (self.index, self.vm.name))
        self.post(("nmi",))

    def pin(self, hostcpu):
        """Run on host CPU `hostcpu` from the next entry (a migration: vmx_invvpid, VCPU_MIGRATIONS)."""
        cpus = self.vm.hypervisor.hostcpus
        if not 0 <= hostcpu < len(cpus):
            raise StateError("host CPU %d does not exist: the modeled host has %d" % (hostcpu, len(cpus)))
        self.want_hostcpu = cpus[hostcpu]
        if self.thread is None:                  # not started: nothing runs there yet, move it now
            self._migrate()
        self.kick()

    def set_timeslice(self, microseconds):
        """The host CPU became shared (or not): the VM's host timer ticks this vCPU's turns (hosttimer.py)."""
        self.ctx[C.TIMESLICE] = microseconds
        timer = getattr(self.vm, "host_timer", None)       # not yet while the VM builds its vCPUs
        if timer is not None:
            timer.rearm()

    # -- the driver loop (the vCPU's own thread) ----------------------------------------------------
    def _main(self):
        try:
            self._drive()
        except Exception as problem:             # an engine bug stops this VM, never the process
            self.parked.set()
            self.vm.vcpu_suspended(self, "error", "internal error: %r" % problem)
            raise

    def _drive(self):
        while True:
            if self.state != RUNNING:
                asleep = time.monotonic_ns() if self.state == HALTED else None
                try:
                    message = self.mailbox.get(timeout=halting.timeout(self))
                except queue.Empty:                  # halted until the LAPIC timer's deadline: it is due
                    message = ("wake",)
                if asleep is not None:               # vm_handle_hlt's sleep: VCPU_IDLE_TICKS
                    self.counters[S.VCPU_IDLE_TICKS] += S.ticks(time.monotonic_ns()) - S.ticks(asleep)
                if self._handle(message) == "exit":
                    return
                continue
            if not self.mailbox.empty():
                if self._handle(self.mailbox.get()) == "exit":
                    return
                continue
            self._run_once()

    def _handle(self, message):
        kind = message[0]
        if kind == "pause" and self.state in (RUNNING, HALTED):
            self.paused_from, self.state = self.state, PAUSED
        elif kind == "resume" and self.state == PAUSED:
            if self.paused_from == HALTED:
                halting.back_into_halt(self)
            else:
                self.state = RUNNING
        elif kind == "wake" and self.state == HALTED and halting.wakes(self):
            self.state = RUNNING
            self.ctx[C.RUNSTATE] = C.RUN_HOST
        elif kind in ("init", "sipi", "nmi"):
            self._handle_ipi(kind, *message[1:])
        elif kind == "exit":
            self.state = IDLE
            return "exit"
        elif kind == "debug" and self.debug is not None:
            self.debug.handle(message[1])
        elif kind == "call":                     # a visit, or a change made on this thread (hooks)
            message[1](self)
        self.vm.notify()
        return None

    def _handle_ipi(self, kind, vector=0):
        """INIT puts the vCPU back to wait-for-SIPI; a SIPI starts a waiting one in real mode at vector << 12."""
        if kind == "nmi":
            self.ctx[C.PENDING] = int(self.ctx[C.PENDING]) | L.PEND_NMI
            if self.state == HALTED:
                self.state = RUNNING                     # an NMI ends HLT whatever RFLAGS.IF says
                self.ctx[C.RUNSTATE] = C.RUN_HOST
        elif kind == "init":
            self.lapic.reset()
            self.waiting_sipi = True
            if self.state in (RUNNING, HALTED):
                self.state = IDLE
        elif kind == "sipi" and self.waiting_sipi and self.state == IDLE:
            self.waiting_sipi = False
            if not self.in_real_mode():
                raise UnsupportedByModel("INIT of vcpu%d after it ran: the reset to real mode is done once, "
                                         "at VM start" % self.index)
            load_real_mode_segment(self.uc, X.UC_X86_REG_CS, vector << 8)
            self.uc.reg_write(X.UC_X86_REG_RIP, 0)
            self.state = RUNNING

    def _run_once(self):
        if self.pending_event is not None:
            event, self.pending_event = self.pending_event, None
            if not handlers.deliver(self, event):
                return
        if self.vm.hypervisor.tunables.values[T.CHECK_GUEST_STATE] and self.boot is None and self._entry_fails():
            return
        self._migrate()
        self.hostcpu.acquire()
        try:
            while True:
                self.ctx[C.REQ] = 0
                self.parked.clear()
                if not self._take_visits():      # a message raced the clear: leave it for the driver loop
                    self.parked.set()
                    return
                self._set_pcpu_defaults()
                if self.tb_stale:                # the host wrote guest code meanwhile (vm.code_written)
                    self.tb_stale = False
                    self.uc.ctl_flush_tb()
                start = time.monotonic_ns()
                code = vmx.vmx_run(self.ctx)
                # vm_run: vmm_stat_incr(VCPU_TOTAL_RUNTIME, rdtsc() - tscval), in ticks of the modeled host's TSC
                hz = self.vm.profile.tsc_hz
                self.counters[S.VCPU_TOTAL_RUNTIME] += tsc.host_tsc(hz) - tsc.host_tsc(hz, start)
                self.parked.set()
                if code != vmx.EXITCODE_BOGUS or int(self.ctx[C.REQ]) != C.REQ_PEEK:
                    break                        # a visit alone does not end the turn: back in after it
        finally:
            self.hostcpu.release()
        handlers.handle(self, code)

    def _entry_fails(self):
        """hw.vmm.vmx.check_guest_state: the guest-state checks of VM entry (vmx/entrycheck.py) on the state this
        entry would load; a failure is exit reason 33 (bit 31 set) and suspends the VM, as the entry never ran.
        Not while the reset stub runs (self.boot): it stands for bhyve setting the boot registers from userspace,
        and starts from Unicorn's own reset state, which no VM entry would accept."""
        self.sync_vmcs()
        problems = entrycheck.violations(self.vmcs.snapshot(), self.vm.profile.facts["vmx_msrs"])
        if problems:
            entrycheck.fail_entry(self.vmcs)
            self.suspend("error", "VM-entry failure due to invalid guest state (exit reason 33) at rip %#x: %s"
                         % (self.vmcs["GUEST_RIP"], "; ".join(problems)))
        return bool(problems)

    def _take_visits(self):
        """Run the visits waiting in the mailbox during this turn; False if the vCPU is not to enter now (another
        message waits behind them, or a visit changed its state).

        A visit must not cost the vCPU its turn on a shared host CPU: a panel that looks at a vCPU more often
        than the other vCPUs' turns go round would otherwise keep it out of the guest for good."""
        while True:
            try:
                message = self.mailbox.get_nowait()
            except queue.Empty:
                return True
            if message[0] != "call":
                with self.mailbox.mutex:                     # first in line again, for the driver loop
                    self.mailbox.queue.appendleft(message)
                    self.mailbox.not_empty.notify()
                return False
            self._handle(message)
            if self.state != RUNNING:
                return False

    def _migrate(self):
        want = self.want_hostcpu
        if want is not None and want is not self.hostcpu:
            self.hostcpu.unassign(self)
            self.hostcpu = want
            want.assign(self)
            build.attach_hostcpu(self, want)
        self.want_hostcpu = None

    def _set_pcpu_defaults(self):
        """vmx_set_pcpu_defaults: on a host CPU other than the last one, count a migration and INVVPID."""
        if self.lastcpu is self.hostcpu:
            return
        self.lastcpu = self.hostcpu
        self.counters[S.VCPU_MIGRATIONS] += 1
        self._invvpid()

    def _invvpid(self):
        """vmx_invvpid while running: skipped when an INVEPT is due anyway (it flushes every VPID's
        combined mappings of this EPTP), else a single-context INVVPID."""
        host = self.hostcpu.index
        if int(self.vm.pmap.st[EPT.S_GEN]) == int(self.vm.eptgen[host]):
            TLB.invalidate(self.hostcpu.tlb, TLB.INV_SINGLE, self.vpid, 0, 0, False)
            self.counters[S.VCPU_INVVPID_DONE] += 1
        else:
            self.counters[S.VCPU_INVVPID_SAVED] += 1

    def release_vpid(self):
        """vmx_vcpu_cleanup's vpid_free, when the VM is destroyed or reset (once)."""
        if self.vpid is not None:
            pool = self.vm.hypervisor.vpids
            vpid_free(pool, self.vpid, pool.low - 1)
            self.vpid = None

    def free(self):
        """Give back the host pages of the local APIC and the MMIO window (the VM destroyed, or reset: the new
        vCPUs have their own), once; the vCPU's thread has stopped."""
        if not self.freed:
            self.freed = True
            self.lapic.free()
            self.mmio.free()

    def suspend(self, reason, message):
        """Stop with `reason`: the VM makes this state and its reason visible together (vm.vcpu_suspended)."""
        self.sync_vmcs()
        self.vm.vcpu_suspended(self, reason, message)
