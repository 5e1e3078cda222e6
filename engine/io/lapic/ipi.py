"""Interprocessor interrupts (SDM §10.6): the vCPUs an ICR write addresses, and what each of them is sent."""
import numpy as np
from numba import carray, njit

from ... import stats as S
from ...core import ctx as C
from ...native import NUMBA, call_host, u64_ptr
from .deliver import intr_edge, set_error, set_ready
from .regs import (CB_INIT, CB_NMI, CB_SIPI, DEST_LOGICAL, DFR, DM_FIXED, DM_INIT, DM_LOWPRI, DM_NMI, DM_SIPI,
                   ESR_SEND_ILLEGAL, IB_CALLBACK, IB_NVCPUS, IB_VCPUS, ICR_HI, ICR_LEVEL_ASSERT, ID, LDR, SH_ALL,
                   SH_OTHERS, SH_SELF, U, block, page_of)


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
