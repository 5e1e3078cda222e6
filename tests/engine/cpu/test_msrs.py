"""RDMSR and WRMSR as the modeled CPU answers them: each MSR's value, what a write keeps, and the #GP(0) the SDM
gives for a broken rule, run by a guest that catches its #GPs; the table kernel against a plain-Python twin."""
import random

import numpy as np
import pytest

from engine import stats
from engine.cpu import msrs as M
from engine.cpu import profiles as P
from engine.firmware import mtrr_settings
from tests.engine.conftest import assemble
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE, gate64

OPS, RESULTS, END_OP = 0x300000, 0x340000, 0xFFFFFFFFFFFFFFFF
U64 = (1 << 64) - 1
GP = "#GP"
# Each op is (MSR, is-write, value). For each the guest records EDX:EAX after it and whether it took #GP(0):
# the #GP handler notes it and resumes after the instruction (r14).
RUNNER = LONG_PROLOGUE + gate64(13, "gp") + """
    mov rsi, {ops}
    mov rdi, {results}
next:
    mov rcx, [rsi]
    cmp rcx, -1
    je done
    mov rax, [rsi + 16]
    mov rdx, rax
    shr rdx, 32
    xor r13, r13
    lea r14, [rip + after]
    cmp qword ptr [rsi + 8], 0
    jne 1f
    rdmsr
    jmp after
1:  wrmsr
after:
    shl rdx, 32
    mov eax, eax
    or rax, rdx
    mov [rdi], rax
    mov [rdi + 8], r13
    add rsi, 24
    add rdi, 16
    jmp next
done:
    cli
    hlt
gp:
    pop r12
    mov r13, 1
    mov [rsp], r14
    iretq
""".format(ops=OPS, results=RESULTS) + LONG_DATA


def run_ops(hv, tmp_path, ops, profile="haswell", name="msrs"):
    """Run the ops on vCPU 0 of a fresh VM; returns (VM, [value read, or GP]) in order (a write's entry is
    None unless it took #GP)."""
    vm = hv.create_vm(name, mem_mb=16, profile=profile)
    vm.load(assemble(RUNNER, tmp_path), "msrs.bin", kind="flat64")
    words = [w for index, is_write, value in ops for w in (index, int(is_write), value & U64)] + [END_OP, 0, 0]
    vm.memory_access.write(OPS, np.array(words, np.uint64).tobytes())
    vm.start()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    raw = np.frombuffer(vm.memory_access.read(RESULTS, 16 * len(ops)), "<u8").reshape(-1, 2)
    out = []
    for (index, is_write, _), (value, gp) in zip(ops, raw.tolist()):
        out.append(GP if gp else None if is_write else value)
    return vm, out


def rd(index):
    return (index, False, 0)


def wr(index, value):
    return (index, True, value)


def test_machine_check_msrs(hv, tmp_path):
    """IA32_MCG_CAP is the Haswell's 0xC09 without CMCI (9 banks, threshold status) and read-only; MCG_STATUS
    keeps RIPV/EIPV/MCIP and refuses its reserved bits; there is no MCG_CTL (MCG_CTL_P is clear); each bank's
    CTL takes any value, STATUS/ADDR/MISC only 0s (SDM 15.3.2.2-4); bank 9 does not exist. Linux's
    mce_rdmsrl(IA32_MCG_STATUS) is what panicked it ("MCA architectural violation!")."""
    vm, got = run_ops(hv, tmp_path, [
        rd(0x179), wr(0x179, 0x809), rd(0x17A), wr(0x17A, 7), rd(0x17A), wr(0x17A, 8), wr(0x17A, 0), rd(0x17B),
        wr(0x400, U64), rd(0x400), rd(0x401), wr(0x401, 0), wr(0x401, 1), wr(0x402, 1 << 40), wr(0x403, 0),
        rd(0x400 + 4 * 8 + 1), wr(0x400 + 4 * 8, 5), rd(0x400 + 4 * 8), rd(0x400 + 4 * 9), wr(0x400 + 4 * 9 + 1, 0)])
    assert got == [0x809, GP, 0, None, 7, GP, None, GP,
                   None, U64, 0, None, GP, GP, None,
                   0, None, 5, GP, GP]
    assert vm.vcpus[0].counters[stats.MSR_UNKNOWN] == 3          # MCG_CTL, MC9_CTL, MC9_STATUS


def test_mtrrs_as_the_firmware_left_them_and_their_rules(hv, tmp_path):
    """IA32_MTRRCAP: 10 variable ranges, fixed ranges, WC (0x50A), read-only. The firmware's settings (WB by
    default, VGA UC, the hole below 4 GiB UC) on every range; a PHYSBASE/PHYSMASK bit at or above MAXPHYADDR
    (39) or in their reserved low bits, a reserved memory type (2, 3, 7), DEF_TYPE's reserved bits: #GP (SDM
    11.11.2). There is no 11th range (0x214). Linux's get_mtrr_state reads them all with plain rdmsr."""
    fw = mtrr_settings(16 << 20, 39)
    assert fw[0x2FF] == 0xC06 and fw[0x200] == 0xC0000000 and fw[0x201] == 0x7FC0000800
    ops = [rd(0xFE), wr(0xFE, 0x50A), rd(0x2FF), rd(0x200), rd(0x201), rd(0x202), rd(0x250), rd(0x259), rd(0x26F),
           wr(0x202, 0x80000006), rd(0x202), wr(0x202, 1 << 39 | 6), wr(0x202, 0x100 | 6), wr(0x202, 2),
           wr(0x202, 3), wr(0x202, 7), wr(0x203, 0x7FFFF00800), wr(0x203, (1 << 39) | 0x800), wr(0x203, 0x400),
           wr(0x2FF, 0x1C06), wr(0x2FF, 0xC02), wr(0x2FF, 0x806), rd(0x2FF),
           wr(0x250, 0x0606060606060607), wr(0x250, 0x0606060602060606), wr(0x26C, 0x0404040404040404), rd(0x26C),
           rd(0x212), rd(0x213), rd(0x214), wr(0x214, 0)]
    _, got = run_ops(hv, tmp_path, ops)
    assert got == [0x50A, GP, 0xC06, 0xC0000000, 0x7FC0000800, 0, 0x0606060606060606, 0, 0x0606060606060606,
                   None, 0x80000006, GP, GP, GP,
                   GP, GP, None, GP, GP,
                   GP, GP, None, 0x806,
                   GP, GP, None, 0x0404040404040404,
                   0, 0, GP, GP]


def test_pat_and_the_native_registers_rules(hv, tmp_path):
    """IA32_PAT (power-on 0x0007040600070406) takes the PAT types 0, 1, 4-7 only (SDM Table 11-10); EFER's
    reserved bits, a non-canonical LSTAR/CSTAR/KERNEL_GS_BASE/FS_BASE/SYSENTER_EIP, TSC_AUX's high half: #GP.
    Valid writes take effect in Unicorn's registers."""
    linux_pat = 0x0407050600070106
    _, got = run_ops(hv, tmp_path, [
        rd(0x277), wr(0x277, linux_pat), rd(0x277), wr(0x277, 0x0000000000000002), wr(0x277, 0x0800000000000000),
        rd(0x277), wr(0xC0000080, 1 << 1 | 0x500), wr(0xC0000080, 0xD01), rd(0xC0000080),
        wr(0xC0000082, 0x0000800000000000), wr(0xC0000082, 0xFFFF800000001000), rd(0xC0000082),
        wr(0xC0000083, 1 << 48), wr(0xC0000102, 0x00007FFFFFFFF000), rd(0xC0000102), wr(0xC0000100, 1 << 63),
        wr(0x176, 0x8000000000000000), wr(0xC0000103, 1 << 32), wr(0xC0000103, 5), rd(0xC0000103)])
    assert got == [0x0007040600070406, None, linux_pat, GP, GP,
                   linux_pat, GP, None, 0xD01,
                   GP, None, 0xFFFF800000001000,
                   GP, None, 0x00007FFFFFFFF000, GP,
                   GP, GP, None, 5]


def test_apic_base_misc_enable_and_the_unknown(hv, tmp_path):
    """IA32_APIC_BASE cannot move or be disabled (bhyve's vlapic_set_apicbase: #GP); IA32_MISC_ENABLE is bhyve's
    fast strings + BTS/PEBS unavailable, a write may only change XD disable (ignored); an MSR the CPU does not
    have is #GP and counted, the x2APIC range among them (no x2APIC is announced)."""
    vm, got = run_ops(hv, tmp_path, [
        rd(0x1B), wr(0x1B, 0xFEE00900), wr(0x1B, 0xFEE00100), wr(0x1B, 0xFED00900), rd(0x1B),
        rd(0x1A0), wr(0x1A0, 0x1801 | 1 << 34), rd(0x1A0), wr(0x1A0, 0x1800), wr(0x1A0, 0x1801 | 1 << 22),
        rd(0x3A), wr(0x3A, 5), rd(0xCE), rd(0x12345), wr(0x12345, 1), rd(0x802), wr(0x80B, 0), rd(0x48),
        wr(0x49, 1), rd(0xC0010000)])
    assert got == [0xFEE00900, None, GP, GP, 0xFEE00900,
                   0x1801, None, 0x1801, GP, GP,
                   1, GP, 34 << 8 | 34 << 40, GP, GP, GP, GP, GP, GP, GP]
    assert vm.vcpus[0].counters[stats.MSR_UNKNOWN] == 7


def test_application_processors_apic_base_lacks_the_bsp_flag(hv):
    """IA32_APIC_BASE bit 8 (BSP) on vCPU 0 only; every vCPU has the firmware's MTRRs, the same on each."""
    vm = hv.create_vm("smp", mem_mb=16, cpus=3)
    assert [M.get(v.msrs, 0x1B) for v in vm.vcpus] == [0xFEE00900, 0xFEE00800, 0xFEE00800]
    tables = [{i: M.get(v.msrs, i) for i in range(0x200, 0x2FF + 1) if i in P.get("haswell").msrs} for v in vm.vcpus]
    assert tables[0] == tables[1] == tables[2] and tables[0][0x2FF] == 0xC06


def test_speculation_controls_on_the_2018_microcode(hv, tmp_path):
    """Skylake announces IBRS/IBPB, STIBP, SSBD (CPUID.7.0:EDX 26, 27, 31): IA32_SPEC_CTRL takes bits 0-2,
    IA32_PRED_CMD bit 0 and is write-only, IA32_FLUSH_CMD bit 0 (SDM vol. 4 Table 2-2); Haswell has none."""
    _, got = run_ops(hv, tmp_path, [rd(0x48), wr(0x48, 7), rd(0x48), wr(0x48, 8), wr(0x49, 1), wr(0x49, 2),
                                    rd(0x49), wr(0x10B, 1), wr(0x10B, 3), rd(0x10A)], profile="skylake")
    assert got == [0, None, 7, GP, None, GP, GP, None, GP, 0]


# -- the table kernel and its twin --------------------------------------------------------------------------
def twin_access(row, is_write, value):
    """SDM rules, written out: (result, value read, value kept) for one row (index, kind, held, mask, check)."""
    _, kind, held, mask, check = row
    if not is_write:
        return {M.MSR_NATIVE: (M.NATIVE, 0, held), M.MSR_VALUE: (M.OK, held, held),
                M.MSR_READONLY: (M.OK, held, held), M.MSR_WRITEONLY: (M.GP, 0, held)}.get(kind, (M.SPECIAL, 0, held))
    if kind == M.MSR_READONLY:
        return M.GP, 0, held
    types = [(value >> (8 * b)) & 0xFF for b in range(8)]
    ok = {M.CHECK_RESERVED: value & mask == 0,
          M.CHECK_CANONICAL: value >> 47 in (0, 0x1FFFF),
          M.CHECK_MEMTYPE: value & mask == 0 and types[0] in (0, 1, 4, 5, 6),
          M.CHECK_MEMTYPES8: all(t in (0, 1, 4, 5, 6) for t in types),
          M.CHECK_PAT: all(t in (0, 1, 4, 5, 6, 7) for t in types),
          M.CHECK_ZERO_OR_ONES: value in (0, U64),
          M.CHECK_UNCHANGED: (value ^ held) & mask == 0}[check]
    if not ok:
        return M.GP, 0, held
    if kind == M.MSR_NATIVE:
        return M.NATIVE, 0, held
    if kind == M.MSR_VALUE:
        return M.OK, 0, held if check == M.CHECK_UNCHANGED else value
    if kind == M.MSR_WRITEONLY:
        return M.OK, 0, held
    return M.SPECIAL, 0, held


def interesting(rng, mask):
    """Values near a rule's edges: 0, all ones, each memory type in each byte, single bits, random."""
    values = {0, U64, mask, ~mask & U64, 0x0606060606060606, 0x0007040600070406, 1 << 47, 0xFFFF800000000000,
              0x00007FFFFFFFFFFF}
    for t in range(9):
        at = 8 * rng.randrange(8)
        values.add((0x0606060606060606 & ~(0xFF << at)) | t << at)
    values |= {1 << b for b in range(64)} | {rng.getrandbits(64) for _ in range(20)}
    return sorted(values)


@pytest.mark.parametrize("profile", sorted(P.PROFILES))
def test_access_kernel_matches_its_twin(profile):
    """msrs.access on every row of the profile and its neighbours with edge and random values, reads and
    writes, against twin_access; a kept value lands in the table, a refused one does not."""
    rng = random.Random(16)
    table = P.get(profile).msr_table()
    flat = table.reshape(-1)
    rows = {int(r[0]): [int(x) for x in r] for r in table}
    for index in sorted({i + d for i in rows for d in (-1, 0, 1)}):
        row = rows.get(index)
        for value in interesting(rng, row[3] if row else 0):
            for is_write in (False, True):
                result, at, read = M.access(flat, len(table), np.uint64(index), is_write, np.uint64(value))
                if row is None:
                    assert (int(result), int(at)) == (M.UNKNOWN, -1), hex(index)
                    continue
                want, want_read, kept = twin_access(row, is_write, value)
                assert (int(result), int(read)) == (want, want_read), (hex(index), hex(value), is_write)
                assert int(table[at, M.COL_VALUE]) == kept, (hex(index), hex(value))
                row[2] = kept


def test_mcg_ctl_exists_only_with_mcg_ctl_p():
    """A CPU whose IA32_MCG_CAP has MCG_CTL_P (bit 8) has IA32_MCG_CTL, which takes all 0s or all 1s (SDM
    15.3.1.3); the profiles' CPUs have none (a Haswell's MCG_CAP 0xC09 lacks the bit)."""
    with_ctl = P._mca_msrs(P.MCG_CTL_P | 2)
    table = np.array([(i,) + row for i, row in sorted(with_ctl.items())], np.uint64)
    flat, n = table.reshape(-1), len(table)
    assert sorted(with_ctl) == [0x179, 0x17A, 0x17B] + list(range(0x400, 0x408))
    for value, want in ((U64, M.OK), (0, M.OK), (1, M.GP), (U64 - 1, M.GP)):
        assert int(M.access(flat, n, np.uint64(0x17B), True, np.uint64(value))[0]) == want
    assert all(0x17B not in p.msrs for p in P.PROFILES.values())
