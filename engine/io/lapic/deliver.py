"""A vector's way through the local APIC: into the IRR, the vCPU notified, accepted into the ISR, ended by EOI.

Other vCPUs and threads set IRR bits (or, where the vCPU's VMCS has virtual-interrupt delivery, PIR bits) with
atomic operations and then notify the vCPU (vcpu_notify_event): a kick if it is in the guest, a wake-up if it is
halted. The kick carries the posted-interrupt vector, no exit, where the VMCS has posted interrupts (ctx APICV).
The LVT entries (vlapic_fire_lvt) and the 8259's ExtINT reach the vCPU here too.
"""
import numpy as np
from numba import carray, njit

from ... import stats as S
from ... import tunables as T
from ...core import ctx as C
from ...core import kick
from ...core.sync import CLOCK_MONOTONIC, atomic_and, atomic_or, call_clock, fence, futex_wake
from ...native import NUMBA, call_host, u64_ptr
from .apicv import intr_status
from .regs import (CB_EOI, CB_WAKE, DM_NMI, ESR, ESR_RECV_ILLEGAL, ESR_SEND_ILLEGAL, IB_CALLBACK, IB_CLOCK,
                   IB_EXTINT, IB_EXTINT_MSG, IB_SYSCALL, IB_TIMESPEC, IRR, ISR, LVT_ERROR, LVT_LINT0, LVT_MASKED, NS,
                   PEND_NMI, PIR_ON_WORD, SVR, SVR_ENABLE, TMR, U, bit_address, block, end_in_service, highest,
                   is_level, page_of, update_ppr)


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
    isrv = end_in_service(c)
    if isrv < 0:
        carray(u64_ptr(c[C.STATS]), S.NSLOTS)[S.VLAPIC_GRATUITOUS_EOI] += 1
        return
    if is_level(page_of(c), isrv) and block(c)[IB_CALLBACK] != 0:
        call_host(block(c)[IB_CALLBACK], c[C.VCPUID], U(CB_EOI), U(isrv), U(0))


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
