"""A guest reaching a virtio-blk function's BARs with its own loads and stores: configuration cycles through
0xCF8/0xCFC enable memory space and find the BARs, then every access to the PCI window is one EPT-violation exit
answered by the device (vmx/mmio.py's window pages beyond the I/O APIC's), at any width; the window's pages
without a BAR read all ones."""
import numpy as np

from engine import stats as S
from engine.vmx import exits as E
from tests.engine.conftest import assemble, stopped
from tests.engine.io.test_vlapic_guest import MAP_APIC

OUT = 0x400000
CFG = 0x80000000 | 3 << 11
SOURCE = MAP_APIC + """
    mov dx, 0xCF8
    mov eax, {cfg} | 0x04
    out dx, eax
    mov dx, 0xCFC
    mov ax, 6                               # command: memory space, bus master
    out dx, ax
    mov dx, 0xCF8
    mov eax, {cfg} | 0x20
    out dx, eax
    mov dx, 0xCFC
    in eax, dx
    and eax, -16
    mov r14, rax                            # BAR 4: the virtio structures
    mov dx, 0xCF8
    mov eax, {cfg} | 0x14
    out dx, eax
    mov dx, 0xCFC
    in eax, dx
    and eax, -16
    mov r13, rax                            # BAR 1: the MSI-X table
    mov rdi, {out}
    mov [rdi], r14
    movzx eax, word ptr [r14 + 18]          # common: num_queues
    mov [rdi + 8], rax
    mov rax, qword ptr [r14 + 0x2000]       # device: capacity, one 8-byte load
    mov [rdi + 16], rax
    mov eax, dword ptr [r14 + 0x2014]       # device: blk_size
    mov [rdi + 24], rax
    mov dword ptr [r13 + 8], 0x4455         # MSI-X entry 0's data, read back
    mov eax, dword ptr [r13 + 8]
    mov [rdi + 32], rax
    mov eax, dword ptr [r13 + 12]           # its vector control: masked
    mov [rdi + 40], rax
    mov byte ptr [r14 + 20], 1              # device_status: ACKNOWLEDGE, a byte
    movzx eax, byte ptr [r14 + 20]
    mov [rdi + 48], rax
    mov eax, dword ptr [0xC0030000]         # the window, no BAR there: all ones
    mov [rdi + 56], rax
    cli
    hlt
""".format(cfg=CFG, out=OUT)


def test_guest_loads_and_stores_reach_the_bars(hv, tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    vm = hv.create_vm("bars", mem_mb=16, slots=["3,virtio-blk,%s" % image])
    vm.load(assemble(SOURCE, tmp_path), "g.bin", kind="flat64")
    vm.start()
    stopped(vm, 30)
    assert vm.suspend_reason == "halt", vm.suspend_message
    got = np.frombuffer(vm.memory_access.read(OUT, 64), "<u8").tolist()
    assert got == [0xC0004000, 1, 2048, 512, 0x4455, 1, 1, 0xFFFFFFFF], [hex(x) for x in got]
    v = vm.vcpus[0]
    assert int(v.counters[S.VMEXIT_INST_EMUL]) == 9          # seven loads, two stores
    rows = [r for r in v.exit_log() if r["reason"] == E.EPT_VIOLATION][-9:]   # after the output page's first touch
    assert [r["qualification"] for r in rows] == [0x180 | q for q in (1, 1, 1, 2, 1, 1, 2, 1, 1)]
    assert v.vmcs["GUEST_PHYSICAL_ADDRESS"] == 0xC0030000
