"""Each vLAPIC numba kernel against a plain-Python twin written from the SDM, on random inputs."""
import random

import numpy as np
import pytest

from engine.core import ctx as C
from engine.io.lapic import apicv, deliver, ipi, regs as L, timer

CLOCKS = (1 << 27, 100000000, 25000000, 24000000)       # bhyve's bus, and the profiles' crystals (CPUID.15H:ECX)


def twin_divisor(dcr):
    code = (dcr & 3) | ((dcr >> 1) & 4)
    return 1 if code == 7 else 2 << code


def twin_count_to_ns(count, div, hz):
    return count * div * 10**9 // hz


def twin_ns_to_count(ns, div, hz):
    return ns * (hz // div) // 10**9


def twin_highest(bits):
    return max(bits) if bits else -1


def twin_ppr(tpr, isrv):
    isr_class = isrv & 0xF0 if isrv >= 0 else 0
    return tpr & 0xFF if (tpr & 0xF0) >= isr_class else isr_class


def twin_pending(irr, isr, tpr):
    if not irr:
        return -1
    v = max(irr)
    return v if (v & 0xF0) > (twin_ppr(tpr, max(isr) if isr else -1) & 0xF0) else -1


def twin_targets(icr_lo, icr_hi, me, ids, ldrs, dfrs):
    """SDM §10.6.2 as bhyve's vlapic_calcdest reads it: 0xFF broadcasts in either destination mode; a DFR
    model other than flat (0xF) or cluster (0x0) addresses nothing; lowest priority takes the first match."""
    n = len(ids)
    shorthand = (icr_lo >> 18) & 3
    if shorthand == 1:
        return {me}
    if shorthand == 2:
        return set(range(n))
    if shorthand == 3:
        return set(range(n)) - {me}
    dest = icr_hi >> 24
    hits = set()
    for i in range(n):
        if dest == 0xFF:
            hit = True
        elif icr_lo & (1 << 11):
            logical, model = ldrs[i] >> 24, dfrs[i] >> 28
            if model == 0xF:
                hit = logical & dest != 0
            elif model == 0:
                hit = logical >> 4 == dest >> 4 and logical & dest & 0xF != 0
            else:
                hit = False
        else:
            hit = ids[i] >> 24 == dest
        if hit:
            hits.add(i)
    if (icr_lo >> 8) & 7 == 1 and hits:
        hits = {min(hits)}
    return hits


def kernel_targets(icr_lo, icr_hi, me, ids, ldrs, dfrs):
    """ipi_targets' flags as a set, checked against the count it returns."""
    hits = np.full(len(ids), 7, np.uint8)                       # not cleared: the kernel must clear it
    count = ipi.ipi_targets(icr_lo, icr_hi, me, ids, ldrs, dfrs, len(ids), hits)
    found = {i for i in range(len(ids)) if hits[i]}
    assert set(hits.tolist()) <= {0, 1} and count == len(found)
    return found


def regs_with(irr=(), isr=(), tpr=0):
    regs = np.zeros(1024, np.uint32)
    for base, vectors in ((L.IRR, irr), (L.ISR, isr)):
        for v in vectors:
            regs[(base >> 2) + 4 * (v >> 5)] |= np.uint32(1 << (v & 31))
    regs[L.TPR >> 2] = tpr
    return regs


def test_divisor_and_timer_arithmetic():
    """DCR decoding for all 16 values; counts ↔ ns at each input clock for random counts and divisors."""
    rng = random.Random(4)
    for dcr in range(16):
        assert timer.divisor(dcr) == twin_divisor(dcr)
    for _ in range(2000):
        count, div, hz = rng.randrange(1 << 32), twin_divisor(rng.randrange(16)), rng.choice(CLOCKS)
        assert timer.count_to_ns(count, div, hz) == twin_count_to_ns(count, div, hz)
        ns = rng.randrange(1 << 40)
        assert timer.ns_to_count(ns, div, hz) == twin_ns_to_count(ns, div, hz)


def test_highest_ppr_and_pending_on_random_register_sets():
    """IRR/ISR/TPR at random: the highest vector, PPR and the deliverable vector agree with the SDM rules."""
    rng = random.Random(7)
    for _ in range(3000):
        irr = set(rng.sample(range(16, 256), rng.randrange(0, 5)))
        isr = set(rng.sample(range(16, 256), rng.randrange(0, 3)))
        tpr = rng.randrange(256)
        regs = regs_with(irr, isr, tpr)
        assert L.highest(regs, L.IRR) == twin_highest(irr)
        assert L.compute_ppr(tpr, twin_highest(isr)) == twin_ppr(tpr, twin_highest(isr))
        assert deliver.pending(regs) == twin_pending(irr, isr, tpr)
        assert L.update_ppr(regs) == regs[L.PPR >> 2] == twin_ppr(tpr, twin_highest(isr))


@pytest.mark.parametrize("seed", range(3))
def test_ipi_destinations(seed):
    """Shorthands, physical and logical (flat and cluster) destinations, lowest priority: the same targets."""
    rng = random.Random(seed)
    for _ in range(3000):
        n = rng.randrange(1, 9)
        ids = np.array([i << 24 for i in range(n)], np.int64)
        flat = rng.random() < 0.5
        ldrs = np.array([(1 << (i % 8)) << 24 if flat else ((i // 4) << 28 | (1 << (i % 4)) << 24)
                         for i in range(n)], np.int64)
        dfrs = np.array([0xFFFFFFFF if flat else 0x0FFFFFFF] * n, np.int64)
        if rng.random() < 0.1:
            dfrs[rng.randrange(n)] = 0x5FFFFFFF                   # an undefined model: never addressed
        icr_lo = rng.randrange(256) | rng.choice((0, 1, 4, 5, 6)) << 8 | rng.choice((0, 1 << 11)) | \
            rng.randrange(4) << 18
        icr_hi = rng.choice((rng.randrange(256), 0xFF, rng.randrange(n))) << 24
        me = rng.randrange(n)
        assert kernel_targets(icr_lo, icr_hi, me, ids, ldrs, dfrs) == twin_targets(icr_lo, icr_hi, me, ids.tolist(),
                                                                                  ldrs.tolist(), dfrs.tolist())


# -- trigger mode, the EOI broadcast and ExtINT (the I/O APIC's side of the local APIC) --------------------------
def parked_vcpu(hv, tmp_path):
    from tests.engine.conftest import assemble
    vm = hv.create_vm("kern%d" % len(hv.vms), mem_mb=8)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    return vm, vm.vcpus[0]


class EoiRecorder:
    """Stands in for the VM's I/O APIC: the vectors whose EOI the local APIC broadcast."""

    def __init__(self):
        self.vectors = []

    def eoi(self, vector):
        self.vectors.append(vector)


def test_set_ready_accept_and_eoi_against_a_twin(hv, tmp_path):
    """Random requests (any vector, through the PIR descriptor or straight into the IRR, edge or level),
    acceptances and EOIs on one local APIC, enabled or software-disabled: IRR, ISR and TMR as SDM 10.8.4 says (TMR
    set for a level-triggered vector when it is accepted into the IRR, cleared for an edge-triggered one; through
    the PIR, with virtual-interrupt delivery, the TMR is left to the I/O APIC's table: test_vid.py), ESR's
    receive-illegal bit for vectors below 16, and the EOI reaching the I/O APIC exactly when the vector it ends
    has its TMR bit set (SDM 10.8.5)."""
    vm, v = parked_vcpu(hv, tmp_path)
    vm.ioapic = recorder = EoiRecorder()
    rng = random.Random(11)
    irr, isr, tmr, eois, illegal, gratuitous = set(), set(), set(), [], False, 0
    for _ in range(4000):
        what = rng.randrange(5)
        enabled = bool(v.lapic.regs[L.SVR >> 2] & L.SVR_ENABLE)
        if what == 0:
            v.lapic.regs[L.SVR >> 2] = 0x1FF if rng.random() < 0.9 else 0xFF
        elif what in (1, 2):
            vector, vid, level = rng.randrange(256), rng.random() < 0.5, rng.random() < 0.5
            v.ctx[C.APICV] = C.APICV_VID if vid else 0             # virtual-interrupt delivery on or off
            deliver.set_ready(v.ctx, vector, level)
            if vector < 16:
                illegal = True
            elif enabled:
                irr.add(vector)
                if not vid:                                       # with it the TMR is the I/O APIC table's
                    tmr.discard(vector)
                    if level:
                        tmr.add(vector)
        elif what == 3:
            apicv.pir_to_irr(v.ctx)
            if irr:
                vector = rng.choice(sorted(irr))
                deliver.accept(v.ctx, vector)
                irr.discard(vector)
                isr.add(vector)
        else:
            deliver.eoi(v.ctx)
            if isr:
                vector = max(isr)
                isr.discard(vector)
                if vector in tmr:
                    eois.append(vector)
            else:
                gratuitous += 1
        apicv.pir_to_irr(v.ctx)
        assert (set(v.lapic.vector_set(L.IRR)), set(v.lapic.vector_set(L.ISR))) == (irr, isr)
        assert set(v.lapic.vector_set(L.TMR)) == tmr and recorder.vectors == eois
        assert bool(v.lapic.regs[L.ESR >> 2] & L.ESR_RECV_ILLEGAL) == illegal
    import engine.stats as S
    assert int(v.counters[S.VLAPIC_GRATUITOUS_EOI]) == gratuitous and eois


def test_extint_pending_against_a_twin(hv, tmp_path):
    """An ExtINT waits when the 8259's INT is up and LINT0 lets it through (APIC software-disabled, or LINT0 unmasked
    in ExtINT mode), or when the I/O APIC sent an ExtINT message, whatever LINT0 says."""
    vm, v = parked_vcpu(hv, tmp_path)
    rng = random.Random(12)
    for _ in range(2000):
        line, message = rng.randrange(2), rng.randrange(2)
        svr, lint0 = rng.choice((0xFF, 0x1FF)), rng.choice((0x700, 0x10700, 0, 0x400, rng.getrandbits(32)))
        v.lapic.block[L.IB_EXTINT], v.lapic.block[L.IB_EXTINT_MSG] = line, message
        v.lapic.regs[L.SVR >> 2], v.lapic.regs[L.LVT_LINT0 >> 2] = svr, lint0
        through = not svr & 0x100 or lint0 & 0x10700 == 0x700
        assert deliver.extint_pending(v.ctx, v.lapic.regs) == (bool(line) and through or bool(message))
