"""The physical-address width and reserved bits, rule by rule against the SDM: guest paging entries with a
reserved bit give #PF with RSVD (SDM 4.3-4.5, 4.7); EPT entries with a reserved setting are EPT
misconfigurations, exit 49 (SDM 29.3.3.1); a guest-physical address beyond the width is an EPT
violation, never an alias; CPUID.80000008H:EAX[7:0] is the width both walks enforce."""
import random

import numpy as np
import pytest

from engine import Hypervisor
from engine.cpu import profiles
from engine.mmu import ept as E
from engine.mmu import explain
from engine.mmu import walk as W
from engine.vmx import exits as X

from tests.engine.conftest import assemble
from tests.engine.mmu.conftest import ALL_CPU, new_pool, new_state

HOST = 16 << 20
SEG = 0x400000                  # guest-physical 0..4 MiB lives here
PTP = 0x300000


def bit(*n):
    return sum(1 << b for b in n)


def identity_ept(flags=E.F_HW_AD, phys=39):
    """Every guest page of 0..4 MiB mapped (4 KiB leaves) at SEG + gpa."""
    host = np.zeros(HOST, np.uint8)
    mem64 = host.view(np.uint64)
    pool = new_pool(0x100000, 64)
    st = new_state(mem64, pool, flags, 1 << 20, PTP, 2, phys)
    segs = np.array([0, 4 << 20, SEG], np.uint64)
    for gpa in range(0, 4 << 20, 0x1000):
        assert E.populate(mem64, st, pool, segs, 1, gpa, 0) == E.HANDLED
    return host, mem64, st, pool, segs


# -- guest paging: #PF with RSVD ------------------------------------------------------------------------
# 4-level: CR3 0x1000 → PML4[0] 0x2000 → PDPT[0] 0x3000 → PD[0] 0x4000 → PT[0x10] maps va 0x10000 at 0x10000;
# PD[1] maps va 0x200000 as a 2 MiB page; PDPT[1] maps va 0x40000000 as a 1 GiB page.
LONG = {0x1000: 0x2003, 0x2000: 0x3003, 0x2008: 0x40000083, 0x3000: 0x4003, 0x3008: 0x200083, 0x4080: 0x10003}
# PAE: CR3 0x1000 → PDPTE[0] 0x2000 → PD[0] 0x3000 → PT[0x10]; PD[1] a 2 MiB page
PAE = {0x1000: 0x2001, 0x2000: 0x3003, 0x2008: 0x200083, 0x3080: 0x10003}
# 32-bit with CR4.PSE: PD at 0x1000, PD[0] → PT 0x2000 → PT[0x10]; PD[1] a 4 MiB page at 4 MiB
BITS32 = {0x1000: 0x2003, 0x1004: 0x400083, 0x2040: 0x10003}

# (name, mode, entry's guest-physical address, bits added, va, access, NXE, MAXPHYADDR, Page1GB, outcome): the
# #PF error code (P=1, W=2, RSVD=8, I/D=16), None for a translation, or "ept" when the entry was taken as it
# is and the next table's guest-physical address is not mapped by the EPT.
CASES = [
    ("PTE bit M (39) is reserved", "long", 0x4080, bit(39), 0x10000, 0, True, 39, True, 0x9),
    ("PTE bit M-1 is an address bit", "long", 0x4080, bit(38), 0x10000, 0, True, 39, True, None),
    ("PTE bit 51 is reserved", "long", 0x4080, bit(51), 0x10000, 1, True, 46, True, 0xB),
    ("PTE bits 62:52 are ignored", "long", 0x4080, bit(52, 58, 62), 0x10000, 0, True, 39, True, None),
    ("XD is reserved without EFER.NXE", "long", 0x4080, bit(63), 0x10000, 0, False, 39, True, 0x9),
    ("XD with EFER.NXE: a fetch faults without RSVD", "long", 0x4080, bit(63), 0x10000, 2, True, 39, True, 0x11),
    ("PDE (table) bit 45 with M = 39", "long", 0x3000, bit(45), 0x10000, 0, True, 39, True, 0x9),
    ("PDE (table) bit 45 with M = 46", "long", 0x3000, bit(45), 0x10000, 0, True, 46, True, "ept"),
    ("PS in a PML4E is reserved", "long", 0x1000, bit(7), 0x10000, 0, True, 39, True, 0x9),
    ("PML4E bit 40 with M = 39", "long", 0x1000, bit(40), 0x10000, 1, True, 39, True, 0xB),
    ("1-GByte PDPTE bit 13 is reserved", "long", 0x2008, bit(13), 0x40000000, 0, True, 39, True, 0x9),
    ("1-GByte PDPTE bit 29 is reserved", "long", 0x2008, bit(29), 0x40000000, 0, True, 39, True, 0x9),
    ("1-GByte PDPTE bit 30 is an address bit", "long", 0x2008, bit(30), 0x40000000, 0, True, 39, True, None),
    ("1-GByte PDPTE PAT (bit 12) is not reserved", "long", 0x2008, bit(12), 0x40000000, 0, True, 39, True, None),
    ("PS in a PDPTE is reserved without Page1GB", "long", 0x2008, 0, 0x40000000, 0, True, 39, False, 0x9),
    ("2-MByte PDE bit 13 is reserved", "long", 0x3008, bit(13), 0x200000, 0, True, 39, True, 0x9),
    ("2-MByte PDE bit 20 is reserved", "long", 0x3008, bit(20), 0x200000, 1, True, 39, True, 0xB),
    ("2-MByte PDE bit 21 is an address bit", "long", 0x3008, bit(21), 0x200000, 0, True, 39, True, None),
    ("PAE PDPTE bit 1 (no R/W there) is reserved", "pae", 0x1000, bit(1), 0x10000, 0, True, 39, True, 0x9),
    ("PAE PDPTE bits 8:5 are reserved", "pae", 0x1000, bit(7), 0x10000, 0, True, 39, True, 0x9),
    ("PAE PDPTE PWT/PCD are not reserved", "pae", 0x1000, bit(3, 4), 0x10000, 0, True, 39, True, None),
    ("PAE PDPTE bit 63 is reserved even with NXE", "pae", 0x1000, bit(63), 0x10000, 0, True, 39, True, 0x9),
    ("PAE PDPTE bit M is reserved", "pae", 0x1000, bit(39), 0x10000, 0, True, 39, True, 0x9),
    ("PAE PTE bit 52 is reserved (62:M)", "pae", 0x3080, bit(52), 0x10000, 0, True, 39, True, 0x9),
    ("PAE PTE XD is reserved without NXE", "pae", 0x3080, bit(63), 0x10000, 1, False, 39, True, 0xB),
    ("PAE 2-MByte PDE bit 13 is reserved", "pae", 0x2008, bit(13), 0x200000, 0, True, 39, True, 0x9),
    ("32-bit 4-MByte PDE bit 21 is reserved", "32", 0x1004, bit(21), 0x400000, 0, True, 46, True, 0x9),
    ("32-bit 4-MByte PDE bit 20 is reserved with M = 39", "32", 0x1004, bit(20), 0x400000, 0, True, 39, True, 0x9),
    ("32-bit 4-MByte PDE bit 20 is PA bit 39 with M = 46", "32", 0x1004, bit(20), 0x400000, 0, True, 46, True, None),
    ("32-bit 4-MByte PDE bit 13 is PA bit 32", "32", 0x1004, bit(13), 0x400000, 0, True, 39, True, None),
    ("32-bit PTEs have no reserved bits", "32", 0x2040, bit(7, 8, 11), 0x10000, 1, True, 39, True, None),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_guest_paging_reserved_bits(case):
    name, mode, where, extra, va, access, nxe, phys, page1gb, want = case
    host, mem64, st, pool, segs = identity_ept(phys=phys)
    if not page1gb:
        st[E.S_FLAGS] &= ~np.uint64(E.F_PAGE1GB)
    tables = {"long": LONG, "pae": PAE, "32": BITS32}[mode]
    for gpa, value in tables.items():
        value |= extra if gpa == where else 0
        if mode == "32":
            host.view(np.uint32)[(SEG + gpa) >> 2] = value
        else:
            mem64[(SEG + gpa) >> 3] = value
    cr4 = {"long": W.CR4_PAE, "pae": W.CR4_PAE, "32": W.CR4_PSE}[mode]
    efer = (W.EFER_LMA if mode == "long" else 0) | (W.EFER_NXE if nxe else 0)
    code, gpa, perms, err, fault_gpa, faults, status, _ = W.walk(mem64, host.view(np.uint32), st, pool, segs, 1,
                                                              0x80010011, 0x1000, cr4, efer, 0, va, access, False)
    got = {W.OK: None, W.GUEST_PF: int(err), W.EPT_FAULT: "ept"}[int(code)]
    assert got == want, name
    view = explain.translate(mem64, st, 0x80010011, 0x1000, cr4, efer, 0, va, access)
    assert bool(view["fault"] and view["fault"].startswith("guest #PF")) == isinstance(want, int)
    if isinstance(want, int) and want & W.PF_RSVD:
        assert "reserved bit set" in view["fault"]


# -- EPT: misconfigurations ---------------------------------------------------------------------------------
# (name, level of the changed entry, new R/W/X, bits set, bits cleared, flags off, width, outcome) for the walk
# of guest-physical 0x1000 (4 KiB leaf) or 0x200000 (level 2 made a 2 MiB page). Outcome: "ok", "misconfig"
# or "violation".
EPT_CASES = [
    ("leaf write-only (010b)", 1, 0b010, 0, 0, 0, 39, "misconfig"),
    ("leaf write/execute (110b)", 1, 0b110, 0, 0, 0, 39, "misconfig"),
    ("leaf execute-only with the capability", 1, 0b100, 0, 0, 0, 39, "ok"),
    ("leaf execute-only without it", 1, 0b100, 0, 0, E.F_XO_OK, 39, "misconfig"),
    ("leaf not present, reserved bits ignored", 1, 0b000, bit(51, 4), 0, 0, 39, "violation"),
    ("leaf memory type 2", 1, 7, 2 << 3, 0x38, 0, 39, "misconfig"),
    ("leaf memory type 3", 1, 7, 3 << 3, 0x38, 0, 39, "misconfig"),
    ("leaf memory type 7", 1, 7, 7 << 3, 0x38, 0, 39, "misconfig"),
    ("leaf memory type 0 (UC)", 1, 7, 0, 0x38, 0, 39, "ok"),
    ("leaf memory type 4 (WT)", 1, 7, 4 << 3, 0x38, 0, 39, "ok"),
    ("leaf bit 39 beyond a 39-bit width", 1, 7, bit(39), 0, 0, 39, "misconfig"),
    ("leaf bit 39 inside a 46-bit width", 1, 7, bit(39), 0, 0, 46, "ok"),
    ("leaf bit 51", 1, 7, bit(51), 0, 0, 46, "misconfig"),
    ("leaf bits 63:52 are ignored", 1, 7, bit(52, 60, 63), 0, 0, 39, "ok"),
    ("leaf bit 7 is ignored", 1, 7, bit(7), 0, 0, 39, "ok"),
    ("PDE (table) bits 6:3 are reserved", 2, 7, bit(3), 0, 0, 39, "misconfig"),
    ("PDE (table) ignore-PAT is reserved", 2, 7, bit(6), 0, 0, 39, "misconfig"),
    ("PDE (table) A and ignored bits 11:9", 2, 7, bit(8, 9, 11), 0, 0, 39, "ok"),
    ("PDE (table) write-only", 2, 0b010, 0, 0, 0, 39, "misconfig"),
    ("PDPTE (table) bit 5 is reserved", 3, 7, bit(5), 0, 0, 39, "misconfig"),
    ("PDPTE (table) bit 45 beyond the width", 3, 7, bit(45), 0, 0, 39, "misconfig"),
    ("PML4E bit 7 is reserved", 4, 7, bit(7), 0, 0, 39, "misconfig"),
    ("PML4E bit 3 is reserved", 4, 7, bit(3), 0, 0, 39, "misconfig"),
    ("PML4E write/execute", 4, 0b110, 0, 0, 0, 39, "misconfig"),
    ("PML4E execute-only, then a read", 4, 0b100, 0, 0, 0, 39, "ok"),
]
SUPER_CASES = [
    ("2 MiB PDE, WB", 7, 0, 0, 39, "ok"),
    ("2 MiB PDE bit 12 is reserved", 7, bit(12), 0, 39, "misconfig"),
    ("2 MiB PDE bit 20 is reserved", 7, bit(20), 0, 39, "misconfig"),
    ("2 MiB PDE memory type 7", 7, 7 << 3, 0x38, 39, "misconfig"),
    ("2 MiB PDE bit 45 with a 46-bit width", 7, bit(45), 0, 46, "ok"),
]


def ept_outcome(mem64, st, gpa):
    """The kernel's walk and the twin's, agreeing, as 'ok', 'misconfig' or 'violation'."""
    level, ea, e, rwx = E.walk(mem64, st, gpa, False)
    steps, hpa, t_rwx, why = explain.ept_walk(mem64, st, gpa)
    kernel = "ok" if level > 0 else "misconfig" if level == E.MISCONFIGURED else "violation"
    twin = "ok" if hpa is not None else "misconfig" if why.startswith("EPT misconfiguration") else "violation"
    assert kernel == twin, (kernel, why)
    if level > 0:
        assert (int(E.leaf_hpa(level, np.uint64(e), gpa)), int(rwx)) == (hpa, t_rwx)
    return kernel


@pytest.mark.parametrize("case", EPT_CASES, ids=[c[0] for c in EPT_CASES])
def test_ept_misconfigurations(case):
    name, level, rwx, add, clear, flags_off, phys, want = case
    host, mem64, st, pool, segs = identity_ept(phys=phys)
    st[E.S_FLAGS] &= ~np.uint64(flags_off)
    ea = int(explain.ept_walk(mem64, st, 0x1000)[0][4 - level]["entry_hpa"])
    mem64[ea >> 3] = (int(mem64[ea >> 3]) & ~0x7 & ~clear) | rwx | add
    assert ept_outcome(mem64, st, 0x1000) == want, name
    status = E.translate(mem64, st, pool, segs, 1, 0x1000, E.FETCH if rwx == 0b100 else E.READ, 4)[0]
    assert (status == E.MISCONFIG) == (want == "misconfig")


@pytest.mark.parametrize("case", SUPER_CASES, ids=[c[0] for c in SUPER_CASES])
def test_ept_superpage_misconfigurations(case):
    name, rwx, add, clear, phys, want = case
    host, mem64, st, pool, segs = identity_ept(phys=phys)
    pde = int(explain.ept_walk(mem64, st, 0x200000)[0][2]["entry_hpa"])
    mem64[pde >> 3] = ((SEG + 0x200000) | E.LEAF_ATTRS | E.EPT_PS | rwx) & ~clear | add
    assert ept_outcome(mem64, st, 0x234567) == want, name


def test_ept_1gib_pdpte_needs_the_capability():
    host, mem64, st, pool, segs = identity_ept()
    pdpte = int(explain.ept_walk(mem64, st, 0)[0][1]["entry_hpa"])
    mem64[pdpte >> 3] = 0x40000000 | E.LEAF_ATTRS | E.EPT_PS | 7
    assert ept_outcome(mem64, st, 0x123456) == "ok"
    mem64[pdpte >> 3] |= np.uint64(1 << 12)
    assert ept_outcome(mem64, st, 0x123456) == "misconfig"            # bits 29:12 reserved
    mem64[pdpte >> 3] &= ~np.uint64(1 << 12)
    st[E.S_FLAGS] &= ~np.uint64(E.F_EPT_1G)
    assert ept_outcome(mem64, st, 0x123456) == "misconfig"            # bit 7 reserved without 1 GiB pages


@pytest.mark.parametrize("phys", [36, 39, 46, 52])
def test_ept_walk_matches_twin_on_random_entries(phys):
    """Random bits in every level's entry (R/W/X, memory types, reserved and ignored bits, address bits on
    both sides of the width): the kernel and the twin agree on every walk."""
    rng = random.Random(phys)
    interesting = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 20, 21, 29, 30, phys - 1, phys, 45, 51, 52, 55, 63]
    outcomes = set()
    for trial in range(400):
        host, mem64, st, pool, segs = identity_ept(phys=phys) if trial % 100 == 0 else (host, mem64, st, pool, segs)
        st[E.S_FLAGS] = (E.F_HW_AD | ALL_CPU) & ~(rng.choice([0, E.F_XO_OK, E.F_EPT_1G]))
        gpa = rng.randrange(4 << 20) | rng.choice([0, 0, 0, 1 << rng.randrange(30, 52)])
        chain = explain.ept_walk(mem64, st, gpa & ((4 << 20) - 1))[0]
        saved = [(s["entry_hpa"], s["entry"]) for s in chain]
        for ea, e in saved:
            if rng.random() < 0.5:
                flips = sum(1 << b for b in rng.sample(interesting, rng.randrange(1, 4)) if b < 64)
                mem64[ea >> 3] = e ^ flips
        outcomes.add(ept_outcome(mem64, st, gpa))
        for ea, e in saved:
            mem64[ea >> 3] = e
    assert outcomes == {"ok", "misconfig", "violation"}


# -- the physical-address width ------------------------------------------------------------------------------
@pytest.mark.parametrize("phys", [39, 46])
def test_a_guest_physical_address_beyond_the_width_is_a_violation_not_an_alias(phys):
    """The EPT indexes bits 47:12; bits 51:48 (or anything at or above N) must not fold onto a mapped page."""
    host, mem64, st, pool, segs = identity_ept(phys=phys)
    inside = 0x123000
    for alias in (inside | 1 << phys, inside | 1 << 48, inside | 1 << 51):
        level, ea, e, rwx = E.walk(mem64, st, alias, False)
        assert level == E.BEYOND
        status = E.translate(mem64, st, pool, segs, 1, alias, E.WRITE, 4)[0]
        assert status == E.NOT_MEMORY                                  # an EPT violation outside memory
        assert explain.ept_walk(mem64, st, alias)[3].startswith("guest-physical")
    assert E.walk(mem64, st, inside | 1 << (phys - 1), False)[0] < 0    # inside the width: just not mapped


@pytest.mark.parametrize("name", sorted(profiles.PROFILES))
def test_cpuid_reports_the_width_the_walks_enforce(name):
    """One source of truth: the profile's CPUID.80000008H:EAX[7:0] is the VM's S_PHYS; Page1GB likewise."""
    hv = Hypervisor(host_mem_mb=64)
    vm = hv.create_vm("w", mem_mb=4, profile=name)
    p = profiles.get(name)
    leaf = [row for row in vm.cpuid.reshape(-1, 6) if row[0] == 0x80000008][0]
    assert int(leaf[2]) & 0xFF == p.maxphyaddr == int(vm.pmap.st[E.S_PHYS])
    assert int(leaf[2]) >> 8 & 0xFF == 48
    assert bool(vm.pmap.st[E.S_FLAGS] & E.F_PAGE1GB) == p.page1gb
    assert {"haswell": 39, "skylake": 39, "cascadelake": 46}[name] == p.maxphyaddr


# -- from running guests --------------------------------------------------------------------------------------
PF_GUEST = """
    lea rax, [rip + pf]
    mov rdi, 0x300000 + 14 * 16       # IDT entry 14: a 64-bit interrupt gate to pf
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8E00
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lidt [rip + idtr]
    mov rax, cr3
    movabs rdx, 0x000FFFFFFFFFF000
    and rax, rdx
    mov rax, [rax]
    and rax, rdx
    mov rax, [rax]
    and rax, rdx                      # the PD
    movabs rbx, {pte}
    mov qword ptr [0x500000], rbx     # a page table whose first PTE is the case's
    mov qword ptr [rax + 24], 0x500003      # PD[3]: 0x600000-0x7FFFFF through it
    mov rbx, cr3
    mov cr3, rbx
    mov qword ptr [0x401010], 0
    {access}
    mov qword ptr [0x401010], 1       # no fault
    cli
    hlt
pf:
    pop rax
    mov [0x401000], rax               # the error code
    mov rax, cr2
    mov [0x401008], rax
    cli
    hlt
idtr:
    .word 0xFFF
    .quad 0x300000
"""


def qword(vm, gpa):
    return int.from_bytes(vm.memory_access.read(gpa, 8), "little")


@pytest.mark.parametrize("pte,access,error", [
    (0x800003 | 1 << 45, "mov rcx, [0x600008]", 0x9),               # bit 45 >= MAXPHYADDR (39)
    (0x800003 | 1 << 63, "mov qword ptr [0x600010], 1", 0xB),       # XD with EFER.NXE clear
    (0x800003 | 1 << 52, "mov rcx, [0x600008]", None),              # bits 62:52 are ignored
], ids=["address-bit", "xd-without-nxe", "ignored-bit"])
def test_a_guest_sees_rsvd_in_its_page_fault(flat64, pte, access, error):
    vm = flat64(PF_GUEST.format(pte=pte, access=access), mem_mb=16)
    assert vm.suspend_reason == "halt", vm.suspend_message
    if error is None:
        assert qword(vm, 0x401010) == 1
    else:
        assert (qword(vm, 0x401000), qword(vm, 0x401010)) == (error, 0)
        assert qword(vm, 0x401008) & ~0xFFF == 0x600000                # CR2 (the fill knows the page only)


def test_a_misconfigured_ept_entry_exits_with_reason_49(hv, tmp_path):
    """The host gives the guest's page a reserved memory type; the guest's next access is exit 49, which
    suspends the VM as bhyve's VM_EXITCODE_VMX does, naming the entry."""
    vm = hv.create_vm("misconfig", mem_mb=16)
    vm.load(assemble("""
        mov rax, [0x400000]
        cli
        hlt
    """, tmp_path), "g.bin", kind="flat64")
    vm.memory_access.write(0x400000, b"x")
    leaf = vm.gpa_pmap(0x400000)[-1]
    vm.pmap.mem64[leaf["entry_hpa"] >> 3] = (leaf["entry"] & ~0x38) | 2 << 3
    vm.start()
    assert vm.wait(states=("suspended",), timeout=20) == "suspended"
    assert vm.suspend_reason == "error" and "EPT misconfiguration (exit 49)" in vm.suspend_message
    v = vm.vcpus[0].vmcs
    assert (v["EXIT_REASON"], v["GUEST_PHYSICAL_ADDRESS"]) == (X.EPT_MISCONFIG, 0x400000)
    assert "MT2" in vm.suspend_message
