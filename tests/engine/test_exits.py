"""Each exit type, recorded the way VT-x reports it: reason, qualification, length, addresses, counts."""
import time

from engine import stats
from engine.vmx import exits

HALT = "cli\nhlt"


def last_exit(vm):
    v = vm.vcpus[0].vmcs
    return v["EXIT_REASON"], v["EXIT_QUALIFICATION"], v["EXIT_INSTRUCTION_LENGTH"]


def test_cpuid_exit_and_bhyve_signature(flat64):
    """CPUID leaf 0x40000000 returns 'bhyve bhyve ' and is counted as exit 10."""
    vm = flat64("mov eax, 0x40000000\ncpuid\nmov r8, rbx\nmov r9, rcx\nmov r10, rdx\n" + HALT)
    regs = vm.registers()
    sig = b"".join(regs[r].to_bytes(4, "little") for r in ("r8", "r9", "r10"))
    assert sig == b"bhyve bhyve "
    assert vm.vcpus[0].counters[stats.VMEXIT_CPUID] == 1


def test_cpuid_leaf1_reports_hypervisor_and_apic_id(flat64):
    """CPUID.1: hypervisor bit set, VMX hidden, APIC ID of vCPU 0."""
    vm = flat64("mov eax, 1\ncpuid\nmov r8, rcx\nmov r9, rbx\n" + HALT)
    regs = vm.registers()
    assert regs["r8"] >> 31 & 1 and not regs["r8"] >> 5 & 1
    assert regs["r9"] >> 24 == 0


def test_io_qualifications(hv, tmp_path):
    """IN dx, OUT imm, OUTSB, REP OUTSW: size, direction, string, rep, immediate and port as SDM Table 28-5."""
    from tests.engine.conftest import assemble
    cases = [
        ("mov dx, 0x3fd\nin al, dx", dict(port=0x3FD, size=1, **{"in": True}, string=False, rep=False, immediate=False), 1),
        ("mov eax, 0\nout 0xe9, eax", dict(port=0xE9, size=4, **{"in": False}, string=False, rep=False, immediate=True), 2),
        ("lea rsi, [rip]\nmov dx, 0x80\noutsb", dict(port=0x80, size=1, **{"in": False}, string=True, rep=False, immediate=False), 1),
        ("lea rsi, [rip]\nmov dx, 0x80\nmov rcx, 5\nrep outsw", dict(port=0x80, size=2, **{"in": False}, string=True, rep=True, immediate=False), 3),
    ]
    for i, (src, want, length) in enumerate(cases):
        vm = hv.create_vm("io%d" % i, mem_mb=16)
        # an 'int3' with no IDT would triple fault: end with a port the test can see as the last I/O instead
        vm.load(assemble(src + "\nmov rbx, 0x1234\ncli\nhlt", tmp_path), "g.bin", kind="flat64")
        vm.start()
        vm.wait(states=("suspended",), timeout=20)
        v = vm.vcpus[0]
        assert v.counters[stats.VMEXIT_INOUT] == 1, src         # a REP string instruction is one exit
        io = [e for e in v.exit_log() if e["reason"] == exits.INOUT]
        assert len(io) == 1 and io[0]["name"] == "IO_INSTRUCTION"
        assert exits.decode_io(io[0]["qualification"]) == want, src
        assert io[0]["length"] == length, src


def test_hlt_exit_and_halt_detection(flat64):
    """HLT with interrupts off: exit 12, length 1, RIP at the HLT; the VM suspends with reason halt."""
    vm = flat64("nop\n" + HALT)
    reason, _, length = last_exit(vm)
    assert (reason, length) == (exits.HLT, 1)
    assert vm.vcpus[0].exit_log()[-1]["rip"] == 0x200002
    assert vm.vcpus[0].vmcs["GUEST_RIP"] == 0x200003          # handled: the guest resumes after it
    assert vm.suspend_reason == "halt"


def test_higher_half_code_is_scanned_and_runs(flat64):
    """Code run at a linear address above 2**63, where higher-half kernels live, is scanned for exits like any
    other: its HLT exits there (the scan once handed numba such an address as an int64 and overflowed)."""
    vm = flat64("""
        mov rax, cr3
        mov rbx, [rax]
        mov [rax + 511 * 8], rbx          # PML4[511] = PML4[0]: 0xFFFFFF8000000000 + x maps to x
        lea rcx, [rip + high]
        mov rax, 0xFFFFFF8000000000
        add rax, rcx
        jmp rax
    high:
        mov r8, 42
    """ + HALT)
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert vm.registers()["r8"] == 42
    assert vm.vcpus[0].exit_log()[-1]["rip"] >> 39 == (1 << 25) - 1


def test_rdmsr_known_and_unknown(flat64):
    """RDMSR of IA32_APIC_BASE reads bhyve's value; an unknown MSR raises #GP in the guest (no IDT: triple fault)."""
    vm = flat64("mov ecx, 0x1b\nrdmsr\nmov r8, rax\n" + HALT)
    assert vm.registers()["r8"] == 0xFEE00900
    assert vm.vcpus[0].counters[stats.VMEXIT_RDMSR] == 1
    vm2 = flat64("mov ecx, 0x12345\nrdmsr\n" + HALT, name="gp")
    assert vm2.suspend_reason == "triplefault"
    assert vm2.vcpus[0].counters[stats.VMEXIT_RDMSR] == 1


def test_wrmsr_efer_runs_natively(flat64):
    """WRMSR to EFER takes effect (NXE set) without an exit: bhyve's MSR bitmap lets EFER through (vmx_init's
    guest_msr_rw, the VMCS saves and loads it); IA32_PAT's WRMSR is intercepted and counted."""
    vm = flat64("mov ecx, 0xc0000080\nrdmsr\nor eax, 0x800\nwrmsr\n"
                "mov ecx, 0x277\nrdmsr\nwrmsr\n" + HALT)
    assert vm.registers()["efer"] & 0x800
    counters = vm.vcpus[0].counters
    assert (counters[stats.VMEXIT_RDMSR], counters[stats.VMEXIT_WRMSR]) == (1, 1)


def test_access_outside_memory_is_an_ept_violation(flat64):
    """A load beyond guest memory: exit 48 with GPA and GLA, qualification 'read, translation'; VM suspends naming it."""
    vm = flat64("mov rax, 0x30000000\nmov rbx, [rax]\n" + HALT, mem_mb=64)
    v = vm.vcpus[0].vmcs
    assert v["EXIT_REASON"] == exits.EPT_VIOLATION
    assert v["GUEST_PHYSICAL_ADDRESS"] == 0x30000000 and v["GUEST_LINEAR_ADDRESS"] == 0x30000000
    d = exits.decode_ept_violation(v["EXIT_QUALIFICATION"])
    assert d["access"] == "read" and d["gla_valid"] and d["translation"]
    assert vm.suspend_reason == "ept_violation"
    assert "0x30000000" in vm.suspend_message


def test_triple_fault_suspends_only_that_vm(hv, tmp_path):
    """A guest with no IDT that executes int3 triple-faults: exit 2, reason triplefault; another VM runs on."""
    from tests.engine.conftest import assemble
    bad = hv.create_vm("bad", mem_mb=16)
    bad.load(assemble("lidt [rip + zero]\nint3\nhlt\nzero: .quad 0, 0", tmp_path), "bad.bin", kind="flat64")
    good = hv.create_vm("good", mem_mb=16)
    good.load(assemble("mov rcx, 100000\n1: dec rcx\njnz 1b\nmov r9, 7\ncli\nhlt", tmp_path), "good.bin", kind="flat64")
    bad.start()
    good.start()
    assert bad.wait(states=("suspended",), timeout=20) == "suspended"
    assert bad.suspend_reason == "triplefault"
    assert bad.vcpus[0].vmcs["EXIT_REASON"] == exits.TRIPLE_FAULT
    good.wait(states=("suspended",), timeout=20)
    assert good.suspend_reason == "halt" and good.registers()["r9"] == 7


def test_runaway_loop_can_be_paused_and_powered_off(hv, tmp_path):
    """A guest spinning forever is paused (an external-interrupt exit), resumed, and powered off."""
    from tests.engine.conftest import assemble
    vm = hv.create_vm("loop", mem_mb=16)
    vm.load(assemble("1: inc rax\njmp 1b", tmp_path), "loop.bin", kind="flat64")
    vm.start()
    vm.pause()
    assert vm.wait(states=("paused",), timeout=10) == "paused"
    first = vm.registers()["rax"]
    for _ in range(200):                  # a pause may land before the guest ran an instruction: retry
        vm.resume()
        time.sleep(0.005)
        vm.pause()
        vm.wait(states=("paused",), timeout=10)
        if vm.registers()["rax"] > first:
            break
    assert vm.registers()["rax"] > first
    assert vm.vcpus[0].counters[stats.VMEXIT_EXTINT] >= 1
    vm.poweroff()
    assert vm.state == "suspended" and vm.suspend_reason == "poweroff"


def test_io_exits_decode_across_a_mode_switch_in_one_entry(hv, tmp_path):
    """The I/O exit path remembers CR0.PE within an entry; the guest's own MOV CR0 must not leave it stale.

    A boot sector runs from CS=0x07C0 (linear = CS*16 + IP), does `out 0x80, al` (2 bytes), switches to
    protected mode with a flat CS and does `out dx, al` (1 byte), with no exit to userspace in between."""
    from tests.engine.conftest import assemble
    src = """
        ljmp 0x07c0, offset real - 0x7c00
    real:
        mov ax, 0x07c0
        mov ds, ax
        out 0x80, al
        lgdt [gdtr - 0x7c00]
        mov eax, cr0
        or eax, 1
        mov cr0, eax
        ljmp 0x08, offset prot
    .code32
    prot:
        mov dx, 0x80
        out dx, al
        out 0x80, al
        cli
        hlt
    .p2align 3
    gdt: .quad 0, 0x00cf9a000000ffff
    gdtr: .word 15
        .long gdt
    .org 510
    .word 0xaa55
    """
    vm = hv.create_vm("modes", mem_mb=16)
    vm.load(assemble(src, tmp_path, bits=16, base=0x7C00), "boot.img", kind="bootsector")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=20) == "suspended" and vm.suspend_reason == "halt"
    io = [e for e in vm.vcpus[0].exit_log() if e["reason"] == exits.INOUT]
    assert [(exits.decode_io(e["qualification"])["immediate"], e["length"]) for e in io] == \
        [(True, 2), (False, 1), (True, 2)]
