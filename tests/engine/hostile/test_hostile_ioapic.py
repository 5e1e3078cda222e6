"""The I/O APIC's page under a hostile guest: a store of garbage then a load at every offset and width of the page,
through the MMIO window's hooks (vmx/mmio.py); and messages with every destination, delivery mode, vector and
trigger mode into the local APICs. No exception, the architected answers, and nothing outside the windows, the
APIC pages and guest memory changes in host memory."""
import random

import numpy as np

from engine.io import vioapic as IO
from engine.io.lapic import apicv, regs as L
from tests.engine.conftest import assemble
from tests.engine.hostile.conftest import MEM_MB, assert_only_inside, host_outside
from tests.engine.io.test_vlapic_guest import MAP_APIC

ACCESSES = 0x300000                  # guest table: (offset, width, value) per access; the loads' results after it
WIDTHS = (1, 2, 4, 8)
STORE = {1: "mov byte ptr [r13 + rcx], al", 2: "mov word ptr [r13 + rcx], ax", 4: "mov dword ptr [r13 + rcx], eax",
         8: "mov qword ptr [r13 + rcx], rax"}
LOAD = {1: "movzx eax, byte ptr [r13 + rcx]", 2: "movzx eax, word ptr [r13 + rcx]",
        4: "mov eax, dword ptr [r13 + rcx]", 8: "mov rax, qword ptr [r13 + rcx]"}


def windows(vm):
    """What a running guest may change in host memory: the MMIO windows, the APIC pages, guest memory and its EPT
    table pages."""
    regions = [(v.mmio.hpa, 4096) for v in vm.vcpus] + [(v.lapic.hpa, 2 * 4096) for v in vm.vcpus]
    return regions + [(seg.hpa, seg.size) for seg in vm.segments] + [(c, 64 * 4096) for c in vm.pmap.chunks]


def test_garbage_at_every_offset_and_width(hv, tmp_path):
    """For each width, every offset of the page: store a random value, load it back at the same offset and width;
    each load gives what the 82093AA model answers after the same stores (a twin of the device replaying them),
    so the window carries every answer to the byte, at any alignment, and the last store at each place leaves
    the device in the twin's state. Host memory changes only in the windows, the APIC pages and guest memory."""
    rng = random.Random(16)
    plan = [(offset, width, rng.choice([0, 2**64 - 1, rng.getrandbits(64), rng.randrange(0x100)]))
            for width in WIDTHS for offset in range(4096 - width + 1)]
    code = MAP_APIC + "    mov r13, 0xFEC00000\n"
    for width in WIDTHS:
        first = sum(1 for o, w, _ in plan if w < width)
        code += """
    mov rsi, {table}
    mov rdi, {results}
    xor ecx, ecx
1:  mov rax, [rsi + 8]
    {store}
    {load}
    mov [rdi], rax
    add rsi, 16
    add rdi, 8
    inc ecx
    cmp ecx, {last}
    jbe 1b
""".format(table=ACCESSES + 16 * first, results=ACCESSES + 16 * len(plan) + 8 * first, store=STORE[width],
           load=LOAD[width], last=4096 - width)
    vm = hv.create_vm("garbage", mem_mb=MEM_MB)
    vm.load(assemble(code + "    cli\n    hlt\n", tmp_path), "g.bin", kind="flat64")
    vm.memory_access.write(ACCESSES, b"".join(o.to_bytes(8, "little") + v.to_bytes(8, "little") for o, _, v in plan))
    before = host_outside(hv, windows(vm))
    vm.start()
    assert vm.wait(states=("suspended",), timeout=600) == "suspended" and vm.suspend_reason == "halt", \
        vm.suspend_message
    got = np.frombuffer(vm.memory_access.read(ACCESSES + 16 * len(plan), 8 * len(plan)), "<u8").tolist()
    twin = IO.Vioapic(lambda *message: 0)
    for i, (offset, width, value) in enumerate(plan):
        twin.mmio_write(offset, width, value)
        assert got[i] == twin.mmio_read(offset, width), (hex(offset), width, hex(value))
    assert vm.ioapic.state() == twin.state()
    assert all(not e & IO.DELIVERY_STATUS for e in vm.ioapic.entries)
    assert_only_inside(hv, before, windows(vm))


def test_messages_with_every_field(hv, tmp_path):
    """The I/O APIC's messages with random destinations, both destination modes, every delivery mode, vectors
    0-255, edge and level, into four local APICs (flat and cluster): fixed and lowest-priority vectors of 16 and
    above land in the addressed vCPUs' PIR with the TMR bit of their trigger mode, vectors below 16 set ESR
    (receive illegal vector); NMI, INIT and ExtINT count as accepted by every vCPU addressed, SMI and the
    reserved modes by none; nothing but the APIC pages changes in host memory."""
    vm = hv.create_vm("msgs", mem_mb=16, cpus=4)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    for i, v in enumerate(vm.vcpus):
        v.lapic.regs[L.SVR >> 2] = 0x1FF
    bus = vm.apic_bus
    rng = random.Random(9)
    before = host_outside(hv, [(v.lapic.hpa, 2 * 4096) for v in vm.vcpus])
    for model, ids in ((0xFFFFFFFF, (1, 2, 4, 8)), (0x0FFFFFFF, (0x11, 0x12, 0x21, 0x22))):
        for v, logical in zip(vm.vcpus, ids):
            v.lapic.regs[L.DFR >> 2], v.lapic.regs[L.LDR >> 2] = model, logical << 24
        for _ in range(3000):
            dest = rng.choice((rng.randrange(256), rng.randrange(4), rng.randrange(16), 0xFF))
            physical, mode = rng.random() < 0.5, rng.randrange(8)
            vector, level = rng.randrange(256), rng.random() < 0.5
            for v in vm.vcpus:
                v.lapic.regs[L.ESR >> 2] = 0
            targets = set(bus.targets(dest, physical, mode))
            accepted = bus.deliver(dest, physical, mode, vector, level)
            for i, v in enumerate(vm.vcpus):
                apicv.pir_to_irr(v.ctx)
                irr, tmr = v.lapic.vector_set(L.IRR), v.lapic.vector_set(L.TMR)
                v.lapic.regs[(L.IRR >> 2):(L.IRR >> 2) + 32] = 0
                hit = i in targets and mode in (0, 1)
                assert irr == ([vector] if hit and vector >= 16 else []), (dest, physical, mode, vector, i)
                if hit and vector >= 16:
                    assert (vector in tmr) == level
                assert bool(v.lapic.regs[L.ESR >> 2] & L.ESR_RECV_ILLEGAL) == (hit and vector < 16)
            assert accepted == (len(targets) if mode in (4, 5, 7) or mode in (0, 1) and vector >= 16 else 0)
    assert_only_inside(hv, before, [(v.lapic.hpa, 2 * 4096) for v in vm.vcpus])
