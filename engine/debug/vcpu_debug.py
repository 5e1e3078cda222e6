"""A vCPU's side of the debugger: its hooks, the debug stop state, the stop/continue/step messages.

bhyve's gdb stub stops vCPUs with vm_suspend_cpu, sees breakpoints as VM_EXITCODE_BPT exits and steps
with the monitor trap flag (VM_EXITCODE_MTRAP). Here a stopped vCPU is PAUSED with a `stop_reason`
and remembers whether it was running or halted; ("debug", "stop" | "continue" | "step") messages are
handled on the vCPU's own thread. Hooks are added and removed only while the vCPU's thread is parked
and not running (it waits for a message), never under emu_start.
"""
from unicorn import (UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_HOOK_CODE, UC_HOOK_MEM_READ,
                     UC_HOOK_MEM_WRITE)
from unicorn import x86_const as X

from .. import stats as S
from ..core import ctx as C
from ..errors import StateError
from ..native import hook_add, hook_del
from ..vcpu import HALTED, PAUSED, RUNNING
from ..vcpu import halting
from ..vmx import exits as E
from ..vmx import hooks
from . import traps

# How each stop is recorded as a VM exit: breakpoints as #BP exception exits (VM_CAP_BPT_EXIT), steps
# as MTF exits (VM_CAP_MTRAP_EXIT), watchpoints as the #DB a data breakpoint raises.
STOP_EXITS = {
    traps.STOP_BREAKPOINT: ("breakpoint", E.EXCEPTION_NMI, E.interruption_info(3, E.TYPE_SWEXC), S.VMEXIT_EXCEPTION),
    traps.STOP_STEP: ("step", 37, 0, S.VMEXIT_MTRAP),
    traps.STOP_WATCH: ("watchpoint", E.EXCEPTION_NMI, E.interruption_info(1, E.TYPE_HWEXC), S.VMEXIT_EXCEPTION),
}


class VcpuDebug:
    """Legend: `stop_reason`, `resume_state` change on the vCPU's thread; hook handles while it is parked."""

    def __init__(self, vcpu, debugger):
        self.vcpu, self.debugger = vcpu, debugger
        self.stop_reason = None          # (reason, detail) while stopped by the debugger
        self.resume_state = RUNNING      # what `continue` returns to: RUNNING or HALTED
        self.breakpoints = {}            # linear address -> hook handle
        self.watch_hooks = []
        self.trace = None                # the every-instruction hook, while a step or a watchpoint needs it
        vcpu.ctx[C.DBG_WATCHES] = debugger.watch_rows.ctypes.data

    # -- on the vCPU's thread ------------------------------------------------------------------------
    def handle(self, what):
        vcpu = self.vcpu
        if what == "stop" and vcpu.state in (RUNNING, HALTED):
            self._stop("interrupt", None)
        elif what in ("continue", "step") and self.stop_reason is not None:
            self._resume(what == "step")

    def trapped(self):
        """A debug hook stopped emulation: record the exit the hardware would take, then stop."""
        c = self.vcpu.ctx
        why, address, row = int(c[C.DBG_STOP]), int(c[C.DBG_ADDR]), int(c[C.DBG_WATCH_HIT]) - 1
        reason, exit_reason, intr_info, stat = STOP_EXITS[why]
        self.vcpu.vmcs["EXIT_INTR_INFO"] = intr_info
        hooks.record_exit(c, exit_reason, 0, 0, self.vcpu.uc.reg_read(X.UC_X86_REG_RIP), stat)
        detail = address if why == traps.STOP_BREAKPOINT else (row, address) if why == traps.STOP_WATCH else None
        self._stop(reason, detail)

    def _stop(self, reason, detail):
        vcpu, c = self.vcpu, self.vcpu.ctx
        if self.stop_reason is None:
            self.resume_state = HALTED if vcpu.state == HALTED else RUNNING
        c[C.DBG_STOP] = c[C.DBG_STEP] = c[C.DBG_WATCH_HIT] = c[C.DBG_SKIP] = 0
        self._update_trace()
        self.stop_reason = (reason, detail)
        vcpu.state = PAUSED              # last: from here on the debugger's thread may use the Unicorn instance
        self.debugger.vcpu_stopped(vcpu, reason, detail)

    def _resume(self, step):
        vcpu, c = self.vcpu, self.vcpu.ctx
        here = vcpu.linear_pc()
        c[C.DBG_SKIP] = here + 1 if here in self.breakpoints else 0
        if step:
            c[C.DBG_STEP] = 1
            self._update_trace()
            vcpu.state = RUNNING         # a step out of a halt runs the next instruction
        elif self.resume_state == HALTED:
            halting.back_into_halt(vcpu)
        else:
            vcpu.state = RUNNING
        self.stop_reason = None
        vcpu.vm.notify()

    # -- from the debugger's thread, with the vCPU parked --------------------------------------------
    def require_parked(self):
        vcpu = self.vcpu
        if vcpu.state == RUNNING or not vcpu.parked.is_set():
            raise StateError("vcpu%d of %s is running: stop it before changing breakpoints"
                             % (vcpu.index, vcpu.vm.name))

    def add_breakpoint(self, address):
        if address not in self.breakpoints:
            self.breakpoints[address] = hook_add(self.vcpu.uc, UC_HOOK_CODE, traps.breakpoint_hook.address,
                                                 self.vcpu.ctx.ctypes.data, address, address)
            self.vcpu.uc.ctl_flush_tb()  # translated blocks call only the hooks that existed when translated

    def remove_breakpoint(self, address):
        handle = self.breakpoints.pop(address, None)
        if handle is not None:
            hook_del(self.vcpu.uc, handle)
            self.vcpu.uc.ctl_flush_tb()

    def set_watches(self, ranges):
        """Memory hooks over host-physical (first, end, kinds) ranges, matching debugger.watch_rows."""
        uc, ud = self.vcpu.uc, self.vcpu.ctx.ctypes.data
        for handle in self.watch_hooks:
            hook_del(uc, handle)
        self.watch_hooks = []
        for first, end, kinds in ranges:
            low = max(first - 7, 0)      # Unicorn matches an access by its first byte: catch overlaps too
            for bit, htype in ((traps.WATCH_READ, UC_HOOK_MEM_READ), (traps.WATCH_WRITE, UC_HOOK_MEM_WRITE)):
                if kinds & bit:
                    self.watch_hooks.append(hook_add(uc, htype, traps.watch_hook.address, ud, low, end - 1))
        self.vcpu.ctx[C.DBG_NWATCH] = len(ranges)
        self._update_trace()
        uc.ctl_flush_tb()
        uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)   # cached translations would skip the new memory hooks

    def _update_trace(self):
        needed = bool(self.watch_hooks) or self.vcpu.ctx[C.DBG_STEP] != 0
        if needed and self.trace is None:
            self.trace = hook_add(self.vcpu.uc, UC_HOOK_CODE, traps.trace_hook.address, self.vcpu.ctx.ctypes.data)
            self.vcpu.uc.ctl_flush_tb()
        elif not needed and self.trace is not None:
            hook_del(self.vcpu.uc, self.trace)
            self.trace = None
            self.vcpu.uc.ctl_flush_tb()

    def detach(self):
        for address in list(self.breakpoints):
            self.remove_breakpoint(address)
        self.set_watches([])
