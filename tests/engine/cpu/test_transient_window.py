"""The modeled L1TF window, seen from the host: what the transient load returns, what the window may touch."""
from engine import Hypervisor
from engine import stats as S
from engine.cpu import l1d, l1tf
from engine.core import ctx as C
from tests.engine.conftest import FLAT_BASE, assemble

# Real selectors first (the flat64 loader's GDT: code 0x08, data 0x10), for IRETQ. Own 4-level tables:
# 2 MiB identity pages for the first 8 MiB; at 1 GiB one 4 KiB entry with P=0 whose address bits are
# TARGET (patched in by the test). An IDT whose #PF handler resumes at [rip+resume].
# The gadget: CPUID (an exit: the host reads its secret), then a load through the not-present entry.
GUEST = """
    push 0x08
    lea rax, [rip + 2f]
    push rax
    retfq
2:  mov ax, 0x10
    mov ss, ax
    lea rdi, [rip + pml4]
    lea rax, [rip + pdpt]
    or rax, 3
    mov [rdi], rax
    lea rdi, [rip + pdpt]
    lea rax, [rip + pd]
    or rax, 3
    mov [rdi], rax
    lea rax, [rip + pd_high]
    or rax, 3
    mov [rdi + 8], rax
    lea rdi, [rip + pd]
    mov rax, 0x83
    mov rcx, 4
1:  mov [rdi], rax
    add rax, 0x200000
    add rdi, 8
    dec rcx
    jnz 1b
    lea rax, [rip + pt]
    or rax, 3
    mov [rip + pd_high], rax
    mov rax, [rip + target]
    mov [rip + pt], rax
    lea rax, [rip + pf_handler]
    lea rdi, [rip + idt + 14 * 16]
    mov [rdi], ax
    mov word ptr [rdi + 2], cs
    mov word ptr [rdi + 4], 0x8E00
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    lidt [rip + idtr]
    lea rax, [rip + pml4]
    mov cr3, rax
    lea rax, [rip + after]
    mov [rip + resume], rax
    lea rbp, [rip + probe]
    xor eax, eax
    cpuid
    mov rbx, 0x40000000 + OFFSET
    GADGET
after:
    cli
    hlt
pf_handler:
    add rsp, 8
    push rax
    mov rax, [rip + resume]
    mov [rsp + 8], rax
    pop rax
    iretq
    .org 0x1000
target: .quad 0
resume: .quad 0
marker: .quad 0x1111
idtr: .word 16 * 32 - 1
      .quad idt
    .org 0x2000
pml4: .fill 4096, 1, 0
pdpt: .fill 4096, 1, 0
pd: .fill 4096, 1, 0
pd_high: .fill 4096, 1, 0
pt: .fill 4096, 1, 0
idt: .fill 4096, 1, 0
probe: .fill 256 * 4160, 1, 0
"""
TARGET, MARKER, PROBE = 0x1000, 0x1010, 0x8000      # offsets in the image (the .org layout above)
LEAK = """movzx eax, byte ptr [rbx]
    imul eax, eax, 4160
    mov cl, [rbp + rax]"""


def run(tmp_path, gadget, profile="haswell", flush=0, secret=bytes(range(100, 164))):
    """Boot the gadget against a host secret; returns (vm, probe values whose line the L1D holds, marker bytes)."""
    hv = Hypervisor(host_mem_mb=128, tunables={"hw.vmm.l1d_flush": flush, "hw.vmm.l1d_sim": 1})   # windows need it (vmx/faults.py)
    hpa = hv.l1d.place_secret(secret)
    vm = hv.create_vm("w", mem_mb=16, profile=profile)
    image = bytearray(assemble(GUEST.replace("GADGET", gadget).replace("OFFSET", str(hpa % 4096 + 5)), tmp_path))
    image[TARGET:TARGET + 8] = (hpa & ~0xFFF).to_bytes(8, "little")       # address bits only: P=0
    vm.load(bytes(image), "w.bin", kind="flat64")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=30) == "suspended"
    assert vm.suspend_reason == "halt", (vm.suspend_message, hex(vm.registers()["rip"] - FLAT_BASE))
    cache = hv.l1d.state(int(vm.vcpus[0].ctx[C.HOSTCPU]))
    probe = vm.gpa_to_hpa(FLAT_BASE + PROBE)
    held = [v for v in range(256) if l1d.holds(cache, (probe + v * 4160) // 64)]
    marker = hv.memory[vm.gpa_to_hpa(FLAT_BASE + MARKER):][:8].tobytes()
    return vm, held, marker


def test_transient_load_returns_the_held_byte_and_fills_the_probe_line(tmp_path):
    """Flush off: the window loads probe[secret[5]]; exactly that line is left in the L1D; the #PF was delivered."""
    vm, held, marker = run(tmp_path, LEAK)
    assert held == [105]
    assert vm.vcpus[0].counters[S.L1D_L1TF_WINDOWS] == 1


def test_flushed_line_forwards_zero(tmp_path):
    """Flush on: the secret's line is gone at entry, the transient load forwards 0."""
    vm, held, _ = run(tmp_path, LEAK, flush=1)
    assert held == [0]


def test_unaffected_cpu_runs_no_window(tmp_path):
    """Cascade Lake (RDCL_NO): the fault is just a fault."""
    vm, held, _ = run(tmp_path, LEAK, profile="cascadelake")
    assert held == [] and vm.vcpus[0].counters[S.L1D_L1TF_WINDOWS] == 0


def test_a_store_ends_the_window_unperformed(tmp_path):
    """A store after the transient load is never written, and the load after it never happens."""
    vm, held, marker = run(tmp_path, "movzx eax, byte ptr [rbx]\n    mov [rip + marker], rax\n    imul eax, eax, 4160\n"
                              "    mov cl, [rbp + rax]")
    assert marker == (0x1111).to_bytes(8, "little")
    assert held == []


def test_the_window_is_bounded(tmp_path):
    """A load more than WINDOW instructions after the faulting one is not executed; one within it is."""
    pad = "\n".join(["    nop"] * l1tf.WINDOW)
    vm, held, _ = run(tmp_path, "movzx eax, byte ptr [rbx]\n    imul eax, eax, 4160\n%s\n    mov cl, [rbp + rax]" % pad)
    assert held == []
    vm, held, _ = run(tmp_path, "movzx eax, byte ptr [rbx]\n    imul eax, eax, 4160\n%s\n    mov cl, [rbp + rax]"
                         % "\n".join(["    nop"] * (l1tf.WINDOW - 4)))
    assert held == [105]
