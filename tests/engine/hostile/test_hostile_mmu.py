"""Hostile addresses through the TLB fill, the host's own walk (linear_to_hpa) and the EPT: guest page tables
pointing near and past the end of guest memory, at the local APIC, across 4 GiB and up to 2^52, and
non-canonical linear addresses. Each gives a translation inside the VM, an EPT violation, a #PF or a #GP,
and no host address outside the buffers the VM owns.
"""
import numpy as np
import pytest
from unicorn import x86_const as X

from engine.core import ctx as C
from engine.io.lapic import regs as L
from engine.mmu import ept as EPT
from engine.mmu import walk as W
from engine.mmu.access import linear_to_hpa
from engine.vmx import hooks
from tests.engine.conftest import assemble
from tests.engine.hostile.conftest import END, MEM_MB, assert_only_inside, faults, host_outside

APIC = L.APIC_BASE_GPA
IOAPIC = 0xFEC00000                        # the I/O APIC's page: each vCPU's MMIO window (vmx/mmio.py)
LINEAR = 32 << 20          # PD entry 16 of the flat64 identity map points at a page table of hostile entries
PT = 0x800000              # the guest-physical page that holds it
GPAS = [0, 0x1FF000, END - 0x1000, END, END + 0x1000, APIC, APIC + 0x1000, IOAPIC, IOAPIC + 0x1000,
        (1 << 32) - 0x1000, 1 << 32,
        (1 << 32) + 0x1000, (1 << 39) - 0x1000, 1 << 39, 1 << 40, (1 << 48) - 0x1000, 1 << 48,
        (1 << 48) + 0x200000, (1 << 52) - 0x1000]
READ, WRITE, FETCH = 16, 17, 18            # Unicorn's access kinds, as the fill hook gets them


def hostile_vm(hv, tmp_path):
    """A loaded, never started flat64 guest whose linear LINEAR + 4K*i maps guest-physical GPAS[i]."""
    vm = hv.create_vm("mmu%d" % len(hv.vms), mem_mb=MEM_MB)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    v = vm.vcpus[0]
    table = v.uc.reg_read(X.UC_X86_REG_CR3) & ~0xFFF
    for _ in range(2):                                       # PML4 -> PDPT -> PD
        table = int.from_bytes(vm.memory_access.read(table, 8), "little") & ~0xFFF
    vm.memory_access.write(table + 16 * 8, (PT | 7).to_bytes(8, "little"))
    vm.memory_access.write(PT, b"".join((gpa | 7).to_bytes(8, "little") for gpa in GPAS))
    return vm, v


def owned(vm):
    """(start, size) of every host buffer the VM's kernels may write: its memory, its EPT table pages, each
    vCPU's local APIC and posted-interrupt pages and its MMIO window."""
    seg = vm.segments[0]
    return [(seg.hpa, seg.size)] + [(chunk, EPT.PAGE * 64) for chunk in vm.pmap.chunks] + \
        [(v.lapic.hpa, 2 * EPT.PAGE) for v in vm.vcpus] + [(v.mmio.hpa, EPT.PAGE) for v in vm.vcpus]


def architected(vm, gpa, access):
    """What a guest access through a present, writable, user entry to `gpa` gives (SDM 4.5, 4.7, 29.3.3):
    ("ok", host page) for guest memory; ("device", host page) for the APIC page or the I/O APIC's, which the
    vCPU's own fill refuses (X_MMIO) and its stepper's maps (vmx/emulate.py); ("scan", gpa) for the first fetch from a
    guest page (the exec scan's EPT execute violation); ("ept", status) for a guest-physical address the EPT does
    not translate, or the APIC or I/O APIC page fetched; ("pf", error code) when the address sets bits at or above
    MAXPHYADDR, reserved in the entry."""
    if gpa >> vm.profile.maxphyaddr:
        return "pf", W.PF_P | W.PF_RSVD | (W.PF_W if access == WRITE else 0)
    if gpa < END:
        return ("scan", gpa) if access == FETCH else ("ok", vm.segments[0].hpa + gpa)
    if gpa == APIC:
        return ("ept", EPT.DENIED) if access == FETCH else ("device", vm.vcpus[0].lapic.hpa)
    if gpa == IOAPIC:
        return ("ept", EPT.DENIED) if access == FETCH else ("device", vm.vcpus[0].mmio.hpa)
    return "ept", EPT.NOT_MEMORY


def test_tlb_fill_through_hostile_page_tables(hv, tmp_path):
    """The TLB fill for reads, writes and fetches through entries pointing anywhere in the 52-bit space: the
    architected outcome each time, host pages only inside the VM's buffers, no host byte outside them
    written (first touch backs guest pages and builds EPT tables, both the VM's)."""
    vm, v = hostile_vm(hv, tmp_path)
    regions = owned(vm)
    before = host_outside(hv, regions)
    for i, gpa in enumerate(GPAS):
        for access in (READ, WRITE, FETCH):
            v.ctx[C.EXIT] = C.X_NONE
            ok, hpa, perms = hooks.tlb_fill(v.ctx, np.uint64(LINEAR + 0x1000 * i), access)
            want = architected(vm, gpa, access)
            if want[0] == "ok":
                got = (bool(ok), int(hpa))
                assert got == (True, want[1]), (hex(gpa), access)
            elif want[0] == "device":
                got = (bool(ok), int(v.ctx[C.EXIT]), int(v.ctx[C.FAULT_GPA]))
                assert got == (False, C.X_MMIO, gpa), (hex(gpa), access)
                v.ctx[C.MMIO_STEP] = 1
                ok, hpa, perms = hooks.tlb_fill(v.ctx, np.uint64(LINEAR + 0x1000 * i), access)
                v.ctx[C.MMIO_STEP] = 0
                assert (bool(ok), int(hpa), int(perms) & W.PROT_X) == (True, want[1], 0), (hex(gpa), access)
            elif want[0] == "scan":
                got = (bool(ok), int(v.ctx[C.EXIT]), int(v.ctx[C.FAULT_GPA]))
                assert got == (False, C.X_EXEC, gpa), (hex(gpa), access)
            elif want[0] == "ept":
                got = (bool(ok), int(v.ctx[C.EXIT]), int(v.ctx[C.FAULT_STATUS]))
                assert got == (False, C.X_EPT, want[1]), (hex(gpa), access)
            else:
                got = (bool(ok), int(v.ctx[C.EXIT]), int(v.ctx[C.ERRCODE]))
                assert got == (False, C.X_GUEST_PF, want[1]), (hex(gpa), access)
    assert_only_inside(hv, before, owned(vm))


def test_host_walk_through_hostile_page_tables(hv, tmp_path):
    """linear_to_hpa, the host's own reads (event delivery, decoders): the guest's byte where the guest could
    read it, -1 everywhere else, the I/O APIC's page included (reading it is the device's business, never a
    byte of a window); nothing is backed or written."""
    vm, v = hostile_vm(hv, tmp_path)
    for gpa in GPAS:                                         # what the guest's own accesses would have backed
        if gpa < END:
            vm.pmap.hold(gpa)
    before = hv.memory.copy()
    for i, gpa in enumerate(GPAS):
        for offset in (0, 1, 0x7FF, 0xFF8, 0xFFF):
            want = architected(vm, gpa, READ)
            got = int(linear_to_hpa(v.ctx, np.uint64(LINEAR + 0x1000 * i + offset)))
            readable = want[0] == "ok" or (want[0] == "device" and gpa != IOAPIC)     # the virtual-APIC page
            assert got == (want[1] + offset if readable else -1), (hex(gpa), offset)
    assert (hv.memory == before).all()


NONCANONICAL = [1 << 47, 1 << 48, (1 << 48) + 0x200000, 0xFFFF7FFFFFFFF000, 0x8000000000000000,
                0x7FFFFFFFFFFFF000]


@pytest.mark.parametrize("access", [READ, WRITE, FETCH])
def test_noncanonical_linear_addresses_are_gp(hv, tmp_path, access):
    """A linear address whose bits 63:47 differ is #GP(0) (SDM 3.3.7.1), never a walk of its low 48 bits:
    (1 << 48) + 0x200000 would otherwise reach guest-physical 0x200000 through PML4 entry 0."""
    vm, v = hostile_vm(hv, tmp_path)
    for linear in NONCANONICAL:
        v.ctx[C.EXIT] = C.X_NONE
        ok, hpa, perms = hooks.tlb_fill(v.ctx, np.uint64(linear), access)
        assert (bool(ok), int(v.ctx[C.EXIT]), int(v.ctx[C.ERRCODE])) == (False, C.X_GP, 0), hex(linear)
        assert linear_to_hpa(v.ctx, np.uint64(linear)) == -1


def test_accesses_across_the_canonical_boundary(guest):
    """A guest's loads at non-canonical addresses, and one that starts on the last canonical page of the
    lower half and ends past it, take #GP(0); a non-present canonical page is a #PF (SDM 3.3.7.1, 4.7)."""
    vm = guest("""
    mov rax, cr3
    and rax, -4096
    mov rbx, [rax]
    mov [rax + 255 * 8], rbx                 # linear 0x7FFF_FFFF_F000 reaches guest-physical 0x1FF000
    and rbx, -4096
    mov rcx, [rbx]
    mov [rbx + 511 * 8], rcx
    and rcx, -4096
    mov rdx, [rcx]
    or rdx, 4
    mov [rcx + 511 * 8], rdx
    mov cr3, rax
    lea r14, [rip + 1f]
    mov rax, 0x0001000000200000
    mov rbx, [rax]
1:  lea r14, [rip + 1f]
    mov rax, 0xFFFF7FFFFFFFFFF8
    mov rbx, [rax]
1:  lea r14, [rip + 1f]
    mov rax, 0x00007FFFFFFFFFF8
    mov rbx, [rax]
1:  lea r14, [rip + 1f]
    mov rax, 0x00007FFFFFFFFFFC
    mov rbx, [rax]
1:  lea r14, [rip + 1f]
    mov rax, 0xFFFFFFFFFFFFF000
    mov rbx, [rax]
1:  xor r14, r14
    cli
    hlt
""")
    assert [(v, err) for v, err, _ in faults(vm)] == [(13, 0), (13, 0), (13, 0), (14, 0)]


def test_ept_translate_of_hostile_guest_physical_addresses(hv, tmp_path):
    """EPT.translate straight on hostile guest-physical addresses, every access kind: inside guest memory a
    host address in its segment, else NOT_MEMORY (at or above 2^MAXPHYADDR too: no alias of bits 51:48);
    only the VM's pages and EPT tables are written."""
    vm, v = hostile_vm(hv, tmp_path)
    seg = vm.segments[0]
    mem64 = hv.memory.view(np.uint64)
    before = host_outside(hv, owned(vm))
    for gpa in GPAS + [END - 8, (1 << 32) - 8, (1 << 64) - 8]:
        for access in (EPT.READ, EPT.WRITE, EPT.FETCH):
            status, hpa, rwx, nested, q = EPT.translate(mem64, vm.pmap.st, v.pool, vm.segtab, 1, np.uint64(gpa), access, 4)
            if gpa < END:
                assert (status, int(hpa)) == (EPT.HANDLED, seg.hpa + gpa), hex(gpa)
            else:
                assert status == EPT.NOT_MEMORY, hex(gpa)
    assert_only_inside(hv, before, owned(vm))
