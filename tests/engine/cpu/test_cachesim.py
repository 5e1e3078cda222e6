"""Guest timing through the L1D model: RDTSC counts modeled cycles, loads cost by where they hit, CLFLUSH evicts."""
import time

from engine import Hypervisor
from engine import stats as S
from engine.cpu import l1d
from engine.core import ctx as C
from tests.engine.conftest import FLAT_BASE, assemble

# r12: a reload of a line just loaded; r13: a load after CLFLUSH [rip+x]; r14: after CLFLUSH [rbx+rcx*8+8];
# r15: after CLFLUSH [rbx+riz] (a SIB byte with no index, as compilers emit for padding; Linux has them).
# Each timed window is rdtsc; mov; load; rdtsc: three instructions besides the load's latency.
TIMING = """
    lea rbx, [rip + data]
    mov al, [rbx]
    rdtsc
    mov esi, eax
    mov al, [rbx]
    rdtsc
    sub eax, esi
    mov r12, rax
    clflush [rip + data]
    rdtsc
    mov esi, eax
    mov al, [rbx]
    rdtsc
    sub eax, esi
    mov r13, rax
    mov rcx, -1
    clflush [rbx + rcx*8 + 8]
    rdtscp
    mov esi, eax
    mov al, [rbx]
    rdtscp
    sub eax, esi
    mov r14, rax
    .byte 0x0f, 0xae, 0x3c, 0x23
    rdtscp
    mov esi, eax
    mov al, [rbx]
    rdtscp
    sub eax, esi
    mov r15, rax
    cli
    hlt
    .balign 4096
data:
    .quad 0x1234
"""


def boot(hv, tmp_path, src, name="t"):
    vm = hv.create_vm(name)
    vm.load(assemble(src, tmp_path), "t.bin", kind="flat64")
    vm.start()
    return vm


def test_rdtsc_times_hits_and_misses(tmp_path):
    """With hw.vmm.l1d_sim=1 a reload costs the hit latency, a load after CLFLUSH (any form) the miss latency."""
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.l1d_sim": 1})
    vm = boot(hv, tmp_path, TIMING)
    assert vm.wait(states=("suspended",), timeout=30) == "suspended" and vm.suspend_reason == "halt"
    regs = vm.registers()
    assert regs["r12"] == 3 + l1d.L1_HIT_CYCLES
    assert regs["r13"] == 3 + l1d.L1_MISS_CYCLES
    assert regs["r14"] == 3 + l1d.L1_MISS_CYCLES
    assert regs["r15"] == 3 + l1d.L1_MISS_CYCLES
    counters = vm.vcpus[0].counters
    assert counters[S.L1D_GUEST_HITS] >= 1 and counters[S.L1D_GUEST_MISSES] >= 3
    data_hpa = vm.gpa_to_hpa(FLAT_BASE + 0x1000)
    cache = hv.l1d.state(int(vm.vcpus[0].ctx[C.HOSTCPU]))
    owners = dict(l1d.contents(cache)[(data_hpa // 64) % l1d.SETS])
    assert owners.get(data_hpa // 64) == vm.l1d_owner
    counts, free = hv.l1d.occupancy(int(vm.vcpus[0].ctx[C.HOSTCPU]))
    assert counts["t"] >= 1 and counts["host"] >= 12 and sum(counts.values()) + free == l1d.LINES


def test_simulation_off_leaves_guest_time_and_cache_alone(hv, tmp_path):
    """Off (the default): no guest line enters the model, RDTSC is Unicorn's own, no hit/miss counted."""
    vm = boot(hv, tmp_path, TIMING)
    vm.wait(states=("suspended",), timeout=30)
    counters = vm.vcpus[0].counters
    assert counters[S.L1D_GUEST_HITS] == counters[S.L1D_GUEST_MISSES] == 0
    cache = hv.l1d.state(int(vm.vcpus[0].ctx[C.HOSTCPU]))
    assert all(owner == l1d.HOST for ways in l1d.contents(cache) for _, owner in ways)
    regs = vm.registers()
    assert regs["r12"] != 3 + l1d.L1_HIT_CYCLES or regs["r13"] != 3 + l1d.L1_MISS_CYCLES


LOADS_FOREVER = """
    lea rbx, [rip + data]
again:
    mov al, [rbx]
    mov al, [rbx + 4096]
    jmp again
    .balign 4096
data:
    .fill 8192, 1, 0
"""


def test_simulation_switched_while_running(hv, tmp_path):
    """Turning hw.vmm.l1d_sim on starts counting the guest's loads; off stops it; the guest keeps running."""
    vm = boot(hv, tmp_path, LOADS_FOREVER)
    counters = vm.vcpus[0].counters
    time.sleep(0.1)
    assert counters[S.L1D_GUEST_HITS] == 0
    hv.tunables.set("hw.vmm.l1d_sim", 1)
    deadline = time.monotonic() + 20
    while counters[S.L1D_GUEST_HITS] < 10000:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    hv.tunables.set("hw.vmm.l1d_sim", 0)
    vm.vcpus[0].visit(lambda vcpu: None)     # the change went to the vCPU's mailbox first: it has been applied
    hits = int(counters[S.L1D_GUEST_HITS])
    time.sleep(0.2)
    assert counters[S.L1D_GUEST_HITS] == hits and vm.state == "running"
    vm.poweroff()


GUEST_FLUSH_CMD = """
    lea rbx, [rip + data]
    mov al, [rbx]
    mov ecx, 0x10b
    mov eax, 1
    xor edx, edx
    wrmsr
    rdtsc
    mov esi, eax
    mov al, [rbx]
    rdtsc
    sub eax, esi
    mov r12, rax
    cli
    hlt
    .balign 4096
data:
    .quad 0
"""


def test_guest_flush_cmd_empties_the_l1d(tmp_path):
    """Skylake: a guest WRMSR IA32_FLUSH_CMD=1 flushes its host CPU's L1D, so the next load misses."""
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.l1d_sim": 1, "hw.vmm.l1d_flush": 0})
    vm = hv.create_vm("f", profile="skylake")
    vm.load(assemble(GUEST_FLUSH_CMD, tmp_path), "t.bin", kind="flat64")
    vm.start()
    vm.wait(states=("suspended",), timeout=30)
    assert vm.suspend_reason == "halt" and vm.registers()["r12"] == 3 + l1d.L1_MISS_CYCLES


# The CLFLUSH at `site` is first `clflush [rbx]`; then the guest rewrites it to `clflush [rbx + 64]` (same
# length) and runs it again. r12/r13: reload times of the first and second line after the second run.
REWRITE = """
    lea rbx, [rip + data]
    call site
    mov al, [rbx]
    mov al, [rbx + 64]
    lea rdi, [rip + site]
    mov dword ptr [rdi], 0x407bae0f
    mov byte ptr [rdi + 4], 0xc3
    call site
    rdtsc
    mov esi, eax
    mov al, [rbx]
    rdtsc
    sub eax, esi
    mov r12, rax
    rdtsc
    mov esi, eax
    mov al, [rbx + 64]
    rdtsc
    sub eax, esi
    mov r13, rax
    cli
    hlt
    .balign 4096
site:
    clflush [rbx]
    nop
    nop
    ret
    .balign 4096
data:
    .fill 128, 1, 0
"""


def test_rewritten_clflush_is_decoded_again(tmp_path):
    """Self-modifying code: the rescanned page's CLFLUSH flushes the new operand's line, not the old one's."""
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.l1d_sim": 1, "hw.vmm.l1d_flush": 0})   # rescans are exits
    vm = boot(hv, tmp_path, REWRITE)
    vm.wait(states=("suspended",), timeout=30)
    regs = vm.registers()
    assert vm.suspend_reason == "halt"
    assert regs["r12"] == 3 + l1d.L1_HIT_CYCLES and regs["r13"] == 3 + l1d.L1_MISS_CYCLES
