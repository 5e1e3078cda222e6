"""bhyve's statistics counted where bhyve counts them, each moved by a guest that must move it.

Where each is counted in bhyve (sys/amd64/vmm/): VMM_MEM_RESIDENT by vm_get_rescnt on every read (vCPU 0 only);
VCPU_TOTAL_RUNTIME in vm_run as rdtsc() - tscval around vmmops_run, host TSC ticks; VCPU_IDLE_TICKS in
vm_handle_hlt as ticks (kern.hz) asleep; VMEXIT_REQIDLE by vm_exit_reqidle when another thread asked the vCPU
to go idle (an ioctl freezing it: here a visit); VMEXIT_CR_ACCESS in vmx_exit_process for exit 28;
VLAPIC_INTR_ERROR in vlapic_set_error when the error LVT fires.
"""
import time

from engine import Hypervisor
from engine import stats as S
from engine.cpu import tsc
from engine.vmx import exits as E
from tests.engine.conftest import assemble, stopped
from tests.engine.io.test_vlapic_guest import MAP_APIC
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64


def counters(vm, i=0):
    return vm.vcpus[i].visit(lambda v: v.read_counters())


def test_resident_memory_is_the_backed_pages(flat64):
    """Three more pages touched, three more 4 KiB pages resident: in vCPU 0's stats and in the VM's totals."""
    vm = flat64("mov rax, 0x800000\nmov [rax], rax\nmov [rax + 0x1000], rax\nmov [rax + 0x2000], rax\ncli\nhlt")
    resident = vm.pmap.stats()["resident_pages"] * 4096
    assert resident >= 3 * 4096
    assert counters(vm)[S.VMM_MEM_RESIDENT] == resident
    from engine.door.vm_view import VmView
    assert VmView(vm).counter_totals()["VMM_MEM_RESIDENT"] == resident
    assert VmView(vm).vcpu(0).stats()["by_id"]["VMM_MEM_RESIDENT"] == resident


LOOP = """
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov r8, rax
    mov rcx, 3000000
1:  dec rcx
    jnz 1b
    rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r8
    mov r9, rax                   # the guest's own count of the loop, in TSC ticks
    cli
    hlt
"""


def test_total_runtime_is_in_tsc_ticks(hv, tmp_path):
    """The loop runs inside vmx_run (RDTSC is an in-kernel exit), so the runtime is at least the guest's own TSC
    count of it, and at most the modeled host's TSC ticks between start and stop: ticks, not nanoseconds (the
    TSC runs faster than 1 GHz)."""
    vm = hv.create_vm("t", mem_mb=16)
    vm.load(assemble(LOOP, tmp_path), "g.bin", kind="flat64")
    hz = vm.profile.tsc_hz
    assert hz > 10 ** 9
    before = tsc.host_tsc(hz)
    vm.start()
    stopped(vm, 60)
    after = tsc.host_tsc(hz)
    runtime = counters(vm)[S.VCPU_TOTAL_RUNTIME]
    assert vm.registers()["r9"] <= runtime <= after - before


def test_idle_ticks_count_the_halt(hv, tmp_path):
    """A HLT with interrupts enabled and nothing to wake it sleeps (in the kernel loop, then in userspace): the
    ticks asleep (kern.hz = 1000) are counted when the sleep ends, here by a pause."""
    vm = hv.create_vm("idle", mem_mb=16)
    vm.load(assemble("sti\nhlt\ncli\nhlt", tmp_path), "g.bin", kind="flat64")
    start = time.monotonic_ns()
    vm.start()
    deadline = time.monotonic() + 30
    while vm.vcpus[0].state != "halted" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert vm.vcpus[0].state == "halted"
    halted = S.ticks(time.monotonic_ns())
    while S.ticks(time.monotonic_ns()) < halted + 200:     # 200 ticks go by with the vCPU asleep
        time.sleep(0.01)
    vm.pause()
    deadline = time.monotonic() + 30
    while vm.vcpus[0].counters[S.VCPU_IDLE_TICKS] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)                            # the sleep ends when the vCPU's thread takes the pause
    idle = counters(vm)[S.VCPU_IDLE_TICKS]
    waited = S.ticks(time.monotonic_ns()) - S.ticks(start)
    # the state reads "halted" a moment before the thread begins its sleep (under load, tens of ms): the
    # ticks counted are some of those 200, and never more than the whole test lasted
    assert 0 < idle <= waited
    vm.poweroff()


SPIN = "1: inc r8\njmp 1b"


def test_reqidle_counts_the_visits_that_took_a_running_vcpu_out(hv, tmp_path):
    """Each visit to a running vCPU is an idle request (vm_exit_reqidle), and nothing else is counted for it."""
    vm = hv.create_vm("spin", mem_mb=16)
    vm.load(assemble(SPIN, tmp_path), "g.bin", kind="flat64")
    vm.start()
    v = vm.vcpus[0]
    v.visit(lambda v: None)
    before = list(v.counters)
    for _ in range(20):
        v.visit(lambda v: None)
    after = list(v.counters)
    assert 1 <= after[S.VMEXIT_REQIDLE] - before[S.VMEXIT_REQIDLE] <= 20
    assert after[S.VMEXIT_COUNT] - before[S.VMEXIT_COUNT] <= 2     # timer ticks of the host at most, no visits
    vm.poweroff()


CR0 = """
    mov rbx, cr0
    and ebx, ~0x60000000              # CD and NW clear: the read shadow (0x60000010) has them set
    or ebx, 0x20                      # NE
    lea r15, [rip + first]
first:
    mov cr0, rbx                      # exit 28: CD, NW and NE are the mask's and change
    mov cr0, rbx                      # the same again: no exit
    mov rcx, cr4
    mov cr4, rcx                      # nothing the CR4 mask owns changes: no exit
    cli
    hlt
"""


def test_cr_access_exits_on_masked_bits_only(flat64):
    """MOV to CR0 that changes CD/NW/NE against the read shadow exits once (qualification: CR0, MOV to CR, RBX,
    SDM Table 28-3), counted as VMEXIT_CR_ACCESS; the shadow then holds the value; unchanged bits do not exit."""
    vm = flat64(CR0)
    rows = [r for r in vm.vcpus[0].exit_log() if r["reason"] == E.CR_ACCESS]
    assert [(r["qualification"], r["length"], r["rip"]) for r in rows] == [(0x300, 3, vm.registers()["r15"])]
    assert E.decode_cr(0x300) == {"cr": 0, "access": "mov to cr", "gpr": 3, "lmsw_memory": False, "lmsw_data": 0}
    assert counters(vm)[S.VMEXIT_CR_ACCESS] == 1
    assert vm.vcpus[0].vmcs["CR0_SHADOW"] == vm.registers()["rbx"] and vm.registers()["cr0"] & 0x60000000 == 0


ERROR_LVT = LONG_PROLOGUE + MAP_APIC + gate64(0x41, "error") + """
    mov dword ptr [r15 + 0x370], 0x41       # LVT Error: vector 0x41, unmasked
    sti
    mov dword ptr [r15 + 0x300], 0x40005    # ICR: fixed, vector 5 to self: a send-illegal-vector error
    mov rcx, 1000
1:  dec rcx
    jnz 1b
    mov r9d, dword ptr [r15 + 0x280]        # ESR
    cli
    hlt
error:
    inc r8
    mov dword ptr [r15 + 0xB0], 0           # EOI
    iretq
""" + LONG_DATA


def test_error_lvt_fires_on_an_illegal_vector(hv, tmp_path):
    """vlapic_set_error: an IPI with vector 5 sets ESR's send-illegal-vector bit (SDM 10.5.3) and fires the
    error LVT once, counted as VLAPIC_INTR_ERROR; no IPI is delivered."""
    vm = hv.create_vm("err", mem_mb=16)
    vm.load(assemble("xor r8, r8\n" + ERROR_LVT, tmp_path), "g.bin", kind="flat64")
    vm.start()
    stopped(vm, 30)
    regs = vm.registers()
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert regs["r8"] == 1 and regs["r9"] & (1 << 5)
    assert counters(vm)[S.VLAPIC_INTR_ERROR] == 1
