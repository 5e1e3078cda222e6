"""The guest's TSC: at the frequency CPUID.15H announces, against the guest clock the LAPIC timer and the 8254
count (ratios over an interval, each reading bracketed by two TSC reads), one clock for all vCPUs, and
IA32_TSC_ADJUST, WRMSR to the TSC and the LAPIC's TSC-deadline mode as SDM 17.17 and 10.5.4.1 say."""
import random
import time

import numpy as np
import pytest

from engine import stats
from engine.core import ctx as C
from engine.cpu import msrs as M
from engine.cpu import profiles as P
from engine.cpu import tsc
from tests.engine.conftest import assemble
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64
from tests.engine.io.test_vlapic_guest import MAP_APIC

NS = 10**9
OUT = 0x300000


def twin_ticks(ns, hz):
    return ns * hz // NS


def twin_ns_for(count, hz):
    return -(-count * NS // hz)


def test_tick_arithmetic_matches_its_twin():
    """ticks (ns → TSC, rounded down) and ns_for (TSC → ns, rounded up) against exact integer sums, for each
    profile's frequency and times up to a century."""
    rng = random.Random(17)
    for hz in sorted({p.tsc_hz for p in P.PROFILES.values()} | {1, 999999937}):
        for _ in range(2000):
            ns, count = rng.randrange(1 << 62), rng.randrange(1 << 63)
            assert int(tsc.ticks(ns, hz)) == twin_ticks(ns, hz) % (1 << 64)
            if twin_ns_for(count, hz) < 1 << 64:
                assert int(tsc.ns_for(count, hz)) == twin_ns_for(count, hz)


def test_kernel_reads_the_clock_at_the_profiles_rate(hv):
    """tsc.read on a vCPU bracketed by CLOCK_MONOTONIC readings: over 0.2 s the TSC advances tsc_hz per second
    of that clock, to the nanosecond's tick; each read is above the last; RESET started it near 0."""
    for name in sorted(P.PROFILES):
        vm = hv.create_vm(name, mem_mb=16, profile=name)
        c, hz = vm.vcpus[0].ctx, vm.profile.tsc_hz
        assert int(c[C.TSC_HZ]) == hz
        before0, first, after0 = time.monotonic_ns(), int(tsc.read(c)), time.monotonic_ns()
        assert first < hz * 60                        # the VM was made (RESET) less than a minute ago
        time.sleep(0.2)
        before1, second, after1 = time.monotonic_ns(), int(tsc.read(c)), time.monotonic_ns()
        assert twin_ticks(before1 - after0, hz) - 1 <= second - first <= twin_ticks(after1 - before0, hz) + 1
        reads = [int(tsc.read(c)) for _ in range(1000)]
        assert all(b > a for a, b in zip(reads, reads[1:]))


def test_deadline_ns_matches_its_twin(hv):
    """tsc.deadline_ns: a deadline the TSC has passed is now; one ahead is now plus its TSC ticks in ns rounded
    up, whatever the vCPU's offset (a guest may set its TSC near 2^64). `now` is bracketed by the clock."""
    vm = hv.create_vm("deadline", mem_mb=16)
    c, hz = vm.vcpus[0].ctx, vm.profile.tsc_hz
    rng = random.Random(19)
    for _ in range(300):
        tsc.set_value(vm.vcpus[0], rng.choice([rng.getrandbits(64), (1 << 64) - rng.getrandbits(40), 0]))
        ahead = rng.choice([-rng.getrandbits(40), rng.getrandbits(34), 0, 1])
        before = time.monotonic_ns()
        target = (tsc.value(vm.vcpus[0]) + ahead) % (1 << 64)
        got = int(tsc.deadline_ns(c, np.uint64(target)))
        after = time.monotonic_ns()
        if ahead <= 0:
            assert before <= got <= after
        else:
            earliest = before + twin_ns_for(max(ahead - twin_ticks(after - before, hz) - 2, 0), hz)
            assert earliest <= got <= after + twin_ns_for(ahead, hz), (ahead, got - before)


def test_vcpus_share_one_tsc_from_power_on(hv):
    """Every vCPU of a VM has the same TSC offset (RESET clears their TSCs together); a reset VM starts again."""
    vm = hv.create_vm("smp", mem_mb=16, cpus=4)
    offsets = {v.vmcs["TSC_OFFSET"] for v in vm.vcpus}
    assert len(offsets) == 1
    assert all(v.vmcs["PRI_PROC_BASED_CTLS"] & tsc.PROCBASED_TSC_OFFSET for v in vm.vcpus)


# -- guests measuring their TSC against the guest clock ------------------------------------------------------
CPUID15 = """
    mov eax, 0x15
    xor ecx, ecx
    cpuid
    mov [{out}], rax
    mov [{out} + 8], rbx
    mov [{out} + 16], rcx
""".format(out=OUT)
RDTSC_R10 = "rdtsc\n    shl rdx, 32\n    or rax, rdx\n    mov r10, rax\n"
RDTSC_R11 = "rdtsc\n    shl rdx, 32\n    or rax, rdx\n    mov r11, rax\n"


def store(at, reg):
    return "    mov [%#x], %s\n" % (OUT + at, reg)


def run(hv, tmp_path, src, profile="haswell", name="tscguest", cpus=1, all_vcpus=False):
    vm = hv.create_vm(name, mem_mb=16, profile=profile, cpus=cpus)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start(all_vcpus=all_vcpus)
    assert vm.wait(states=("suspended",), timeout=120) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    return vm


def words(vm, n, at=0):
    return [int(x) for x in np.frombuffer(vm.memory_access.read(OUT + at, 8 * n), "<u8")]


# Sample (TSC before, LAPIC current count, TSC after) twice, 0.3 s of the guest's TSC apart (the interval is
# the guest's own: a busy loop until the TSC has advanced 0.3 * the rate CPUID.15H gives).
LAPIC_RATIO = LONG_PROLOGUE + MAP_APIC + CPUID15 + """
    mov dword ptr [r15 + 0x3E0], 0xB        # DCR: divide by 1
    mov dword ptr [r15 + 0x320], 0x10030    # masked one-shot
    mov dword ptr [r15 + 0x380], 0xFFFFFFFF
""" + "    " + RDTSC_R10 + "    mov r12d, dword ptr [r15 + 0x390]\n    " + RDTSC_R11 + \
    store(24, "r10") + store(32, "r12") + store(40, "r11") + """
    mov rax, [{out}]
    mov rbx, [{out} + 8]
    mov rcx, [{out} + 16]
    imul rcx, rbx
    mov rax, rcx
    xor edx, edx
    div qword ptr [{out}]                   # rax = the TSC's Hz (crystal * EBX / EAX)
    mov rbx, 3
    mul rbx
    mov rbx, 10
    xor edx, edx
    div rbx                                 # 0.3 s of TSC ticks
    mov r13, rax
1:  rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r11                            # 0.3 s from the bracket's inner end
    cmp rax, r13
    jb 1b
""".format(out=OUT) + "    " + RDTSC_R10 + "    mov r12d, dword ptr [r15 + 0x390]\n    " + RDTSC_R11 + \
    store(48, "r10") + store(56, "r12") + store(64, "r11") + "    cli\n    hlt\n" + LONG_DATA


@pytest.mark.parametrize("profile", sorted(P.PROFILES))
def test_guest_tsc_runs_at_the_announced_rate_against_the_lapic_timer(hv, tmp_path, profile):
    """CPUID.15H gives the crystal (the LAPIC timer's clock) and the TSC ratio; over 0.3 s the guest's TSC and
    the timer's current count agree with that ratio: the crystal ticks the timer counted, times EBX/EAX, lie
    between the TSC's narrowest and widest bracket of the two samples."""
    vm = run(hv, tmp_path, LAPIC_RATIO, profile=profile)
    den, num, crystal, t0a, ccr0, t0b, t1a, ccr1, t1b = words(vm, 9)
    p = vm.profile
    assert (den, num, crystal) == p.cpuid[(0x15, P.ANY)][:3] and crystal * num // den == p.tsc_hz
    counted = ccr0 - ccr1                                      # crystal ticks between the two CCR reads
    assert t1a - t0b >= p.tsc_hz * 3 // 10
    low, high = (t1a - t0b) * den, (t1b - t0a) * den
    assert low - 2 * num <= counted * num <= high + 2 * num, (counted * num / den, t1a - t0b, t1b - t0a)


PIT_RATIO = LONG_PROLOGUE + CPUID15 + """
    mov al, 0x34                            # counter 0, LSB then MSB, mode 2 (rate generator)
    out 0x43, al
    xor eax, eax
    out 0x40, al
    out 0x40, al                            # 0: a period of 65536 counts (55 ms)
""" + "".join("""
    {r10}    xor eax, eax
    out 0x43, al                            # latch counter 0
    in al, 0x40
    mov r12b, al
    in al, 0x40
    mov ah, al
    mov al, r12b
    movzx r12, ax
    {r11}""".format(r10=RDTSC_R10, r11=RDTSC_R11) + store(24 + 48 * k, "r10") + store(32 + 48 * k, "r12") +
    store(40 + 48 * k, "r11") + ("""
    mov r13, 20000000                       # 20 ms at 1 GHz and faster: well within the counter's period
1:  rdtsc
    shl rdx, 32
    or rax, rdx
    sub rax, r10
    cmp rax, r13
    jb 1b
""" if k == 0 else "") for k in range(2)) + "    cli\n    hlt\n" + LONG_DATA


def test_guest_tsc_agrees_with_the_8254(hv, tmp_path):
    """Counter 0 counts down at 1.193182 MHz on the same clock: the counts between two latched reads, modulo
    the period (it may wrap if the host stalls the guest), match the TSC's bracket of them modulo the period."""
    vm = run(hv, tmp_path, PIT_RATIO)
    hz = vm.profile.tsc_hz
    _, _, _, t0a, pit0, t0b, _, _, _, t1a, pit1, t1b = words(vm, 12)
    counted = (pit0 - pit1) % 65536
    low, high = (t1a - t0b) * 1193182 // hz - 2, (t1b - t0a) * 1193182 // hz + 2
    assert high - low < 65536 or pytest.skip("the host stalled the guest past a whole 8254 period")
    assert any(low <= counted + 65536 * k <= high for k in range(low // 65536, high // 65536 + 1)), \
        (counted, low, high)


def test_tsc_is_monotonic_across_vcpus(hv, tmp_path):
    """Linux's warp check, as a guest: vCPU 1 reads its TSC after it sees vCPU 0's reading (a release/acquire
    pair through memory), 20000 times; it never reads less. Both run from the same entry (flat64)."""
    src = """
    mov eax, 1
    cpuid
    shr ebx, 24                             # APIC ID: 0 or 1
    mov ecx, 20000
    test ebx, ebx
    jnz reader
writer:
    rdtsc
    shl rdx, 32
    or rax, rdx
    mov [{out} + 8], rax                    # the TSC, then the turn
    mov qword ptr [{out}], 1
1:  cmp qword ptr [{out}], 0
    pause
    jne 1b
    dec ecx
    jnz writer
    cli
    hlt
reader:
    xor r9, r9                              # warps seen
2:  cmp qword ptr [{out}], 1
    pause
    jne 2b
    mov r8, [{out} + 8]
    rdtsc
    shl rdx, 32
    or rax, rdx
    cmp rax, r8
    jae 3f
    inc r9
3:  mov qword ptr [{out}], 0
    dec ecx
    jnz 2b
    mov [{out} + 16], r9
    cli
    hlt
""".format(out=OUT)
    vm = run(hv, tmp_path, src, cpus=2, all_vcpus=True, name="warp")
    assert vm.wait(states=("suspended",), timeout=120) == "suspended"
    for v in vm.vcpus:                                       # both finished (the reader records its count)
        assert v.vmcs["EXIT_REASON"] == 12
    assert words(vm, 1, 16) == [0]


def test_wrmsr_tsc_and_tsc_adjust(hv, tmp_path):
    """WRMSR IA32_TIME_STAMP_COUNTER sets the TSC and adds the step to IA32_TSC_ADJUST; WRMSR IA32_TSC_ADJUST
    moves the TSC by its change (SDM 17.17.3). CPUID.7.0:EBX[1] announces IA32_TSC_ADJUST."""
    big = 1 << 44
    src = """
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov [{out}], rbx
    {r10}    mov ecx, 0x10
    mov eax, 0
    mov edx, {hi}
    wrmsr                                   # TSC = 2^44
    {r11}    mov [{out} + 8], r10
    mov [{out} + 16], r11
    mov ecx, 0x3B
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov [{out} + 24], rax                   # the adjustment: 2^44 - the TSC before
    mov rbx, rax
    {r10}    lea rax, [rbx + 1000000000]
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x3B
    wrmsr                                   # one billion ticks more
    {r11}    mov [{out} + 32], r10
    mov [{out} + 40], r11
    mov ecx, 0x10
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov [{out} + 48], rax
    cli
    hlt
""".format(out=OUT, hi=big >> 32, r10=RDTSC_R10, r11=RDTSC_R11)
    vm = run(hv, tmp_path, src)
    ebx7, before, after, adjust, before2, after2, msr = words(vm, 7)
    assert ebx7 & P.CPUID7_EBX_TSC_ADJUST and not ebx7 & P.CPUID7_EBX_SMEP
    assert big <= after < big + vm.profile.tsc_hz * 10
    written_at = (big - adjust) % (1 << 64)                   # the TSC the WRMSR replaced
    assert before <= written_at < before + vm.profile.tsc_hz * 10   # read before the write, and not long before
    assert after2 - before2 >= 1000000000 and msr > after2
    assert M.get(vm.vcpus[0].msrs, 0x3B) == (adjust + 1000000000) % (1 << 64)


DEADLINE = LONG_PROLOGUE + MAP_APIC + gate64(0x31, "fired") + """
    mov eax, 1
    cpuid
    mov [{out}], rcx                        # CPUID.1:ECX: TSC-deadline is bit 24
    mov ecx, 0x6E0
    mov eax, 1
    xor edx, edx
    wrmsr                                   # one-shot mode: ignored
    rdmsr
    mov [{out} + 8], rax
    mov dword ptr [r15 + 0x320], 0x40031    # LVT timer: TSC-deadline, vector 0x31
    mov dword ptr [r15 + 0x380], 12345      # ignored in TSC-deadline mode
    mov eax, dword ptr [r15 + 0x380]
    mov [{out} + 16], rax
    {r10}    lea rax, [r10 + 2000000000]             # far: 0.6-0.9 s at these rates
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x6E0
    wrmsr
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov [{out} + 24], rax                   # the armed deadline reads back
    mov eax, dword ptr [r15 + 0x390]
    mov [{out} + 32], rax                   # the current count reads 0
    mov dword ptr [r15 + 0x320], 0x00031    # to one-shot: disarmed
    mov dword ptr [r15 + 0x320], 0x40031    # and back: still disarmed
    mov ecx, 0x6E0
    rdmsr
    mov [{out} + 40], rax
    {r10}    lea rax, [r10 + 30000000]               # 10-15 ms ahead
    mov [{out} + 48], rax
    mov rdx, rax
    shr rdx, 32
    mov ecx, 0x6E0
    wrmsr
1:  sti
    hlt
    cmp qword ptr [{out} + 56], 0
    je 1b
    cli
    mov ecx, 0x6E0
    rdmsr
    mov [{out} + 64], rax                   # fired: reads 0 again
    hlt
fired:
    {r11}    mov [{out} + 56], r11
    mov dword ptr [r15 + 0xB0], 0
    iretq
""".format(out=OUT, r10=RDTSC_R10, r11=RDTSC_R11) + LONG_DATA


def test_tsc_deadline_mode(hv, tmp_path):
    """CPUID.1:ECX[24] announces it. IA32_TSC_DEADLINE is ignored outside TSC-deadline mode; in it, a write
    arms the timer and reads back, the initial count is ignored and the current count reads 0; leaving the mode
    disarms it; the interrupt comes when the TSC has reached the deadline, and the MSR then reads 0 (SDM
    10.5.4.1)."""
    vm = run(hv, tmp_path, DEADLINE)
    ecx1, ignored, icr, armed, ccr, after_switch, deadline, fired_at, after_fire = words(vm, 9)
    assert ecx1 & P.CPUID1_ECX_TSC_DEADLINE and not ecx1 & P.CPUID1_ECX_X2APIC
    assert ignored == 0 and icr == 0 and ccr == 0 and after_switch == 0 and after_fire == 0
    assert armed > 0 and fired_at >= deadline
    assert vm.vcpus[0].counters[stats.VLAPIC_INTR_TIMER] == 1


def test_rdtsc_reads_the_cycle_counter_under_l1d_sim(hv, tmp_path):
    """With hw.vmm.l1d_sim on, RDTSC gives the modeled cycle counter (cpu/cachesim.py), as before the TSC
    model: two reads 1000 instructions apart differ by about those instructions' cycles, not by time."""
    hv.tunables.set("hw.vmm.l1d_sim", "1")
    try:
        vm = run(hv, tmp_path, "    " + RDTSC_R10 + "    mov ecx, 500\n1:  dec ecx\n    jnz 1b\n    " + RDTSC_R11 +
                 store(0, "r10") + store(8, "r11") + "    cli\n    hlt\n")
    finally:
        hv.tunables.set("hw.vmm.l1d_sim", "0")
    first, second = words(vm, 2)
    assert 1000 <= second - first <= 1100 and second < 10**6
