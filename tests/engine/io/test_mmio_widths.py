"""MMIO of every width on the local APIC page: reads of 1, 2, 4 and 8 bytes at any offset give the page's bytes."""
import numpy as np

from tests.engine.conftest import assemble
from tests.engine.io.test_vlapic_guest import MAP_APIC
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE

READS_AT = {1: 0x400000, 2: 0x410000, 4: 0x420000, 8: 0x430000}     # one qword per offset, zero-extended
LOAD = {1: "movzx eax, byte ptr [r15 + rcx]", 2: "movzx eax, word ptr [r15 + rcx]",
        4: "mov eax, dword ptr [r15 + rcx]", 8: "mov rax, qword ptr [r15 + rcx]"}


def test_apic_page_reads_of_every_width_and_alignment(hv, tmp_path):
    """Every offset of the APIC page at 1/2/4/8 bytes, aligned or straddling registers: the page's bytes;
    stores of each width to TPR's offset leave TPR's low byte as written."""
    src = LONG_PROLOGUE + MAP_APIC
    for w, load in LOAD.items():
        src += """
    mov rdi, {table}
    xor ecx, ecx
1:  {load}
    mov [rdi + rcx * 8], rax
    inc ecx
    cmp ecx, {end}
    jbe 1b
""".format(table=READS_AT[w], load=load, end=0x1000 - w)
    src += """
    mov byte ptr [r15 + 0x80], 0x10
    mov r8d, dword ptr [r15 + 0x80]
    mov word ptr [r15 + 0x80], 0x20
    mov r9d, dword ptr [r15 + 0x80]
    mov rax, 0x30
    mov qword ptr [r15 + 0x80], rax
    mov r10d, dword ptr [r15 + 0x80]
    mov dword ptr [r15 + 0x80], 0
    cli
    hlt
""" + LONG_DATA
    vm = hv.create_vm("mmio", mem_mb=16)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    page = vm.vcpus[0].lapic.regs.view(np.uint8).tobytes()
    for w in LOAD:
        got = np.frombuffer(vm.memory_access.read(READS_AT[w], 8 * (0x1001 - w)), "<u8")
        want = [int.from_bytes(page[o:o + w], "little") for o in range(0x1001 - w)]
        wrong = [hex(o) for o in range(0x1001 - w) if got[o] != want[o] and o & ~0xF not in (0x390, 0xA0)]
        assert not wrong, "%d-byte reads differ from the page at %s" % (w, wrong[:8])   # (CCR, PPR are live)
    r = vm.registers()
    assert (r["r8"] & 0xFF, r["r9"] & 0xFF, r["r10"] & 0xFF) == (0x10, 0x20, 0x30)
