"""The local APIC (xAPIC) of one vCPU, modeled on bhyve's io/vlapic.c, its page virtualized the VT-x way.

The registers live in the vCPU's virtual-APIC page, a host page at the offsets of the architectural
APIC page (SDM §10.4.1); guest-physical 0xFEE00000 is mapped to it (ctx slot APIC_PAGE) only on the vCPU's
stepper, which runs each instruction that touches it (vmx/emulate.py). The guest reads that page directly; a
memory hook refreshes the one computed register (the timer's current count) before the read. A guest write
lands in the page and the write hook acts on it, as APIC-register virtualization's trap-like APIC-write exit
does; a write to a read-only register is undone as soon as the instruction has completed. IRR, ISR and TMR are eight 32-bit registers 16 bytes apart: bit v of the set is register v/32.

Other vCPUs and threads set IRR bits (or, where the vCPU's VMCS has virtual-interrupt delivery, PIR bits) with
atomic operations and then notify the vCPU (vcpu_notify_event): a kick if it is in the guest, a wake-up if it is
halted. The kick carries the posted-interrupt vector, no exit, where the VMCS has posted interrupts (ctx APICV).
The timer counts down at the core crystal clock divided by the DCR, against the host clock: the
profile's CPUID.15H:ECX (SDM 10.5.4: the APIC timer runs at the bus or core crystal clock frequency), so a
guest that reads it there programs the timer right; bhyve counts at 2^27 Hz and hides leaf 0x15 instead. In
TSC-deadline mode (LVT timer bits 18:17 = 10b, SDM 10.5.4.1) the timer is armed by WRMSR IA32_TSC_DEADLINE
(vmx/hooks.py, cpu/tsc.py turns the TSC value into a clock time); the initial count is ignored and the
current count reads 0.
"""
import numpy as np
from numba import carray, cfunc, njit, types
from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from .. import stats as S
from .. import tunables as T
from ..core import ctx as C
from ..core import kick
from ..core import vmcs as V
from ..core.sync import (CLOCK_GETTIME, CLOCK_MONOTONIC, SCHED_YIELD, SYSCALL, atomic_and, atomic_or, atomic_xchg,
                         call_clock, fence, full_fence, futex_wake)
from ..native import NUMBA, address, call_host, u64_ptr, u8_ptr

APIC_BASE_GPA = 0xFEE00000
VERSION = 0x14 | (6 << 16)              # VLAPIC_VERSION, max LVT index 6 (CMCI)
# Register offsets (SDM Table 10-1)
ID, VER, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR = 0x100, 0x180, 0x200, 0x280
LVT_CMCI, ICR_LO, ICR_HI, LVT_TIMER, LVT_THERMAL, LVT_PMC, LVT_LINT0, LVT_LINT1, LVT_ERROR = \
    0x2F0, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
TIMER_ICR, TIMER_CCR, TIMER_DCR = 0x380, 0x390, 0x3E0
READ_ONLY = (VER, APR, PPR, RRD) + tuple(range(ISR, ESR, 0x10)) + (TIMER_CCR,)
# bhyve's LVT indices (the "lvts triggered" stat array)
LVT_INDEX = {LVT_LINT0: 0, LVT_LINT1: 1, LVT_TIMER: 2, LVT_ERROR: 3, LVT_PMC: 4, LVT_THERMAL: 5, LVT_CMCI: 6}
LVT_TIMER_INDEX = LVT_INDEX[LVT_TIMER]
LVT_MASKED = 1 << 16
TIMER_PERIODIC = 1 << 17
TIMER_MODE_SHIFT, TIMER_MODE_MASK, TIMER_TSC_DEADLINE = 17, 3, 2   # LVT timer bits 18:17 (SDM Figure 10-8)
SVR_ENABLE = 1 << 8
ESR_SEND_ILLEGAL, ESR_RECV_ILLEGAL = 1 << 5, 1 << 6
# ICR fields (SDM §10.6.1)
DM_FIXED, DM_LOWPRI, DM_SMI, DM_NMI, DM_INIT, DM_SIPI = 0, 1, 2, 4, 5, 6
DEST_LOGICAL, ICR_LEVEL_ASSERT = 1 << 11, 1 << 14
SH_NONE, SH_SELF, SH_ALL, SH_OTHERS = 0, 1, 2, 3
# Posted-interrupt descriptor: 256 request bits, then the outstanding-notification bit (SDM §29.6)
PIR_ON_WORD = 4
# Requests for the userspace side (ctx slot PENDING) and the callback's kinds
PEND_NMI, PEND_INIT, PEND_SIPI = 1, 2, 4
CB_WAKE, CB_INIT, CB_SIPI, CB_NMI, CB_TIMER, CB_EOI = 1, 2, 3, 4, 5, 6
NS = 1000000000
U = np.uint64
# The interrupt block (ctx slot INTR): what the kernels need beyond the context block
IB_VCPUS, IB_NVCPUS, IB_CLOCK, IB_CONTEXT, IB_CONTEXT_SAVE, IB_CALLBACK, IB_TIMESPEC = 0, 1, 2, 3, 4, 5, 6
IB_HOST_INTR = 8            # host interrupts whose handler ran "by hand" after an exit (acknowledge on exit)
IB_LAST_OPCODE = 9          # the opcode of the instruction being stepped under NMI-window exiting
IB_UC_CTL = 10              # uc_ctl's address (flushing translated blocks before single steps)
IB_STEPPING = 11            # the last entry was a single step (Unicorn's count mode)
IB_BUS_WORD, IB_BUS_HELD = 12, 13    # io/buslock.py: the VM's lock word, and whether this vCPU holds it
IB_EXTINT = 15              # the 8259's INT output reaches this vCPU (io/vpic.py): an ExtINT is pending
IB_SCHED_YIELD = 16         # sched_yield's address: a vCPU waiting for the bus lock gives its host CPU away
IB_SYSCALL = 17             # libc syscall's address: the futex a vCPU halted in the kernel sleeps on (vmx/halt.py)
IB_HALT_TS = 18             # 18-19: the timespec of that sleep's absolute deadline
IB_CONTEXT_RESTORE = 20     # uc_context_restore's address: puts IB_CONTEXT back (vmx/intr.py end_shadow)
IB_TIMER_HZ = 21            # the timer's input clock: the profile's core crystal (CPUID.15H:ECX)
IB_EXTINT_MSG = 22          # an ExtINT message from the I/O APIC waits for this vCPU's INTA cycle (io/vioapic.py)
IB_EOI_EXIT = 24            # 24-27: the EOI-exit bitmap the I/O APIC's redirection table gives this vCPU
IB_EOI_EXIT_SEQ = 28        # its sequence number: odd while the I/O APIC writes it (Vlapic.post_eoi_exit)
IB_EOI_EXIT_SEEN = 29       # the sequence number this vCPU last copied into its VMCS (sync_eoi_exit)
IB_SIZE = 32


@njit(**NUMBA)
def block(c):
    return carray(u64_ptr(c[C.INTR]), IB_SIZE)


@njit(**NUMBA)
def divisor(dcr):
    """DCR bits 0, 1 and 3 select 2, 4, ... 128, or 1 (SDM Figure 10-10)."""
    code = (np.int64(dcr) & 3) | ((np.int64(dcr) & 8) >> 1)
    return np.int64(1) if code == 7 else np.int64(2) << code


@njit(**NUMBA)
def count_to_ns(count, div, hz):
    """Nanoseconds for `count` ticks of the `hz` clock divided by `div` (no float: exact to the ns)."""
    ticks = U(count) * U(div)
    return np.int64((ticks // U(hz)) * U(NS) + ((ticks % U(hz)) * U(NS)) // U(hz))


@njit(**NUMBA)
def ns_to_count(ns, div, hz):
    """Ticks of the `hz` clock divided by `div` in `ns` nanoseconds, rounded down."""
    ns = U(ns)
    per = U(hz) // U(div)
    return np.int64((ns // U(NS)) * per + ((ns % U(NS)) * per) // U(NS))


@njit(**NUMBA)
def highest(regs, base):
    """Highest set bit of the 256-bit IRR/ISR/TMR starting at `base`, or -1."""
    for r in range(7, -1, -1):
        word = np.uint32(regs[(base >> 2) + 4 * r])
        if word != 0:
            for b in range(31, -1, -1):
                if word >> np.uint32(b) & np.uint32(1):
                    return np.int64(32 * r + b)
    return np.int64(-1)


@njit(**NUMBA)
def compute_ppr(tpr, isrv):
    """PPR from TPR and the highest in-service vector (SDM §10.8.3.1)."""
    isr_class = (isrv & 0xF0) if isrv >= 0 else 0
    return np.int64(tpr & 0xFF) if (tpr & 0xF0) >= isr_class else np.int64(isr_class)


@njit(**NUMBA)
def update_ppr(regs):
    ppr = compute_ppr(np.int64(regs[TPR >> 2]), highest(regs, ISR))
    regs[PPR >> 2] = ppr
    return ppr


@njit(**NUMBA)
def pending(regs):
    """The vector the APIC would present to the CPU now (IRR above PPR's class), or -1 (vlapic_pending_intr)."""
    irrv = highest(regs, IRR)
    if irrv < 0:
        return np.int64(-1)
    if (irrv & 0xF0) <= (update_ppr(regs) & 0xF0):
        return np.int64(-1)
    return irrv


@njit(**NUMBA)
def extint_accepted(regs):
    """The 8259's interrupt gets through: the APIC is software-disabled (its LINT0 then passes INTR
    straight to the CPU), or LVT LINT0 is unmasked in ExtINT mode (the virtual-wire setup)."""
    lint0 = np.int64(regs[LVT_LINT0 >> 2])
    return not regs[SVR >> 2] & SVR_ENABLE or (lint0 & (LVT_MASKED | 0x700)) == 0x700


@njit(**NUMBA)
def extint_pending(c, regs):
    """An ExtINT waits for the INTA cycle: the 8259's INT on LINT0 where the LAPIC lets it through, or an ExtINT
    message from the I/O APIC, which the LAPIC takes whatever LINT0 says (bhyve's vm_inject_extint)."""
    ib = block(c)
    return (ib[IB_EXTINT] != 0 and extint_accepted(regs)) or ib[IB_EXTINT_MSG] != 0


@njit(**NUMBA)
def page_of(c):
    """The vCPU's virtual-APIC page as 1024 uint32 registers (a view of host memory)."""
    mem8 = carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])
    base = np.int64(c[C.APIC_PAGE])
    return mem8[base:base + 4096].view(np.uint32)


@njit(**NUMBA)
def bit_address(c, base, vector):
    """Host address of the 8-byte word holding bit `vector` of IRR/ISR/TMR (registers are 16-byte aligned)."""
    return U(c[C.MEM]) + U(c[C.APIC_PAGE]) + U(base) + U(0x10) * U(vector >> 5)


@njit(**NUMBA)
def accept(c, vector):
    """vlapic_intr_accepted: IRR → ISR for the vector the CPU takes; PPR rises. With virtual-interrupt delivery
    this is the processor's own delivery (SDM 29.2.2): VIRR → VISR, VPPR, SVI and RVI."""
    atomic_and(bit_address(c, IRR, vector), ~(U(1) << U(vector & 31)))
    atomic_or(bit_address(c, ISR, vector), U(1) << U(vector & 31))
    update_ppr(page_of(c))
    if c[C.APICV] & U(C.APICV_VID):
        intr_status(c)                                   # virtual-interrupt delivery: SVI = vector, RVI next


@njit(**NUMBA)
def eoi(c):
    """EOI: the highest in-service vector is done (vlapic_process_eoi); an EOI with none is counted. A vector
    whose TMR bit is set was level-triggered: its EOI is broadcast to the I/O APIC (SDM §10.8.5; the VER
    register offers no EOI-broadcast suppression), which clears that vector's remote IRR."""
    regs = page_of(c)
    isrv = highest(regs, ISR)
    if isrv < 0:
        carray(u64_ptr(c[C.STATS]), S.NSLOTS)[S.VLAPIC_GRATUITOUS_EOI] += 1
        return
    atomic_and(bit_address(c, ISR, isrv), ~(U(1) << U(isrv & 31)))
    update_ppr(regs)
    if is_level(regs, isrv) and block(c)[IB_CALLBACK] != 0:
        call_host(block(c)[IB_CALLBACK], c[C.VCPUID], U(CB_EOI), U(isrv), U(0))


@njit(**NUMBA)
def is_level(regs, vector):
    """The vector's TMR bit: it was accepted as a level-triggered interrupt."""
    return (np.uint32(regs[(TMR >> 2) + 4 * (vector >> 5)]) >> np.uint32(vector & 31)) & np.uint32(1) != 0


@njit(**NUMBA)
def set_ready(c, vector, level):
    """vlapic_set_intr_ready on the target's context: returns True if the target must be notified. A vector
    below 16 is a receive-illegal-vector error instead (SDM 10.5.3)."""
    if vector < 16:
        return set_error(c, ESR_RECV_ILLEGAL)
    return into_irr(c, vector, level)


@njit(**NUMBA)
def set_error(c, mask):
    """vlapic_set_error: the error's bit into the ESR, and the error LVT fires (vlapic_fire_lvt, always in fixed
    mode) unless masked, counted as VLAPIC_INTR_ERROR. An error LVT whose own vector is below 16 only adds
    send-illegal-vector to the ESR (no second error: bhyve's lvt_error). True if the vCPU must be notified."""
    regs = page_of(c)
    regs[ESR >> 2] |= np.uint32(mask)
    value = regs[LVT_ERROR >> 2]
    if value & LVT_MASKED:
        return False
    vector = np.int64(value & 0xFF)
    if vector < 16:
        regs[ESR >> 2] |= np.uint32(ESR_SEND_ILLEGAL)
        return False
    carray(u64_ptr(c[C.STATS]), S.NSLOTS)[S.VLAPIC_INTR_ERROR] += 1
    return into_irr(c, vector, False)


@njit(**NUMBA)
def into_irr(c, vector, level):
    """A vector from 16 up into the IRR, or, with virtual-interrupt delivery, into the PIR descriptor as bhyve's
    vmx_set_intr_ready does (the next entry moves it to the IRR): True if the target must be notified. Without
    it the TMR bit takes the trigger mode as the vector is accepted (SDM §10.8.4): set for a level-triggered
    interrupt, whose EOI then goes to the I/O APIC, cleared for an edge-triggered one. With it, the TMR and the
    EOI-exit bitmap come from the I/O APIC's redirection table, as bhyve's vioapic_update_tmr sets them."""
    regs = page_of(c)
    if not regs[SVR >> 2] & SVR_ENABLE:
        return False                                     # software-disabled: the interrupt is dropped
    if c[C.APICV] & U(C.APICV_VID):                      # the TMR is the redirection table's (sync_eoi_exit)
        pir = U(c[C.MEM]) + U(c[C.PIR_DESC])
        atomic_or(pir + U(8) * U(vector >> 6), U(1) << U(vector & 63))
        return (atomic_or(pir + U(8 * PIR_ON_WORD), U(1)) & U(1)) == 0    # notify only on 0 → 1
    if level:
        atomic_or(bit_address(c, TMR, vector), U(1) << U(vector & 31))
    elif is_level(regs, vector):
        atomic_and(bit_address(c, TMR, vector), ~(U(1) << U(vector & 31)))
    atomic_or(bit_address(c, IRR, vector), U(1) << U(vector & 31))
    return True


@njit(**NUMBA)
def pir_to_irr(c):
    """vmx_inject_pir: take the outstanding notification, move every PIR bit into the IRR, and raise RVI to the
    highest of them."""
    pir = U(c[C.MEM]) + U(c[C.PIR_DESC])
    if atomic_xchg(pir + U(8 * PIR_ON_WORD), U(0)) == 0:
        return
    for w in range(4):
        bits = atomic_xchg(pir + U(8 * w), U(0))
        for half in range(2):
            part = (bits >> U(32 * half)) & U(0xFFFFFFFF)
            if part:
                atomic_or(bit_address(c, IRR, 64 * w + 32 * half), part)
    if c[C.APICV] & U(C.APICV_VID):
        intr_status(c)                                   # RVI: the processor evaluates it at the entry


@njit(**NUMBA)
def now_ns(c):
    """CLOCK_MONOTONIC in nanoseconds, through clock_gettime's address."""
    ib = block(c)
    call_clock(ib[IB_CLOCK], CLOCK_MONOTONIC, U(c[C.INTR]) + U(8 * IB_TIMESPEC))
    return np.int64(ib[IB_TIMESPEC]) * NS + np.int64(ib[IB_TIMESPEC + 1])


@njit(**NUMBA)
def notify(c, posted):
    """vcpu_notify_event: after the request is visible, kick the vCPU out of the guest or wake it from HLT.

    A vCPU between injection and entry counts as in the guest (bhyve runs that stretch with host
    interrupts disabled, so the IPI stays pending until entry and forces an exit then): the kick is a
    flag that stays set until the guest leaves (core/kick.py), so one that lands before the entry is not lost.
    """
    fence()
    state = c[C.RUNSTATE]
    if state == C.RUN_GUEST:
        params = carray(u64_ptr(c[C.PARAMS]), T.COUNT)
        c[C.NOTIFY] = params[T.POSTED_INTERRUPT_VECTOR] if posted else params[T.IPINUM]
        kick.kick(c)
    elif state == C.RUN_HALTED:
        if c[C.HALT_IN_KERNEL] != 0:                     # waiting in the kernel loop (vmx/halt.py)
            wake_halted(c)
        else:
            call_host(block(c)[IB_CALLBACK], c[C.VCPUID], U(CB_WAKE), U(0), U(0))


@njit(**NUMBA)
def wake_halted(c):
    """End a wait in the kernel loop: the vCPU looks at what is pending again. Callable from Python too."""
    futex_wake(block(c)[IB_SYSCALL], c.ctypes.data + U(8 * C.HALT_SEQ))


@njit(**NUMBA)
def posted(c):
    """The vCPU's VMCS has the posted-interrupt control: a notification needs no exit (vmx_post_intr)."""
    return (c[C.APICV] & U(C.APICV_POSTED)) != 0


@njit(**NUMBA)
def intr_edge(c, vector):
    """lapic_intr_edge from any thread: set the request, then notify."""
    if set_ready(c, vector, False):
        notify(c, posted(c))
        return True
    return False


@njit(**NUMBA)
def set_intr(c, vector, level):
    """lapic_set_intr from any thread, for an interrupt message (the I/O APIC's): the request with its trigger
    mode, then notify. Returns whether the local APIC accepted it: not an illegal vector, not software-disabled
    (the I/O APIC sets remote IRR only for an accepted level-triggered interrupt)."""
    accepted = vector >= 16 and (page_of(c)[SVR >> 2] & SVR_ENABLE) != 0
    if set_ready(c, vector, level):
        notify(c, posted(c))
    return accepted


# -- virtual-interrupt delivery (SDM §29.1.2, 29.1.3, 29.2): RVI, SVI and the EOI-exit bitmap ------------------
# Where the VMCS has virtual-interrupt delivery, this page is the virtual-APIC page the processor itself delivers
# from: the guest-interrupt status (RVI, SVI) follows VIRR and VISR, an EOI is virtualized without an exit unless
# the EOI-exit bitmap names its vector (exit 45, trap-like), and a vector waiting for RFLAGS.IF is delivered when
# the guest sets it, with no interrupt-window exit. bhyve fills the EOI-exit bitmap (vmx_set_tmr) from the I/O
# APIC's redirection table (vioapic_update_tmr, a rendezvous of every vCPU when an entry changes).
EOI_VIRTUALIZED = 2         # ctx LAPIC_STEP: 2 | vector << 8, a virtualized EOI that exits (45) after the store
EVALUATE = 3                # ctx LAPIC_STEP: a store after which pending virtual interrupts are evaluated, no exit


@njit(**NUMBA)
def intr_status(c):
    """The guest-interrupt status as the processor keeps it: RVI the highest vector in VIRR, SVI the highest in
    VISR, 0 for none (SDM 29.1.1: "RVI = 0 if VIRR is clear")."""
    regs = page_of(c)
    rvi, svi = highest(regs, IRR), highest(regs, ISR)
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    vmcs[V.GUEST_INTR_STATUS] = U(max(rvi, 0)) | U(max(svi, 0)) << U(8)


@njit(**NUMBA)
def eoi_exits(c, vector):
    """The EOI-exit bitmap's bit for `vector` (VMCS EOI_EXIT0-3)."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    return (vmcs[V.EOI_EXIT0 + (vector >> 6)] >> U(vector & 63)) & U(1) != 0


@njit(**NUMBA)
def eoi_virtualized(c):
    """EOI virtualization (SDM 29.1.3): VISR's bit for SVI clears, SVI and VPPR follow; with the vector's
    EOI-exit bit the vCPU leaves after the store (exit 45, its qualification the vector) and the I/O APIC hears
    of it (bhyve's VM_EXITCODE_IOAPIC_EOI: vioapic_process_eoi); else pending virtual interrupts are evaluated
    with no exit. No exit, no count: bhyve never sees a gratuitous EOI here."""
    regs = page_of(c)
    svi = highest(regs, ISR)
    if svi >= 0:
        atomic_and(bit_address(c, ISR, svi), ~(U(1) << U(svi & 31)))
    update_ppr(regs)
    intr_status(c)
    if svi >= 0 and eoi_exits(c, svi):
        c[C.LAPIC_STEP] = EOI_VIRTUALIZED | U(svi) << U(8)
        if block(c)[IB_CALLBACK] != 0:
            call_host(block(c)[IB_CALLBACK], c[C.VCPUID], U(CB_EOI), U(svi), U(0))
    elif highest(regs, IRR) >= 0:
        c[C.LAPIC_STEP] = EVALUATE


@njit(**NUMBA)
def sync_eoi_exit(c):
    """At an entry: the EOI-exit bitmap the I/O APIC last gave this vCPU into its VMCS and its TMR, if it changed
    (the end of bhyve's rendezvous, on the vCPU's own thread). The words are read between two equal, even
    sequence numbers, so never half of one update and half of the next."""
    ib = block(c)
    seq = ib[IB_EOI_EXIT_SEQ]
    if seq == ib[IB_EOI_EXIT_SEEN] or seq & U(1):
        return
    fence()
    words = np.empty(4, np.uint64)
    for w in range(4):
        words[w] = ib[IB_EOI_EXIT + w]
    fence()
    if ib[IB_EOI_EXIT_SEQ] != seq:
        return                                           # changed while read: the next entry takes it
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    regs = page_of(c)
    for w in range(4):
        vmcs[V.EOI_EXIT0 + w] = words[w]
        regs[(TMR >> 2) + 8 * w] = np.uint32(words[w] & U(0xFFFFFFFF))
        regs[(TMR >> 2) + 8 * w + 4] = np.uint32(words[w] >> U(32))
    ib[IB_EOI_EXIT_SEEN] = seq


# -- the timer (SDM §10.5.4) -------------------------------------------------------------------------
@njit(**NUMBA)
def timer_mode(lvt):
    """The LVT timer entry's mode: 0 one-shot, 1 periodic, 2 TSC-deadline."""
    return (np.int64(lvt) >> TIMER_MODE_SHIFT) & TIMER_MODE_MASK


@njit(**NUMBA)
def tsc_deadline_mode(c):
    return timer_mode(page_of(c)[LVT_TIMER >> 2]) == TIMER_TSC_DEADLINE


@njit(**NUMBA)
def timer_start(c, count, now):
    regs = page_of(c)
    if count == 0:
        c[C.TIMER_DEADLINE] = 0
        return
    period = max(count_to_ns(count, divisor(regs[TIMER_DCR >> 2]), block(c)[IB_TIMER_HZ]), np.int64(1))
    c[C.TIMER_START] = now
    c[C.TIMER_PERIOD] = period if regs[LVT_TIMER >> 2] & TIMER_PERIODIC else 0
    c[C.TIMER_DEADLINE] = now + period


@njit(**NUMBA)
def timer_wakes(c):
    """The deadline at which the timer can end a HLT, or 0: none armed, or its LVT entry masked (it still
    counts, and the current count still runs down)."""
    if page_of(c)[LVT_TIMER >> 2] & LVT_MASKED:
        return np.int64(0)
    return np.int64(c[C.TIMER_DEADLINE])


@njit(**NUMBA)
def timer_ccr(c, now):
    """The current count: what is left of the period at the divided bus frequency. A periodic timer whose
    deadline passed before the vCPU rearmed it has already reloaded: the count wraps."""
    deadline = np.int64(c[C.TIMER_DEADLINE])
    if deadline == 0:
        return np.int64(0)
    remaining = deadline - now
    if remaining <= 0:
        period = np.int64(c[C.TIMER_PERIOD])
        if period == 0:
            return np.int64(0)
        remaining = period - (now - deadline) % period
    return ns_to_count(remaining, divisor(page_of(c)[TIMER_DCR >> 2]), block(c)[IB_TIMER_HZ])


@njit(**NUMBA)
def tsc_deadline_arm(c, when):
    """IA32_TSC_DEADLINE written in TSC-deadline mode (SDM 10.5.4.1): fire once at guest-clock time `when`
    (ns), or disarm for 0. A deadline already passed fires at the next injection step."""
    c[C.TIMER_PERIOD] = 0
    if when == 0:
        c[C.TIMER_DEADLINE] = 0
        return
    c[C.TIMER_START] = when
    c[C.TIMER_DEADLINE] = max(np.int64(when), np.int64(1))
    call_host(block(c)[IB_CALLBACK], c[C.VCPUID], U(CB_TIMER), U(0), U(0))   # the host timer rearms


@njit(**NUMBA)
def fire_lvt(c, lvt, index):
    """vlapic_fire_lvt: a fixed-mode LVT entry sets its vector in the IRR (masked entries do nothing)."""
    regs = page_of(c)
    value = regs[lvt >> 2]
    if value & LVT_MASKED:
        return False
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    counters[S.VLAPIC_INTR_LVT + index] += 1
    mode = (value >> 8) & 7
    if mode == DM_NMI:
        c[C.PENDING] |= PEND_NMI
        return True
    return set_ready(c, np.int64(value & 0xFF), False)



@njit(**NUMBA)
def timer_check(c, now):
    """On the vCPU's own thread: fire the timer if its deadline passed; periodic mode rearms with lag
    compensation, and a timer more than a period behind restarts from now (vlapic_callout_handler)."""
    deadline = np.int64(c[C.TIMER_DEADLINE])
    if deadline == 0 or now < deadline:
        return False
    period = np.int64(c[C.TIMER_PERIOD])
    if period == 0:
        c[C.TIMER_DEADLINE] = 0
    else:
        deadline += period
        if now - deadline > period:
            deadline = now + period
        c[C.TIMER_START] = deadline - period
        c[C.TIMER_DEADLINE] = deadline
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    counters[S.VLAPIC_INTR_TIMER] += 1
    return fire_lvt(c, LVT_TIMER, LVT_TIMER_INDEX)


# -- IPIs (SDM §10.6) ---------------------------------------------------------------------------------
@njit(**NUMBA)
def ipi_targets(icr_lo, icr_hi, self_index, ids, ldrs, dfrs, n, hits):
    """The vCPUs an ICR write addresses, as a flag per vCPU in `hits` (uint8[n], cleared here); returns how
    many. Shorthand, physical, or logical flat / cluster (vlapic_calcdest). A flag array, not a bitmask, so
    any vCPU count works: `1 << 64` is undefined in numba's int64 and uint64 alike."""
    n = min(np.int64(n), np.int64(len(hits)))
    hits[:n] = 0
    shorthand = (icr_lo >> 18) & 3
    if shorthand == SH_SELF:
        if not 0 <= self_index < n:
            return np.int64(0)
        hits[self_index] = 1
        return np.int64(1)
    if shorthand == SH_ALL or shorthand == SH_OTHERS:
        hits[:n] = 1
        if shorthand == SH_ALL or not 0 <= self_index < n:
            return n
        hits[self_index] = 0
        return n - 1
    dest = (icr_hi >> 24) & 0xFF
    count = np.int64(0)
    for i in range(n):
        if dest == 0xFF:                                       # broadcast, physical or logical
            hit = True
        elif icr_lo & DEST_LOGICAL:
            logical = (ldrs[i] >> 24) & 0xFF
            model = (dfrs[i] >> 28) & 0xF
            if model == 0xF:                                   # flat: a bit per APIC
                hit = (logical & dest) != 0
            elif model == 0:                                   # cluster: 4-bit cluster, a bit per APIC in it
                hit = (logical >> 4) == (dest >> 4) and (logical & dest & 0xF) != 0
            else:                                              # a model the SDM does not define: not addressed
                hit = False
        else:
            hit = ((ids[i] >> 24) & 0xFF) == dest
        if hit:
            hits[i] = 1
            count += 1
            if (icr_lo >> 8) & 7 == DM_LOWPRI:                 # lowest priority: the first match
                break
    return count


@njit(**NUMBA)
def send_ipi(c, icr_lo):
    """An ICR low write: fixed IPIs go straight into the targets' IRRs; NMI, INIT and SIPI to userspace."""
    ib = block(c)
    n = np.int64(ib[IB_NVCPUS])
    vcpus = carray(u64_ptr(ib[IB_VCPUS]), n)
    ids, ldrs, dfrs = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    for i in range(n):
        other = carray(u64_ptr(vcpus[i]), C.SIZE)
        regs = page_of(other)
        ids[i], ldrs[i], dfrs[i] = regs[ID >> 2], regs[LDR >> 2], regs[DFR >> 2]
    regs = page_of(c)
    hits = np.zeros(n, np.uint8)
    ipi_targets(np.int64(icr_lo), np.int64(regs[ICR_HI >> 2]), np.int64(c[C.VCPUID]), ids, ldrs, dfrs, n, hits)
    mode, vector = (icr_lo >> 8) & 7, icr_lo & 0xFF
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    illegal = False
    for i in range(n):
        if hits[i] == 0:
            continue
        other = carray(u64_ptr(vcpus[i]), C.SIZE)
        counters[S.VLAPIC_IPI_SEND] += 1
        carray(u64_ptr(other[C.STATS]), S.NSLOTS)[S.VLAPIC_IPI_RECV] += 1
        if mode == DM_FIXED or mode == DM_LOWPRI:
            if vector < 16:
                illegal = True
            elif i == np.int64(c[C.VCPUID]):             # a self-IPI: the write's exit injects it
                set_ready(c, np.int64(vector), False)
            else:
                intr_edge(other, np.int64(vector))
        elif mode == DM_INIT and icr_lo & ICR_LEVEL_ASSERT:
            call_host(ib[IB_CALLBACK], U(i), U(CB_INIT), U(0), U(0))
        elif mode == DM_SIPI:
            call_host(ib[IB_CALLBACK], U(i), U(CB_SIPI), U(vector), U(0))
        elif mode == DM_NMI:
            call_host(ib[IB_CALLBACK], U(i), U(CB_NMI), U(0), U(0))
    if illegal:                                          # one send-illegal-vector error per ICR write
        set_error(c, ESR_SEND_ILLEGAL)


# -- the page's memory hooks (APIC-register virtualization) --------------------------------------------
@njit(**NUMBA)
def is_register(reg):
    """A register's 16-byte slot in the xAPIC page (SDM Table 10-1); the other slots are reserved."""
    return reg == ID or reg == VER or TPR <= reg <= SVR or ISR <= reg <= ESR or reg == LVT_CMCI or \
        ICR_LO <= reg <= TIMER_CCR or reg == TIMER_DCR


@njit(**NUMBA)
def reached(offset, size):
    """The register an access of `size` (up to 8) bytes at `offset` reaches, or -1 when it touches reserved
    bytes only. A register is the first 32 bits of its 16-byte slot, so at most one is reached."""
    first = offset & ~0xF
    if offset & 0xF < 4:
        reg = first
    elif offset + size > first + 16:
        reg = first + 16
    else:
        return np.int64(-1)
    return reg if reg < 0x1000 and is_register(reg) else np.int64(-1)


@njit(**NUMBA)
def merged(old, reg, offset, size, value):
    """The register's 32 bits once a store of `size` bytes of `value` at `offset` has landed on part of them."""
    lo, hi = max(offset, reg), min(offset + size, reg + 4)
    keep = ((U(1) << U(8 * (hi - lo))) - U(1)) << U(8 * (lo - reg))
    part = (U(value) >> U(8 * (lo - offset))) << U(8 * (lo - reg))
    return np.int64((U(old) & ~keep) | (part & keep))


@njit(**NUMBA)
def undo_readonly_write(c):
    """A store landed after the write hook where the guest cannot write: put back the read-only register's value
    (LAPIC_FIX), and zeros in the reserved bytes it reached (LAPIC_ZERO; reserved offsets read as 0, as
    bhyve's vlapic_read answers them)."""
    if c[C.LAPIC_FIX] != 0:
        page_of(c)[(np.int64(c[C.LAPIC_FIX]) - 1) >> 2] = np.uint32(c[C.LAPIC_FIXVAL])
        c[C.LAPIC_FIX] = 0
    if c[C.LAPIC_ZERO] != 0:
        span = np.int64(c[C.LAPIC_ZERO])
        c[C.LAPIC_ZERO] = 0
        first = (span & 0xFFFF) - 1
        page = page_of(c).view(np.uint8)
        for at in range(max(first, 0), min(first + (span >> 16), 0x1000)):
            if at & 0xF >= 4 or not is_register(at & ~0xF):
                page[at] = 0


@njit(**NUMBA)
def mmio_read(c, offset, size):
    undo_readonly_write(c)
    reg = reached(offset, size)
    if reg == TIMER_CCR:
        page_of(c)[TIMER_CCR >> 2] = np.uint32(0 if tsc_deadline_mode(c) else timer_ccr(c, now_ns(c)))
    elif reg == PPR:
        update_ppr(page_of(c))


@njit(**NUMBA)
def is_read_only(offset):
    return offset == VER or offset == APR or offset == PPR or offset == RRD or offset == TIMER_CCR or \
        (ISR <= offset < ESR)


@njit(**NUMBA)
def exits_after(c, reg, value):
    """Writes the vCPU leaves the guest after (the APIC-write exit, mmio_write): every ICR write, as
    APIC-register virtualization exits on ICR (a self-IPI is deliverable at once), and an EOI or a TPR write
    with requests waiting, after which an interrupt may become deliverable to this vCPU."""
    regs = page_of(c)
    if reg == ICR_LO:
        return True
    if reg == EOI or reg == TPR:
        return highest(regs, IRR) >= 0
    return False


@njit(**NUMBA)
def mmio_write(c, offset, size, value):
    """The write hook runs before the store; the store then leaves `value` in the page (trap-like). It writes
    the register it reaches (reached: a store may start in reserved bytes and end in the next register, or
    cover part of one); whatever it leaves in reserved bytes or a read-only register is undone.

    The hook acts once, here, on the vCPU's stepper, which runs the writing instruction alone (vmx/emulate.py).
    A write after which the vCPU must leave the guest (exits_after) is trap-like: once the instruction has
    completed, the loop records exit 56 with this offset, and what became deliverable is injected; exactly
    after the write, as VT-x exits, whatever the instruction's form.
    """
    undo_readonly_write(c)
    regs = page_of(c)
    reg = reached(offset, size)
    if reg < 0 or offset < reg or offset + size > reg + 4:
        c[C.LAPIC_ZERO] = (offset + 1) | (size << 16)
    if reg < 0:
        return
    value = merged(regs[reg >> 2], reg, offset, size, value)
    vid = (c[C.APICV] & U(C.APICV_VID)) != 0
    if exits_after(c, reg, value) and not (vid and (reg == EOI or reg == TPR)):
        c[C.LAPIC_STEP] = 1
        c[C.LAPIC_STEP_OFFSET] = np.uint64(offset)
    if is_read_only(reg) or reg == EOI:
        c[C.LAPIC_FIX] = reg + 1
        c[C.LAPIC_FIXVAL] = 0 if reg == EOI else regs[reg >> 2]
    if reg == EOI:
        if vid:
            eoi_virtualized(c)
        else:
            eoi(c)
    elif reg == TPR:
        regs[TPR >> 2] = value & 0xFF
        c[C.LAPIC_FIX] = reg + 1                          # TPR virtualization clears VTPR bits 31:8 after the
        c[C.LAPIC_FIXVAL] = value & 0xFF                  # store (SDM 29.1.2)
        update_ppr(regs)
        if vid and highest(regs, IRR) >= 0:               # and evaluates pending virtual interrupts (29.1.2)
            c[C.LAPIC_STEP] = EVALUATE
    elif reg == ICR_LO:
        regs[ICR_LO >> 2] = value & ~(1 << 12)
        send_ipi(c, value)
    elif reg == TIMER_ICR:
        if tsc_deadline_mode(c):                          # ignored in TSC-deadline mode (SDM 10.5.4.1)
            c[C.LAPIC_FIX] = reg + 1
            c[C.LAPIC_FIXVAL] = regs[reg >> 2]
        else:
            timer_start(c, value, now_ns(c))
            call_host(block(c)[IB_CALLBACK], c[C.VCPUID], U(CB_TIMER), U(0), U(0))   # the host timer rearms
    elif reg == LVT_TIMER:
        if (timer_mode(regs[LVT_TIMER >> 2]) == TIMER_TSC_DEADLINE) != (timer_mode(value) == TIMER_TSC_DEADLINE):
            c[C.TIMER_DEADLINE] = 0                       # into or out of TSC-deadline mode: disarmed
        elif c[C.TIMER_DEADLINE] != 0 and timer_mode(value) != TIMER_TSC_DEADLINE:
            period = np.int64(c[C.TIMER_DEADLINE]) - np.int64(c[C.TIMER_START])
            c[C.TIMER_PERIOD] = period if value & TIMER_PERIODIC else 0
    elif reg == ESR:
        c[C.LAPIC_FIX] = reg + 1                          # a write clears it (the value written is ignored)
        c[C.LAPIC_FIXVAL] = 0


MEM_HOOK = types.void(types.voidptr, types.int32, types.uint64, types.int32, types.int64, types.CPointer(types.uint64))


@cfunc(MEM_HOOK, **NUMBA)
def read_hook(uc, access, address, size, value, ud):
    c = carray(ud, C.SIZE)
    mmio_read(c, np.int64(address - c[C.APIC_PAGE]) & 0xFFF, np.int64(size))


@cfunc(MEM_HOOK, **NUMBA)
def write_hook(uc, access, address, size, value, ud):
    c = carray(ud, C.SIZE)
    mmio_write(c, np.int64(address - c[C.APIC_PAGE]) & 0xFFF, np.int64(size), value)


# -- the userspace side: setup, registers for readers, requests from other threads ---------------------
class Vlapic:
    """One vCPU's local APIC: its virtual-APIC page and PIR descriptor (two host pages), its interrupt block.

    Legend: set up once by the vCPU's constructor; `block` entries IB_VCPUS/IB_NVCPUS are filled by the VM
    when every vCPU exists. The page is written by the vCPU's kernels and (atomically) by notifiers.
    """

    def __init__(self, vcpu, callback_address):
        hv = vcpu.vm.hypervisor
        self.vcpu, self.memory = vcpu, hv.memory
        self.hpa = hv.allocator.allocate(2 * 4096, "vcpu%d local APIC" % vcpu.index)
        self.pir_hpa = self.hpa + 4096
        self.memory[self.hpa:self.hpa + 2 * 4096] = 0
        self.regs = self.memory[self.hpa:self.hpa + 4096].view(np.uint32)
        self.block = np.zeros(IB_SIZE, np.uint64)
        self._context = vcpu.uc.context_save()          # the buffer intr.shadowed() saves into
        self.block[IB_CLOCK] = CLOCK_GETTIME
        self.block[IB_TIMER_HZ] = vcpu.vm.profile.crystal_hz
        self.block[IB_CONTEXT] = address(self._context.context)
        self.block[IB_CONTEXT_SAVE] = address(uclib.uc_context_save)
        self.block[IB_CONTEXT_RESTORE] = address(uclib.uc_context_restore)
        self.block[IB_CALLBACK] = callback_address
        self.block[IB_UC_CTL] = address(uclib.uc_ctl)
        self.block[IB_SCHED_YIELD] = SCHED_YIELD
        self.block[IB_SYSCALL] = SYSCALL
        c = vcpu.ctx
        c[C.APIC_PAGE], c[C.PIR_DESC], c[C.INTR] = self.hpa, self.pir_hpa, self.block.ctypes.data
        for kind, hook in ((UC_HOOK_MEM_READ, read_hook), (UC_HOOK_MEM_WRITE, write_hook)):
            vcpu.stepper.hook(kind, hook, self.hpa, self.hpa + 0xFFF)
        self.reset()

    def reset(self):
        """The state after RESET or INIT (SDM §10.4.7.1): IRR/ISR/TMR clear, LVTs masked, timer stopped."""
        ident = self.vcpu.index
        r = np.zeros_like(self.regs)
        r[ID >> 2], r[VER >> 2], r[DFR >> 2], r[SVR >> 2] = ident << 24, VERSION, 0xFFFFFFFF, 0xFF
        for lvt in LVT_INDEX:
            r[lvt >> 2] = LVT_MASKED
        # One pass over the page: the ID, LDR and DFR words go from old to new without reading 0 on the way.
        # Another vCPU looks them up for an IPI's destination at any moment; zeroing first lost the SIPI that
        # a BSP sends right after the INIT this reset handles (the smp guest on 16 vCPUs under load).
        self.regs[:] = r
        self.memory[self.pir_hpa:self.pir_hpa + 64] = 0
        c = self.vcpu.ctx
        for slot in (C.TIMER_DEADLINE, C.TIMER_PERIOD, C.TIMER_START, C.INTR_WINDOW, C.NMI_WINDOW, C.LAPIC_FIX,
                     C.LAPIC_ZERO):
            c[slot] = 0
        self.block[IB_EOI_EXIT_SEEN] = ~np.uint64(0)    # the TMR just cleared: the next entry copies the bitmap again

    def post_eoi_exit(self, words):
        """The I/O APIC's EOI-exit bitmap for this vCPU (io/apicbus.py update_tmr, under the I/O APIC's lock, so
        one writer at a time): an odd sequence number while the words change, the next even one after."""
        self.block[IB_EOI_EXIT_SEQ] += np.uint64(1)
        full_fence()
        self.block[IB_EOI_EXIT:IB_EOI_EXIT + 4] = words
        full_fence()
        self.block[IB_EOI_EXIT_SEQ] += np.uint64(1)

    def register(self, offset):
        return int(self.regs[offset >> 2])

    def vector_set(self, base):
        """The vectors set in IRR, ISR or TMR."""
        return [v for v in range(256) if self.regs[(base >> 2) + 4 * (v >> 5)] >> (v & 31) & 1]

    def snapshot(self):
        """Named registers, for panels and tests."""
        names = {"ID": ID, "VER": VER, "TPR": TPR, "PPR": PPR, "LDR": LDR, "DFR": DFR, "SVR": SVR, "ESR": ESR,
                 "ICR_LO": ICR_LO, "ICR_HI": ICR_HI, "LVT_TIMER": LVT_TIMER, "LVT_LINT0": LVT_LINT0,
                 "LVT_LINT1": LVT_LINT1, "LVT_ERROR": LVT_ERROR, "TIMER_ICR": TIMER_ICR, "TIMER_DCR": TIMER_DCR}
        out = {name: self.register(off) for name, off in names.items()}
        out.update(IRR=self.vector_set(IRR), ISR=self.vector_set(ISR), TMR=self.vector_set(TMR))
        return out

    def free(self):
        self.vcpu.ctx[C.APIC_PAGE] = 0
        self.vcpu.vm.hypervisor.allocator.free(self.hpa)


def connect(vcpus):
    """Give every vCPU's kernels the table of its peers' context blocks (IPI destinations)."""
    table = np.array([v.ctx.ctypes.data for v in vcpus] + [0], np.uint64)     # the last word: the bus lock
    for v in vcpus:
        v.lapic.block[IB_VCPUS], v.lapic.block[IB_NVCPUS] = table.ctypes.data, len(vcpus)
        v.lapic.block[IB_BUS_WORD] = table.ctypes.data + 8 * len(vcpus)
    return table
