"""Step 1 of the vcpu loop, in the kernel: what is pending, and whether the guest can take it now.

bhyve's vmx_inject_interrupts runs with host interrupts disabled: the vCPU is marked as in the guest
(RUNSTATE) before the IRR is read, so a notifier that sets a bit after the read kicks it again after
entry (deliver.notify). Here the LAPIC timer is checked against the host clock, posted requests move
from the PIR to the IRR, and the highest deliverable vector goes through the guest's IDT: here in the
common case (vmx/deliver.py), else by the userspace side (vmx/inject.py). When RFLAGS.IF is clear or
an STI/MOV-SS shadow is in effect, interrupt-window exiting is set instead: the guest then leaves at the
first translated-block start where it can take the interrupt (core/kick.py), which is the instruction
boundary where the hardware's window opens (exit 7). NMI-window exiting still steps (rare: an NMI while
one is being handled).
"""
import numpy as np
from numba import carray, njit
from unicorn import x86_const as X

from .. import stats as S
from .. import tunables as T
from ..core import ctx as C
from ..core import kick
from ..core import vmcs as V
from ..core.regs import rd, wr
from ..core.sync import call_ctl2, call_uc_ptr
from ..io.lapic import apicv, deliver, regs as L, timer
from ..mmu.access import fetch_code, pc_linear
from ..native import NUMBA, u64_ptr, u8_ptr
from . import deliver as D
from . import exits as E
from .hooks import log_exit, record_exit

EXITCODE_INJECT = 29        # webhyve: deliver ctx[INJECT] through the guest's IDT (userspace side)
EXITCODE_IPI = 24           # bhyve's VM_EXITCODE_IPI: INIT, SIPI or NMI for this vCPU
EXTINT = 0x100              # ctx[INJECT]: an ExtINT, its vector from the 8259 (io/vpic.py)
WINDOW_EXIT = 1             # ctx[INTR_WINDOW]: interrupt-window exiting, exit 7 when the window opens
WINDOW_VIRTUAL = 2          # ctx[INTR_WINDOW]: a virtual interrupt waits for the window; no exit (SDM 29.2.1)
RFLAGS_IF = 1 << 9
HF_INHIBIT_IRQ = 1 << 3
HFLAGS_OFFSET = 216         # engine/vmx/segcache.py: hflags in Unicorn 2.1.4's uc_context
UC_CTL_TB_FLUSH_WRITE = 10 | (1 << 30)           # UC_CTL_WRITE(UC_CTL_TB_FLUSH, 0)


@njit(**NUMBA)
def shadowed(c):
    """STI/MOV-SS blocking: QEMU's HF_INHIBIT_IRQ, read from a saved context (about 1 µs, only when needed)."""
    ib = L.block(c)
    call_uc_ptr(ib[L.IB_CONTEXT_SAVE], c[C.UC], ib[L.IB_CONTEXT])
    raw = carray(u8_ptr(ib[L.IB_CONTEXT]), HFLAGS_OFFSET + 4)
    return (raw[HFLAGS_OFFSET] & HF_INHIBIT_IRQ) != 0


@njit(**NUMBA)
def can_take_interrupt(c):
    return (rd(c, X.UC_X86_REG_EFLAGS) & np.uint64(RFLAGS_IF)) != 0 and not shadowed(c)


@njit(**NUMBA)
def inject(c):
    """Returns 0 to enter, or a VM_EXITCODE for the userspace side to deliver an event first."""
    if c[C.APIC_PAGE] == 0:
        return 0
    pend = c[C.PENDING]
    if pend & ~np.uint64(L.PEND_NMI) or (pend & np.uint64(L.PEND_NMI) and c[C.NMI_WINDOW] == 0):
        return EXITCODE_IPI
    vid = (c[C.APICV] & np.uint64(C.APICV_VID)) != 0
    if vid:
        apicv.sync_eoi_exit(c)
    if c[C.INTR_WINDOW] != 0:                      # vmx_inject_interrupts step 6: window already armed;
        if not can_take_interrupt(c):              # the hardware exits right after an entry with the window
            return 0                               # open, e.g. after a HLT in an STI shadow (the HLT exit
        window = c[C.INTR_WINDOW]                  # came first): exit 7 here, then the injection below
        c[C.INTR_WINDOW] = 0
        if window == WINDOW_EXIT:
            record_exit(c, E.INTERRUPT_WINDOW, 0, 0, rd(c, X.UC_X86_REG_RIP), S.VMEXIT_INTR_WINDOW)
    timer.timer_check(c, deliver.now_ns(c))
    apicv.pir_to_irr(c)
    regs = L.page_of(c)
    vector = deliver.pending(regs)
    if vector < 0:
        if not deliver.extint_pending(c, regs):
            return 0
        vector = EXTINT                            # the vector comes from the 8259's INTA cycle
    if can_take_interrupt(c):
        if vector != EXTINT and D.external(c, vector):
            deliver.accept(c, vector)              # delivered as VM entry does it, in the kernel
            return 0
        c[C.INJECT] = vector
        return EXITCODE_INJECT
    # With virtual-interrupt delivery the processor delivers a virtual interrupt as soon as RFLAGS.IF and the
    # shadow allow it, with no exit (SDM 29.2.1); bhyve arms interrupt-window exiting only for the 8259's ExtINT.
    c[C.INTR_WINDOW] = WINDOW_VIRTUAL if vid and vector != EXTINT else WINDOW_EXIT
    return 0


@njit(**NUMBA)
def window_open(c):
    """After a window stop (or a stepped instruction): can the pending interrupt go in now?"""
    return can_take_interrupt(c)


@njit(**NUMBA)
def arm_window(c):
    """Entering with the window armed. The loop enters with it only while the guest cannot take an interrupt;
    with RFLAGS.IF set that is an STI/MOV-SS shadow, whose block (one instruction: QEMU gives a shadowed
    instruction a block of its own) runs before the block hook may stop."""
    if rd(c, X.UC_X86_REG_EFLAGS) & np.uint64(RFLAGS_IF):
        c[C.WINDOW_SKIP] = pc_linear(c)[1] + np.uint64(1)
    else:
        c[C.WINDOW_SKIP] = 0
    kick.arm_window(c)


@njit(**NUMBA)
def host_interrupt(c):
    """A host interrupt arrived while the guest ran. With "acknowledge interrupt on exit" the exit carries
    its vector and the host handler runs by hand (vmx_trigger_hostintr), counted in the interrupt block.
    A posted-interrupt notification is processed in VMX non-root operation: no exit (SDM §29.6)."""
    vector = c[C.NOTIFY]
    c[C.NOTIFY] = 0
    params = carray(u64_ptr(c[C.PARAMS]), T.COUNT)
    if vector == params[T.POSTED_INTERRUPT_VECTOR]:
        return
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    vmcs[V.EXIT_INTR_INFO] = np.uint64(E.INTR_VALID) | vector      # type 0: external interrupt
    record_exit(c, E.EXTERNAL_INTERRUPT, 0, 0, rd(c, X.UC_X86_REG_RIP), S.VMEXIT_EXTINT)
    L.block(c)[L.IB_HOST_INTR] += 1


@njit(**NUMBA)
def nmi_window_open(c):
    """NMI blocking ends with the IRET the stepped instruction was (the NMI handler's return)."""
    ib = L.block(c)
    return ib[L.IB_LAST_OPCODE] == 0xCF


@njit(**NUMBA)
def stepped_opcode(c):
    """The opcode note_opcode remembered for the instruction just stepped."""
    return L.block(c)[L.IB_LAST_OPCODE]


@njit(**NUMBA)
def note_opcode(c):
    """Under NMI-window exiting or the monitor trap flag: remember the opcode (past a REX.W) of the instruction
    about to be stepped."""
    code = np.zeros(2, np.uint8)
    n = fetch_code(c, pc_linear(c)[1], code)
    op = np.uint64(0)
    if n == 2 or (n == 1 and code[0] != 0x48):
        op = np.uint64(code[1] if code[0] == 0x48 else code[0])
    L.block(c)[L.IB_LAST_OPCODE] = op


@njit(**NUMBA)
def apic_write_exit(c):
    """After a store to the APIC page the vCPU leaves the guest for (io/lapic/access.py mmio_write), trap-like, RIP the
    instruction after it (the stepper completed it: vmx/emulate.py): exit 56 (APIC write), its qualification
    the register's offset; or exit 45 (virtualized EOI), its qualification the vector; or, after a virtualized
    EOI or TPR write with requests waiting, no exit at all: the entry evaluates them (SDM 29.1.2). bhyve counts
    exits 56 and 45 only in the total."""
    step = c[C.LAPIC_STEP]
    c[C.LAPIC_STEP] = 0
    if step == apicv.EVALUATE:
        return
    if step & np.uint64(3) == apicv.EOI_VIRTUALIZED:
        reason, qualification = np.uint64(E.VIRTUALIZED_EOI), step >> np.uint64(8)
    else:
        reason, qualification = np.uint64(E.APIC_WRITE), c[C.LAPIC_STEP_OFFSET] & np.uint64(0xFFF)
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    rip = c[C.RIP]
    vmcs[V.EXIT_REASON], vmcs[V.EXIT_QUALIFICATION], vmcs[V.EXIT_INSTRUCTION_LENGTH] = reason, qualification, 0
    vmcs[V.GUEST_RIP] = rip
    carray(u64_ptr(c[C.STATS]), S.NSLOTS)[S.VMEXIT_COUNT] += 1
    log_exit(c, reason, qualification, 0, rip)


@njit(**NUMBA)
def prepare_entry(c, count):
    """Entering Unicorn's count mode: flush every translated block first. Unicorn counts instructions only in
    blocks translated while counting (measured: a cached block, or one chained to, runs on uncounted), and
    it flushes them all itself when counting ends."""
    ib = L.block(c)
    if count != 0 and ib[L.IB_STEPPING] == 0:
        call_ctl2(ib[L.IB_UC_CTL], c[C.UC], UC_CTL_TB_FLUSH_WRITE, np.uint64(0), np.uint64(0))
    ib[L.IB_STEPPING] = count
