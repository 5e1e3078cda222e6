"""Event delivery through the guest's IDT: privilege-changing stack switches, IST, error codes, #DF and triple fault."""
import subprocess

import pytest

from engine.vmx import exits
from tests.engine.conftest import assemble

# 64-bit guest prologue: its own GDT (kernel code/data, user data/code, a 64-bit TSS), the TSS loaded, an IDT
# of 256 16-byte gates built by `gate64` calls, and user-accessible identity pages for the first 4 MiB.
LONG_PROLOGUE = """
    lgdt [rip + gdtr]
    lea rax, [rip + tss]
    mov word ptr [rip + gdt + 0x28 + 2], ax
    shr rax, 16
    mov byte ptr [rip + gdt + 0x28 + 4], al
    mov byte ptr [rip + gdt + 0x28 + 7], ah
    shr rax, 16
    mov dword ptr [rip + gdt + 0x28 + 8], eax
    push 0x08
    lea rax, [rip + 1f]
    push rax
    retfq
1:  mov ax, 0x10
    mov ss, ax
    mov ds, ax
    mov ax, 0x28
    ltr ax
    lidt [rip + idtr]
    mov rax, cr3
    or qword ptr [rax], 4
    mov rbx, [rax]
    and rbx, -4096
    or qword ptr [rbx], 4
    mov rcx, [rbx]
    and rcx, -4096
    or qword ptr [rcx], 4
    or qword ptr [rcx + 8], 4
    mov cr3, rax
"""
LONG_DATA = """
    .balign 16
gdt: .quad 0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, 0x00CFF2000000FFFF, 0x00AFFA000000FFFF
     .quad 0x0000890000000067, 0
gdtr: .word gdtr - gdt - 1
      .quad gdt
    .balign 16
tss: .long 0
     .quad 0x290000             # RSP0
     .quad 0, 0, 0
     .quad 0x2A0000             # IST1
     .quad 0, 0, 0, 0, 0, 0, 0
     .word 0, 104
idtr: .word 256 * 16 - 1
      .quad idt
    .balign 16
idt: .fill 512, 8, 0
"""


def gate64(vector, handler, dpl=0, ist=0, trap=False):
    """Fill IDT entry `vector` with a 64-bit gate to `handler` (code selector 0x08)."""
    kind = 0x8F if trap else 0x8E
    return """
    lea rax, [rip + {h}]
    lea rdi, [rip + idt + {off}]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov byte ptr [rdi + 4], {ist}
    mov byte ptr [rdi + 5], {attr}
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
""".format(h=handler, off=16 * vector, ist=ist, attr=kind | (dpl << 5))


TO_USER = """
    push 0x1b                   # user SS (GDT 0x18, RPL 3)
    push 0x280000               # user RSP
    push 0x202                  # RFLAGS: IF
    push 0x23                   # user CS (GDT 0x20, RPL 3)
    lea rax, [rip + user]
    push rax
    iretq
"""


def boot(hv, tmp_path, src, name="inj"):
    vm = hv.create_vm(name, mem_mb=16)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    vm.wait(states=("suspended",), timeout=30)
    return vm


def test_long_mode_int_from_user_switches_to_rsp0(hv, tmp_path):
    """INT 0x80 at CPL 3 through a DPL-3 gate: CPL 0 on TSS.RSP0 with SS:RSP, RFLAGS, CS, RIP of the user pushed."""
    src = LONG_PROLOGUE + gate64(0x80, "handler", dpl=3) + TO_USER + """
user:
    mov r15, 0x5555
    int 0x80
    hlt
handler:
    mov r8, rsp
    mov r9, [rsp + 8]           # CS of the interrupted code
    mov r10, [rsp + 24]         # its RSP
    mov r11, [rsp + 32]         # its SS
    mov r12, cs
    mov r13, [rsp]              # return RIP
    mov r14, ss
    cli
    hlt
""" + LONG_DATA
    vm = boot(hv, tmp_path, src)
    r = vm.registers()
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert r["r8"] == 0x290000 - 40                       # five quadwords on the RSP0 stack
    assert (r["r9"], r["r10"], r["r11"]) == (0x23, 0x280000, 0x1b)
    assert r["r12"] == 0x08 and r["r14"] == 0             # CPL 0, SS a NULL selector with RPL 0
    assert r["r15"] == 0x5555 and r["r13"] > 0x200000


def test_long_mode_int_through_dpl0_gate_from_user_is_gp(hv, tmp_path):
    """INT n from CPL 3 through a DPL-0 gate: #GP with error code (vector*8+2), delivered on RSP0 at CPL 0."""
    src = LONG_PROLOGUE + gate64(0x81, "never") + gate64(13, "gp") + TO_USER + """
user:
    int 0x81
    hlt
never:
    mov r15, 1
    cli
    hlt
gp:
    mov r8, [rsp]               # error code
    mov r9, [rsp + 16]          # CS of the faulting code
    mov r10, rsp
    cli
    hlt
""" + LONG_DATA
    vm = boot(hv, tmp_path, src)
    r = vm.registers()
    assert r["r15"] == 0
    assert r["r8"] == 0x81 * 8 + 2 and r["r9"] == 0x23
    assert r["r10"] == 0x290000 - 48                      # error code + five quadwords


def test_long_mode_ist_stack_is_used_even_without_privilege_change(hv, tmp_path):
    """A gate with IST 1 switches to TSS.IST1 at CPL 0 as well."""
    src = LONG_PROLOGUE + gate64(0x40, "handler", ist=1) + """
    mov rsp, 0x270008
    int 0x40
    hlt
handler:
    mov r8, rsp
    mov r9, [rsp + 24]
    cli
    hlt
""" + LONG_DATA
    vm = boot(hv, tmp_path, src)
    r = vm.registers()
    assert r["r8"] == 0x2A0000 - 40 and r["r9"] == 0x270008


def test_long_mode_trap_gate_keeps_if_interrupt_gate_clears_it(hv, tmp_path):
    """RFLAGS.IF in the handler: kept by a trap gate, cleared by an interrupt gate; both frames hold IF=1."""
    src = LONG_PROLOGUE + gate64(0x41, "trap", trap=True) + gate64(0x42, "intr") + """
    sti
    int 0x41
    int 0x42
    cli
    hlt
trap:
    pushfq
    pop r8
    mov r10, [rsp + 16]
    iretq
intr:
    pushfq
    pop r9
    mov r11, [rsp + 16]
    iretq
""" + LONG_DATA
    vm = boot(hv, tmp_path, src)
    r = vm.registers()
    assert r["r8"] & 0x200 and not r["r9"] & 0x200
    assert r["r10"] & 0x200 and r["r11"] & 0x200


def test_page_fault_error_code_and_cr2(hv, tmp_path):
    """A user write to a supervisor page: #PF with error code P|W|U (7) and CR2, on RSP0."""
    src = LONG_PROLOGUE + gate64(14, "pf") + TO_USER + """
user:
    mov rax, 0x600000           # third 2 MiB page: not user-accessible
    mov qword ptr [rax], 1
    hlt
pf:
    mov r8, [rsp]
    mov r9, cr2
    mov r10, rsp
    cli
    hlt
""" + LONG_DATA
    vm = boot(hv, tmp_path, src)
    r = vm.registers()
    assert r["r8"] == 7 and r["r9"] == 0x600000 and r["r10"] == 0x290000 - 48


def test_user_read_of_a_supervisor_page_the_kernel_just_read_faults(hv, tmp_path):
    """The kernel reads a supervisor page (its translation goes into the TLB model), then ring 3 reads it: #PF with
    P|U (5), as the TLB's cached U/S bit says (SDM 4.10.2.2), not the kernel's permission served from the TLB."""
    src = LONG_PROLOGUE + gate64(14, "pf") + """
    mov rax, 0x600000
    mov rbx, [rax]
""" + TO_USER + """
user:
    mov rax, 0x600008
    mov rcx, [rax]
    hlt
pf:
    mov r8, [rsp]
    mov r9, cr2
    cli
    hlt
""" + LONG_DATA
    vm = boot(hv, tmp_path, src)
    r = vm.registers()
    assert r["r8"] == 5 and r["r9"] == 0x600008


def test_fault_during_delivery_becomes_double_fault(hv, tmp_path):
    """#GP whose gate is not present raises #NP: two contributory faults make #DF (SDM Table 6-5), error code 0."""
    src = LONG_PROLOGUE + gate64(8, "df") + """
    mov ecx, 0x12345
    rdmsr                       # #GP: gate 13 not present -> #NP(13*8+2+1) while delivering #GP -> #DF
    hlt
df:
    mov r8, [rsp]
    mov r9, 0xdf
    cli
    hlt
""" + LONG_DATA
    vm = boot(hv, tmp_path, src)
    r = vm.registers()
    assert r["r9"] == 0xdf and r["r8"] == 0
    info = exits.decode_interruption_info(vm.vcpus[0].vmcs["ENTRY_INTR_INFO"])
    assert info == {"vector": 8, "type": "hardware exception", "error_code": True}
    vectoring = exits.decode_interruption_info(vm.vcpus[0].vmcs["IDT_VECTORING_INFO"])
    assert vectoring["vector"] == 13


def test_fault_delivering_double_fault_is_triple_fault(hv, tmp_path):
    """With no gates at all, #GP -> #NP -> #DF -> shutdown: the VM suspends with reason triplefault."""
    src = LONG_PROLOGUE + """
    mov ecx, 0x12345
    rdmsr
    hlt
""" + LONG_DATA
    vm = boot(hv, tmp_path, src)
    assert vm.suspend_reason == "triplefault"


# 32-bit protected mode through a Multiboot kernel: a GDT with ring-3 segments and a 32-bit TSS.
PROTECTED = """
        .set MAGIC, 0x1BADB002
        .text
        .globl _start
        .align 4
        .long MAGIC, 3, -(MAGIC + 3)
_start: lgdt gdtr
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $tss, %eax
        mov %ax, gdt + 0x28 + 2
        shr $16, %eax
        mov %al, gdt + 0x28 + 4
        mov %ah, gdt + 0x28 + 7
        mov $0x28, %ax
        ltr %ax
        mov $handler, %eax              # IDT[0x80]: 32-bit interrupt gate, DPL 3, selector 0x08
        mov %ax, idt + 0x80 * 8
        movw $0x08, idt + 0x80 * 8 + 2
        movw $0xEE00, idt + 0x80 * 8 + 4
        shr $16, %eax
        mov %ax, idt + 0x80 * 8 + 6
        lidt idtr
        push $0x1b                      # user SS
        push $0x380000                  # user ESP
        push $0x202
        push $0x23                      # user CS
        push $user
        iret
user:   mov $0x77, %esi
        int $0x80
        hlt
handler:
        mov %esp, %eax
        mov 4(%esp), %ebx               # user CS
        mov 12(%esp), %ecx              # user ESP
        mov 16(%esp), %edx              # user SS
        mov %cs, %edi
        mov %ss, %ebp
        cli
        hlt
        .data
        .align 8
gdt:    .quad 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00CFF2000000FFFF, 0x00CFFA000000FFFF
        .quad 0x0000890000000067
gdtr:   .word gdtr - gdt - 1
        .long gdt
tss:    .long 0, 0x390000, 0x10         # link, ESP0, SS0
        .fill 23, 4, 0
idtr:   .word 256 * 8 - 1
        .long idt
        .align 8
idt:    .fill 512, 4, 0
"""


def multiboot_elf(src, tmp_path):
    """AT&T-syntax 32-bit multiboot source (as PROTECTED) built into an ELF kernel."""
    s, o, k = tmp_path / "k.s", tmp_path / "k.o", tmp_path / "k.elf"
    s.write_text(src)
    subprocess.check_call(["as", "--32", "-o", str(o), str(s)])
    subprocess.check_call(["ld", "-m", "elf_i386", "-N", "--no-warn-rwx-segments", "-Ttext=0x100000",
                           "-e", "_start", "-o", str(k), str(o)])
    return k.read_bytes()


def test_protected_mode_int_from_ring3_switches_to_ss0_esp0(hv, tmp_path):
    """32-bit: INT 0x80 at CPL 3 loads SS0:ESP0 from the TSS and pushes SS, ESP, EFLAGS, CS, EIP."""
    vm = hv.create_vm("pm", mem_mb=16)
    vm.load(multiboot_elf(PROTECTED, tmp_path), "k.elf")
    vm.start()
    vm.wait(states=("suspended",), timeout=30)
    r = vm.registers()
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert r["rax"] == 0x390000 - 20
    assert (r["rbx"], r["rcx"], r["rdx"]) == (0x23, 0x380000, 0x1b)
    assert (r["rdi"], r["rbp"], r["rsi"]) == (0x08, 0x10, 0x77)


@pytest.mark.parametrize("vector", [3, 0x80])
def test_software_interrupt_returns_past_the_instruction(hv, tmp_path, vector):
    """INT3 and INT n push the address of the next instruction; IRETQ returns there."""
    src = LONG_PROLOGUE + gate64(vector, "handler") + """
    int {v}
    mov r9, 0x99
    cli
    hlt
handler:
    mov r8, [rsp]
    iretq
""".format(v=vector if vector != 3 else "3") + LONG_DATA
    if vector == 3:
        src = src.replace("int 3\n", "int3\n")
    vm = boot(hv, tmp_path, src)
    r = vm.registers()
    assert r["r9"] == 0x99 and r["r8"] > 0x200000
