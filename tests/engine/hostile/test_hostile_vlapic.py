"""The local APIC page under hostile stores and IPIs: every offset 0-0xFFF at every width, misaligned stores
into read-only registers and reserved bytes, the undo slots at their extremes, and ICR writes in every
delivery mode, shorthand and destination.

The write hook runs before a store and Unicorn's store lands after it (io/lapic/access.py); the tests play both
parts, then make the next access, and compare the page and the targets with twins written from SDM 10.4-10.6.
"""
import random

import numpy as np
import pytest

from engine.core import ctx as C
from engine.io.lapic import access, regs as L
from tests.engine.conftest import assemble
from tests.engine.hostile.conftest import assert_only_inside, host_outside

REGISTERS = {L.ID, L.VER, L.TPR, L.APR, L.PPR, L.EOI, L.RRD, L.LDR, L.DFR, L.SVR, L.ESR, L.LVT_CMCI, L.ICR_LO,
             L.ICR_HI, L.LVT_TIMER, L.LVT_THERMAL, L.LVT_PMC, L.LVT_LINT0, L.LVT_LINT1, L.LVT_ERROR, L.TIMER_ICR,
             L.TIMER_CCR, L.TIMER_DCR} | set(range(L.ISR, L.ESR, 0x10))            # SDM Table 10-1
FIXED = {L.VER, L.APR, L.RRD, L.TIMER_CCR} | set(range(L.ISR, L.ESR, 0x10))   # read-only; nothing here changes them


def parked(hv, tmp_path, cpus, profile="cascadelake"):
    """A loaded, never started VM whose local APICs are software-enabled (SVR bit 8). On cascadelake (APICv)
    fixed interrupts go into the PIR descriptor and leave the IRR alone; on haswell into the IRR."""
    vm = hv.create_vm("apic%d" % len(hv.vms), mem_mb=16, cpus=cpus, profile=profile)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    for v in vm.vcpus:
        v.lapic.regs[L.SVR >> 2] = 0x1FF
    return vm


def apic_pages(vm):
    return [(v.lapic.hpa, 2 * 4096) for v in vm.vcpus]


def store(v, offset, size, value):
    """A guest store as Unicorn does it: the write hook, then the bytes into the page."""
    access.mmio_write(v.ctx, offset, size, int(np.uint64(value).view(np.int64)))
    page = v.lapic.regs.view(np.uint8)
    page[offset:offset + size] = np.frombuffer(value.to_bytes(8, "little")[:size], np.uint8)


def twin_merge(old, reg, offset, size, value):
    """The register's bytes after a store covering part of them."""
    data = bytearray(old.to_bytes(4, "little"))
    for i in range(size):
        if reg <= offset + i < reg + 4:
            data[offset + i - reg] = (value >> (8 * i)) & 0xFF
    return int.from_bytes(data, "little")


def test_stores_at_every_offset_and_width(hv, tmp_path):
    """A store of 1, 2, 4 or 8 bytes at every offset of the page, then the next access: read-only registers
    (VER, APR, RRD, ISR, TMR, IRR) keep their value whatever part of them the store covered, reserved bytes
    read 0 (bhyve's vlapic_read), PPR is computed from TPR and ISR (SDM 10.8.3.1), a writable register
    holds what landed on it; nothing outside the vCPUs' APIC pages changes."""
    vm = parked(hv, tmp_path, 2)
    v, rng = vm.vcpus[0], random.Random(3)
    regs = v.lapic.regs
    page = regs.view(np.uint8)
    reserved = np.array([(o & 0xF) >= 4 or (o & ~0xF) not in REGISTERS for o in range(4096)])
    regs[(L.IRR >> 2) + 4] = 0x4                           # vector 0x22 requested (IPIs here go into the PIR)
    before = host_outside(hv, apic_pages(vm))
    for offset in range(4096):
        for size in (1, 2, 4, 8):
            if offset + size > 4096:
                continue
            value = rng.choice([0, 2**64 - 1, rng.getrandbits(64)])
            reg = offset & ~0xF if offset & 0xF < 4 else (offset | 0xF) + 1
            old = {r: int(regs[r >> 2]) for r in FIXED | {reg} if r in REGISTERS}
            store(v, offset, size, value)
            access.mmio_read(v.ctx, 0x20, 4)               # the next access
            for r in FIXED:
                assert regs[r >> 2] == old[r], (hex(offset), size, hex(r))
            assert not page[reserved].any(), (hex(offset), size, np.flatnonzero(page * reserved)[:4])
            assert regs[L.PPR >> 2] == L.compute_ppr(int(regs[L.TPR >> 2]), -1), (hex(offset), size)
            if reg in REGISTERS and reg not in FIXED | {L.PPR, L.EOI, L.ESR}:
                mask = {L.TPR: 0xFF, L.ICR_LO: ~(1 << 12) & 0xFFFFFFFF}.get(reg, 0xFFFFFFFF)  # TPR's priority
                # byte (SDM 10.8.3.1); ICR's delivery status (bit 12) is read-only, idle once sent (SDM 10.6.1)
                want = twin_merge(old[reg], reg, offset, size, value) & mask
                assert regs[reg >> 2] & mask == want, (hex(offset), size)
    assert_only_inside(hv, before, apic_pages(vm))


def test_undo_slots_at_their_extremes(hv, tmp_path):
    """LAPIC_FIX at 1 and 4096 (the range a snapshot may give it) and LAPIC_ZERO reaching past the page
    write the page's first or last dword, or its last byte, and nothing beyond."""
    vm = parked(hv, tmp_path, 1)
    v = vm.vcpus[0]
    page = v.lapic.regs.view(np.uint8)
    before = host_outside(hv, [(v.lapic.hpa, 4096)])
    for fix, dword in ((1, 0), (4096, 1023)):
        v.ctx[C.LAPIC_FIX], v.ctx[C.LAPIC_FIXVAL] = fix, 0xA5A5A5A5
        access.undo_readonly_write(v.ctx)
        assert v.lapic.regs[dword] == 0xA5A5A5A5 and v.ctx[C.LAPIC_FIX] == 0
    for span in ((0xFFF + 1) | 8 << 16, 0xFFFF | 0xFFFF << 16, 1 | 0xFFFF << 16, 2**64 - 1):
        page[:] = 0x5A
        v.ctx[C.LAPIC_ZERO] = span
        access.undo_readonly_write(v.ctx)
        assert v.ctx[C.LAPIC_ZERO] == 0
    assert_only_inside(hv, before, [(v.lapic.hpa, 4096)])


def twin_targets(icr, dest, me, ids, ldrs, dfrs):
    """SDM 10.6.2: shorthand, else physical (0xFF: everyone) or logical (flat: a bit per APIC; cluster: the
    cluster in bits 7:4, a bit per APIC in 3:0); lowest priority goes to one of them (the model: the first)."""
    n = len(ids)
    shorthand = (icr >> 18) & 3
    if shorthand:
        return {1: [me], 2: list(range(n)), 3: [i for i in range(n) if i != me]}[shorthand]
    hits = []
    for i in range(n):
        if dest == 0xFF:
            hit = True
        elif icr & L.DEST_LOGICAL:
            logical, model = ldrs[i] >> 24, dfrs[i] >> 28
            hit = logical & dest != 0 if model == 0xF else \
                model == 0 and logical >> 4 == dest >> 4 and logical & dest & 0xF != 0
        else:
            hit = ids[i] >> 24 == dest
        if hit:
            hits.append(i)
    return hits[:1] if (icr >> 8) & 7 == L.DM_LOWPRI else hits


def requested_vectors(vm, v):
    """The vectors requested at `v`'s local APIC: its PIR descriptor's and its IRR's."""
    pir = np.frombuffer(vm.hypervisor.memory[v.lapic.pir_hpa:v.lapic.pir_hpa + 32].tobytes(), "<u8")
    return {64 * w + b for w in range(4) for b in range(64) if int(pir[w]) >> b & 1} | set(v.lapic.vector_set(L.IRR))


@pytest.mark.parametrize("profile", ["cascadelake", "haswell"])
def test_icr_every_delivery_mode_shorthand_and_destination(hv, tmp_path, profile):
    """ICR writes in each delivery mode (fixed, lowest priority, SMI, reserved 3, NMI, INIT, SIPI, reserved 7),
    shorthand and destination, physical and logical (flat and cluster), vectors 0-255: fixed and lowest
    priority post the vector to exactly the twin's targets, a vector below 16 sets the sender's ESR
    instead (send illegal vector, SDM 10.5.3); NMI, INIT (level assert) and SIPI reach exactly those
    vCPUs as requests; SMI and the reserved modes do nothing. Only APIC pages change in host memory. With
    APICv (cascadelake) the vectors go into the PIR descriptor, without (haswell) into the IRR."""
    vm = parked(hv, tmp_path, 4, profile)
    rng = random.Random(4)
    before = host_outside(hv, apic_pages(vm))
    for model, logical_ids in ((0xFFFFFFFF, (1, 2, 4, 8)), (0x0FFFFFFF, (0x11, 0x12, 0x21, 0x22))):
        for v, logical_id in zip(vm.vcpus, logical_ids):
            v.lapic.regs[L.DFR >> 2], v.lapic.regs[L.LDR >> 2] = model, logical_id << 24
        ids = [int(v.lapic.regs[L.ID >> 2]) for v in vm.vcpus]
        ldrs = [int(v.lapic.regs[L.LDR >> 2]) for v in vm.vcpus]
        dfrs = [int(v.lapic.regs[L.DFR >> 2]) for v in vm.vcpus]
        for mode in range(8):
            for shorthand in range(4):
                for dest in (0, 1, 3, 4, 0x11, 0x23, 0x0F, 0xFF, rng.randrange(256)):
                    for logical in (0, L.DEST_LOGICAL):
                        vector = rng.choice([0, 15, 16, 0x30, 0xFF, rng.randrange(256)])
                        sender = rng.randrange(4)
                        icr = vector | mode << 8 | logical | L.ICR_LEVEL_ASSERT | shorthand << 18
                        send(vm, sender, icr, dest)
                        want = twin_targets(icr, dest, sender, ids, ldrs, dfrs)
                        check(vm, sender, mode, vector, want)
    assert_only_inside(hv, before, apic_pages(vm))


def send(vm, sender, icr, dest):
    for v in vm.vcpus:
        vm.hypervisor.memory[v.lapic.pir_hpa:v.lapic.pir_hpa + 64] = 0
        v.lapic.regs[L.IRR >> 2:(L.IRR >> 2) + 32] = 0
        v.lapic.regs[L.ESR >> 2] = 0
        while not v.mailbox.empty():
            v.mailbox.get()
    v = vm.vcpus[sender]
    store(v, L.ICR_HI, 4, dest << 24)
    store(v, L.ICR_LO, 4, icr)
    access.mmio_read(v.ctx, L.ID, 4)


def check(vm, sender, mode, vector, want):
    where = (mode, vector, sender, want)
    illegal = mode in (L.DM_FIXED, L.DM_LOWPRI) and vector < 16 and bool(want)
    assert bool(vm.vcpus[sender].lapic.regs[L.ESR >> 2] & L.ESR_SEND_ILLEGAL) == illegal, where
    for i, v in enumerate(vm.vcpus):
        fixed = mode in (L.DM_FIXED, L.DM_LOWPRI)
        assert requested_vectors(vm, v) == ({vector} if fixed and i in want and not illegal else set()), where
        requests = list(v.mailbox.queue)
        expect = {L.DM_NMI: [("nmi",)], L.DM_INIT: [("init",)], L.DM_SIPI: [("sipi", vector)]}.get(mode, [])
        assert requests == (expect if i in want else []), where


def test_guest_stores_into_reserved_bytes_and_read_only_registers(guest):
    """A running guest's misaligned and reserved-offset stores: an 8-byte store ending in ISR0 leaves no
    vector in service, a reserved slot (0x40) reads 0, and a store to TPR's reserved bytes (0x84) is no TPR
    write (before, the hook took it for one: TPR became 0x78)."""
    vm = guest("""
    mov rax, cr3
    mov rbx, [rax]
    and rbx, -4096
    mov rcx, 0xC0000083                       # 3-4 GiB, the local APIC's page included
    mov qword ptr [rbx + 24], rcx
    mov cr3, rax
    mov r13, 0xFEE00000
    mov dword ptr [r13 + 0xF0], 0x1FF
    mov rax, -1
    mov qword ptr [r13 + 0xF9], rax
    mov r8d, dword ptr [r13 + 0x100]
    mov dword ptr [r13 + 0x40], 0x12345678
    mov r9d, dword ptr [r13 + 0x40]
    mov dword ptr [r13 + 0x84], 0x12345678
    mov r10d, dword ptr [r13 + 0x80]
    mov eax, dword ptr [r13 + 0x84]
    cli
    hlt
""")
    r = vm.registers()
    assert (r["r8"], r["r9"], r["r10"], r["rax"]) == (0, 0, 0, 0)
    assert vm.vcpus[0].lapic.vector_set(L.ISR) == []
