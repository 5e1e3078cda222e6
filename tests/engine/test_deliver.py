"""The delivery kernel (vmx/deliver.py) against its plain-Python twin (vmx/inject.py) on the same CPU states.

Each guest sets up its IDT and stops at `cli; hlt` (the VM suspends, the vCPU's thread is parked). The test
then delivers one external interrupt the Python way, records registers, VMCS and host memory, puts the
CPU and memory back, delivers it with the kernel and compares. Where the kernel must leave delivery to
userspace (another privilege level, real mode, a gate that is not present) it returns False and changes
nothing.
"""
import pytest
from unicorn import x86_const as X

from engine import Hypervisor
from engine.vmx import deliver, inject
from tests.engine.conftest import assemble
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, PROTECTED, TO_USER, gate64, multiboot_elf

VECTOR = 0x40
REGS = ("rip", "rsp", "rflags", "cs", "ss", "rax", "rbx")


@pytest.fixture
def small_hv():
    return Hypervisor(host_mem_mb=64)


def stopped(hv, tmp_path, image, kind):
    vm = hv.create_vm("deliver", mem_mb=16)
    vm.load(image, "g.bin", kind=kind)
    vm.start()
    assert vm.wait(states=("suspended",), timeout=30) == "suspended" and vm.suspend_reason == "halt", \
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


# Both stacks touched first: a page the EPT has not backed yet is also left to userspace (it backs it)
LONG_HALT = """
    mov rsp, 0x27fff8
    push rax
    pop rax
    mov qword ptr [0x29fff0], 0
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
    src = PROTECTED.replace("        push $0x1b                      # user SS", """
        mov $handler, %eax
        mov %ax, idt + 0x40 * 8
        movw $0x08, idt + 0x40 * 8 + 2
        movw $0x8E00, idt + 0x40 * 8 + 4
        shr $16, %eax
        mov %ax, idt + 0x40 * 8 + 6
        lidt idtr
        mov $0x380000, %esp
        push %eax                       # the stack page backed, as in a running guest
        pop %eax
        cli
        hlt
        push $0x1b                      # user SS""")
    vm = stopped(small_hv, tmp_path, multiboot_elf(src, tmp_path), "multiboot")
    python, kernel, delivered, start = both_ways(small_hv, vm)
    assert delivered
    assert_same(python, kernel)
    assert kernel[0]["rsp"] == 0x380000 - 12


def test_privilege_change_is_left_to_userspace(small_hv, tmp_path):
    """At CPL 3 an interrupt switches to RSP0: the kernel declines and changes nothing (inject.py delivers it)."""
    src = LONG_PROLOGUE + gate64(VECTOR, "handler") + TO_USER + "user:\n    jmp user\nhandler:\n    iretq\n" + LONG_DATA
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
    before = state(small_hv, v)
    assert not deliver.external(v.ctx, VECTOR)
    assert_same(before, state(small_hv, v))


def test_not_present_gate_and_real_mode_are_left_to_userspace(small_hv, tmp_path):
    src = LONG_PROLOGUE + LONG_HALT + LONG_DATA     # IDT all zero: not present
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
