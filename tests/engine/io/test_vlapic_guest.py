"""The local APIC as a guest sees it at 0xFEE00000: self-IPIs, EOI, TPR, the timer, HLT wake-up, the shadow."""
import threading
import time

import pytest

from engine import stats
from engine.core import ctx as C
from engine.vmx import controls as K
from engine.vmx import exits
from tests.engine.conftest import assemble
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64

# Map 3-4 GiB with one 1 GiB page so the guest reaches the APIC at 0xFEE00000; r15 holds its base.
MAP_APIC = """
    mov rax, cr3
    mov rbx, [rax]
    and rbx, -4096
    mov rcx, 0xC0000083
    mov qword ptr [rbx + 24], rcx
    mov cr3, rax
    mov r15, 0xFEE00000
    mov dword ptr [r15 + 0xF0], 0x1FF       # SVR: APIC software-enabled, spurious vector 0xFF
"""
COUNTER = """
    .balign 8
count: .quad 0
"""


def run(hv, tmp_path, src, name="lapic", timeout=30, start=None):
    vm = hv.create_vm(name, mem_mb=16)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    if start:
        start(vm)
    vm.wait(states=("suspended",), timeout=timeout)
    return vm


def test_self_ipi_is_delivered_and_eoi_clears_isr(hv, tmp_path):
    """ICR with the self shorthand, vector 0x40: the handler runs once at CPL 0 with ISR[0x40] set; EOI clears it."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x40, "handler") + """
    sti
    mov dword ptr [r15 + 0x300], 0x40040    # ICR: fixed, vector 0x40, shorthand self
    mov rcx, 1000
1:  dec rcx
    jnz 1b
    mov r9, [r15 + 0x120]                   # ISR bits 64-95 after the EOI
    cli
    hlt
handler:
    inc qword ptr [rip + count]
    mov r8d, dword ptr [r15 + 0x120]        # ISR bits 64-95 inside the handler
    mov dword ptr [r15 + 0xB0], 0           # EOI
    iretq
""" + LONG_DATA + COUNTER
    vm = run(hv, tmp_path, src)
    r = vm.registers()
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert r["r8"] == 1 << (0x40 - 64) and r["r9"] & 0xFFFFFFFF == 0     # ISR register 2, bit 0
    v = vm.vcpus[0]
    assert v.lapic.snapshot()["ISR"] == [] and v.lapic.snapshot()["IRR"] == []
    assert v.counters[stats.VLAPIC_IPI_SEND] == 1 and v.counters[stats.VLAPIC_IPI_RECV] == 1


def test_nested_interrupts_each_eoi_ends_exactly_one(hv, tmp_path):
    """0x40's handler sends itself 0x50 with interrupts on: 0x50 nests. Its EOI, with two in service, ends
    0x50 only; 0x40 is still in service after it and ends with its own EOI."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x40, "outer") + gate64(0x50, "inner") + """
    sti
    mov dword ptr [r15 + 0x300], 0x40040    # ICR: self, vector 0x40
    mov rcx, 1000
1:  dec rcx
    jnz 1b
    cli
    hlt
outer:
    sti
    mov dword ptr [r15 + 0x300], 0x40050    # self, vector 0x50: nests
    mov rcx, 1000
2:  dec rcx
    jnz 2b
    mov r9d, dword ptr [r15 + 0x120]        # ISR bits 64-95 once 0x50 is done: 0x40 alone
    mov dword ptr [r15 + 0xB0], 0
    iretq
inner:
    mov r8d, dword ptr [r15 + 0x120]        # both in service (ISR bits 64-95)
    mov dword ptr [r15 + 0xB0], 0
    iretq
""" + LONG_DATA + COUNTER
    vm = run(hv, tmp_path, src)
    r = vm.registers()
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert r["r8"] & 0xFFFFFFFF == (1 << (0x40 - 64)) | (1 << (0x50 - 64))
    assert r["r9"] & 0xFFFFFFFF == 1 << (0x40 - 64)
    v = vm.vcpus[0]
    assert v.lapic.snapshot()["ISR"] == [] and v.counters[stats.VLAPIC_GRATUITOUS_EOI] == 0
    apic_writes = [e["qualification"] for e in v.exit_log() if e["reason"] == exits.APIC_WRITE]
    assert sorted(apic_writes) == [0x300, 0x300]      # the two ICR writes: no EOI had requests waiting


def test_tpr_holds_back_lower_classes(hv, tmp_path):
    """TPR 0x50 blocks vector 0x40 (class 4) until TPR drops to 0; a write to PPR does not stick."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x40, "handler") + """
    mov dword ptr [r15 + 0x80], 0x50        # TPR
    sti
    mov dword ptr [r15 + 0x300], 0x40040
    mov rcx, 1000
1:  dec rcx
    jnz 1b
    mov r8, [rip + count]                   # still 0
    mov r10d, dword ptr [r15 + 0xA0]        # PPR = 0x50
    mov dword ptr [r15 + 0xA0], 0x77        # read-only: undone
    mov r11d, dword ptr [r15 + 0xA0]
    mov dword ptr [r15 + 0x80], 0
    mov rcx, 1000
2:  dec rcx
    jnz 2b
    mov r9, [rip + count]                   # 1
    cli
    hlt
handler:
    inc qword ptr [rip + count]
    mov dword ptr [r15 + 0xB0], 0
    iretq
""" + LONG_DATA + COUNTER
    vm = run(hv, tmp_path, src)
    r = vm.registers()
    assert (r["r8"], r["r9"]) == (0, 1)
    assert r["r10"] == 0x50 and r["r11"] == 0x50


def test_sti_shadow_and_interrupt_window(hv, tmp_path):
    """Pending while IF=0: an interrupt-window exit; STI's shadow lets exactly one more instruction run first."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x40, "handler") + """
    cli
    mov dword ptr [r15 + 0x300], 0x40040    # pending, but IF=0
    mov rcx, 100
1:  dec rcx
    jnz 1b
    xor r8, r8
    sti
    mov r8, 1                               # runs in STI's shadow, before the interrupt
    mov r8, 2
    cli
    hlt
handler:
    mov r9, r8
    mov dword ptr [r15 + 0xB0], 0
    iretq
""" + LONG_DATA
    vm = run(hv, tmp_path, src)
    r = vm.registers()
    assert r["r9"] == 1 and r["r8"] == 2
    v = vm.vcpus[0]
    assert v.counters[stats.VMEXIT_INTR_WINDOW] == 1
    assert any(e["reason"] == exits.INTERRUPT_WINDOW for e in v.exit_log())


def test_periodic_timer_wakes_hlt(hv, tmp_path):
    """Periodic LAPIC timer, divide by 1, 100 MHz/1000 counts (1 ms at the Haswell's crystal, CPUID.15H:ECX):
    ten ticks taken in sti;hlt; then masked, and the final HLT with interrupts off suspends the VM although the
    (masked) timer keeps counting."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x30, "tick") + """
    mov dword ptr [r15 + 0x3E0], 0xB        # DCR: divide by 1
    mov dword ptr [r15 + 0x320], 0x20030    # LVT timer: periodic, vector 0x30
    mov dword ptr [r15 + 0x380], 100000     # initial count: 1 ms at 100 MHz
1:  sti
    hlt
    cmp qword ptr [rip + count], 10
    jb 1b
    cli
    mov dword ptr [r15 + 0x320], 0x30030    # masked, still periodic (a one-shot would read 0 once expired)
    mov r8d, dword ptr [r15 + 0x390]        # current count
    mov r9, [rip + count]
    hlt
tick:
    inc qword ptr [rip + count]
    mov dword ptr [r15 + 0xB0], 0
    iretq
""" + LONG_DATA + COUNTER
    started = time.monotonic()
    vm = run(hv, tmp_path, src)
    elapsed = time.monotonic() - started
    r = vm.registers()
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert r["r9"] >= 10 and 0 < r["r8"] <= 100000         # a tick may land between the compare and cli
    v = vm.vcpus[0]
    assert v.counters[stats.VLAPIC_INTR_TIMER] >= 10
    assert v.counters[stats.VLAPIC_INTR_LVT + 2] >= 10
    assert v.counters[stats.VMEXIT_HLT] >= 1                # ticks woke it from HLT (some land while it runs)
    assert elapsed >= 0.009                              # ten 1 ms periods cannot pass in less than 9 ms


def test_a_masked_timer_does_not_end_a_halt(hv, tmp_path):
    """Three 1 ms ticks taken, then the LVT masked (still periodic, still counting): a `sti; hlt` loop stays
    halted — the timer's deadlines pass without waking it (every pass round the loop would be a HLT exit)."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(0x30, "tick") + """
    mov dword ptr [r15 + 0x3E0], 0xB        # DCR: divide by 1
    mov dword ptr [r15 + 0x320], 0x20030    # LVT timer: periodic, vector 0x30
    mov dword ptr [r15 + 0x380], 100000     # 1 ms
1:  sti
    hlt
    cmp qword ptr [rip + count], 3
    jb 1b
    cli
    mov dword ptr [r15 + 0x320], 0x30030    # masked, periodic
2:  sti
    hlt
    jmp 2b
tick:
    inc qword ptr [rip + count]
    mov dword ptr [r15 + 0xB0], 0
    iretq
""" + LONG_DATA + COUNTER
    vm = hv.create_vm("masked", mem_mb=16)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    v = vm.vcpus[0]
    deadline = time.monotonic() + 30                     # a deadline for a hang, not speed
    while not (v.state == "halted" and v.lapic.register(0x320) & 0x10000):
        assert time.monotonic() < deadline, "the guest never reached its masked-timer halt"
        time.sleep(0.01)
    halts = int(v.counters[stats.VMEXIT_HLT])
    time.sleep(0.1)                                      # a hundred 1 ms periods pass
    assert v.state == "halted" and int(v.counters[stats.VMEXIT_HLT]) == halts
    assert v.counters[stats.VLAPIC_INTR_TIMER] >= 3


def test_one_shot_timer_current_count_runs_down(hv, tmp_path):
    """One-shot, divide by 128: CCR read twice decreases and stays below the initial count."""
    src = LONG_PROLOGUE + MAP_APIC + """
    mov dword ptr [r15 + 0x3E0], 0xA        # divide by 128
    mov dword ptr [r15 + 0x320], 0x10031    # masked one-shot
    mov dword ptr [r15 + 0x380], 0x7FFFFFFF
    mov r8d, dword ptr [r15 + 0x390]
    mov rcx, 200000
1:  dec rcx
    jnz 1b
    mov r9d, dword ptr [r15 + 0x390]
    cli
    hlt
""" + LONG_DATA
    vm = run(hv, tmp_path, src)
    r = vm.registers()
    assert 0x7FFFFFFF >= r["r8"] > r["r9"] > 0


def test_interrupts_from_another_thread_none_lost_none_doubled(hv, tmp_path):
    """100,000 interrupts posted from four threads while the guest spins with IF=1 and counts per vector (the
    cascadelake profile: APICv, so each goes into the PIR descriptor and is notified without an exit)."""
    vm, _ = stress(hv, tmp_path, 25000, (0x50, 0x60, 0x70, 0x80), profile="cascadelake")
    assert vm.vcpus[0].vmcs["PIN_BASED_CTLS"] & K.PINBASED_POSTED_INTERRUPT


def stress(hv, tmp_path, per_thread, vectors, profile="haswell", meanwhile=None):
    """One sender thread per vector, each waiting for the guest's count before the next; `meanwhile(vm)` runs on
    a thread of its own while they send. Returns (vm, seconds)."""
    gates = "".join(gate64(v, "h%x" % v) for v in vectors)
    handlers = "".join("""
h{v:x}:
    inc qword ptr [rip + counts + {off}]
    mov dword ptr [r15 + 0xB0], 0
    iretq
""".format(v=v, off=8 * i) for i, v in enumerate(vectors))
    src = LONG_PROLOGUE + MAP_APIC + gates + """
    sti
    mov qword ptr [rip + ready], 1
1:  pause
    cmp qword ptr [rip + done], 0
    je 1b
    cli
    hlt
""" + handlers + LONG_DATA + """
    .balign 4096
counts: .quad 0, 0, 0, 0
done: .quad 0
ready: .quad 0
"""
    binary = assemble(src, tmp_path)
    counts_gpa = 0x200000 + len(binary) - 48
    vm = hv.create_vm("stress", mem_mb=16, profile=profile)
    vm.load(binary, "g.bin", kind="flat64")
    mem = vm.memory_access
    vm.start()
    failures = []
    deadline = time.monotonic() + 10
    while not int.from_bytes(mem.read(counts_gpa + 40, 8), "little") and time.monotonic() < deadline:
        time.sleep(0.001)

    def count(i):
        return int.from_bytes(mem.read(counts_gpa + 8 * i, 8), "little")

    def sender(i, vector):
        for n in range(per_thread):
            vm.lapic_intr(0, vector)
            deadline = time.monotonic() + 5
            while count(i) <= n:
                if time.monotonic() > deadline:
                    failures.append((vector, n, count(i)))
                    return
                time.sleep(0)
    threads = [threading.Thread(target=sender, args=(i, v)) for i, v in enumerate(vectors)]
    if meanwhile is not None:
        threads.append(threading.Thread(target=meanwhile, args=(vm,)))
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    mem.write(counts_gpa + 32, (1).to_bytes(8, "little"))
    vm.wait(states=("suspended",), timeout=30)
    assert not failures, failures
    assert [count(i) for i in range(len(vectors))] == [per_thread] * len(vectors)
    return vm, elapsed


@pytest.mark.parametrize("profile, posted, apicv", [("cascadelake", 0, C.APICV_VID), ("haswell", 1, 0)])
def test_interrupts_without_posted_interrupts_none_lost(tmp_path, profile, posted, apicv):
    """The same race without posted interrupts, a kick for each: with virtual-interrupt delivery but
    hw.vmm.vmx.cap.posted_interrupts=0 (PIR bits, as bhyve's vmx_set_intr_ready sets them, notified by an
    external-interrupt exit), and on a CPU without APICv, whatever the tunable says (IRR bits set directly)."""
    from engine import Hypervisor
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.vmx.cap.posted_interrupts": posted})
    vm, _ = stress(hv, tmp_path, 5000, (0x50, 0x60), profile=profile)
    v = vm.vcpus[0]
    assert int(v.ctx[C.APICV]) == apicv and not v.vmcs["PIN_BASED_CTLS"] & K.PINBASED_POSTED_INTERRUPT
    assert v.vmcs["PIR_DESC"] == 0 and v.vmcs["PIR_VECTOR"] == 0


def test_posted_interrupts_switched_while_interrupts_flow(tmp_path):
    """hw.vmm.vmx.cap.posted_interrupts flipped 40 times while two threads send 10,000 interrupts: none lost or
    doubled, and after each change the running vCPU's VMCS has the pin-based control, its vector and descriptor
    as vmx_vcpu_init would have set them for that value, and its local APIC follows them."""
    from engine import Hypervisor
    hv = Hypervisor(host_mem_mb=256)
    seen = []

    def flip(vm):
        v = vm.vcpus[0]
        for i in range(40):
            on = i % 2
            hv.tunables.set("hw.vmm.vmx.cap.posted_interrupts", on)
            seen.append((on, bool(v.vmcs["PIN_BASED_CTLS"] & K.PINBASED_POSTED_INTERRUPT), v.vmcs["PIR_DESC"],
                         v.vmcs["PIR_VECTOR"], int(v.ctx[C.APICV])))
    vm, _ = stress(hv, tmp_path, 5000, (0x50, 0x60), profile="cascadelake", meanwhile=flip)
    pir, vector = vm.vcpus[0].lapic.pir_hpa, hv.tunables.get("hw.vmm.vmx.posted_interrupt_vector")
    want = {0: (False, 0, 0, C.APICV_VID), 1: (True, pir, vector, C.APICV_VID | C.APICV_POSTED)}
    assert len(seen) == 40 and all(row[1:] == want[row[0]] for row in seen), seen


def test_nmi_blocks_nmis_until_iret_then_the_window_opens(hv, tmp_path):
    """A self-NMI through the ICR runs the NMI handler; a second one sent from inside waits for its IRET."""
    src = LONG_PROLOGUE + MAP_APIC + gate64(2, "nmi") + """
    mov dword ptr [r15 + 0x310], 0          # ICR high: APIC ID 0
    mov dword ptr [r15 + 0x300], 0x400      # ICR low: NMI, physical destination
    mov rcx, 100000
1:  dec rcx
    jnz 1b
    mov r8, [rip + count]
    mov r9, [rip + inside]
    cli
    hlt
nmi:
    inc qword ptr [rip + count]
    cmp qword ptr [rip + count], 1
    jne 2f
    mov dword ptr [r15 + 0x300], 0x400      # a second NMI while this one is being handled
    mov rcx, 1000
3:  dec rcx
    jnz 3b
    mov rax, [rip + count]
    mov [rip + inside], rax                 # still 1: the second NMI is blocked
2:  iretq
""" + LONG_DATA + COUNTER + """
inside: .quad 0
"""
    vm = run(hv, tmp_path, src)
    r = vm.registers()
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert (r["r8"], r["r9"]) == (2, 1)
    v = vm.vcpus[0]
    assert v.counters[stats.VCPU_NMI_COUNT] == 2
    assert v.counters[stats.VMEXIT_NMI_WINDOW] == 1
