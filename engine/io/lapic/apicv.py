"""Virtual-interrupt delivery (SDM §29.1.2, 29.1.3, 29.2): RVI, SVI, the EOI-exit bitmap and posted interrupts.

Where the VMCS has virtual-interrupt delivery, the APIC page is the virtual-APIC page the processor itself delivers
from: the guest-interrupt status (RVI, SVI) follows VIRR and VISR, an EOI is virtualized without an exit unless
the EOI-exit bitmap names its vector (exit 45, trap-like), and a vector waiting for RFLAGS.IF is delivered when
the guest sets it, with no interrupt-window exit. bhyve fills the EOI-exit bitmap (vmx_set_tmr) from the I/O
APIC's redirection table (vioapic_update_tmr, a rendezvous of every vCPU when an entry changes).
"""
import numpy as np
from numba import carray, njit

from ...core import ctx as C
from ...core import vmcs as V
from ...core.sync import atomic_or, atomic_xchg, fence
from ...native import NUMBA, call_host, u64_ptr
from .regs import (CB_EOI, IB_CALLBACK, IB_EOI_EXIT, IB_EOI_EXIT_SEEN, IB_EOI_EXIT_SEQ, IRR, ISR, PIR_ON_WORD, TMR, U,
                   bit_address, block, end_in_service, highest, page_of)

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
    svi = end_in_service(c)
    intr_status(c)
    if svi >= 0 and eoi_exits(c, svi):
        c[C.LAPIC_STEP] = EOI_VIRTUALIZED | U(svi) << U(8)
        if block(c)[IB_CALLBACK] != 0:
            call_host(block(c)[IB_CALLBACK], c[C.VCPUID], U(CB_EOI), U(svi), U(0))
    elif highest(page_of(c), IRR) >= 0:
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
