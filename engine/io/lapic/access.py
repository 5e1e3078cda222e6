"""The local APIC page's memory hooks: a guest access acts on the registers, as APIC-register virtualization does.

Guest-physical 0xFEE00000 is mapped to the virtual-APIC page (ctx slot APIC_PAGE) only on the vCPU's stepper,
which runs each instruction that touches it (vmx/emulate.py). The guest reads that page directly; a memory hook
refreshes the one computed register (the timer's current count) before the read. A guest write lands in the page
and the write hook acts on it, as APIC-register virtualization's trap-like APIC-write exit does; a write to a
read-only register is undone as soon as the instruction has completed.
"""
import numpy as np
from numba import carray, njit, types

from ...core import ctx as C
from ...native import NUMBA, call_host, hook
from .apicv import EVALUATE, eoi_virtualized
from .deliver import eoi, now_ns
from .ipi import send_ipi
from .regs import (APR, CB_TIMER, EOI, ESR, IB_CALLBACK, ICR_LO, ID, IRR, ISR, LVT_CMCI, LVT_TIMER, PPR, RRD, SVR,
                   TIMER_CCR, TIMER_DCR, TIMER_ICR, TIMER_PERIODIC, TIMER_TSC_DEADLINE, TPR, U, VER, block, highest,
                   page_of, update_ppr)
from .timer import timer_ccr, timer_mode, timer_start, tsc_deadline_mode


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


@hook(MEM_HOOK)
def read_hook(uc, access, address, size, value, ud):
    c = carray(ud, C.SIZE)
    mmio_read(c, np.int64(address - c[C.APIC_PAGE]) & 0xFFF, np.int64(size))


@hook(MEM_HOOK)
def write_hook(uc, access, address, size, value, ud):
    c = carray(ud, C.SIZE)
    mmio_write(c, np.int64(address - c[C.APIC_PAGE]) & 0xFFF, np.int64(size), value)
