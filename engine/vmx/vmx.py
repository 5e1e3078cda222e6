"""The vcpu loop as bhyve's vmx_run: inject, checks, pmap activate, L1D flush, enter, exit processing.

`vmx_run` is a numba kernel on the vCPU's thread: it enters the guest with uc_emu_start and decodes
each exit into the VMCS. Exits that vmm.ko handles in the kernel loop here; those that need the
userspace side (devices, the page scan that installs MSR hooks, event delivery) return a VM_EXITCODE
to Python, which handles it and calls back in.
"""
import numpy as np
from numba import carray, njit, types
from unicorn import x86_const as X

from .. import stats as S
from ..core import ctx as C
from ..core import kick
from ..core import vmcs as V
from ..core.regs import rd
from ..cpu import l1d
from ..io import buslock
from ..mmu import ept as EPT
from ..mmu import tlb as TLB
from ..mmu.access import fetch_code, pc_linear
from ..native import CTL_TLB_FLUSH, FN_CTL, FN_EMU_START, INLINE, NFN, NUMBA, ahead, call_ctl, call_emu_start, u64_ptr
from . import exits as E
from . import faults, halt, intr
from .controls import PROCBASED_HLT_EXITING, PROCBASED_MTF
from .emulate import emulate
from .hooks import record_exit

# What the loop returns to userspace: bhyve's enum vm_exitcode where it has one.
EXITCODE_VMX = 1            # an entry or exit the model cannot process (Unicorn error): details in ctx
EXITCODE_BOGUS = 2          # AST: a request from another thread (pause, kick) is pending
EXITCODE_IPI = intr.EXITCODE_IPI        # INIT, SIPI or an NMI for this vCPU (userspace side)
EXITCODE_INJECT = intr.EXITCODE_INJECT  # webhyve: an interrupt to deliver through the guest's IDT
EXITCODE_HLT = halt.EXITCODE_HLT
EXITCODE_MTRAP = 6          # the monitor trap flag: one guest instruction ran (bhyve's vmexit_mtrap)
EXITCODE_PAUSE = 7
EXITCODE_PAGING = 8         # EPT violation: a page to scan for execution, or an address outside memory
EXITCODE_VMINSN = 22        # VMCALL (the BIOS stubs' way into the userspace firmware)
EXITCODE_EXCEPTION = 27     # webhyve: an exception or interrupt for the userspace side to deliver
EXITCODE_USER = 28          # webhyve: a userspace device asked the vcpu to stop (power off, error)
NAMES = {EXITCODE_VMX: "VMX", EXITCODE_BOGUS: "BOGUS", EXITCODE_HLT: "HLT", EXITCODE_MTRAP: "MTRAP",
         EXITCODE_PAUSE: "PAUSE", EXITCODE_PAGING: "PAGING",
         EXITCODE_VMINSN: "VMINSN", EXITCODE_EXCEPTION: "EXCEPTION", EXITCODE_USER: "USER",
         EXITCODE_IPI: "IPI", EXITCODE_INJECT: "INJECT"}

UC_ERR_OK, UC_ERR_INSN_INVALID, UC_ERR_EXCEPTION = 0, 10, 21


@njit(**NUMBA)
def current_linear(c):
    """Linear address of RIP: CS.selector*16 + IP in real mode, RIP with flat segments otherwise."""
    return pc_linear(c)[1]


@njit(**NUMBA)
def ran_hlt(c, linear):
    """Unicorn ran a HLT natively: emu_start returns right after it (EXCP_HLT), and nothing else marks the
    entry. Every other way out leaves a mark: the exit record (EXIT, X_MMIO after an instruction the stepper
    ran), the block hook's BLOCK_STOP, an APIC write's LAPIC_STEP, a stepped instruction under NMI-window exiting (under the monitor trap flag the
    stepped opcode tells instead: exit_process). So an unmarked return with an F4
    byte (HLT, after any prefixes) right before RIP is a HLT; no hook per HLT is needed."""
    code = np.zeros(1, np.uint8)
    return fetch_code(c, linear - np.uint64(1), code) == 1 and code[0] == 0xF4


@njit(**INLINE)
def procbased(c, bit):
    """A primary processor-based control of this vCPU's VMCS (controls.py), as the entry reads it."""
    return carray(u64_ptr(c[C.VMCS]), V.NFIELDS)[V.PRI_PROC_BASED_CTLS] & np.uint64(bit) != 0


@njit(**NUMBA)
def enter(c):
    """Step 5: one VM entry; returns Unicorn's status."""
    buslock.entry_request(c, c[C.EXIT] == C.X_EXEC)
    c[C.EXIT] = C.X_NONE
    c[C.BLOCK_STOP] = 0
    c[C.GUEST_PE] = 0                              # the host may have changed CR0 since the last entry
    c[C.ENTRIES] += 1
    fns = carray(u64_ptr(c[C.FN]), NFN)
    # Unicorn sets EIP to `begin` (not CS.base + EIP) for a 64-bit instance, in every guest mode;
    # with NMI-window exiting armed or the monitor trap flag set, one instruction at a time (vmx/intr.py);
    # interrupt-window exiting is the block hook's (core/kick.py). No timeout: Unicorn's is a thread calling
    # uc_emu_stop, which can replay an instruction (core/kick.py); a shared host CPU's turns end by the host
    # timer's tick (RESCHED)
    step = c[C.NMI_WINDOW] != 0 or procbased(c, PROCBASED_MTF)
    count = 1 if step else 0
    if step:
        intr.note_opcode(c)
    elif c[C.INTR_WINDOW] != 0:
        intr.arm_window(c)
    intr.prepare_entry(c, count)
    err = call_emu_start(fns[FN_EMU_START], c[C.UC], rd(c, X.UC_X86_REG_RIP), 0, 0, count)
    if c[C.EXIT] == C.X_MMIO:                      # an access to a device page: the instruction runs on the stepper
        err = emulate(c)
    c[C.EXIT_SEQ] += 1
    buslock.release(c)                             # a locked instruction that faulted or was the last one run
    return err


@njit(**NUMBA)
def pmap_activate(c):
    """Step 3: a generation this host CPU has not seen means one single-context INVEPT, for every vCPU of
    the VM that runs here after it. Then Unicorn's own TLB follows the model's."""
    st = carray(u64_ptr(c[C.EPT]), EPT.S_SIZE)
    eptgen = carray(u64_ptr(c[C.EPTGEN]), np.int64(c[C.HOSTCPU]) + 1)
    tlb = carray(u64_ptr(c[C.TLB]), np.int64(c[C.TLB_LEN]))
    host = np.int64(c[C.HOSTCPU])
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    if eptgen[host] != st[EPT.S_GEN]:
        eptgen[host] = st[EPT.S_GEN]
        TLB.invalidate(tlb, TLB.INV_SINGLE, 0, c[C.EPTP], 0, True)
        counters[S.VCPU_INVEPT] += 1
    elif c[C.VCPU_EPTGEN] != st[EPT.S_GEN] and c[C.ENTRIES] != 0:
        counters[S.VCPU_INVEPT_SAVED] += 1               # per-vCPU bookkeeping would have done one more
    c[C.VCPU_EPTGEN] = st[EPT.S_GEN]
    if tlb[TLB.H_GEN] != c[C.TLB_SEEN]:
        c[C.TLB_SEEN] = tlb[TLB.H_GEN]
        fns = carray(u64_ptr(c[C.FN]), NFN)
        call_ctl(fns[FN_CTL], c[C.UC], CTL_TLB_FLUSH)


@njit(**INLINE)
def record(c, reason, qualification, length, stat):
    record_exit(c, reason, qualification, length, c[C.RIP], stat)


@njit(**INLINE)
def hlt_exit(c):
    """HLT exiting (exit 12) when the control is set; without it the HLT runs natively: the vCPU halts just
    the same (an interrupt ends it), but no exit is recorded or counted (SDM 25.1.3, 26.6.2)."""
    if procbased(c, PROCBASED_HLT_EXITING):
        c[C.RIP] -= np.uint64(1)
        record(c, E.HLT, 0, 1, S.VMEXIT_HLT)
        c[C.RIP] += np.uint64(1)                       # Unicorn already stands after the HLT
    return EXITCODE_HLT                                # (an armed interrupt window opens at the next entry)


@njit(**INLINE)
def mtf_exit(c):
    """Monitor trap flag (exit 37): the stepped instruction completed (SDM 26.5.2); bhyve hands it to userspace."""
    record(c, E.MTF, 0, 0, S.VMEXIT_MTRAP)
    return EXITCODE_MTRAP


@njit(**NUMBA)
def exit_process(c, err):
    """vmx_exit_process: decode why emu_start returned; 0 if handled here, else a VM_EXITCODE."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    c[C.RIP] = rd(c, X.UC_X86_REG_RIP)
    mtf = procbased(c, PROCBASED_MTF) and c[C.NMI_WINDOW] == 0
    unmarked = c[C.BLOCK_STOP] == 0 and c[C.LAPIC_STEP] == 0 and c[C.NMI_WINDOW] == 0
    if c[C.LAPIC_STEP] != 0:                # an APIC write the guest left after (io/lapic/access.py mmio_write)
        intr.apic_write_exit(c)
    why = c[C.EXIT]
    if why == C.X_EPT and c[C.FAULT_STATUS] == EPT.MISCONFIG:   # exit 49: no qualification (SDM 28.2.1)
        record(c, E.EPT_MISCONFIG, 0, 0, S.VMEXIT_UNKNOWN)      # bhyve counts it as unknown
        vmcs[V.GUEST_PHYSICAL_ADDRESS] = c[C.FAULT_GPA]
        return EXITCODE_PAGING
    if why == C.X_EPT or why == C.X_EXEC or why == C.X_POOL:
        record(c, E.EPT_VIOLATION, c[C.FAULT_QUAL], 0, S.VMEXIT_NESTED_FAULT)
        vmcs[V.GUEST_PHYSICAL_ADDRESS] = c[C.FAULT_GPA]
        vmcs[V.GUEST_LINEAR_ADDRESS] = c[C.FAULT_GLA]
        return EXITCODE_PAGING
    if why == C.X_GUEST_PF or why == C.X_EXCEPTION or why == C.X_GP:
        return EXITCODE_EXCEPTION
    if why == C.X_USER_STOP:
        return EXITCODE_USER
    if why == C.X_PAUSE:
        # bhyve's VM_EXITCODE_PAUSE: its userspace handler only continues, so the loop does the same here, without
        # the trip through Python; on a shared host CPU it is the loop's way to give the turn up (userspace yields)
        return EXITCODE_PAUSE if c[C.TIMESLICE] != 0 else 0
    if err == UC_ERR_OK:
        # a stepped instruction's opcode tells a HLT; F4 before RIP does not (it can end the instruction stepped)
        if unmarked and why != C.X_MMIO and (intr.stepped_opcode(c) == 0xF4 if mtf else ran_hlt(c, current_linear(c))):
            return hlt_exit(c)
        if c[C.REQ] != 0:                              # the kick: a host IPI seen as an external interrupt
            if mtf and unmarked:                       # (after the MTF exit the instruction owes)
                return mtf_exit(c)
            if c[C.REQ] & np.uint64(C.REQ_STOP):       # (a visit alone is no exit: the loop's checks take it)
                record(c, E.EXTERNAL_INTERRUPT, 0, 0, S.VMEXIT_EXTINT)
            return 0
        if c[C.NOTIFY] != 0:                           # a notification or the host timer (vmx/intr.py)
            intr.host_interrupt(c)
        if c[C.INTR_WINDOW] != 0 and intr.window_open(c):
            if c[C.INTR_WINDOW] == intr.WINDOW_EXIT:   # (a virtual interrupt's window is no exit: vmx/intr.py)
                record(c, E.INTERRUPT_WINDOW, 0, 0, S.VMEXIT_INTR_WINDOW)
            c[C.INTR_WINDOW] = 0
        if c[C.NMI_WINDOW] != 0 and intr.nmi_window_open(c):
            c[C.NMI_WINDOW] = 0
            record(c, E.NMI_WINDOW, 0, 0, S.VMEXIT_NMI_WINDOW)
            return intr.EXITCODE_IPI
        if mtf and unmarked:
            return mtf_exit(c)
        if c[C.RESCHED] != 0:                          # the timeslice ran out: the host scheduler's turn
            c[C.RESCHED] = 0
            counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
            counters[S.VMEXIT_ASTPENDING] += 1
            return EXITCODE_BOGUS
        return 0                                       # a window stop or a stepped instruction: re-enter
    if err == UC_ERR_INSN_INVALID:
        code = np.zeros(3, np.uint8)
        if fetch_code(c, current_linear(c), code) == 3 and code[0] == 0x0F and code[1] == 0x01 and code[2] == 0xC1:
            record(c, E.VMCALL, 0, 3, S.VMEXIT_INST_EMUL)
            return EXITCODE_VMINSN
        c[C.EXIT], c[C.VECTOR] = C.X_EXCEPTION, 6   # #UD, delivered to the guest
        return EXITCODE_EXCEPTION
    vmcs[V.INSTRUCTION_ERROR] = err
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    counters[S.VMEXIT_UNKNOWN] += 1
    return EXITCODE_VMX


@njit(**NUMBA)
def _run(c):
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    while True:
        # 1. inject, "with host interrupts disabled": marked in the guest before anything pending is read
        c[C.RUNSTATE] = C.RUN_GUEST
        kick.clear(c)                              # (with a full fence: the notifier's Dekker handshake)
        code = intr.inject(c)
        if code != 0:
            return code
        # 2. checks that leave the loop: suspend, pause or kick (the AST), or a visit
        if c[C.REQ] != 0:
            if c[C.REQ] & np.uint64(C.REQ_STOP):
                counters[S.VMEXIT_ASTPENDING] += 1
            elif c[C.REQ] & np.uint64(C.REQ_PEEK):      # vm_exit_reqidle: another thread wants the vCPU idle
                counters[S.VMEXIT_REQIDLE] += 1
            return EXITCODE_BOGUS
        # 3. pmap activate: a stale eptgen on this host CPU means one INVEPT
        pmap_activate(c)
        # 4. the L1D flush, when enabled and an exit happened since the last entry
        l1d.entry_flush(c)
        # 5. enter, then exit processing; a HLT whose wake-up is near waits here (vm_handle_hlt)
        code = exit_process(c, enter(c))
        if code == EXITCODE_EXCEPTION and faults.exception_exit(c):
            code = 0                                # delivered through the guest's IDT in the kernel
        if code == EXITCODE_HLT:
            code = halt.wait(c)
        if code != 0:
            return code


# The whole loop takes over a minute of CPU to compile after a change of the engine's sources: precompile
# compiles it ahead (beside the hooks, on another core), so a VM's first run loads it from the cache.
@ahead(types.Array(types.uint64, 1, "C"))
@njit(**NUMBA)
def vmx_run(c):
    """Run until an exit needs userspace; returns its VM_EXITCODE."""
    code = _run(c)
    c[C.RUNSTATE] = C.RUN_HOST
    return code
