"""The delivery kernel (vmx/deliver.py) against its plain-Python twin (vmx/inject.py) on the same CPU states.

Each guest sets up its GDT, TSS and IDT and stops at `cli; hlt` (the VM suspends, the vCPU's thread is parked).
The test then writes gates and changes the CPU (CPL, stacks, flags, the TSS), delivers one event the Python
way, records the CPU (registers, segment caches, hidden flags, control registers), the VMCS fields delivery
writes and guest memory, puts CPU and memory back, delivers the same event with the kernel and compares byte
for byte. Where the kernel leaves delivery to userspace (a triple fault, a task or 16-bit gate, real mode) it
returns FALLBACK with the CPU unchanged.
"""
import ctypes
import random
import struct

import numpy as np
import pytest
from unicorn import x86_const as X

from engine import Hypervisor
from engine.core import ctx as C
from engine.errors import UnsupportedByModel
from engine.native import address
from engine.vmx import cpuctx as K
from engine.vmx import deliver, inject
from engine.vmx import exits as E
from engine.vmx import segcache as S
from tests.engine.conftest import assemble
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, PROTECTED, TO_USER, gate64, multiboot_elf

VECTOR = 0x40
REGS = ("rip", "rsp", "rflags", "cs", "ss", "rax", "rbx")
VMCS_FIELDS = ("ENTRY_INTR_INFO", "ENTRY_EXCEPTION_ERROR", "IDT_VECTORING_INFO", "IDT_VECTORING_ERROR")
NESTED = (8, 10, 11, 12, 13, 14)                  # the vectors delivery faults raise, and #DF


@pytest.fixture
def small_hv():
    hypervisor = Hypervisor(host_mem_mb=64)
    yield hypervisor
    for vm in list(hypervisor.vms.values()):
        vm.poweroff()


def stopped(hv, tmp_path, image, kind):
    vm = hv.create_vm("deliver%d" % len(hv.vms), mem_mb=16)
    vm.load(image, "g.bin", kind=kind)
    vm.start()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended" and vm.suspend_reason == "halt", \
        vm.suspend_message
    return vm


def state(hv, v):
    regs = v.registers()
    return {r: regs[r] for r in REGS}, hv.memory.copy(), int(v.vmcs["ENTRY_INTR_INFO"])


def both_ways(hv, vm, vector=VECTOR):
    """(Python's result, the kernel's result, whether the kernel delivered, memory before) from the same
    starting point: the stopped guest with RFLAGS.IF set, as it is when an interrupt is delivered."""
    v = vm.vcpus[0]
    v.uc.reg_write(X.UC_X86_REG_EFLAGS, v.uc.reg_read(X.UC_X86_REG_EFLAGS) | inject.RFLAGS_IF)
    start_ctx, start_mem = v.uc.context_save(), hv.memory.copy()
    v.vmcs["ENTRY_INTR_INFO"] = 0
    inject.deliver(v, inject.external_interrupt(vector))
    python = state(hv, v)
    v.uc.context_restore(start_ctx)
    hv.memory[:] = start_mem
    v.vmcs["ENTRY_INTR_INFO"] = 0
    delivered = deliver.external(v.ctx, vector)
    return python, state(hv, v), delivered, start_mem


def assert_same(python, kernel):
    assert kernel[0] == python[0]
    changed = (python[1] != kernel[1]).nonzero()[0]
    assert len(changed) == 0, "memory differs at host offsets %s" % changed[:8]
    assert kernel[2] == python[2]


# Both stacks touched first: the twin tests compare host memory, and a first touch backs a page
LONG_HALT = """
    mov rsp, 0x27fff8
    push rax
    pop rax
    mov qword ptr [0x29fff0], 0
    mov qword ptr [0x2Afff0], 0
    cli
    hlt
handler:
    iretq
"""


@pytest.mark.parametrize("ist,trap", [(0, False), (0, True), (1, False)])
def test_long_mode_gate_to_the_running_segment(small_hv, tmp_path, ist, trap):
    """A 64-bit interrupt or trap gate at CPL 0, with and without an IST stack: the same frame, RSP, RFLAGS, RIP."""
    src = LONG_PROLOGUE + gate64(VECTOR, "handler", ist=ist, trap=trap) + LONG_HALT + \
        LONG_DATA
    vm = stopped(small_hv, tmp_path, assemble(src, tmp_path), "flat64")
    python, kernel, delivered, start = both_ways(small_hv, vm)
    assert delivered
    assert_same(python, kernel)
    assert (python[1] != start).any()                       # a frame was pushed
    assert bool(kernel[0]["rflags"] & inject.RFLAGS_IF) == trap    # an interrupt gate clears IF, a trap gate not


def test_protected_mode_gate_to_the_running_segment(small_hv, tmp_path):
    """A 32-bit interrupt gate at CPL 0: EFLAGS, CS, EIP on the same stack, the handler's address in EIP."""
    vm = stopped(small_hv, tmp_path, multiboot_elf(PROTECTED_HALT, tmp_path), "multiboot")
    python, kernel, delivered, start = both_ways(small_hv, vm)
    assert delivered
    assert_same(python, kernel)
    assert kernel[0]["rsp"] == 0x380000 - 12


def test_privilege_change_in_the_kernel(small_hv, tmp_path):
    """At CPL 3 an interrupt switches to RSP0 and CPL 0 in the kernel too: the same frame on the RSP0 stack."""
    src = LONG_PROLOGUE + gate64(VECTOR, "handler") + """
    mov qword ptr [0x28fff0], 0
    mov qword ptr [0x27fff0], 0
""" + TO_USER + "user:\n    jmp user\nhandler:\n    iretq\n" + LONG_DATA
    vm = small_hv.create_vm("user", mem_mb=16)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    for _ in range(200):
        vm.pause()
        if vm.registers()["cs"] & 3 == 3:
            break
        vm.resume()
    v = vm.vcpus[0]
    assert v.registers()["cs"] & 3 == 3, "the guest never reached user mode"
    python, kernel, delivered, start = both_ways(small_hv, vm)
    assert delivered
    assert_same(python, kernel)
    assert kernel[0]["cs"] == 0x08 and kernel[0]["ss"] == 0 and kernel[0]["rsp"] == 0x290000 - 40
    assert int(v.ctx[C.DELIVERED_KERNEL]) >= 1


def test_not_present_gate_and_real_mode_are_left_to_userspace(small_hv, tmp_path):
    """IDT all zero: #NP, then #DF, then shutdown, which userspace reports; real mode is userspace's too."""
    src = LONG_PROLOGUE + LONG_HALT + LONG_DATA
    vm = stopped(small_hv, tmp_path, assemble(src, tmp_path), "flat64")
    v = vm.vcpus[0]
    before = state(small_hv, v)
    assert not deliver.external(v.ctx, VECTOR)
    assert_same(before, state(small_hv, v))
    boot = assemble("cli\nhlt\n.org 510\n.word 0xaa55", tmp_path, bits=16, base=0x7C00)
    real = small_hv.create_vm("real", mem_mb=2)
    real.load(boot, "boot.img", kind="bootsector")
    real.start()
    assert real.wait(states=("suspended",), timeout=30) == "suspended"
    r = real.vcpus[0]
    before = state(small_hv, r)
    assert not deliver.external(r.ctx, VECTOR)
    assert_same(before, state(small_hv, r))


# -- generated cases: the kernel and its twin over vectors, kinds, error codes, CPLs, IST, bad gates -------
PROTECTED_HALT = PROTECTED.replace("        push $0x1b                      # user SS", """
        mov $handler, %eax
        mov %ax, idt + 0x40 * 8
        movw $0x08, idt + 0x40 * 8 + 2
        movw $0x8E00, idt + 0x40 * 8 + 4
        shr $16, %eax
        mov %ax, idt + 0x40 * 8 + 6
        lidt idtr
        movl $0, 0x38fff0                # ESP0's page and the user stack's, backed
        movl $0, 0x37fff0
        mov $0x380000, %esp
        push %eax
        pop %eax
        cli
        hlt
        push $0x1b                      # user SS""")


def cpu(v):
    """Everything delivery may change in the CPU: GPRs and RIP, RFLAGS, hidden flags, the segment caches and
    descriptor-table registers, CR0-CR4."""
    raw = bytes((ctypes.c_uint8 * K.SIZE).from_address(address(v.uc.context_save().context)))
    return (raw[K.REGS:K.EIP + 8], v.uc.reg_read(X.UC_X86_REG_EFLAGS), raw[K.HFLAGS:K.HFLAGS + 4],
            raw[K.SEGS:K.SEGS + 10 * K.SEG_SIZE], raw[K.CR:K.CR + 5 * 8])


def guest_memory(vm):
    seg = vm.segments[0]
    return vm.hypervisor.memory[seg.hpa:seg.hpa + seg.size]


def vmcs(v):
    return tuple(int(v.vmcs[name]) for name in VMCS_FIELDS)


def reset_vmcs(v):
    for name in VMCS_FIELDS:
        v.vmcs[name] = 0


def gate_bytes(rng, long_mode, handler, vector):
    """A gate for `vector`: mostly a present interrupt or trap gate to the kernel's code, sometimes one the
    SDM faults on (not present, a data or null or out-of-table selector, another type, a non-canonical or
    out-of-limit handler) or one whose handler runs at CPL 3 (the user code segment)."""
    kind = rng.choice([0xE] * 6 + [0xF] * 3 + [0xC, 0x5] + ([0x6, 0x7] if not long_mode else [0x0]))
    selector = rng.choice([0x08] * 12 + [0x23, 0x10, 0x00, 0x03, 0x400, 0x0C])
    present = rng.random() < 0.9
    dpl = rng.choice([0, 3, 3])
    target = handler + 16 * vector
    if rng.random() < 0.05:
        target = (1 << 47) if long_mode else 0xFFFFFFF0
    if long_mode:
        ist = rng.choice([0, 0, 0, 1, 2])
        w0 = (target & 0xFFFF) | (selector << 16)
        w1 = (target & 0xFFFF0000) | (present << 15) | (dpl << 13) | (kind << 8) | ist
        return struct.pack("<IIII", w0, w1, target >> 32, 0)
    lo = (target & 0xFFFF) | (selector << 16)
    return struct.pack("<II", lo, (target & 0xFFFF0000) | (present << 15) | (dpl << 13) | (kind << 8))


def random_event(rng):
    """(vector, kind, error code or None, CR2 or None, length) as the exits produce them."""
    kind = rng.choice([E.TYPE_EXTINT, E.TYPE_HWEXC, E.TYPE_HWEXC, E.TYPE_SWINTR, E.TYPE_SWEXC])
    if kind == E.TYPE_HWEXC:
        vector = rng.choice([0, 1, 3, 6, 7, 13, 14, 14, 16, 17, 18, 19, 8, 10, 11, 12, 30])
    elif kind == E.TYPE_SWEXC:
        vector = rng.choice([3, 4])
    else:
        vector = rng.randrange(256) if kind == E.TYPE_SWINTR else rng.randrange(32, 256)
    err = rng.getrandbits(16) & ~3 | rng.getrandbits(1) if kind == E.TYPE_HWEXC and vector in inject.ERROR_CODE_VECTORS \
        else None
    cr2 = rng.getrandbits(64) if kind == E.TYPE_HWEXC and vector == 14 else None
    length = {E.TYPE_SWINTR: 2, E.TYPE_SWEXC: 1}.get(kind, 0)
    return vector, kind, err, cr2, length


def user_mode(v, code, data):
    """CPL 3: CS and SS loaded from the user descriptors of the guest's GDT."""
    gdtr = v.uc.reg_read(X.UC_X86_REG_GDTR)
    loads = []
    for seg, selector in ((S.SS, data), (S.CS, code)):
        desc = S.Descriptor(v.vm.memory_access.read(gdtr[1] + (selector & ~7), 8))
        loads.append((seg, selector, desc.base, desc.limit, desc.flags | S.DESC_A))
    S.load(v.uc, loads)


def setup(vm, rng, long_mode):
    """One case: gates for the event's vector and for the faults delivery may raise, the CPU at CPL 0 or 3
    with random flags and stack, sometimes a broken TSS or a code descriptor with L and D both set."""
    v = vm.vcpus[0]
    uc = v.uc
    vector, kind, err, cr2, length = random_event(rng)
    idt = uc.reg_read(X.UC_X86_REG_IDTR)[1]
    size = 16 if long_mode else 8
    handler = 0x300000 if long_mode else 0x101000
    for vec in {vector, *NESTED}:
        vm.memory_access.write(idt + size * vec, gate_bytes(rng, long_mode, handler, vec))
    if rng.random() < 0.5:
        user_mode(v, 0x23, 0x1b)
        uc.reg_write(X.UC_X86_REG_RSP, (0x37F000 if not long_mode else 0x27F000) + rng.randrange(0, 0xFF8))
    else:
        uc.reg_write(X.UC_X86_REG_RSP, (0x37F000 if not long_mode else 0x27F000) + rng.randrange(0, 0xFF8))
    uc.reg_write(X.UC_X86_REG_RIP, rng.randrange(0x200000, 0x3FFFFF))
    flags = 0x2 | sum(bit for bit in (1, 4, 0x10, 0x40, 0x80, 0x100, 0x200, 0x400, 0x800, 0x4000, 1 << 16, 1 << 18)
                      if rng.random() < 0.5)
    uc.reg_write(X.UC_X86_REG_EFLAGS, flags)
    tss = uc.reg_read(X.UC_X86_REG_TR)
    roll = rng.random()
    if roll < 0.06:
        uc.reg_write(X.UC_X86_REG_TR, (tss[0], tss[1], rng.choice([0, 7, 0x23]), tss[3]))   # a short TSS: #TS
    elif roll < 0.12 and long_mode:
        vm.memory_access.write(tss[1] + 4, struct.pack("<Q", rng.choice([1 << 47, 0xFFFF800000000000])))
    elif roll < 0.18 and not long_mode:
        vm.memory_access.write(tss[1] + 8, struct.pack("<H", rng.choice([0, 0x11, 0x08, 0x1b, 0x400])))
    if long_mode and rng.random() < 0.04:
        gdt = uc.reg_read(X.UC_X86_REG_GDTR)[1]
        vm.memory_access.write(gdt + 8 + 6, bytes([0xEF]))                     # kernel code: L and D set
    return vector, kind, err, cr2, length


def python_way(v, vector, kind, err, cr2, length):
    try:
        inject.deliver(v, inject.Event(vector, kind=kind, error_code=err, cr2=cr2, length=length))
        return "delivered"
    except inject.TripleFault:
        return "triple fault"
    except UnsupportedByModel:
        return "unsupported"


def kernel_way(v, vector, kind, err, cr2, length):
    return deliver.deliver_event(v.ctx, vector, kind, err is not None, np.uint64(err or 0), cr2 is not None,
                                 np.uint64(cr2 or 0), length)


def compare(vm, rng, long_mode, cases):
    """Run `cases` generated cases; returns how each ended, to check the mix covers what it should."""
    v = vm.vcpus[0]
    base_ctx, base_mem = v.uc.context_save(), guest_memory(vm).copy()
    outcomes = {}
    for case in range(cases):
        v.uc.context_restore(base_ctx)
        guest_memory(vm)[:] = base_mem
        event = setup(vm, rng, long_mode)
        start_ctx, start_mem, start_cpu = v.uc.context_save(), guest_memory(vm).copy(), cpu(v)
        reset_vmcs(v)
        python = python_way(v, *event)
        python_cpu, python_mem, python_vmcs = cpu(v), guest_memory(vm).copy(), vmcs(v)
        v.uc.context_restore(start_ctx)
        guest_memory(vm)[:] = start_mem
        reset_vmcs(v)
        kernel = kernel_way(v, *event)
        where = "case %d: event %s, python %s" % (case, event, python)
        changed = np.flatnonzero(guest_memory(vm) != python_mem)
        assert len(changed) == 0, "%s: memory differs at guest-physical %s" % (where, [hex(x) for x in changed[:8]])
        if kernel == deliver.OK:
            assert python == "delivered", where
            assert cpu(v) == python_cpu, where
            assert vmcs(v) == python_vmcs, where
        else:
            assert python in ("triple fault", "unsupported"), where
            assert cpu(v) == start_cpu, where
        key = (python, python_vmcs[2] != 0)          # delivered at once, or after a fault while delivering
        outcomes[key] = outcomes.get(key, 0) + 1
    v.uc.context_restore(base_ctx)
    guest_memory(vm)[:] = base_mem
    return outcomes


LONG_TWIN = LONG_PROLOGUE + """
    mov qword ptr [0x28fff0], 0
    mov qword ptr [0x27fff0], 0
""" + LONG_HALT + LONG_DATA


def test_long_mode_twin_over_generated_cases(small_hv, tmp_path):
    """600 random events (external, hardware exceptions with error codes and CR2, INT n, INT3/INTO) at CPL 0 and
    3, through random 64-bit gates (IST, DPL, types, selectors, present or not, non-canonical handlers) with
    nested faults to #DF and shutdown: kernel and twin agree on every register, segment cache, VMCS field and
    byte of guest memory."""
    vm = stopped(small_hv, tmp_path, assemble(LONG_TWIN, tmp_path), "flat64")
    outcomes = compare(vm, random.Random(16), True, 600)
    assert outcomes.get(("delivered", False), 0) > 100           # delivered at once
    assert outcomes.get(("delivered", True), 0) > 30             # after a fault while delivering
    assert outcomes.get(("triple fault", True), 0) > 5
    assert int(vm.vcpus[0].ctx[C.DELIVERED_KERNEL]) > 100


def test_protected_mode_twin_over_generated_cases(small_hv, tmp_path):
    """The same over 32-bit gates: the stack switch to SS0:ESP0 with its #TS/#SS checks, task and 16-bit gates
    left to userspace (which says the model has none)."""
    vm = stopped(small_hv, tmp_path, multiboot_elf(PROTECTED_HALT, tmp_path), "multiboot")
    outcomes = compare(vm, random.Random(32), False, 600)
    assert outcomes.get(("delivered", False), 0) > 100
    assert outcomes.get(("delivered", True), 0) > 30
    assert outcomes.get(("unsupported", False), 0) + outcomes.get(("unsupported", True), 0) > 5
