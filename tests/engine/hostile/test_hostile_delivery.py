"""Event delivery with hostile descriptor tables: every vector through IDTs whose limit is 0, too short by a
byte, or 0xFFFF; gates whose selector is null, beyond the GDT, in the LDT or not code; tables and gates
straddling pages, past guest memory or non-canonical. The numba kernel (vmx/deliver.py) delivers exactly as
the SDM says — the event, or the fault its delivery raises, or #DF — and agrees with its Python twin
(vmx/inject.py), which raises the fault with the architected error code (SDM 6.12-6.14); where the kernel
declines (a triple fault, an address the host must look at) it changes no register; neither writes host
memory outside the VM.
"""
import struct

import numpy as np
import pytest
from unicorn import x86_const as X

from engine.vmx import deliver, inject
from engine.vmx import exits as E
from tests.engine.hostile.conftest import END, MAP_PAST_END, assert_only_inside, faults, host_outside
from tests.engine.test_inject import TO_USER

RFLAGS_CLEARED = inject.RFLAGS_TF | inject.RFLAGS_NT | inject.RFLAGS_RF | inject.RFLAGS_VM | inject.RFLAGS_IF
EVERY_GATE = """
    lea rdi, [rip + idt]
    lea rax, [rip + handler]
    mov ecx, 256
1:  mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0xEE00             # present, DPL 3, 64-bit interrupt gate
    mov rdx, rax
    shr rdx, 16
    mov word ptr [rdi + 6], dx
    shr rdx, 16
    mov qword ptr [rdi + 8], rdx
    add rdi, 16
    dec ecx
    jnz 1b
    push rax
    pop rax
    cli
    hlt
handler:
    iretq
"""


@pytest.fixture
def stopped(guest):
    """A long-mode guest with a present DPL-3 interrupt gate for every vector, halted at CPL 0 with its stack
    page backed; RFLAGS.IF is set as it is when an interrupt is delivered."""
    vm = guest(EVERY_GATE)
    v = vm.vcpus[0]
    v.uc.reg_write(X.UC_X86_REG_EFLAGS, v.uc.reg_read(X.UC_X86_REG_EFLAGS) | inject.RFLAGS_IF)
    return vm


def guest_memory(vm):
    seg = vm.segments[0]
    return vm.hypervisor.memory[seg.hpa:seg.hpa + seg.size]


def snapshot(vm):
    """Registers, the CPU context and guest memory, to compare with and go back to."""
    v = vm.vcpus[0]
    regs = {r: v.uc.reg_read(getattr(X, "UC_X86_REG_" + r)) for r in ("RIP", "RSP", "EFLAGS", "CS", "SS")}
    return regs, v.uc.context_save(), guest_memory(vm).copy()


def restore(vm, saved):
    v = vm.vcpus[0]
    v.uc.context_restore(saved[1])
    guest_memory(vm)[:] = saved[2]
    v.vmcs["ENTRY_INTR_INFO"] = 0


def unchanged(vm, saved):
    """The registers and the VMCS as they were (a declined delivery may have set A/D bits on its walks, as the
    CPU does before it faults)."""
    v = vm.vcpus[0]
    regs = {r: v.uc.reg_read(getattr(X, "UC_X86_REG_" + r)) for r in saved[0]}
    return regs == saved[0] and int(v.vmcs["ENTRY_INTR_INFO"]) == 0


def twin(vm, event):
    """Deliver `event` with the kernel, then (from the same state) with inject.py: the kernel delivered and both
    ended alike, or it declined with the registers unchanged and inject.py ended in shutdown or a fault it makes
    #PF(0) of (memory outside the guest's). Returns the kernel's answer."""
    v = vm.vcpus[0]
    state = snapshot(vm)
    kernel = deliver.deliver_event(v.ctx, event.vector, event.kind, event.error_code is not None,
                                   np.uint64(event.error_code or 0), event.cr2 is not None, np.uint64(event.cr2 or 0),
                                   event.length) == deliver.OK
    mine = snapshot(vm)
    if not kernel:
        assert unchanged(vm, state), event
    restore(vm, state)
    try:
        inject.deliver(v, event)
    except inject.TripleFault:
        assert not kernel, event
    theirs = snapshot(vm)
    if kernel:
        assert mine[0] == theirs[0] and (mine[2] == theirs[2]).all(), event
    restore(vm, state)
    return kernel


def handler(vm):
    idt = vm.vcpus[0].uc.reg_read(X.UC_X86_REG_IDTR)[1]
    w0, w1, w2 = struct.unpack("<III", vm.memory_access.read(idt, 12))
    return (w2 << 32) | (w1 & 0xFFFF0000) | (w0 & 0xFFFF)


def twin_frame(regs, target, error_code=None):
    """SDM 6.14.2: the 64-bit frame on a 16-byte-aligned stack: SS, RSP, RFLAGS, CS, RIP, then an error code."""
    frame = [regs["RIP"], regs["CS"], regs["EFLAGS"], regs["RSP"], regs["SS"]]
    if error_code is not None:
        frame.insert(0, error_code)
    rsp = (regs["RSP"] & ~0xF) - 8 * len(frame)
    return rsp, struct.pack("<%dQ" % len(frame), *frame), target


def delivered_as(vm, want, flags):
    rsp, frame, target = want
    v = vm.vcpus[0]
    assert v.uc.reg_read(X.UC_X86_REG_RSP) == rsp and v.uc.reg_read(X.UC_X86_REG_RIP) == target
    assert v.uc.reg_read(X.UC_X86_REG_EFLAGS) == flags
    assert vm.memory_access.read(rsp, len(frame)) == frame


@pytest.mark.parametrize("limit", [0, 15, 0x7F, 0xFFE, 0xFFF, 0xFFFF])
def test_every_vector_against_the_idt_limit(stopped, limit):
    """External interrupts 0-255: within the IDT limit the kernel pushes the SDM's frame and enters the
    handler; a gate past the limit (by as little as its last byte) is #GP(vector * 8 + 2 + EXT) (SDM 6.13,
    6.14.1), which the kernel delivers through gate 13 when that one is within the limit, as its twin does."""
    vm = stopped
    v = vm.vcpus[0]
    _, base, _, flags = v.uc.reg_read(X.UC_X86_REG_IDTR)
    v.uc.reg_write(X.UC_X86_REG_IDTR, (0, base, limit, flags))
    saved = snapshot(vm)
    target = handler(vm)
    for vector in range(256):
        inside = vector * 16 + 15 <= limit
        if inside:
            assert deliver.external(v.ctx, vector), vector
            delivered_as(vm, twin_frame(saved[0], target), saved[0]["EFLAGS"] & ~RFLAGS_CLEARED)
            assert int(v.vmcs["ENTRY_INTR_INFO"]) == E.interruption_info(vector, E.TYPE_EXTINT)
            restore(vm, saved)
            continue
        with pytest.raises(inject.DeliveryFault) as fault:
            inject._deliver(v, inject.external_interrupt(vector))
        assert (fault.value.vector, fault.value.error_code) == (13, vector * 8 + 2 + 1)
        restore(vm, saved)
        assert twin(vm, inject.external_interrupt(vector)) == (13 * 16 + 15 <= limit or 8 * 16 + 15 <= limit)
        if 13 * 16 + 15 <= limit:
            deliver.external(v.ctx, vector)
            delivered_as(vm, twin_frame(saved[0], target, vector * 8 + 2 + 1), saved[0]["EFLAGS"] & ~RFLAGS_CLEARED)
            restore(vm, saved)


def test_every_vector_and_event_kind_through_inject(stopped):
    """inject.deliver for every vector as an external interrupt, a software interrupt and (below 32) a hardware
    exception: the SDM frame, with an error code exactly for #DF, #TS, #NP, #SS, #GP, #PF and #AC (SDM
    6.13), and the entry interruption information as VM entry reads it (SDM 24.8.3)."""
    vm = stopped
    v = vm.vcpus[0]
    saved = snapshot(vm)
    target = handler(vm)
    for vector in range(256):
        kinds = [inject.external_interrupt(vector), inject.Event(vector, software=True)]
        if vector < 32:
            kinds.append(inject.Event(vector))
        for event in kinds:
            inject.deliver(v, event)
            delivered_as(vm, twin_frame(saved[0], target, event.error_code), saved[0]["EFLAGS"] & ~RFLAGS_CLEARED)
            assert (event.error_code is not None) == (event.kind == E.TYPE_HWEXC and vector in inject.ERROR_CODE_VECTORS)
            assert int(v.vmcs["ENTRY_INTR_INFO"]) == event.info()
            restore(vm, saved)
            v.nmi_blocked = False


GDT_SELECTORS = [0, 3, 0x08, 0x0B, 0x10, 0x18, 0x28, 0x38, 0x0C, 0xFFF8]


@pytest.mark.parametrize("gdt_limit", [0, 0x0F, 0x37, 0xFFFF])
def test_gate_selectors_against_the_gdt(stopped, gdt_limit):
    """Gate 0x40's selector null, kernel code (RPL 0 and 3), data, user code, the TSS, just past the GDT, in
    an LDT that is not there, and 0xFFF8, against GDT limits 0, 0xF, exact and 0xFFFF: inject.py raises #GP with
    the selector (null: 0) plus EXT (SDM 6.12.1.1, 6.13) for all but the kernel's code within the limit; the
    kernel delivers as its twin does (the interrupt, or that #GP through gate 13 when its own selector is good)."""
    vm = stopped
    v = vm.vcpus[0]
    _, base, _, flags = v.uc.reg_read(X.UC_X86_REG_GDTR)
    v.uc.reg_write(X.UC_X86_REG_GDTR, (0, base, gdt_limit, flags))
    idt = v.uc.reg_read(X.UC_X86_REG_IDTR)[1]
    saved = snapshot(vm)
    for selector in GDT_SELECTORS:
        vm.memory_access.write(idt + 16 * 0x40 + 2, struct.pack("<H", selector))
        state = snapshot(vm)
        fits = (selector & ~7) + 7 <= gdt_limit and not selector & 4
        kernel_code_fits = 0x08 + 7 <= gdt_limit
        assert twin(vm, inject.external_interrupt(0x40)) == kernel_code_fits, hex(selector)
        if selector & ~3 == 0:
            want = 1
        elif fits and selector & ~3 == 0x08:
            want = None                                  # the kernel code segment: delivered
        else:
            want = (selector & ~3) + 1                   # past the limit, an LDT, data, DPL 3 code, the TSS
        try:
            inject._deliver(v, inject.external_interrupt(0x40))
            got = None
        except inject.DeliveryFault as fault:
            got = fault.error_code if fault.vector == 13 else ("vector", fault.vector)
        assert got == want, hex(selector)
        restore(vm, state)
    restore(vm, saved)


@pytest.mark.parametrize("where", ["straddling", "last_page", "past_memory", "4GiB", "noncanonical"])
def test_idt_and_stack_at_hostile_addresses(hv, stopped, where):
    """The IDT based where its gates straddle a page, end guest memory, lie past it or at a non-canonical
    address, and the stack likewise: the kernel and inject.py agree (a gate or frame across pages is fine, a
    non-canonical one faults, memory outside the guest's is left to inject.py); no host byte outside the VM
    changes either way."""
    vm = stopped
    v = vm.vcpus[0]
    base = {"straddling": 0x300000 - 8, "last_page": END - 0x1000 + 0xFF8, "past_memory": END,
            "4GiB": (1 << 32) - 8, "noncanonical": 1 << 47}[where]
    _, _, limit, flags = v.uc.reg_read(X.UC_X86_REG_IDTR)
    regions = [(s.hpa, s.size) for s in vm.segments] + [(c, 64 * 4096) for c in vm.pmap.chunks] + \
        [(v.lapic.hpa, 8192)]
    before = host_outside(hv, regions)
    for idt, rsp in ((base, None), (v.uc.reg_read(X.UC_X86_REG_IDTR)[1], base + 8)):
        saved = snapshot(vm)
        v.uc.reg_write(X.UC_X86_REG_IDTR, (0, idt, limit, flags))
        if rsp is not None:
            v.uc.reg_write(X.UC_X86_REG_RSP, rsp)
        state = snapshot(vm)
        for vector in (0, 1, 0x20, 0xFF):
            twin(vm, inject.external_interrupt(vector))
        restore(vm, saved)
    assert_only_inside(hv, before, regions + [(c, 64 * 4096) for c in vm.pmap.chunks])


def test_faulting_software_interrupts_report_their_own_rip(guest):
    """INT n and INT3 from CPL 3 through gates that are not there: #GP(vector * 8 + 2), EXT clear as software
    interrupts have it (SDM 6.13), with the saved RIP on the INT instruction, a fault of the INT itself
    (SDM 6.5) — also for CD 03 split over the end of guest memory. Before, RIP pointed past the INT."""
    vm = guest(MAP_PAST_END + """
    or qword ptr [rbx + 7 * 8], 4                # the last 2 MiB of guest memory: user pages too
    mov rax, cr3
    mov cr3, rax
    mov byte ptr [%#x], 0xCD
    mov byte ptr [%#x], 0x03
""" % (END - 1, END) + TO_USER + """
user:
    lea r14, [rip + 1f]
    lea r8, [rip]
    int 0x81
1:  lea r14, [rip + 1f]
    lea r9, [rip]
    int3
1:  lea r14, [rip + 1f]
    mov rax, %#x
    jmp rax
1:  xor r14, r14
    int3
""" % (END - 1))
    r = vm.registers()
    assert faults(vm)[:3] == [(13, 0x81 * 8 + 2, r["r8"]), (13, 3 * 8 + 2, r["r9"]), (13, 3 * 8 + 2, END - 1)]
