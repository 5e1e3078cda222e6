"""SYSCALL/SYSRET, SYSENTER/SYSEXIT and SWAPGS as the Intel SDM gives them (vmx/syscall.py), in small 64-bit
guests with Linux's GDT layout: kernel code 0x10 and data 0x18, user code32 0x23, data 0x2B, code64 0x33.

Each guest logs the exceptions it takes (vector, error code, RIP, CS of the frame) and ends with `cli; hlt` in
ring 0; none of these instructions, nor the exceptions they raise, reaches userspace (DELIVERED_USER = 0).
"""
import struct

from engine import Hypervisor
from engine import stats as S
from engine.core import ctx as C
from engine.vmx import exits as E
from tests.engine.conftest import assemble

STAR = (0x23 << 48) | (0x10 << 32)        # SYSRET: CS 0x23 (+16 = 0x33 for 64-bit), SS 0x2B; SYSCALL: CS 0x10, SS 0x18
FMASK = 0x47700                           # Linux's: TF, DF, IF, IOPL, NT, AC
LOG = 0x300000
VECTORS = (6, 13, 14)


def gate(vector, handler, dpl=0):
    """A 64-bit interrupt gate to `handler` in the kernel's code segment 0x10."""
    return """
    lea rax, [rip + {h}]
    lea rdi, [rip + idt + {off}]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x10
    mov byte ptr [rdi + 4], 0
    mov byte ptr [rdi + 5], {attr}
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
""".format(h=handler, off=16 * vector, attr=0x8E | (dpl << 5))


def wrmsr(index, value):
    return "    mov ecx, %#x\n    mov eax, %#x\n    mov edx, %#x\n    wrmsr\n" % (index, value & 0xFFFFFFFF, value >> 32)


PROLOGUE = """
    lgdt [rip + gdtr]
    lea rax, [rip + tss]
    mov word ptr [rip + gdt + 0x38 + 2], ax
    shr rax, 16
    mov byte ptr [rip + gdt + 0x38 + 4], al
    mov byte ptr [rip + gdt + 0x38 + 7], ah
    shr rax, 16
    mov dword ptr [rip + gdt + 0x38 + 8], eax
    push 0x10
    lea rax, [rip + 1f]
    push rax
    retfq
1:  mov ax, 0x18
    mov ss, ax
    mov ds, ax
    mov es, ax
    mov ax, 0x38
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
    mov r15, {log}
    xor r14, r14
""".format(log=LOG) + "".join(gate(v, "fault%d" % v) for v in VECTORS) + gate(0x80, "exit", dpl=3) + \
    wrmsr(0xC0000081, STAR) + wrmsr(0xC0000084, FMASK)
SCE = """
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1
    wrmsr
"""
TO_USER = """
    push 0x2b
    push 0x280000
    push 0x202
    push 0x33
    lea rax, [rip + user]
    push rax
    iretq
"""
HANDLERS = "".join("""
fault{v}:
    {error}
    mov r11, [rsp]
    mov qword ptr [r15], {v}
    mov [r15 + 8], r12
    mov [r15 + 16], r11
    mov r11, [rsp + 8]
    mov [r15 + 24], r11
    add r15, 32
    test r14, r14
    jz exit
    mov [rsp], r14
    iretq
""".format(v=v, error="pop r12" if v in (13, 14) else "xor r12, r12") for v in VECTORS) + """
exit:
    cli
    hlt
"""
DATA = """
    .balign 16
gdt: .quad 0, 0x00CF9A000000FFFF, 0x00AF9A000000FFFF, 0x00CF92000000FFFF
     .quad 0x00CFFA000000FFFF, 0x00CFF2000000FFFF, 0x00AFFA000000FFFF
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


def run(hv, tmp_path, body, name="sys"):
    vm = hv.create_vm(name, mem_mb=16)
    vm.load(assemble(PROLOGUE + body + HANDLERS + DATA, tmp_path), "g.bin", kind="flat64")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    c = vm.vcpus[0].ctx
    assert int(c[C.DELIVERED_USER]) == 0, "an event went to userspace"
    return vm, vm.registers()


def log(vm, r):
    """The exceptions the guest took: (vector, error code, RIP, CS)."""
    n = (r["r15"] - LOG) // 32
    return [struct.unpack_from("<4Q", vm.memory_access.read(LOG + 32 * i, 32)) for i in range(n)]


def test_syscall_and_sysret_round_trip(hv, tmp_path):
    """100 SYSCALLs from ring 3: the kernel runs at LSTAR with CS 0x10, SS 0x18, RCX the next RIP (after a prefix
    too), R11 the user's RFLAGS and RFLAGS masked by FMASK; SYSRETQ returns with CS 0x33, SS 0x2B, RFLAGS = R11."""
    body = SCE + """
    lea rax, [rip + entry]
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0xC0000082
    wrmsr
""" + TO_USER + """
user:
    mov rax, 0x40ED7
    push rax
    popfq
    xor r13, r13
    mov rbx, 100
1:  mov rax, rbx
    lea r12, [rip + 2f]
    syscall
2:  cmp r12, [0x310000]
    jne 3f
    lea rdx, [rbx + rbx * 2]
    cmp rax, rdx
    jne 3f
    add r13, rax
3:  dec rbx
    jnz 1b
    mov rax, 0x40ED7
    push rax
    popfq
    lea r12, [rip + 4f]
    .byte 0x66
    syscall
4:  mov rsi, [0x310000]
    pushfq
    pop r8
    mov r9, cs
    mov r10, ss
    mov rax, 1000
    syscall
entry:
    mov [0x310000], rcx
    mov [0x310008], r11
    mov [0x310010], rsp
    mov rdx, cs
    mov [0x310018], rdx
    mov rdx, ss
    mov [0x310020], rdx
    pushfq
    pop rdx
    mov [0x310028], rdx
    cmp rax, 1000
    je exit
    lea rax, [rax + rax * 2]
    sysretq
"""
    vm, r = run(hv, tmp_path, body)
    assert r["r13"] == 3 * sum(range(1, 101))                 # every call returned its value at the next RIP
    kernel = struct.unpack("<6Q", vm.memory_access.read(0x310000, 48))
    assert kernel[1] == 0x40ED7 and kernel[5] == 0x40ED7 & ~FMASK
    assert kernel[2] == 0x280000 and kernel[3:5] == (0x10, 0x18)
    assert r["rsi"] == r["r12"]                              # RCX after `66 0F 05`: three bytes on
    assert r["r8"] == 0x40ED7 and (r["r9"], r["r10"]) == (0x33, 0x2B)
    assert (r["cs"], r["ss"]) == (0x10, 0x18) and log(vm, r) == []
    c = vm.vcpus[0].ctx
    assert (int(c[C.SYSCALLS]), int(c[C.SYSRETS])) == (102, 101)


def test_syscall_without_sce_and_in_compatibility_mode_is_ud(hv, tmp_path):
    """#UD with RIP on the instruction: SYSRET and SYSCALL with IA32_EFER.SCE clear, and (Intel) SYSCALL in
    compatibility mode with it set."""
    body = """
    lea r14, [rip + 1f]
    lea r8, [rip + 0f]
0:  sysretq
1:
""" + TO_USER + """
user:
    lea r14, [rip + 1f]
    lea r9, [rip + 0f]
0:  syscall
1:  int 0x80
"""
    vm, r = run(hv, tmp_path, body)
    assert log(vm, r) == [(6, 0, r["r8"], 0x10), (6, 0, r["r9"], 0x33)]
    body = SCE + """
    lea r14, [rip + 1f]
    lea r9, [rip + 0f]
    push 0x2b
    push 0x280000
    push 0x202
    push 0x23
    lea rax, [rip + 0f]
    push rax
    iretq
    .code32
0:  syscall
1:  int 0x80
    .code64
"""
    vm, r = run(hv, tmp_path, body, name="compat")
    assert log(vm, r) == [(6, 0, r["r9"], 0x23)]


def test_sysret_to_a_noncanonical_rcx_faults_in_ring0(hv, tmp_path):
    """Intel's SYSRET: a non-canonical RCX is #GP(0) at CPL 0, RIP on the SYSRET (QEMU's would return to ring 3
    first); at CPL 3 SYSRET is #GP(0) too."""
    body = SCE + """
    lea r14, [rip + 1f]
    mov rcx, 0x0000800000000000
    mov r11, 0x202
    lea r8, [rip + 0f]
0:  sysretq
1:
""" + TO_USER + """
user:
    lea r14, [rip + 1f]
    lea r9, [rip + 0f]
0:  sysretq
1:  int 0x80
"""
    vm, r = run(hv, tmp_path, body)
    assert log(vm, r) == [(13, 0, r["r8"], 0x10), (13, 0, r["r9"], 0x33)]


def test_sysret_flags_and_compatibility_mode(hv, tmp_path):
    """RFLAGS = (R11 & 3C7FD7H) | 2: RF and VM come back clear; SYSRETL returns to ECX in compatibility mode with
    CS 0x23."""
    body = SCE + gate(0x82, "back", dpl=3) + """
    mov r11, 0x3F7ED7
    lea rcx, [rip + user]
    sysretq
user:
    pushfq
    pop r8
    mov r9, cs
    mov r10, ss
    int 0x82
back:
    mov r12, [rsp + 8]
    lea rcx, [rip + compat]
    mov r11, 0x202
    .byte 0x0F, 0x07
    .code32
compat:
    mov esi, cs
    int 0x80
    .code64
"""
    vm, r = run(hv, tmp_path, body)
    assert r["r8"] == 0x3C7ED7                       # pushfq: the bits of R11 the mask lets through
    assert (r["r9"], r["r10"]) == (0x33, 0x2B) and r["r12"] == 0x33
    assert r["rsi"] & 0xFFFF == 0x23


def test_swapgs_exchanges_gs_base_with_kernel_gs_base(hv, tmp_path):
    """SWAPGS (native in Unicorn) swaps GS.base and IA32_KERNEL_GS_BASE at CPL 0 and is #GP(0) at CPL 3."""
    body = wrmsr(0xC0000101, 0x0000122233334444) + wrmsr(0xC0000102, 0xFFFF866677778888) + """   # canonical
    swapgs
    mov ecx, 0xC0000101
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r8, rax
    mov ecx, 0xC0000102
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r9, rax
""" + TO_USER + """
user:
    lea r14, [rip + 1f]
    lea r10, [rip + 0f]
0:  swapgs
1:  int 0x80
"""
    vm, r = run(hv, tmp_path, body)
    assert (r["r8"], r["r9"]) == (0xFFFF866677778888, 0x0000122233334444)
    assert log(vm, r) == [(13, 0, r["r10"], 0x33)]


def test_sysenter_and_sysexit(hv, tmp_path):
    """SYSENTER from 64-bit ring 3: RSP and RIP from the MSRs, CS = SYSENTER_CS, SS = + 8, IF cleared; SYSEXITQ:
    RSP = RCX, RIP = RDX, CS = SYSENTER_CS + 32 | 3, SS = + 40 | 3; a non-canonical RDX is #GP(0) in ring 0."""
    body = wrmsr(0x174, 0x10) + wrmsr(0x175, 0x29F000) + """
    lea rax, [rip + entry]
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x176
    wrmsr
""" + TO_USER + """
user:
    mov r12, rsp
    lea r13, [rip + back]
    xor eax, eax
    sysenter
back:
    mov r9, cs
    mov r10, ss
    mov rsi, rsp
    lea r14, [rip + 1f]
    mov rax, 1
    sysenter
1:  int 0x80
entry:
    mov rdx, cs
    mov [0x310000], rdx
    mov rdx, ss
    mov [0x310008], rdx
    mov [0x310010], rsp
    pushfq
    pop rdx
    mov [0x310018], rdx
    test rax, rax
    jnz bad
    mov rcx, r12
    mov rdx, r13
    .byte 0x48, 0x0F, 0x35
bad:
    lea r14, [rip + 1f]
    mov rdx, 0x0000800000000000
    lea r8, [rip + 0f]
0:  .byte 0x48, 0x0F, 0x35
1:  cli
    hlt
"""
    vm, r = run(hv, tmp_path, body)
    kernel = struct.unpack("<4Q", vm.memory_access.read(0x310000, 32))
    assert kernel[:3] == (0x10, 0x18, 0x29F000) and not kernel[3] & 0x200
    assert (r["r9"], r["r10"], r["rsi"]) == (0x33, 0x3B, 0x280000)
    assert log(vm, r) == [(13, 0, r["r8"], 0x10)]
    c = vm.vcpus[0].ctx
    assert (int(c[C.SYSCALLS]), int(c[C.SYSRETS])) == (2, 1)


def test_exception_bitmap_exit_carries_the_interruption_and_the_address(tmp_path):
    """With #PF's bit in the exception bitmap (hw.vmm.trace_guest_exceptions) a user write to a supervisor page is
    exit 0 with the interruption information, error code P|W|U and the address as qualification (SDM 27.2.1),
    then delivered to the guest's handler in the kernel."""
    hv = Hypervisor(host_mem_mb=64, tunables={"hw.vmm.trace_guest_exceptions": 1})
    try:
        body = TO_USER + """
user:
    lea r14, [rip + 1f]
    lea r9, [rip + 0f]
0:  mov qword ptr [0x600000], 1
1:  int 0x80
"""
        vm, r = run(hv, tmp_path, body)
        assert log(vm, r) == [(14, 7, r["r9"], 0x33)]
        v = vm.vcpus[0]
        rows = [row for row in v.exit_log() if row["reason"] == E.EXCEPTION_NMI]
        assert [row["qualification"] for row in rows] == [0x600000] and rows[0]["rip"] == r["r9"]
        assert v.counters[S.VMEXIT_EXCEPTION] == 1
        assert int(v.vmcs["EXIT_INTR_ERRCODE"]) == 7
        assert E.decode_interruption_info(int(v.vmcs["EXIT_INTR_INFO"])) == \
            {"vector": 14, "type": "hardware exception", "error_code": True}
    finally:
        for vm in list(hv.vms.values()):
            vm.poweroff()


def test_consecutive_unicorn_faults_stay_what_they_are(hv, tmp_path):
    """Three #GPs Unicorn raises in a row (a selector past the GDT's limit), each delivered and resumed from: three
    #GP(selector), not QEMU's #DF for a second contributory fault it never saw delivered, nor its shutdown for a
    third (vmx/cpuctx.py: old_exception)."""
    body = """
    mov eax, 0x43
    lea r14, [rip + 1f]
    lea r8, [rip + 0f]
0:  mov ds, eax
1:  lea r14, [rip + 1f]
0:  mov ds, eax
1:  lea r14, [rip + 1f]
0:  mov es, eax
1:  int 0x80
"""
    vm, r = run(hv, tmp_path, body)
    assert [(v, e, cs) for v, e, _, cs in log(vm, r)] == [(13, 0x40, 0x10)] * 3
    assert log(vm, r)[0][2] == r["r8"]
