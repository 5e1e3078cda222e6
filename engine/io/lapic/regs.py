"""The local APIC's page and interrupt block as data, and the IRR/ISR/PPR arithmetic every layer shares.

The registers live in the vCPU's virtual-APIC page, a host page at the offsets of the architectural APIC page
(SDM §10.4.1, Table 10-1). IRR, ISR and TMR are eight 32-bit registers 16 bytes apart: bit v of the set is
register v/32. The interrupt block (ctx slot INTR) holds what the kernels need beyond the context block.
"""
import numpy as np
from numba import carray, njit

from ...core import ctx as C
from ...core.sync import atomic_and
from ...native import NUMBA, u64_ptr, u8_ptr

APIC_BASE_GPA = 0xFEE00000
VERSION = 0x14 | (6 << 16)              # VLAPIC_VERSION, max LVT index 6 (CMCI)
# Register offsets (SDM Table 10-1)
ID, VER, TPR, APR, PPR, EOI, RRD, LDR, DFR, SVR = 0x20, 0x30, 0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0
ISR, TMR, IRR, ESR = 0x100, 0x180, 0x200, 0x280
LVT_CMCI, ICR_LO, ICR_HI, LVT_TIMER, LVT_THERMAL, LVT_PMC, LVT_LINT0, LVT_LINT1, LVT_ERROR = \
    0x2F0, 0x300, 0x310, 0x320, 0x330, 0x340, 0x350, 0x360, 0x370
TIMER_ICR, TIMER_CCR, TIMER_DCR = 0x380, 0x390, 0x3E0
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
def end_in_service(c):
    """The highest in-service vector is done: its ISR bit clears and PPR follows (bhyve's vlapic_process_eoi, and
    EOI virtualization's VISR and VPPR, SDM 29.1.3). Returns the vector, or -1 when none was in service."""
    regs = page_of(c)
    isrv = highest(regs, ISR)
    if isrv >= 0:
        atomic_and(bit_address(c, ISR, isrv), ~(U(1) << U(isrv & 31)))
    update_ppr(regs)
    return isrv


@njit(**NUMBA)
def is_level(regs, vector):
    """The vector's TMR bit: it was accepted as a level-triggered interrupt."""
    return (np.uint32(regs[(TMR >> 2) + 4 * (vector >> 5)]) >> np.uint32(vector & 31)) & np.uint32(1) != 0
