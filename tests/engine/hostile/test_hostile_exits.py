"""Hostile instructions at the in-kernel exits: I/O and MSR instructions across the end of guest memory and
with any prefixes, the other readers of instruction bytes, RDMSR/WRMSR over the 32-bit MSR space and at
CPL 3, CPUID over the leaf space.

An instruction that starts on the last guest page goes on at guest-physical 0 (MAP_PAST_END): the host page
after the guest's last one belongs to someone else, and the kernels must read the guest's bytes, not its.
Every result is compared with a plain-Python twin of the architected answer.
"""
import random

import numpy as np
from unicorn import x86_const as X

from engine.core import ctx as C
from engine.cpu import msrs as MSRS
from engine.cpu import profiles as P
from engine.io.lapic import regs as L
from engine.vmx import exits as E
from engine.vmx import faults as fault_kinds
from engine.vmx import hooks, intr, vmx
from tests.engine.conftest import assemble
from tests.engine.cpu.test_msrs import twin_access
from tests.engine.hostile.conftest import END, MAP_PAST_END, MEM_MB, exits, faults
from tests.engine.test_inject import TO_USER

PORT = 0x1234                       # no device: IN reads all ones, OUT is dropped


def poke(address, data):
    """Guest code storing `data` at a linear address, a byte at a time."""
    return "".join("    mov byte ptr [%#x], %#x\n" % (address + i, b) for i, b in enumerate(data))


def run_at(address, before, after):
    """Guest code that puts an instruction's bytes `before` the end of guest memory and `after` it (at
    guest-physical 0), then calls it; the bytes end with RET."""
    return poke(address, before) + poke(END, after) + "    mov rax, %#x\n    call rax\n" % address


def twin_io(code, port, size, is_in):
    """SDM Table 28-5 and the instruction length from the guest's bytes: prefixes, then the opcode."""
    rep = False
    i = 0
    while code[i] in (0x66, 0x67, 0xF2, 0xF3):
        rep = rep or code[i] in (0xF2, 0xF3)
        i += 1
    op = code[i]
    string, imm = 0x6C <= op <= 0x6F, 0xE4 <= op <= 0xE7
    return E.io_qualification(port, size, is_in, string, rep, imm), i + (2 if imm else 1)


def test_io_exit_decodes_the_guests_bytes_across_the_end_of_memory(guest):
    """An I/O instruction whose prefixes are the last bytes of guest memory and whose opcode is on the next
    page: the exit's qualification and length (SDM Table 28-5) come from the guest's bytes there, not from
    the host memory after the guest's."""
    cases = [  # (bytes before the end, bytes after it, port, size, IN)
        ([0x66], [0x6F, 0xC3], PORT, 2, False),                  # outsw
        ([0xF3, 0x66], [0x6F, 0xC3], PORT, 2, False),            # rep outsw
        ([0x66], [0xE7, 0x80, 0xC3], 0x80, 2, False),            # out 0x80, ax
        ([0xF3], [0x6C, 0xC3], PORT, 1, True),                   # rep insb
        ([0x67, 0x66, 0xF3], [0x6D, 0xC3], PORT, 2, True),       # rep insw, 32-bit addresses
        ([0x66, 0x66, 0x66], [0xEF, 0xC3], PORT, 2, False),      # out dx, ax
    ]
    src = MAP_PAST_END + "    mov dx, %#x\n" % PORT
    for before, after, _, _, _ in cases:
        src += "    mov ecx, 1\n    mov esi, 0x280000\n    mov edi, 0x280000\n"
        src += run_at(END - len(before), before, after)
    vm = guest(src + "    cli\n    hlt\n")
    got = [(row["qualification"], row["length"], row["rip"]) for row in exits(vm, E.INOUT)]
    want = [twin_io(before + after, port, size, is_in) + (END - len(before),)
            for before, after, port, size, is_in in cases]
    assert got == [(int(q), n, rip) for q, n, rip in want]


def test_msr_instructions_with_prefixes_and_across_pages_exit(guest):
    """RDMSR/WRMSR with any prefixes, or split over the end of guest memory, are RDMSR/WRMSR: an unknown MSR
    is #GP(0) (SDM vol. 2B RDMSR), a known one is read and RIP moves past all of its bytes; LOCK is #UD;
    a prefixed HLT halts (exit 12). Before, these ran natively in Unicorn: unknown MSRs read 0."""
    src = MAP_PAST_END + """
    lea r14, [rip + 1f]
    mov ecx, 0x12345
    .byte 0x66, 0x0F, 0x32
1:  lea r14, [rip + 1f]
    .byte 0x40, 0x48, 0x0F, 0x32
1:  lea r14, [rip + 1f]
    .byte 0x3E, 0x66, 0x0F, 0x30
1:  lea r14, [rip + 1f]
    .byte 0xF0, 0x0F, 0x32
1:  lea r14, [rip + 1f]
    mov ecx, 0x1B
    .byte 0x48, 0x0F, 0x32
    mov r13, rax
1:  lea r14, [rip + 1f]
    mov ecx, 0x12345
""" + run_at(END - 1, [0x0F], [0x32, 0xC3]) + """
1:  lea r14, [rip + 1f]
""" + run_at(END - 1, [0x66], [0x0F, 0x32, 0xC3]) + """
1:  xor r14, r14
    cli
    .byte 0x66, 0xF4
    mov r10, 0xBAD
"""
    vm = guest(src)
    assert [(v, err) for v, err, _ in faults(vm)] == [(13, 0), (13, 0), (13, 0), (6, 0), (13, 0), (13, 0)]
    assert [rip for _, _, rip in faults(vm)][-2:] == [END - 1, END - 1]
    r = vm.registers()
    assert r["r13"] == 0xFEE00900 and r["r10"] == 0                 # IA32_APIC_BASE; the HLT held
    lengths = [row["length"] for row in exits(vm, E.RDMSR)]
    assert lengths == [3, 4, 3, 2, 3]                              # 66 0F 32, 40 48 0F 32, 48 0F 32, split ones
    assert len(exits(vm, E.WRMSR)) == 1 and len(exits(vm, E.HLT)) == 1


def test_msr_at_cpl3_is_gp_without_an_exit(guest):
    """RDMSR and WRMSR at CPL 3: #GP(0), which comes before the VM exit (SDM vol. 2B RDMSR; SDM 26.1.1)."""
    src = TO_USER + """
user:
    lea r14, [rip + 1f]
    mov ecx, 0x1B
    rdmsr
1:  xor r14, r14
    mov ecx, 0x10B
    mov eax, 1
    xor edx, edx
    wrmsr
"""
    vm = guest(src)
    assert [(v, err) for v, err, _ in faults(vm)] == [(13, 0), (13, 0)]
    assert not exits(vm, E.RDMSR) and not exits(vm, E.WRMSR)


def parked_past_end(hv, tmp_path, before, after):
    """A loaded, never started flat64 guest with linear END mapped to guest-physical 0 and an instruction's
    bytes put around the end of guest memory; returns its vCPU."""
    vm = hv.create_vm("split%d" % len(hv.vms), mem_mb=MEM_MB)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    v = vm.vcpus[0]
    table = v.uc.reg_read(X.UC_X86_REG_CR3) & ~0xFFF
    for _ in range(2):                                        # PML4 -> PDPT -> PD
        table = int.from_bytes(vm.memory_access.read(table, 8), "little") & ~0xFFF
    vm.memory_access.write(table + 8 * 8, (0x87).to_bytes(8, "little"))
    vm.memory_access.write(END - len(before), bytes(before))
    vm.memory_access.write(0, bytes(after))
    v.uc.reg_write(X.UC_X86_REG_RIP, END - len(before))
    return v


def test_split_instruction_bytes_are_the_guests(hv, tmp_path):
    """Every reader of instruction bytes follows the guest's next page, never the host's bytes after the
    guest's last page: VMCALL found by the #UD exit (0F 01 C1), the IRETQ that ends NMI blocking (48 CF),
    INT n as CD 03 (a software interrupt of 2 bytes) told from INT3 (CC, a software exception of 1, SDM 24.8.3)."""
    v = parked_past_end(hv, tmp_path, [0x0F, 0x01], [0xC1])
    assert vmx.exit_process(v.ctx, vmx.UC_ERR_INSN_INVALID) == vmx.EXITCODE_VMINSN
    v = parked_past_end(hv, tmp_path, [0x48], [0xCF])
    intr.note_opcode(v.ctx)
    assert L.block(v.ctx)[L.IB_LAST_OPCODE] == 0xCF
    v = parked_past_end(hv, tmp_path, [0xCD], [0x03])
    v.uc.reg_write(X.UC_X86_REG_RIP, END + 1)                 # after INT n, as Unicorn reports it
    assert fault_kinds.software_event(v.ctx, 3) == (E.TYPE_SWINTR, 2)


def msr_indices(rng, table):
    """Every MSR of the table and its neighbours, the boundaries of the architectural ranges, random ones."""
    near = {i + d for i in table for d in range(-3, 4)}
    edges = {0, 1, 0x1FFF, 0x2000, 0x3FFF, 0x4000, 0x40000000, 0x400000FF, 0x7FFFFFFF, 0x80000000, 0xBFFFFFFF,
             0xC0000000, 0xC0001FFF, 0xC0002000, 0xC0010000, 0xC0011FFF, 0xFFFFFFFE, 0xFFFFFFFF}
    return sorted({i & 0xFFFFFFFF for i in near | edges} | {rng.getrandbits(32) for _ in range(300)})


def test_msr_exit_over_the_msr_space(hv, tmp_path):
    """msr_exit on every interesting ECX, high RCX bits set (ignored, SDM vol. 2B RDMSR), random values: the
    profile's value, a stored write, Unicorn's own register (native: nothing changes), the TSC family
    emulated, or #GP(0) with RIP on the instruction, as cpu/test_msrs.py's twin of the SDM rules says."""
    vm = hv.create_vm("msr", mem_mb=16)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    v, rng = vm.vcpus[0], random.Random(8)
    twin = {int(r[0]): [int(x) for x in r] for r in v.msrs}
    rip = 0x200000
    for index in msr_indices(rng, twin):
        for is_write in (False, True):
            value = rng.getrandbits(64)
            v.uc.reg_write(X.UC_X86_REG_RIP, rip)
            v.uc.reg_write(X.UC_X86_REG_RCX, rng.getrandbits(32) << 32 | index)
            v.uc.reg_write(X.UC_X86_REG_RAX, value & 0xFFFFFFFF)
            v.uc.reg_write(X.UC_X86_REG_RDX, value >> 32)
            v.ctx[C.EXIT] = C.X_NONE
            efer = v.uc.reg_read(X.UC_X86_REG_MSR, 0xC0000080)
            hooks.msr_exit(v.ctx, rip, is_write, 2)
            got = (int(v.ctx[C.EXIT]), v.uc.reg_read(X.UC_X86_REG_RIP))
            row = twin.get(index)
            result, read, kept = twin_access(row, is_write, value) if row else (MSRS.UNKNOWN, 0, None)
            if result == MSRS.NATIVE and is_write and index == 0xC0000080 and (value ^ efer) & 1 << 8:
                result = MSRS.GP                    # EFER.LME cannot change with paging on
            if result == MSRS.NATIVE:
                assert got == (C.X_NONE, rip), hex(index)
            elif result in (MSRS.OK, MSRS.SPECIAL):
                assert got == (C.X_NONE, rip + 2), hex(index)
                if result == MSRS.OK and not is_write:
                    assert (v.uc.reg_read(X.UC_X86_REG_RAX), v.uc.reg_read(X.UC_X86_REG_RDX)) == \
                        (read & 0xFFFFFFFF, read >> 32), hex(index)
                row[2] = kept
            else:
                assert got == (C.X_GP, rip) and int(v.ctx[C.ERRCODE]) == 0, hex(index)
    moved = {0x3B, 0x6E0}           # TSC writes step IA32_TSC_ADJUST; TSC_DEADLINE ignores writes outside its mode
    assert [int(r[2]) for r in v.msrs if int(r[0]) not in moved] == \
        [twin[int(r[0])][2] for r in v.msrs if int(r[0]) not in moved]


def twin_cpuid(profile, leaf, subleaf, vcpu, leaf_b, cr4=0):
    """SDM vol. 2A CPUID: a leaf above the highest basic or extended one answers as the highest basic leaf;
    the hypervisor range 40000000H-4FFFFFFFH is bhyve's, clamped to its highest (x86_emulate_cpuid); OSXSAVE
    follows CR4.OSXSAVE."""
    table = profile.cpuid
    basic, extended, vm_high = table[(0, P.ANY)][0], table[(0x80000000, P.ANY)][0], table[(0x40000000, P.ANY)][0]
    if 0x40000000 <= leaf <= 0x4FFFFFFF:
        leaf = min(leaf, vm_high)
    elif leaf > (extended if leaf >= 0x80000000 else basic):
        leaf = basic
    regs = list(table.get((leaf, subleaf), table.get((leaf, P.ANY), (0, 0, 0, 0))))
    if leaf == 1:
        regs[1] = (regs[1] & 0x00FFFFFF) | vcpu << 24
        if regs[2] & P.CPUID1_ECX_XSAVE and cr4 & P.CR4_OSXSAVE:
            regs[2] |= P.CPUID1_ECX_OSXSAVE
    elif leaf == 0xB:           # bhyve's x86_emulate_cpuid, CPUID_0000_000B, with threads = cores = 1
        level = {0: 1, 1: 2}.get(subleaf & 0xFFFFFFFF, 0) if leaf_b else 0      # SMT, CORE, invalid
        regs = [0, 1 if level else 0, level << 8 | (subleaf & 0xFF), vcpu if level else 0]
    return regs


def cpuid_leaves(rng, profile):
    leaves = {leaf + d for leaf, _ in profile.cpuid for d in (-1, 0, 1)}
    leaves |= {0x40000000 + i for i in range(4)} | {0x4FFFFFFF, 0x50000000, 0x7FFFFFFF, 0x80000009,
                                                    0xBFFFFFFF, 0xC0000000, 0xC0000001, 0xFFFFFFFE, 0xFFFFFFFF}
    return sorted({leaf & 0xFFFFFFFF for leaf in leaves} | {rng.getrandbits(32) for _ in range(400)})


def test_cpuid_kernel_over_the_leaf_space():
    """emulate_cpuid on every profile leaf, its neighbours, the range edges and random leaves, with random
    subleaves, every profile, APIC IDs and leaf 0xB on and off: the twin's answer each time."""
    rng = random.Random(10)
    for name, profile in P.PROFILES.items():
        table = profile.cpuid_table().reshape(-1)
        for leaf in cpuid_leaves(rng, profile):
            for subleaf in (0, 1, rng.getrandbits(32)):
                vcpu, leaf_b, cr4 = rng.randrange(256), rng.randrange(2), rng.getrandbits(32)
                got = [int(x) for x in hooks.emulate_cpuid(table, len(profile.cpuid), leaf, subleaf, vcpu, leaf_b,
                                                           cr4)]
                assert got == twin_cpuid(profile, leaf, subleaf, vcpu, leaf_b, cr4), (name, hex(leaf), hex(subleaf))


def test_cpuid_exits_over_the_leaf_space(guest):
    """CPUID executed by a guest with hostile EAX/ECX (high halves set): the registers the twin says."""
    rng = random.Random(11)
    profile = P.get("haswell")
    cases = [(leaf, rng.getrandbits(32)) for leaf in rng.sample(cpuid_leaves(rng, profile), 48)]
    src = "    mov rdi, 0x310000\n"
    for leaf, subleaf in cases:
        src += """
    mov rax, {a:#x}
    mov rcx, {c:#x}
    cpuid
    mov [rdi], eax
    mov [rdi + 4], ebx
    mov [rdi + 8], ecx
    mov [rdi + 12], edx
    add rdi, 16
""".format(a=rng.getrandbits(32) << 32 | leaf, c=rng.getrandbits(32) << 32 | subleaf)
    vm = guest(src + "    cli\n    hlt\n")
    got = np.frombuffer(vm.memory_access.read(0x310000, 16 * len(cases)), "<u4").reshape(-1, 4).tolist()
    cr4 = vm.registers()["cr4"]
    assert got == [twin_cpuid(profile, leaf, subleaf, 0, 1, cr4) for leaf, subleaf in cases]
    assert len(exits(vm, E.CPUID)) == len(cases)
