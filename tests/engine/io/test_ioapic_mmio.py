"""Guests reaching the I/O APIC's page at 0xFEC00000: every load and store is one exit answered by the device
(EPT violation, instruction emulation), whatever the instruction and width, from any vCPU; a fetch from the page
stops the VM with a message. The numba kernels of vmx/mmio.py against their plain-Python twins."""
import random

import numpy as np

from engine import stats as S
from engine.io import vioapic as IO
from engine.vmx import exits as E
from engine.vmx import mmio
from tests.engine.conftest import assemble, stopped
from tests.engine.io.test_vlapic_guest import MAP_APIC

OUT = 0x400000
ACCESSES = """
    mov r14, 0xFEC00000
    mov rdi, {out}
    mov qword ptr [rdi], 0                  # the output page's first touch, before the device's exits
    mov dword ptr [r14], 1                  # IOREGSEL = VER
    mov eax, dword ptr [r14 + 0x10]         # IOWIN, a dword: the version register
    mov [rdi], rax
    movzx eax, byte ptr [r14 + 0x10]        # IOWIN as a byte, a word: 0
    mov [rdi + 8], rax
    movzx eax, word ptr [r14 + 0x10]
    mov [rdi + 16], rax
    mov rax, qword ptr [r14 + 0x10]         # 8 bytes: IOWIN, then offset 0x14
    mov [rdi + 24], rax
    mov eax, dword ptr [r14 + 0x11]         # misaligned: 0
    mov [rdi + 32], rax
    mov eax, dword ptr [r14]                # IOREGSEL reads back
    mov [rdi + 40], rax
    mov byte ptr [r14], 0x14                # a byte loads IOREGSEL: pin 2's low dword
    mov dword ptr [r14 + 0x10], 0x8031      # level-triggered, vector 0x31, unmasked
    or dword ptr [r14 + 0x10], 0x10000      # read-modify-write: masked
    mov eax, dword ptr [r14 + 0x10]
    mov [rdi + 48], rax
    mov eax, dword ptr [r14 + 0x110]        # the registers repeat every 256 bytes
    mov [rdi + 56], rax
    mov eax, dword ptr [r14 + 0x20]         # no register there
    mov [rdi + 64], rax
    cli
    hlt
""".format(out=OUT)
READS, WRITES = 10, 4                       # the OR is a read and a write


def qwords(vm, n):
    return np.frombuffer(vm.memory_access.read(OUT, 8 * n), "<u8").tolist()


def test_each_access_is_one_exit_answered_by_the_ioapic(flat64):
    """Dword IOWIN reads give the register, narrower ones 0, an 8-byte read is IOWIN then nothing, misaligned 0;
    a byte store loads IOREGSEL; a read-modify-write reads then writes the entry; each of the 14 accesses is one
    EPT-violation exit (reason 48, read or write in the qualification with the guest-linear address valid and the
    access to its translation, the EPT's permissions none, the guest-physical and linear addresses in the VMCS),
    counted as instruction emulation handled in userspace."""
    vm = flat64(MAP_APIC + ACCESSES, mem_mb=16)
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert qwords(vm, 9) == [0x00170011, 0, 0, 0x00170011, 0, 1, 0x18031, 0x18031, 0]
    assert vm.ioapic.entries[2] == IO.TRIGGER_LEVEL | IO.MASKED | 0x31
    v = vm.vcpus[0]
    assert int(v.counters[S.VMEXIT_INST_EMUL]) == READS + WRITES
    assert int(v.counters[S.VMEXIT_USERSPACE]) >= READS + WRITES
    rows = [r for r in v.exit_log() if r["reason"] == E.EPT_VIOLATION][-(READS + WRITES):]   # after every first touch
    assert [r["qualification"] & 7 for r in rows] == [2, 1, 1, 1, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1]
    assert {r["qualification"] & ~7 for r in rows} == {E.EPT_GLA_VALID | E.EPT_TRANSLATION}
    assert v.vmcs["GUEST_PHYSICAL_ADDRESS"] == 0xFEC00020
    assert v.vmcs["GUEST_LINEAR_ADDRESS"] == 0xFEC00020


def test_whichever_vcpu_accesses_it_gets_its_own_answer(hv, tmp_path):
    """Four vCPUs take turns under a spinlock, each selecting its own pin's high dword, writing a new value and
    reading it back 3000 times: every read gives what that vCPU just wrote (a window per vCPU: no answer meant for
    another vCPU's read shows through)."""
    src = MAP_APIC + """
    mov r14, 0xFEC00000
    mov eax, dword ptr [r15 + 0x20]         # APIC ID: pin 8 + ID, its high dword
    shr eax, 24
    lea r13d, [rax * 2 + 0x21]
    mov ecx, 3000
1:  mov eax, 1
2:  lock xchg [{lock}], rax
    test rax, rax
    jnz 2b
    mov dword ptr [r14], r13d
    mov edx, ecx
    shl edx, 8
    or edx, r13d
    mov dword ptr [r14 + 0x10], edx
    mov esi, dword ptr [r14 + 0x10]
    cmp esi, edx
    je 3f
    lock inc qword ptr [{wrong}]
3:  xor eax, eax
    lock xchg [{lock}], rax
    dec ecx
    jnz 1b
    cli
    hlt
""".format(lock=OUT, wrong=OUT + 8)
    vm = hv.create_vm("ioapic4", mem_mb=16, cpus=4)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start(all_vcpus=True)
    stopped(vm, 120)
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert qwords(vm, 2) == [0, 0]                      # the lock free, no read gave another value
    assert [vm.ioapic.entries[8 + i] >> 32 for i in range(4)] == [1 << 8 | 0x21 + 2 * i for i in range(4)]
    assert sum(int(v.counters[S.VMEXIT_INST_EMUL]) for v in vm.vcpus) >= 4 * 3000 * 3


def test_a_fetch_from_the_page_stops_the_vm_naming_it(flat64):
    """Code is never fetched from the I/O APIC's page: an EPT violation the host does not resolve (bhyve cannot
    emulate a fetch from it either): the VM stops with the address, the other devices and the host go on."""
    vm = flat64(MAP_APIC + "mov rax, 0xFEC00010\njmp rax", mem_mb=16)
    assert vm.suspend_reason == "ept_violation"
    assert "fetch" in vm.suspend_message and "0xfec00010" in vm.suspend_message


# -- the kernels and their twins -------------------------------------------------------------------------------
def twin_fill(window, offset, size, value):
    """The bytes of `value` (little-endian, 0 past its 8) at offset.. offset+size, inside the page only."""
    data = value.to_bytes(8, "little") + bytes(max(size - 8, 0))
    for i in range(size):
        if 0 <= offset + i < mmio.PAGE:
            window[offset + i] = data[i]


def test_fill_matches_its_twin():
    rng = random.Random(2)
    for _ in range(3000):
        window, twin = np.zeros(mmio.PAGE, np.uint8), bytearray(mmio.PAGE)
        offset, size, value = rng.choice((rng.randrange(mmio.PAGE), mmio.PAGE - rng.randrange(1, 17))), \
            rng.choice((1, 2, 4, 8, 16, 3)), rng.getrandbits(64)
        mmio.fill(window, offset, size, np.uint64(value))
        twin_fill(twin, offset, size, value)
        assert window.tobytes() == bytes(twin), (offset, size, hex(value))


def test_qualification_matches_its_twin():
    """SDM Table 28-7: bit 0 a data read, bit 1 a data write; no permissions (not mapped); bit 7 the linear
    address valid, bit 8 the access to its translation (not to a paging-structure entry)."""
    assert (mmio.qualification(False), mmio.qualification(True)) == (0x181, 0x182)


def test_device_page_matches_its_twin():
    """The TLB fill's device pages: 0xFEE00000 is the vCPU's virtual-APIC page, the MMIO window's guest-physical
    page its window's first page, the PCI window's pages (MMIO_RANGE, MMIO_PAGES - 1 of them) its next pages one
    for one, each only when the vCPU has them; any other address has none."""
    from engine.core import ctx as C
    from engine.vmx import hooks
    rng = random.Random(3)
    c = C.new()
    for _ in range(6000):
        apic, window = rng.choice((0, 0x123000)), rng.choice((0, 0x456000))
        gpa_page = rng.choice((0xFEC00000, 0xFEE00000, 0))
        pci, pages = rng.choice(((0, 0), (0, 1), (0xC0000000, 0), (0xC0000000, 1), (0xC0000000, 65), (0, 65)))
        c[C.APIC_PAGE], c[C.MMIO_PAGE], c[C.MMIO_GPA] = apic, window, gpa_page
        c[C.MMIO_RANGE], c[C.MMIO_PAGES] = pci, pages
        gpa = rng.choice((0xFEE00000, 0xFEC00000, 0, 0xFEC01000, 0xFEDFF000, rng.getrandbits(52), 0xC0000000,
                          0xC003F000, 0xC0040000, 0xBFFFF000, rng.randrange(0x40000), 0x3F000 + 0x1000)) | \
            rng.randrange(4096)
        page = gpa & ~0xFFF
        in_range = window and pages > 1 and pci <= page < pci + (pages - 1) * 4096
        want = apic if apic and page == 0xFEE00000 else window if window and page == gpa_page else \
            window + 4096 + page - pci if in_range else 0
        assert hooks.device_page(c, np.uint64(gpa)) == want, (hex(gpa), apic, window, hex(gpa_page), pci, pages)


def test_is_device_matches_its_twin():
    """The pages the vCPU's own TLB fill refuses (their instruction runs on the stepper, vmx/emulate.py): the
    virtual-APIC page and the MMIO window's MMIO_PAGES pages, each only when the vCPU has them."""
    from engine.core import ctx as C
    from engine.vmx import hooks
    rng = random.Random(4)
    c = C.new()
    for _ in range(6000):
        apic, window, pages = rng.choice((0, 0x123000)), rng.choice((0, 0x456000)), rng.choice((1, 2, 65))
        c[C.APIC_PAGE], c[C.MMIO_PAGE], c[C.MMIO_PAGES] = apic, window, pages
        hpa = rng.choice((0x123000, 0x124000, 0x122FFF, 0x456000, 0x456000 + 4096 * pages, 0x455FFF,
                          0x456000 + 4096 * (pages - 1), rng.getrandbits(40))) + rng.choice((0, rng.randrange(4096)))
        page = hpa & ~0xFFF
        want = bool(apic and page == apic) or bool(window and window <= page < window + 4096 * pages)
        assert hooks.is_device(c, np.uint64(hpa)) == want, (hex(hpa), apic, window, pages)
