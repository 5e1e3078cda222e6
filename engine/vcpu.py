"""A vCPU: one Unicorn instance, one thread, an explicit run state, controlled from other threads by messages.

The thread's driver loop is short: wait while parked, else call the vmx_run kernel and dispatch the
VM_EXITCODE it returns to a handler (bhyve's vm_run userspace dispatch table). Other threads never touch
the Unicorn instance: they post a message and kick the vCPU (an external-interrupt exit), or visit it
(`visit`: the vCPU's own thread runs their read or change and hands back the result).
"""
import ctypes
import queue
import threading
import time

import capstone
import numpy as np
from unicorn import (UC_ARCH_X86, UC_HOOK_BLOCK, UC_HOOK_CODE, UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_TLB_FILL, UC_MODE_64,
                     UC_PROT_ALL, UC_TLB_VIRTUAL, Uc)
from unicorn import x86_const as X

from . import firmware
from . import stats as S
from .cpu import cachesim, l1tf
from .errors import EngineError, StateError
from .mmu import ept as EPT
from .mmu import explain
from .mmu import tlb as TLB
from .io import buslock
from .io import vlapic as L
from .io.sync import full_fence
from .mmu import walk as W
from .native import address, function_table, hook_add, load_real_mode_segment
from .vmx import ctx as C
from .vmx import exits as E
from .vmx import halt, hooks, inject, kick, segcache
from .vmx import vmcs as V
from .vmx import vmx

IDLE, RUNNING, HALTED, PAUSED, SUSPENDED = "idle", "running", "halted", "paused", "suspended"
XTAB_PAIRS = 4096
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15", "rip", "rflags", "cr0", "cr2", "cr3", "cr4", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")
REG_IDS = {name: getattr(X, "UC_X86_REG_" + name.upper()) for name in GPRS + SEGMENTS}
REG_IDS["rflags"] = X.UC_X86_REG_EFLAGS


_DISASSEMBLERS = {}


def _disassembler(long_mode):
    """A capstone decoder with operand details, one per mode (they are reusable and not cheap to make)."""
    if long_mode not in _DISASSEMBLERS:
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if long_mode else capstone.CS_MODE_32)
        md.detail = True
        _DISASSEMBLERS[long_mode] = md
    return _DISASSEMBLERS[long_mode]


class UnsupportedByModel(Exception):
    """The guest did something the model does not implement yet: the VM suspends, naming it."""


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


class Vcpu:
    """Legend: `state`, `suspend_reason` change only on the vCPU's own thread (SUSPENDED with the VM's reason, under
    the VM's lock: vm.vcpu_suspended); `mailbox` and `tb_stale` are any thread's; `unstarted` is held by a thread
    that uses the Unicorn instance before the vCPU's own thread exists."""

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
        self.xtab = np.zeros(2 * XTAB_PAIRS, np.uint64)
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
        self.unstarted = threading.RLock()
        self._make_uc()
        self.hostcpu.assign(self)
        self.lapic = L.Vlapic(self, address(vm.intr_callback))

    # -- setup ---------------------------------------------------------------------------------------
    def _make_uc(self):
        vm, hv = self.vm, self.vm.hypervisor
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])                     # `until` never translates through our fill (unicorn.md §1)
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.mem_map_ptr(0, hv.memory.size, UC_PROT_ALL, hv.memory.ctypes.data)
        segcache.check(uc)                       # the context layout the delivery kernel reads (vmx/deliver.py)
        c = self.ctx = C.new()
        self._fns = function_table()
        for slot, value in ((C.UC, uc._uch.value), (C.FN, self._fns.ctypes.data), (C.MEM, hv.memory.ctypes.data),
                            (C.MEMSIZE, hv.memory.size), (C.SEGS, vm.segtab.ctypes.data), (C.NSEGS, len(vm.segtab) // 3),
                            (C.VMCS, self.vmcs.store.ctypes.data), (C.STATS, self.counters.ctypes.data),
                            (C.PARAMS, hv.tunables.values.ctypes.data), (C.CPUID, vm.cpuid.ctypes.data),
                            (C.NCPUID, len(vm.cpuid)), (C.MSR, self.msrs.ctypes.data), (C.NMSR, len(self.msrs)),
                            (C.PORTS, vm.portmap.ctypes.data), (C.HOSTCB, address(vm.port_callback)),
                            (C.VCPUID, self.index), (C.XTAB, self.xtab.ctypes.data), (C.XMASK, XTAB_PAIRS - 1),
                            (C.CODE, vm.code_state.ctypes.data), (C.NPAGES, len(vm.code_state)),
                            (C.SCRATCH, self.scratch.ctypes.data), (C.RING, self.ring.ctypes.data),
                            (C.EPT, vm.pmap.st.ctypes.data), (C.POOL, self.pool.ctypes.data),
                            (C.POOL_SIZE, len(self.pool)), (C.VPID, self.index + 1), (C.EPTP, vm.pmap.eptp),
                            (C.EPTGEN, vm.eptgen.ctypes.data)):
            c[slot] = value
        self._on_hostcpu(self.hostcpu)
        ud = c.ctypes.data
        hook_add(uc, UC_HOOK_TLB_FILL, hooks.tlb_fill_hook.address, ud)
        hook_add(uc, UC_HOOK_INSN, hooks.in_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_IN))
        hook_add(uc, UC_HOOK_INSN, hooks.out_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_OUT))
        hook_add(uc, UC_HOOK_INSN, hooks.cpuid_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_CPUID))
        hook_add(uc, UC_HOOK_INTR, hooks.intr_hook.address, ud)
        hook_add(uc, UC_HOOK_BLOCK, kick.block_hook.address, ud)       # kicks leave at block boundaries
        self._init_vmcs()
        hv.l1d.attach_vcpu(self)
        cachesim.apply(self)

    def _init_vmcs(self):
        """Controls as bhyve's vmx_vcpu_init sets them."""
        v = self.vmcs
        v["VPID"] = self.index + 1                                     # vpid_alloc: vcpuid + 1
        v["EPTP"] = self.vm.pmap.eptp
        v["LINK_POINTER"] = (1 << 64) - 1
        v["EXCEPTION_BITMAP"] = 0xFFFFFFFF if self.vm.hypervisor.tunables.get("hw.vmm.trace_guest_exceptions") else 1 << 18
        v["CR0_SHADOW"] = 0x60000010
        v["APIC_ACCESS"] = 0xFFFFF000
        v["HOST_RIP"] = 0xFFFFFFFF80000000 + 0x1000 * self.index      # vmx_exit_guest in the modeled host
        v["HOST_CR3"] = 0x1000

    def prepare(self, image):
        """Set up the boot: the reset stub for real/protected32, registers directly for long64."""
        with self.unstarted:
            self._prepare(image)

    def _prepare(self, image):
        uc = self.uc
        if image.mode == "long64":
            uc.reg_write(X.UC_X86_REG_GDTR, (0, image.gdt.gpa, image.gdt.size - 1, 0))
            uc.reg_write(X.UC_X86_REG_CR3, image.regs["cr3"])
            uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | W.CR4_PAE)
            uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | W.CR0_PG | W.CR0_PE)
            self._apply_regs(image.regs, segments=False)
            return
        if image.mode == "real":
            uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))     # the IVT, as at reset
        target, done = firmware.TARGETS[image.mode]
        uc.reg_write(X.UC_X86_REG_RBX, target)
        uc.reg_write(X.UC_X86_REG_RSP, firmware.STUB_BASE)
        uc.reg_write(X.UC_X86_REG_RIP, firmware.STUB_BASE)
        self.boot = (done, image)

    def _apply_regs(self, regs, segments):
        for name, value in regs.items():
            if name in SEGMENTS:
                if segments:
                    load_real_mode_segment(self.uc, REG_IDS[name], value)
            elif name in REG_IDS:
                self.uc.reg_write(REG_IDS[name], value)

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
        """Out of the guest at the next block boundary (vmx/kick.py; the reason is already in REQ) or out of a
        wait for an interrupt in the kernel loop (vmx/halt.py)."""
        kick.kick(self.ctx)
        if int(self.ctx[C.HALT_IN_KERNEL]):
            L.wake_halted(self.ctx)

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

    def _on_hostcpu(self, hostcpu):
        c = self.ctx
        c[C.TLB], c[C.TLB_LEN], c[C.HOSTCPU] = hostcpu.tlb.ctypes.data, len(hostcpu.tlb), hostcpu.index
        c[C.TLB_SEEN] = (1 << 64) - 1            # Unicorn's TLB is flushed at the first entry there
        if c[C.L1D]:
            self.vm.hypervisor.l1d.use_cache_of(self, hostcpu.index)

    def wait_parked(self, timeout=None):
        return self.parked.wait(timeout)

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
                try:
                    message = self.mailbox.get(timeout=self._halt_timeout())
                except queue.Empty:                  # halted until the LAPIC timer's deadline: it is due
                    message = ("wake",)
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
                self.back_into_halt()
            else:
                self.state = RUNNING
        elif kind == "wake" and self.state == HALTED and self._wakes():
            self.state = RUNNING
            self.ctx[C.RUNSTATE] = C.RUN_HOST
        elif kind in ("init", "sipi", "nmi"):
            self._handle_ipi(kind, *message[1:])
        elif kind == "exit":
            self.state = IDLE
            return "exit"
        elif kind == "debug" and self.debug is not None:
            self.debug.handle(message[1])
        elif kind == "call":                     # run on this thread while parked (hook changes)
            message[1](self)
        self.vm.notify()
        return None

    def _run_once(self):
        if self.pending_event is not None:
            event, self.pending_event = self.pending_event, None
            if not self._deliver(event):
                return
        self._migrate()
        self.hostcpu.acquire()
        try:
            self.ctx[C.REQ] = 0
            self.parked.clear()
            if not self.mailbox.empty():         # a message raced the clear: leave it for the driver loop
                self.parked.set()
                return
            self._set_pcpu_defaults()
            if self.tb_stale:                    # the host wrote guest code meanwhile (vm.code_written)
                self.tb_stale = False
                self.uc.ctl_flush_tb()
            start = time.perf_counter_ns()
            code = vmx.vmx_run(self.ctx)
            self.counters[S.VCPU_TOTAL_RUNTIME] += time.perf_counter_ns() - start
            self.parked.set()
        finally:
            self.hostcpu.release()
        try:
            EXIT_HANDLERS.get(code, Vcpu._exit_unknown)(self)
        except UnsupportedByModel as problem:
            self.suspend("unsupported", "the model cannot do this yet: %s" % problem)

    def _migrate(self):
        want = self.want_hostcpu
        if want is not None and want is not self.hostcpu:
            self.hostcpu.unassign(self)
            self.hostcpu = want
            want.assign(self)
            self._on_hostcpu(want)
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
            TLB.invalidate(self.hostcpu.tlb, TLB.INV_SINGLE, self.index + 1, 0, 0, False)
            self.counters[S.VCPU_INVVPID_DONE] += 1
        else:
            self.counters[S.VCPU_INVVPID_SAVED] += 1

    def suspend(self, reason, message):
        """Stop with `reason`: the VM makes this state and its reason visible together (vm.vcpu_suspended)."""
        self.sync_vmcs()
        self.vm.vcpu_suspended(self, reason, message)

    # -- userspace exit handlers --------------------------------------------------------------------
    def _exit_bogus(self):
        """AST: a message is waiting; the driver loop takes it next."""

    def _exit_hlt(self):
        if self.boot is not None and self.linear_pc() == self.boot[0]:
            image, self.boot = self.boot[1], None        # the reset stub reached the boot mode
            self._apply_regs(image.regs, segments=True)
            return
        self.sync_vmcs()
        interrupts_on = bool(self.uc.reg_read(X.UC_X86_REG_EFLAGS) & inject.RFLAGS_IF)
        self.state, self.halt_interruptible, self.halt_for_input = HALTED, interrupts_on, False
        if interrupts_on and self._interrupt_pending():
            self.state = RUNNING                         # vm_handle_hlt: a pending interrupt ends the halt
            return
        self.vm.vcpu_halted(self, interrupts_on)

    def _exit_paging(self):
        why = int(self.ctx[C.EXIT])
        gla, gpa = int(self.ctx[C.FAULT_GLA]), int(self.ctx[C.FAULT_GPA])
        if why == C.X_EXEC:
            self.scan_page(gla & ~0xFFF, gpa & ~0xFFF)
            return
        if why == C.X_POOL:                      # vm_fault needed page-table pages: give the kernel more
            self.vm.pmap.refill(self.pool)
            return
        self.counters[S.VMEXIT_USERSPACE] += 1
        gla, gpa = self._exact_fault_address(gla, gpa)
        self.vmcs["GUEST_LINEAR_ADDRESS"], self.vmcs["GUEST_PHYSICAL_ADDRESS"] = gla, gpa
        q = E.decode_ept_violation(int(self.ctx[C.FAULT_QUAL]))
        where = "guest-physical %#x, guest-linear %#x, rip %#x" % (gpa, gla, int(self.ctx[C.RIP]))
        status = int(self.ctx[C.FAULT_STATUS])
        if status == EPT.OVER_CAP:
            cap = int(self.vm.pmap.st[EPT.S_CAP]) * EPT.PAGE >> 20
            self.suspend("ept_violation", "guest memory cap of %d MiB reached backing a new page: %s" % (cap, where))
        elif status == EPT.MISCONFIG:
            chain = "; ".join("L%d %#x: %s" % (s["level"], s["entry"], s["flags"]) for s in self.vm.gpa_pmap(gpa))
            self.suspend("error", "EPT misconfiguration (exit 49) translating guest-physical %#x (rip %#x): %s"
                         % (gpa, int(self.ctx[C.RIP]), chain))
        elif status == EPT.DENIED:
            allowed = "".join(c for c, k in (("r", "readable"), ("w", "writable"), ("x", "executable")) if q[k])
            self.suspend("ept_violation", "guest %s access denied by EPT (entry allows %r): %s"
                         % (q["access"], allowed or "nothing", where))
        else:
            self.suspend("ept_violation", "guest %s access outside guest memory%s: %s"
                         % (q["access"], "" if q["translation"] else " (a paging-structure access)", where))

    def _exact_fault_address(self, gla, gpa):
        """Unicorn fills its TLB a page at a time, so the fill knows only the page. The exit the user sees
        gets the byte: the faulting instruction's memory operand, decoded, when it falls on that page."""
        if gla & 0xFFF or gpa & 0xFFF:
            return gla, gpa
        try:
            code = self.read_linear(self.linear_pc(), 15)
        except inject.DeliveryFault:
            return gla, gpa
        long_mode = bool(self.efer() & W.EFER_LMA)
        md = _disassembler(long_mode)
        for insn in md.disasm(code, self.linear_pc(), 1):
            for op in insn.operands:
                if op.type != capstone.x86.X86_OP_MEM:
                    continue
                m = op.mem
                ea = m.disp + (insn.address + insn.size if m.base == capstone.x86.X86_REG_RIP else
                               self._capstone_reg(insn, m.base)) + self._capstone_reg(insn, m.index) * m.scale
                ea &= (1 << 64) - 1 if long_mode else 0xFFFFFFFF
                if ea & ~0xFFF == gla:
                    return ea, gpa | (ea & 0xFFF)
        return gla, gpa

    def _capstone_reg(self, insn, reg):
        if reg == 0:
            return 0
        name = insn.reg_name(reg)                     # eax, rax, r8d, ax: Unicorn has each of them
        return self.uc.reg_read(getattr(X, "UC_X86_REG_" + name.upper()))

    def _exit_exception(self):
        why, vector = int(self.ctx[C.EXIT]), int(self.ctx[C.VECTOR])
        if why == C.X_GUEST_PF:
            l1tf.transient_window(self)          # an affected CPU runs ahead before the #PF retires
            event = inject.Event(14, error_code=int(self.ctx[C.ERRCODE]), cr2=int(self.ctx[C.FAULT_GLA]))
        elif why == C.X_GP:
            event = inject.Event(13, error_code=int(self.ctx[C.ERRCODE]))
        else:
            event = inject.Event(vector, software=self._is_software_interrupt(vector))
        if not event.software and int(self.vmcs["EXCEPTION_BITMAP"]) >> event.vector & 1:
            self._record(E.EXCEPTION_NMI, 0, S.VMEXIT_EXCEPTION,
                         intr_info=E.interruption_info(event.vector, E.TYPE_HWEXC, event.error_code is not None))
        self._deliver(event)

    def back_into_halt(self):
        """Return to a HLT that a pause, a debugger stop or a snapshot interrupted. It ends only as a HLT ends
        (vm_handle_hlt): by an interrupt that arrived meanwhile (its wake-up found the vCPU paused), or by
        input for a BIOS keyboard wait; never by the pause itself."""
        self.state = HALTED
        if self.vm.console.has_input() if self.halt_for_input else self._wakes():
            self.state = RUNNING
            self.ctx[C.RUNSTATE] = C.RUN_HOST

    def _interrupt_pending(self):
        """Marked halted first, then checked: a notifier either sees the mark (and wakes us) or we see its bit."""
        c = self.ctx
        c[C.RUNSTATE] = C.RUN_HALTED
        full_fence()
        if halt.can_end_halt(c, time.monotonic_ns()):    # the kernel loop's own test (vmx/halt.py)
            c[C.RUNSTATE] = C.RUN_HOST
            return True
        return False

    def _wakes(self):
        """vm_handle_hlt's loop condition: a guest HLT ends only when an interrupt can end it (RFLAGS.IF set
        and one pending or the timer due); NMI, INIT and SIPI come as their own messages. A wake-up that
        finds nothing (a notifier's second kick, a host-timer retry, a sleep that ended a little early)
        leaves the vCPU halted. A BIOS wait for a key ends on any wake-up."""
        if self.halt_for_input:
            return True
        return self.halt_interruptible and self._interrupt_pending()

    def _halt_timeout(self):
        """Seconds until a halted vCPU's own LAPIC timer fires (vm_handle_hlt sleeps at most that long)."""
        deadline = int(L.timer_wakes(self.ctx)) if self.ctx[C.APIC_PAGE] else 0
        if self.state != HALTED or not deadline or not self.halt_interruptible:
            return None                                  # with RFLAGS.IF clear only an NMI or INIT ends HLT
        return max(deadline - time.monotonic_ns(), 0) / 1e9

    def _exit_inject(self):
        """Deliver the interrupt the kernel found deliverable (vmx_inject_interrupts step 7) and accept it."""
        vector = int(self.ctx[C.INJECT])
        if vector == vmx.intr.EXTINT:                    # the 8259's INTA cycle gives the vector
            vector = self.vm.pic.acknowledge()
            if vector is not None and self._deliver(inject.external_interrupt(vector)):
                self.counters[S.VCPU_EXTINT_COUNT] += 1
            return
        if self._deliver(inject.external_interrupt(vector)):
            L.accept(self.ctx, vector)

    def _exit_ipi(self):
        """An NMI to deliver (or to wait for its window), or INIT/SIPI handled by the messages."""
        c = self.ctx
        if int(self.vmcs["EXIT_REASON"]) == E.NMI_WINDOW:
            self.nmi_blocked = False                     # the stepped instruction was the handler's IRET
        if int(c[C.PENDING]) & L.PEND_NMI:
            if inject.can_take_nmi(self):
                c[C.PENDING] = int(c[C.PENDING]) & ~L.PEND_NMI
                if self._deliver(inject.nmi()):
                    self.counters[S.VCPU_NMI_COUNT] += 1
            else:
                c[C.NMI_WINDOW] = 1

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

    def in_real_mode(self):
        return not self.uc.reg_read(X.UC_X86_REG_CR0) & W.CR0_PE

    def reset_to_real_mode(self):
        """Walk this (not yet started) vCPU down to real mode with the reset stub, as firmware would at power on."""
        with self.unstarted:
            self.prepare(ResetImage())
            for _ in range(100):
                if self.boot is None:
                    return
                self._run_once()
        raise UnsupportedByModel("vcpu%d did not reach real mode through the reset stub" % self.index)

    def _exit_buslock(self):
        """The first run of a LOCK-prefixed instruction: hook the instruction after it to release the bus lock."""
        after = int(self.ctx[C.FAULT_GLA])
        table = self.lapic.lock_table
        slot = hooks.xtab_find(table, buslock.TABLE_PAIRS - 1, after)
        if slot < 0:
            raise UnsupportedByModel("more than %d distinct LOCK-prefixed instructions" % buslock.TABLE_PAIRS)
        hook_add(self.uc, UC_HOOK_CODE, buslock.release_hook.address, self.ctx.ctypes.data, after, after)
        table[2 * slot] = after | 1
        self.uc.ctl_remove_cache(self.linear_pc(), after + 1)

    def _exit_vminsn(self):
        bios = self.vm.bios
        vector = bios.vector_at(self.linear_pc()) if bios else None
        if vector is None:
            self._deliver(inject.Event(6))
            return
        self.counters[S.VMEXIT_USERSPACE] += 1
        if bios.call(vector, RealModeRegs(self.uc), self.vm.memory_access) == "wait_input":
            self.state, self.halt_for_input = HALTED, True     # parked until the console has a key ("wake")
            self.vm.wait_for_input(self)
            return
        self.uc.reg_write(X.UC_X86_REG_RIP, self.uc.reg_read(X.UC_X86_REG_RIP) + 3)

    def _exit_user(self):
        """A device stopped the vCPU (the VM has already been told why), or a debugger's hook did."""
        if self.ctx[C.DBG_STOP] and self.debug is not None:
            self.debug.trapped()

    def _exit_unknown(self):
        err = int(self.vmcs["INSTRUCTION_ERROR"])
        self.suspend("error", "the emulator stopped with error %d at rip %#x" % (err, self.uc.reg_read(X.UC_X86_REG_RIP)))

    # -- helpers ------------------------------------------------------------------------------------
    def _record(self, reason, qualification, stat, intr_info=0):
        self.vmcs["EXIT_INTR_INFO"] = intr_info
        hooks.record_exit(self.ctx, reason, qualification, 0, self.uc.reg_read(X.UC_X86_REG_RIP), stat)

    def _deliver(self, event):
        try:
            inject.deliver(self, event)
            return True
        except inject.TripleFault as why:
            self._record(E.TRIPLE_FAULT, 0, S.VMEXIT_UNKNOWN)
            self.suspend("triplefault", "triple fault (%s) at rip %#x" % (why, self.uc.reg_read(X.UC_X86_REG_RIP)))
            return False

    def _is_software_interrupt(self, vector):
        if vector >= 32:
            return True
        hpa = hooks.linear_to_hpa(self.ctx, self.linear_pc() - 2)
        mem = self.vm.hypervisor.memory
        return hpa >= 0 and ((mem[hpa] == 0xCD and mem[hpa + 1] == vector) or
                             (vector == 3 and mem[hpa + 1] == 0xCC) or (vector == 4 and mem[hpa + 1] == 0xCE))

    def scan_page(self, linear_page, gpa_page):
        """EPT execute violation: hook every HLT/RDMSR/WRMSR candidate on the page, then grant execute."""
        hpa = self.vm.gpa_to_hpa(gpa_page)
        code = self.vm.hypervisor.memory[hpa:hpa + 0x1000 + 1]
        hits = np.flatnonzero(code[:0x1000] == 0xF4).tolist()
        twos = np.flatnonzero((code[:-1] == 0x0F) & ((code[1:] == 0x30) | (code[1:] == 0x32) |
                                                     (code[1:] == 0x01) | (code[1:] == 0x22))).tolist()
        twos += np.flatnonzero((code[:-1] == 0xF3) & (code[1:] == 0x90)).tolist()          # PAUSE
        prefixed = [o - 1 for o in twos if o > 0 and (0x40 <= code[o - 1] <= 0x4F or code[o - 1] == 0x67)]
        locks = np.flatnonzero(code[:0x1000] == 0xF0).tolist()
        for cfunc, offsets in ((hooks.code_hook, hits + twos + prefixed), (buslock.lock_hook, locks)):
            for offset in offsets:
                where = linear_page + offset
                if (cfunc, where) not in self.hooked:
                    hook_add(self.uc, UC_HOOK_CODE, cfunc.address, self.ctx.ctypes.data, where, where)
                    self.hooked.add((cfunc, where))
        cachesim.scan_clflush(self, linear_page, hpa, bool(self.efer() & W.EFER_LMA))
        page = gpa_page >> 12
        self.vm.code_state[page] |= 1
        slot = hooks.xtab_find(self.xtab, XTAB_PAIRS - 1, linear_page)
        if slot < 0:                             # the table is full: start over, pages rescan on demand
            self.xtab[:] = 0
            slot = hooks.xtab_find(self.xtab, XTAB_PAIRS - 1, linear_page)
        self.xtab[2 * slot] = linear_page | 1
        self.xtab[2 * slot + 1] = gpa_page | ((int(self.vm.code_state[page]) >> 1) & 0xFFF)
        self.uc.ctl_remove_cache(linear_page, linear_page + 0x1000)

    def efer(self):
        return self.uc.reg_read(X.UC_X86_REG_MSR, 0xC0000080)

    def cpl(self):
        return self.uc.reg_read(X.UC_X86_REG_CS) & 3 if self.uc.reg_read(X.UC_X86_REG_CR0) & W.CR0_PE else 0

    def linear_pc(self):
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        if self.uc.reg_read(X.UC_X86_REG_CR0) & W.CR0_PE:
            return rip
        return (self.uc.reg_read(X.UC_X86_REG_CS) << 4) + (rip & 0xFFFF)

    def unsupported(self, what):
        return UnsupportedByModel(what)

    def _linear_pages(self, linear, size):
        while size > 0:
            chunk = min(size, 0x1000 - (linear & 0xFFF))
            hpa = hooks.linear_to_hpa(self.ctx, linear)
            if hpa < 0:
                hpa = self._back_linear(linear)
            yield hpa, chunk
            linear, size = linear + chunk, size - chunk

    def _back_linear(self, linear):
        """A page the CPU's own access (event delivery, a debugger) reaches through the guest's tables but the
        EPT has not backed yet: back it on first touch, as the guest's access would. A guest #PF otherwise."""
        walk = self.translate(linear)
        if walk["gpa"] is None or walk["fault"] and walk["fault"].startswith("guest #PF"):
            raise inject.DeliveryFault(inject.PF, 0, cr2=linear)
        try:
            return self.vm.pmap.hold(walk["gpa"])
        except EngineError:
            raise inject.DeliveryFault(inject.PF, 0, cr2=linear) from None

    def read_linear(self, linear, size):
        mem = self.vm.hypervisor.memory
        return b"".join(mem[hpa:hpa + n].tobytes() for hpa, n in self._linear_pages(linear, size))

    def write_linear(self, linear, data):
        mem, done = self.vm.hypervisor.memory, 0
        for hpa, n in self._linear_pages(linear, len(data)):
            mem[hpa:hpa + n] = np.frombuffer(data[done:done + n], np.uint8)
            done += n

    # -- reads and changes for other threads: each is a visit (the vCPU's own thread does it) ------------
    def registers(self):
        """{name: value} of every register in REG_IDS and EFER, read by the vCPU's thread at one moment."""
        return self.visit(Vcpu.read_registers)

    def read_registers(self):
        regs = {name: self.uc.reg_read(rid) for name, rid in REG_IDS.items()}
        regs["efer"] = self.efer()
        return regs

    def paging_registers(self):
        """(CR0, CR3, CR4, EFER, CPL): what a guest-linear walk needs, read together."""
        uc = self.uc
        return (uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR3), uc.reg_read(X.UC_X86_REG_CR4),
                self.efer(), self.cpl())

    def translate(self, linear, access=W.ACCESS_READ):
        """guest-linear → guest-physical → host-physical with each entry on the way (a view: no side effects),
        through the paging registers of one visit."""
        cr0, cr3, cr4, efer, cpl = self.visit(Vcpu.paging_registers)
        return explain.translate(self.vm.hypervisor.memory.view(np.uint64), self.vm.pmap.st,
                                 cr0, cr3, cr4, efer, cpl, linear, access)

    def exit_log(self):
        """The last exits, oldest first: dicts of reason (number and name), qualification, length, rip."""
        return self.visit(Vcpu.read_exit_log)

    def read_exit_log(self):
        head = int(self.ctx[C.RING_HEAD])
        rows = self.ring.reshape(-1, 4)
        order = [i % C.RING_ROWS for i in range(max(0, head - C.RING_ROWS), head)]
        return [{"reason": int(rows[i][0]), "name": E.reason_name(int(rows[i][0])), "qualification": int(rows[i][1]),
                 "length": int(rows[i][2]), "rip": int(rows[i][3])} for i in order]

    def read_counters(self):
        """This vCPU's statistics as plain ints, in stats.py's slot order; vCPU 0's carry the VM's memory
        figures, computed when they are read as vmm.c does."""
        counters = [int(v) for v in self.counters]
        if self.index == 0:
            counters[S.VMM_MEM_RESIDENT] = int(self.vm.pmap.st[EPT.S_RESIDENT]) * EPT.PAGE
            counters[S.VMM_MEM_WIRED] = 0
        return counters

    def read_vmcs(self, sync=False):
        """{field: value} of the VMCS; with `sync`, the guest-state area first saved as a VM exit saves it."""
        if sync:
            self.sync_vmcs()
        return self.vmcs.snapshot()

    def tlb_info(self):
        """The TLB model of this vCPU's host CPU: counters, and the entries tagged with this vCPU's VPID."""
        return self.visit(Vcpu.read_tlb)

    def read_tlb(self):
        """tlb_info on the vCPU's thread, between two turns on its host CPU: no vCPU fills that TLB meanwhile."""
        c, host = self.counters, self.hostcpu
        with host.turn():
            mine = [e for e in host.tlb_entries() if e["vpid"] == self.index + 1]
            capacity, generation = int(host.tlb[TLB.H_SETS] * host.tlb[TLB.H_WAYS]), int(host.tlb[TLB.H_GEN])
        return {"hostcpu": host.index, "vpid": self.index + 1, "eptp": self.vm.pmap.eptp,
                "hits": int(c[S.TLB_HITS]), "misses": int(c[S.TLB_MISSES]), "walks": int(c[S.TLB_WALKS]),
                "guest_flushes": int(c[S.TLB_GUEST_FLUSHES]), "invept": int(c[S.VCPU_INVEPT]),
                "invept_saved": int(c[S.VCPU_INVEPT_SAVED]),
                "invvpid_done": int(c[S.VCPU_INVVPID_DONE]), "invvpid_saved": int(c[S.VCPU_INVVPID_SAVED]),
                "entries": len(mine), "capacity": capacity, "flush_generation": generation, "contents": mine[:64]}

    def l1d_info(self):
        """The L1D model of this vCPU's host CPU: who holds its lines, the guest's hits and misses, the flushes."""
        return self.visit(Vcpu.read_l1d)

    def read_l1d(self):
        c, l1d = self.counters, self.vm.hypervisor.l1d
        with self.hostcpu.turn():
            owners, free = l1d.occupancy(self.hostcpu.index)
        return {"hostcpu": self.hostcpu.index, "occupancy": owners, "free_lines": free,
                "guest_hits": int(c[S.L1D_GUEST_HITS]), "guest_misses": int(c[S.L1D_GUEST_MISSES]),
                "flushes_msr": int(c[S.L1D_FLUSH_MSR]), "flushes_sw": int(c[S.L1D_FLUSH_SW]),
                "flush_cycles": int(c[S.L1D_FLUSH_CYCLES]), "l1tf_windows": int(c[S.L1D_L1TF_WINDOWS])}

    def set_register(self, name, value):
        """bhyvectl --set-REG, done by the vCPU's thread; refused while the vCPU runs."""
        self.visit(lambda vcpu: vcpu.write_register(name, value))

    def write_register(self, name, value):
        if self.state == RUNNING:
            raise StateError("vcpu%d of %s is running: pause it before setting %s" % (self.index, self.vm.name, name))
        if name == "efer":
            self.uc.reg_write(X.UC_X86_REG_MSR, (0xC0000080, value))
        else:
            self.uc.reg_write(REG_IDS[name], value)
        if name == "cr3":
            self.lastcpu = None                  # vmx_invvpid on a vCPU not running: INVVPID at next entry

    def sync_vmcs(self):
        """Copy the live guest state into the VMCS guest-state area (what VM exit saves)."""
        uc, v = self.uc, self.vmcs
        for field, rid in (("GUEST_RIP", X.UC_X86_REG_RIP), ("GUEST_RSP", X.UC_X86_REG_RSP),
                           ("GUEST_RFLAGS", X.UC_X86_REG_EFLAGS), ("GUEST_CR0", X.UC_X86_REG_CR0),
                           ("GUEST_CR3", X.UC_X86_REG_CR3), ("GUEST_CR4", X.UC_X86_REG_CR4),
                           ("GUEST_DR7", X.UC_X86_REG_DR7), ("GUEST_FS_BASE", X.UC_X86_REG_FS_BASE),
                           ("GUEST_GS_BASE", X.UC_X86_REG_GS_BASE)):
            v[field] = uc.reg_read(rid)
        for seg in ("ES", "CS", "SS", "DS", "FS", "GS"):
            v["GUEST_%s_SELECTOR" % seg] = uc.reg_read(REG_IDS[seg.lower()])
        for table in ("GDTR", "IDTR", "LDTR", "TR"):
            sel, base, limit, flags = uc.reg_read(getattr(X, "UC_X86_REG_" + table))
            v["GUEST_%s_BASE" % table], v["GUEST_%s_LIMIT" % table] = base, limit
            if table in ("LDTR", "TR"):
                v["GUEST_%s_SELECTOR" % table], v["GUEST_%s_ACCESS_RIGHTS" % table] = sel, flags
        v["GUEST_IA32_EFER"] = self.efer()
        v["GUEST_ACTIVITY"] = 1 if self.state == HALTED else 0


class ResetImage:
    """What an application processor looks like after INIT: real mode, waiting for its SIPI."""
    mode, regs = "real", {"ds": 0, "es": 0, "ss": 0, "rsp": 0}


class RealModeRegs:
    """The BIOS's view of the registers: 16-bit and 8-bit names over a UC_MODE_64 instance."""
    _WIDE = {"ax": X.UC_X86_REG_AX, "bx": X.UC_X86_REG_BX, "cx": X.UC_X86_REG_CX, "dx": X.UC_X86_REG_DX,
             "si": X.UC_X86_REG_SI, "di": X.UC_X86_REG_DI, "bp": X.UC_X86_REG_BP, "sp": X.UC_X86_REG_SP,
             "es": X.UC_X86_REG_ES, "ds": X.UC_X86_REG_DS, "ss": X.UC_X86_REG_SS, "cs": X.UC_X86_REG_CS,
             "flags": X.UC_X86_REG_FLAGS}
    _SEGS = {"es", "ds", "ss", "cs"}

    def __init__(self, uc):
        self.uc = uc

    def __getitem__(self, name):
        if name in self._WIDE:
            return self.uc.reg_read(self._WIDE[name]) & 0xFFFF
        value = self[name[0] + "x"]
        return value >> 8 if name[1] == "h" else value & 0xFF

    def __setitem__(self, name, value):
        if name in self._SEGS:
            load_real_mode_segment(self.uc, self._WIDE[name], value)
        elif name in self._WIDE:
            self.uc.reg_write(self._WIDE[name], value & 0xFFFF)
        else:
            wide = self[name[0] + "x"]
            wide = (wide & 0x00FF) | (value & 0xFF) << 8 if name[1] == "h" else (wide & 0xFF00) | (value & 0xFF)
            self.uc.reg_write(self._WIDE[name[0] + "x"], wide)


EXIT_HANDLERS = {
    vmx.EXITCODE_BOGUS: Vcpu._exit_bogus, vmx.EXITCODE_PAUSE: Vcpu._exit_bogus, vmx.EXITCODE_HLT: Vcpu._exit_hlt,
    vmx.EXITCODE_PAGING: Vcpu._exit_paging,
    vmx.EXITCODE_EXCEPTION: Vcpu._exit_exception, vmx.EXITCODE_VMINSN: Vcpu._exit_vminsn,
    vmx.EXITCODE_USER: Vcpu._exit_user, vmx.EXITCODE_INJECT: Vcpu._exit_inject, vmx.EXITCODE_IPI: Vcpu._exit_ipi,
    vmx.EXITCODE_BUSLOCK: Vcpu._exit_buslock,
}
