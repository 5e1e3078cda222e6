"""IPIs to 1, 63, 64 and 255 vCPUs: every destination mode and shorthand reaches each target exactly once."""
import numpy as np
import pytest

from engine import ConfigError, TunableError, stats
from engine.io.lapic import ipi, regs as L
from engine.native import HOST_CALLBACK, address
from engine.tunables import VM_MAXCPU, Tunables
from engine.core import ctx as C
from tests.engine.io.test_vlapic_kernels import kernel_targets, twin_targets

COUNTS = (1, 63, 64, VM_MAXCPU)
FIXED, LOWPRI, NMI, INIT, SIPI = 0, 1 << 8, 4 << 8, 5 << 8 | 1 << 14, 6 << 8
LOGICAL, SELF, ALL, OTHERS = 1 << 11, 1 << 18, 2 << 18, 3 << 18
VECTOR = 0x41


def apic_ids(n, model):
    """IDs i << 24; LDRs as a guest numbering its CPUs would set them (flat: a bit of 8; cluster: cluster
    i / 4 of 15, a bit of 4); DFRs of that model."""
    ids = np.array([i << 24 for i in range(n)], np.int64)
    if model == "flat":
        ldrs = np.array([(1 << (i % 8)) << 24 for i in range(n)], np.int64)
    else:
        ldrs = np.array([((i // 4) % 15 << 4 | 1 << (i % 4)) << 24 for i in range(n)], np.int64)
    dfrs = np.full(n, 0xFFFFFFFF if model == "flat" else 0x0FFFFFFF, np.int64)
    return ids, ldrs, dfrs


def icrs(n):
    """(name, ICR low, ICR high, model): each shorthand, physical to a few IDs and to 0xFF, logical flat and
    cluster to one, several and all, lowest priority."""
    cases = [("self", FIXED | SELF | VECTOR, 0, "flat"), ("all", FIXED | ALL | VECTOR, 0, "flat"),
             ("all but self", FIXED | OTHERS | VECTOR, 0, "flat"),
             ("physical broadcast", FIXED | VECTOR, 0xFF << 24, "flat"),
             ("logical broadcast, cluster", FIXED | LOGICAL | VECTOR, 0xFF << 24, "cluster"),
             ("lowest priority, flat 0x81", LOWPRI | LOGICAL | VECTOR, 0x81 << 24, "flat"),
             ("NMI to all but self", NMI | OTHERS, 0, "flat"), ("INIT to all", INIT | ALL, 0, "flat"),
             ("SIPI to all but self", SIPI | OTHERS | 0x9A, 0, "flat")]
    for dest in sorted({0, n // 2, n - 1, 63, 64, 200} & set(range(n))):
        cases.append(("physical %d" % dest, FIXED | VECTOR, dest << 24, "flat"))
    for dest in (0x01, 0x80, 0x5A):
        cases.append(("flat %#x" % dest, FIXED | LOGICAL | VECTOR, dest << 24, "flat"))
    for dest in (0x0F, 0x31, 0xE8, 0x73):
        cases.append(("cluster %#x" % dest, FIXED | LOGICAL | VECTOR, dest << 24, "cluster"))
    return cases


@pytest.mark.parametrize("n", COUNTS)
def test_destinations_against_twin(n):
    """ipi_targets for every case and a few senders agrees with the twin (the old bitmask broke at 64)."""
    for name, lo, hi, model in icrs(n):
        ids, ldrs, dfrs = apic_ids(n, model)
        for me in sorted({0, n - 1, n // 2}):
            assert kernel_targets(lo, hi, me, ids, ldrs, dfrs) == \
                twin_targets(lo, hi, me, ids.tolist(), ldrs.tolist(), dfrs.tolist()), (n, name, me)


class Vcpus:
    """n vCPU context blocks with what send_ipi reads, and no Unicorn: APIC pages and PIR descriptors in one
    host-memory array, stats, tunables, interrupt blocks sharing one peer table, the userspace callback."""

    def __init__(self, n, posted):
        self.n = n
        self.memory = np.zeros(8192 * n, np.uint8)
        self.tunables = Tunables({})
        self.ctxs = [C.new() for _ in range(n)]
        self.counters = [np.zeros(stats.NSLOTS, np.uint64) for _ in range(n)]
        self.blocks = [np.zeros(L.IB_SIZE, np.uint64) for _ in range(n)]
        self.table = np.array([c.ctypes.data for c in self.ctxs], np.uint64)
        self.calls = []
        self.callback = HOST_CALLBACK(lambda vcpu, kind, vector, _: self.calls.append((vcpu, kind, vector)) or 0)
        for i, c in enumerate(self.ctxs):
            c[C.MEM], c[C.MEMSIZE] = self.memory.ctypes.data, self.memory.size
            c[C.APIC_PAGE], c[C.PIR_DESC] = 8192 * i, 8192 * i + 4096
            c[C.VCPUID], c[C.STATS], c[C.PARAMS] = i, self.counters[i].ctypes.data, self.tunables.values.ctypes.data
            c[C.INTR], c[C.RUNSTATE] = self.blocks[i].ctypes.data, C.RUN_HOST
            c[C.APICV] = C.APICV_VID | C.APICV_POSTED if posted else 0
            b = self.blocks[i]
            b[L.IB_VCPUS], b[L.IB_NVCPUS], b[L.IB_CALLBACK] = self.table.ctypes.data, n, address(self.callback)
            regs = self.regs(i)
            regs[L.ID >> 2], regs[L.SVR >> 2] = i << 24, 0x1FF

    def regs(self, i):
        return self.memory[8192 * i:8192 * i + 4096].view(np.uint32)

    def set_logical(self, model):
        _, ldrs, dfrs = apic_ids(self.n, model)
        for i in range(self.n):
            self.regs(i)[L.LDR >> 2], self.regs(i)[L.DFR >> 2] = ldrs[i], dfrs[i]

    def received(self, vector):
        """Per vCPU: how often `vector` is pending (IRR or PIR bit, 0 or 1) and its IPIs-received count."""
        pending = []
        for i in range(self.n):
            irr = self.regs(i)[(L.IRR >> 2) + 4 * (vector >> 5)] >> (vector & 31) & 1
            pir = self.memory[8192 * i + 4096:8192 * i + 4096 + 32].view(np.uint64)[vector >> 6] >> np.uint64(vector & 63) & 1
            pending.append(int(irr) + int(pir))
        return pending, [int(c[stats.VLAPIC_IPI_RECV]) for c in self.counters]

    def clear(self):
        for i in range(self.n):
            self.regs(i)[L.IRR >> 2:(L.IRR >> 2) + 32] = 0
            self.memory[8192 * i + 4096:8192 * i + 4096 + 64] = 0
            self.counters[i][:] = 0
        self.calls.clear()


@pytest.mark.parametrize("posted", (True, False), ids=("posted", "irr"))
@pytest.mark.parametrize("n", COUNTS)
def test_each_target_gets_the_ipi_exactly_once(n, posted):
    """send_ipi from vCPU 0 and the last: fixed IPIs land once in each target's PIR or IRR, NMI/INIT/SIPI reach
    userspace once per target, each target counts one IPI received; nobody else hears of it."""
    vcpus = Vcpus(n, posted)
    for name, lo, hi, model in icrs(n):
        vcpus.set_logical(model)
        ids, ldrs, dfrs = apic_ids(n, model)
        for sender in sorted({0, n - 1}):
            vcpus.clear()
            vcpus.regs(sender)[L.ICR_HI >> 2] = hi
            ipi.send_ipi(vcpus.ctxs[sender], lo)
            want = twin_targets(lo, hi, sender, ids.tolist(), ldrs.tolist(), dfrs.tolist())
            pending, received = vcpus.received(VECTOR)
            assert received == [int(i in want) for i in range(n)], (n, name, sender)
            assert int(vcpus.counters[sender][stats.VLAPIC_IPI_SEND]) == len(want)
            mode = (lo >> 8) & 7
            if mode in (L.DM_FIXED, L.DM_LOWPRI):
                assert pending == [int(i in want) for i in range(n)], (n, name, sender)
                assert not vcpus.calls
            else:
                assert pending == [0] * n
                kind = {L.DM_NMI: L.CB_NMI, L.DM_INIT: L.CB_INIT, L.DM_SIPI: L.CB_SIPI}[mode]
                vector = lo & 0xFF if mode == L.DM_SIPI else 0
                assert sorted(vcpus.calls) == [(i, kind, vector) for i in sorted(want)], (n, name, sender)


def test_a_vm_of_the_most_vcpus_and_no_more(hv):
    """hw.vmm.maxcpu goes up to VM_MAXCPU and no further; a VM of VM_MAXCPU + 1 vCPUs is refused with why."""
    hv.tunables.set("hw.vmm.maxcpu", VM_MAXCPU)
    with pytest.raises(TunableError, match="outside 1..%d" % VM_MAXCPU):
        hv.tunables.set("hw.vmm.maxcpu", VM_MAXCPU + 1)
    with pytest.raises(ConfigError, match=r"%d vCPUs requested; webhyve models at most %d \(xAPIC IDs are 8 bits"
                       % (VM_MAXCPU + 1, VM_MAXCPU)):
        hv.create_vm("toomany", cpus=VM_MAXCPU + 1)
    hv.tunables.set("hw.vmm.maxcpu", 16)
    with pytest.raises(ConfigError, match="17 vCPUs requested; hw.vmm.maxcpu allows 1 to 16 "
                                          r"\(it can be raised to %d\)" % VM_MAXCPU):
        hv.create_vm("seventeen", cpus=17)
    assert "toomany" not in hv.vms and "seventeen" not in hv.vms


def test_a_64_vcpu_vm_broadcasts_to_each_once(hv):
    """A real VM of 64 vCPUs, created but not started (64 Unicorn instances, no threads): an all-but-self and a
    logical-broadcast IPI from vCPU 63 reach each of the others' posted-interrupt descriptors once (the
    cascadelake profile: with virtual-interrupt delivery requests go there)."""
    hv.tunables.set("hw.vmm.maxcpu", 64)
    vm = hv.create_vm("wide", mem_mb=16, cpus=64, profile="cascadelake")
    try:
        for v in vm.vcpus:
            v.lapic.regs[L.SVR >> 2] = 0x1FF
        sender = vm.vcpus[63]
        for lo, hi, vector in ((FIXED | OTHERS | 0x51, 0, 0x51), (FIXED | LOGICAL | 0x52, 0xFF << 24, 0x52)):
            sender.lapic.regs[L.ICR_HI >> 2] = hi
            ipi.send_ipi(sender.ctx, lo)
            pir = [int(hv.memory[v.lapic.pir_hpa:v.lapic.pir_hpa + 32].view(np.uint64)[vector >> 6]) >> (vector & 63) & 1
                   for v in vm.vcpus]
            everyone = lo >> 18 & 3 == 0
            assert pir == [1] * 63 + [int(everyone)], hex(lo)
        assert [int(v.counters[stats.VLAPIC_IPI_RECV]) for v in vm.vcpus] == [2] * 63 + [1]
    finally:
        vm.destroy()
