"""Every exit qualification the engine produces, checked against the SDM's table for its reason.

The tables below are the Intel SDM's (Vol. 3C, "Exit Qualification for ..." in 28.2.1 of the editions since
2023, 27.2.1 before; the interruption-information format in 25.9.2 / 24.9.2), written out as data. Each
kind of exit is then driven by a small guest and its qualification compared with the value the table gives:
EPT violations (48) of every cause the model has, I/O instructions (30), APIC writes (56) and exceptions
(0) with their interruption information and error code. The engine produces no CR-access (28), APIC-access
(44) or task-switch (9) exit, so none is checked here.
"""
import time

import pytest

from engine import Hypervisor
from engine import stats as S
from engine.vmx import exits as E
from engine.vmx.hooks import ept_qualification, walk_qualification
from tests.engine.conftest import assemble, stopped
from tests.engine.io.test_vlapic_guest import MAP_APIC

# -- the SDM's tables ---------------------------------------------------------------------------------
# Table 28-7, "Exit Qualification for EPT Violations": bit -> meaning
EPT_TABLE = {
    0: "data read",
    1: "data write",
    2: "instruction fetch",
    3: "readable: AND of bit 0 of the EPT entries used (0 when one was not present)",
    4: "writable: AND of bit 1",
    5: "executable: AND of bit 2",
    7: "guest linear-address field valid",
    8: "access to the translation of a linear address (1) or to a paging-structure entry (0); 0 if bit 7 is 0",
}
# Table 28-5, "Exit Qualification for I/O Instructions": field -> (low bit, width)
IO_TABLE = {"size - 1": (0, 3), "direction (1 = IN)": (3, 1), "string": (4, 1), "REP": (5, 1),
            "operand encoding (1 = immediate)": (6, 1), "port": (16, 16)}
# 28.2.1: "For APIC-write VM exits, bits 11:0 are the offset of the APIC-page register written; the rest 0"
APIC_WRITE_OFFSET_BITS = 0xFFF
# Table 25-17 (24-15), "Format of the VM-Exit Interruption-Information Field": field -> (low bit, width)
INTR_INFO_TABLE = {"vector": (0, 8), "type": (8, 3), "error code valid": (11, 1),
                   "NMI unblocking due to IRET": (12, 1), "valid": (31, 1)}
HARDWARE_EXCEPTION = 3
# 28.2.1: for a #PF exit the qualification is the linear address that caused it; for other exceptions 0
# except #DB. Error codes: #GP and #PF push one, #DE and #UD do not (Vol. 3A Table 6-1).


def field(value, name, table):
    low, width = table[name]
    return (value >> low) & ((1 << width) - 1)


def ept_from_table(access, rwx, linear_valid, translation):
    """Table 28-7 assembled bit by bit."""
    q = 1 << {"read": 0, "write": 1, "fetch": 2}[access]
    q |= (rwx & 7) << 3
    q |= (1 << 7) if linear_valid else 0
    q |= (1 << 8) if linear_valid and translation else 0
    return q


def io_from_table(port, size, is_in, string, rep, immediate):
    parts = {"size - 1": size - 1, "direction (1 = IN)": int(is_in), "string": int(string), "REP": int(rep),
             "operand encoding (1 = immediate)": int(immediate), "port": port}
    return sum(value << IO_TABLE[name][0] for name, value in parts.items())


def intr_info_from_table(vector, kind, error_code):
    return vector | kind << 8 | (1 << 11 if error_code else 0) | 1 << 31


def test_the_encoders_follow_the_tables():
    """The kernels' encoders against the tables, over every input they take."""
    kinds = {"read": 0, "write": 1, "fetch": 2}            # mmu/walk.py ACCESS_*
    for access, kind in kinds.items():
        for rwx in range(8):
            for translation in (False, True):
                assert int(ept_qualification(kind, rwx, translation)) == \
                    ept_from_table(access, rwx, True, translation)
    for port in (0, 0x80, 0x3FD, 0xFFFF):
        for size in (1, 2, 4):
            for bits in range(16):
                flags = [bool(bits >> i & 1) for i in range(4)]
                assert E.io_qualification(port, size, *flags) == io_from_table(port, size, *flags)
    assert E.interruption_info(14, E.TYPE_HWEXC, True) == intr_info_from_table(14, HARDWARE_EXCEPTION, True)
    assert all(bit in EPT_TABLE for bit in range(9) if bit != 6)


# -- EPT violations, driven by guests ----------------------------------------------------------------------
ACCESSES = """
    lea r15, [rip + at_read]
    lea r14, [rip + at_write]
    mov rax, 0x800000
at_read:
    mov rbx, [rax]                  # first touch of 0x800000: a read of a page the EPT does not map
    mov rax, 0x900000
at_write:
    mov qword ptr [rax], 1          # first touch of 0x900000: a write
    mov rax, 0x800000
    lea r13, [rip + at_dirty]
at_dirty:
    mov qword ptr [rax], 2          # the page read above, now written
    cli
    hlt
"""


def rows_at(vm, rip, reason=E.EPT_VIOLATION):
    return [r["qualification"] for r in vm.vcpus[0].exit_log() if r["reason"] == reason and r["rip"] == rip]


def boot(hv, tmp_path, src, name="q", mem_mb=64):
    vm = hv.create_vm(name, mem_mb=mem_mb)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    vm.start()
    return stopped(vm, 30)


@pytest.mark.parametrize("hw_ad", [1, 0])
def test_ept_violations_of_first_touch_and_dirty_tracking(tmp_path, hw_ad):
    """A first-touch read is 0x181 (read; entry not present so bits 5:3 are 0; linear address valid; a
    translation), a first-touch write 0x182. With EPT A/D emulated (hw.vmm.ept.use_hw_ad_bits=0) the page read
    first is mapped R+X until it is written: that write is 0x1AA, the entry's R and X in bits 3 and 5."""
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.ept.use_hw_ad_bits": hw_ad})
    try:
        vm = boot(hv, tmp_path, ACCESSES)
        regs = vm.registers()
        assert rows_at(vm, regs["r15"]) == [0x181] == [ept_from_table("read", 0, True, True)]
        assert rows_at(vm, regs["r14"]) == [0x182] == [ept_from_table("write", 0, True, True)]
        dirty = [ept_from_table("write", 0b101, True, True)] if not hw_ad else []
        assert rows_at(vm, regs["r13"]) == dirty
        if not hw_ad:
            assert dirty == [0x1AA]
    finally:
        for vm in list(hv.vms.values()):
            vm.poweroff()


PAGING = """
    lea r15, [rip + at]
    mov rax, cr3
    mov qword ptr [rax + 8], 0x900003   # PML4[1]: a PDPT at 0x900000, a page the guest never touched
    mov rax, 0x8000000000
at:
    mov rbx, [rax]                      # the walk reads PDPT[0] there: an EPT violation on a paging structure;
    cli                                 # the entry is 0, so a #PF follows (no IDT: triple fault)
    hlt
"""


@pytest.mark.parametrize("hw_ad", [1, 0])
def test_ept_violation_on_a_guest_paging_structure(tmp_path, hw_ad):
    """A guest page-table page reached for the first time by the CPU's walk: bit 8 clear (a paging-structure
    access), bits 5:3 clear (not present); with EPT A/D the access counts as a write (SDM 29.3.3.2): 0x82, else
    the read of the entry: 0x81."""
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.ept.use_hw_ad_bits": hw_ad})
    try:
        vm = boot(hv, tmp_path, PAGING)
        want = ept_from_table("write" if hw_ad else "read", 0, True, False)
        assert rows_at(vm, vm.registers()["r15"]) == [want] == [0x82 if hw_ad else 0x81]
        assert vm.suspend_reason == "triplefault"
    finally:
        for vm in list(hv.vms.values()):
            vm.poweroff()


FETCH = """
    lea r15, [rip + target]
    mov rdi, 0xA00000
    mov eax, [r15]                  # copy the 8 bytes of code at target to a fresh page
    mov [rdi], eax
    mov eax, [r15 + 4]
    mov [rdi + 4], eax
    jmp rdi
target:
    mov r8d, 7
    cli
    hlt
"""


def test_ept_violation_on_execute_of_a_written_page(flat64):
    """Code the guest wrote to a fresh page: its first fetch is an execute violation on an entry that allows
    read and write (the model keeps execute until the page is scanned): fetch, R and W, 0x19C."""
    vm = flat64(FETCH)
    assert vm.registers()["r8"] == 7
    assert rows_at(vm, 0xA00000) == [0x19C] == [ept_from_table("fetch", 0b011, True, True)]


def test_access_outside_memory_has_no_permissions(flat64):
    """No memory behind the address: the walk stops at a missing entry, bits 5:3 are 0 (was 0x1b9)."""
    vm = flat64("mov rax, 0x30000000\nmov rbx, [rax]\ncli\nhlt\n", mem_mb=64)
    assert vm.vcpus[0].vmcs["EXIT_QUALIFICATION"] == 0x181 == ept_from_table("read", 0, True, True)


# -- I/O instructions ---------------------------------------------------------------------------------------
def test_io_qualifications_exact(hv, tmp_path):
    """IN DX, OUT imm8 with EAX, OUTSB and REP OUTSW: the whole 64-bit qualification as Table 28-5 builds it."""
    cases = [
        ("mov dx, 0x3fd\nin al, dx", io_from_table(0x3FD, 1, True, False, False, False)),
        ("mov eax, 0\nout 0xe9, eax", io_from_table(0xE9, 4, False, False, False, True)),
        ("lea rsi, [rip]\nmov dx, 0x80\noutsb", io_from_table(0x80, 1, False, True, False, False)),
        ("lea rsi, [rip]\nmov dx, 0x80\nmov rcx, 5\nrep outsw", io_from_table(0x80, 2, False, True, True, False)),
    ]
    assert [q for _, q in cases] == [0x03FD0008, 0x00E90043, 0x00800010, 0x00800031]
    for i, (src, want) in enumerate(cases):
        vm = boot(hv, tmp_path, src + "\ncli\nhlt", name="io%d" % i, mem_mb=16)
        got = [r["qualification"] for r in vm.vcpus[0].exit_log() if r["reason"] == E.IO_INSTRUCTION]
        assert got == [want], src


# -- APIC write ---------------------------------------------------------------------------------------------
def test_apic_write_qualification_is_the_register_offset(flat64):
    """A self-IPI through the ICR (offset 0x300): exit 56, qualification 0x300 and nothing above bit 11."""
    vm = flat64(MAP_APIC + """
        mov dword ptr [r15 + 0x300], 0x40040    # ICR: fixed, vector 0x40, self (IF=0: stays pending)
        cli
        hlt
    """)
    writes = [r["qualification"] for r in vm.vcpus[0].exit_log() if r["reason"] == E.APIC_WRITE]
    assert writes == [0x300] and writes[0] & ~APIC_WRITE_OFFSET_BITS == 0


# -- exceptions in the exception bitmap (hw.vmm.trace_guest_exceptions) ---------------------------------------
IDT_SETUP = """
    lea rdi, [rip + idt]
    lea rax, [rip + spin]
    mov rcx, 32
1:  mov word ptr [rdi], ax
    mov word ptr [rdi + 2], 0x08
    mov word ptr [rdi + 4], 0x8E00
    mov rdx, rax
    shr rdx, 16
    mov word ptr [rdi + 6], dx
    shr rdx, 16
    mov dword ptr [rdi + 8], edx
    mov dword ptr [rdi + 12], 0
    add rdi, 16
    dec rcx
    jnz 1b
    lidt [rip + idtr]
    push rax                        # the stack page the exception's frame goes to, backed beforehand
    pop rax
    lea r15, [rip + at]
at:
    %s
spin:
    jmp spin                        # the handler: spins, so that no later exit hides this one
.align 16
idtr: .word 32 * 16 - 1
      .quad idt
idt:  .fill 32 * 16, 1, 0
"""
EXCEPTIONS = [
    # (instruction, vector, error code or None, qualification: the #PF's linear address)
    ("ud2", 6, None, None),
    ("xor edx, edx\nxor eax, eax\ndiv eax", 0, None, None),
    ("mov ecx, 0x12345\nrdmsr", 13, 0, None),
    ("mov rax, 0x8000000010\nmov rbx, [rax]", 14, 0, 0x8000000010),      # read, not present, CPL 0
    ("mov rax, 0x8000000020\nmov qword ptr [rax], 1", 14, 2, 0x8000000020),   # write, not present
]


@pytest.mark.parametrize("insn,vector,error,address", EXCEPTIONS, ids=["UD", "DE", "GP", "PF-read", "PF-write"])
def test_exception_exit_information(tmp_path, insn, vector, error, address):
    """With every exception in the bitmap, a fault is exit 0 whose interruption information is valid, type 3
    (hardware exception), its vector, bit 11 set when it pushes an error code, that code in EXIT_INTR_ERRCODE,
    and for #PF the linear address in the qualification. Read by a visit while the handler spins: nothing
    exits after it."""
    hv = Hypervisor(host_mem_mb=256, tunables={"hw.vmm.trace_guest_exceptions": 1})
    try:
        vm = hv.create_vm("exc", mem_mb=64)
        vm.load(assemble(IDT_SETUP % insn.replace("\n", "\n    "), tmp_path), "g.bin", kind="flat64")
        vm.start()
        deadline = time.monotonic() + 60
        while vm.vcpus[0].counters[S.VMEXIT_EXCEPTION] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert vm.vcpus[0].counters[S.VMEXIT_EXCEPTION] == 1, vm.state
        got = vm.vcpus[0].visit(lambda v: {k: int(v.vmcs[k]) for k in (
            "EXIT_REASON", "EXIT_QUALIFICATION", "EXIT_INTR_INFO", "EXIT_INTR_ERRCODE")})
        assert got["EXIT_REASON"] == E.EXCEPTION_NMI
        info = got["EXIT_INTR_INFO"]
        assert info == intr_info_from_table(vector, HARDWARE_EXCEPTION, error is not None)
        assert field(info, "vector", INTR_INFO_TABLE) == vector and field(info, "valid", INTR_INFO_TABLE) == 1
        assert got["EXIT_INTR_ERRCODE"] == (error or 0)
        assert got["EXIT_QUALIFICATION"] == (address or 0)
    finally:
        for vm in list(hv.vms.values()):
            vm.poweroff()


# -- exit-reason names: SDM Vol. 3D Appendix C, Table C-1 "Basic Exit Reasons" ---------------------------------
SDM_TABLE_C1 = {
    0: "Exception or non-maskable interrupt (NMI)", 1: "External interrupt", 2: "Triple fault", 3: "INIT signal",
    4: "Start-up IPI (SIPI)", 5: "I/O system-management interrupt (SMI)", 6: "Other SMI", 7: "Interrupt window",
    8: "NMI window", 9: "Task switch", 10: "CPUID", 11: "GETSEC", 12: "HLT", 13: "INVD", 14: "INVLPG",
    15: "RDPMC", 16: "RDTSC", 17: "RSM", 18: "VMCALL", 19: "VMCLEAR", 20: "VMLAUNCH", 21: "VMPTRLD",
    22: "VMPTRST", 23: "VMREAD", 24: "VMRESUME", 25: "VMWRITE", 26: "VMXOFF", 27: "VMXON",
    28: "Control-register accesses", 29: "MOV DR", 30: "I/O instruction", 31: "RDMSR", 32: "WRMSR",
    33: "VM-entry failure due to invalid guest state", 34: "VM-entry failure due to MSR loading", 36: "MWAIT",
    37: "Monitor trap flag", 39: "MONITOR", 40: "PAUSE", 41: "VM-entry failure due to machine-check event",
    43: "TPR below threshold", 44: "APIC access", 45: "Virtualized EOI", 46: "Access to GDTR or IDTR",
    47: "Access to LDTR or TR", 48: "EPT violation", 49: "EPT misconfiguration", 50: "INVEPT", 51: "RDTSCP",
    52: "VMX-preemption timer expired", 53: "INVVPID", 54: "WBINVD or WBNOINVD", 55: "XSETBV", 56: "APIC write",
    57: "RDRAND", 58: "INVPCID", 59: "VMFUNC", 60: "ENCLS", 61: "RDSEED", 62: "Page-modification log full",
    63: "XSAVES", 64: "XRSTORS", 65: "PCONFIG", 66: "SPP-related event", 67: "UMWAIT", 68: "TPAUSE",
    69: "LOADIWKEY",
}


def test_exit_reasons_are_the_sdms():
    """Every basic exit reason 0-69 the SDM defines (35, 38 and 42 unused), with its title; each name is the
    title's words (an abbreviation of the long ones), and the five that bhyve-style names got wrong are the
    SDM's now."""
    assert E.TITLES == SDM_TABLE_C1
    assert sorted(E.REASONS) == sorted(SDM_TABLE_C1) and set(range(70)) - set(E.REASONS) == {35, 38, 42}
    assert [E.reason_name(n) for n in (29, 30, 33, 34, 43)] == [
        "MOV_DR", "IO_INSTRUCTION", "ENTRY_FAILURE_GUEST_STATE", "ENTRY_FAILURE_MSR_LOADING", "TPR_BELOW_THRESHOLD"]
    assert E.reason_name(70) == "UNKNOWN_70" and E.reason_title(70) == ""
    assert len(set(E.REASONS.values())) == len(E.REASONS)
