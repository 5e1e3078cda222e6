"""Every feature CPUID leaves 1, 7 and 0x80000001 announce is one the guest can use: an instruction of each
runs in raw Unicorn 2.1.4 without #UD, the bits are Unicorn's own Haswell's or carried by the engine, and
the features the real CPU has but Unicorn does not run (AVX, AVX2, FMA, F16C, INVPCID, ...) are not
announced; then the leaves a guest reads for the clocks, as the engine answers them."""
import pytest
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_64, Uc, UcError
from unicorn import x86_const as X

from engine.cpu import profiles as P
from tests.engine.conftest import FLAT_BASE, assemble

# CR4: OSFXSR, OSXMMEXCPT, OSXSAVE, FSGSBASE; CR0: EM off, MP on
PRE = """
    mov rax, cr4
    or rax, 0x50600
    mov cr4, rax
    mov rax, cr0
    and rax, ~4
    or rax, 2
    mov cr0, rax
    lea rdi, [rip + 0x1000]
    and rdi, -64
"""
# (leaf, register, bit): an instruction that needs it
ANNOUNCED = {
    (1, "ecx", 0): "haddpd xmm0, xmm1",                     # SSE3
    (1, "ecx", 1): "pclmulqdq xmm0, xmm1, 0",
    (1, "ecx", 9): "pshufb xmm0, xmm1",                     # SSSE3
    (1, "ecx", 13): "cmpxchg16b [rdi]",
    (1, "ecx", 19): "ptest xmm0, xmm1",                     # SSE4.1
    (1, "ecx", 20): "crc32 eax, ebx\npcmpistri xmm0, xmm1, 0",   # SSE4.2
    (1, "ecx", 22): "movbe eax, [rdi]",
    (1, "ecx", 23): "popcnt rax, rbx",
    (1, "ecx", 25): "aesenc xmm0, xmm1",
    (1, "ecx", 26): "xor ecx, ecx\nmov eax, 3\nxor edx, edx\nxsetbv\nxsave [rdi]\nxrstor [rdi]",
    (1, "ecx", 30): "rdrand rax",
    (1, "edx", 0): "fld1\nfstp st(0)",
    (1, "edx", 4): "rdtsc",
    (1, "edx", 8): "cmpxchg8b [rdi]",
    (1, "edx", 15): "cmovz rax, rbx",
    (1, "edx", 19): "clflush [rdi]",
    (1, "edx", 23): "paddb mm0, mm1\nemms",
    (1, "edx", 24): "fxsave [rdi]\nfxrstor [rdi]",
    (1, "edx", 25): "addps xmm0, xmm1",
    (1, "edx", 26): "addpd xmm0, xmm1",
    (7, "ebx", 0): "rdfsbase rax\nwrgsbase rbx",
    (7, "ebx", 3): "andn rax, rbx, rcx\ntzcnt rax, rbx\nbextr rax, rbx, rcx",   # BMI1
    (7, "ebx", 9): "lea rsi, [rdi + 64]\nmov ecx, 64\nrep movsb",     # ERMS: fast REP MOVSB (a hint)
    (7, "ebx", 8): "pdep rax, rbx, rcx\nrorx rax, rbx, 3\nmulx rax, rbx, rcx\nsarx rax, rbx, rcx",  # BMI2
    (0x80000001, "ecx", 0): "lahf\nsahf",
    (0x80000001, "ecx", 5): "lzcnt rax, rbx",
    (0x80000001, "edx", 27): "rdtscp",
    (0xD1, "eax", 0): "mov eax, 3\nxor edx, edx\nxsaveopt [rdi]",  # CPUID.(EAX=0DH, ECX=1):EAX[0]
}
# Bits the engine carries rather than Unicorn's CPU: the hypervisor bit; TSC-deadline (vmx/hooks.py, io/lapic/timer.py);
# MCE, MTRR, MCA, PAT and TSC_ADJUST (the MSRs of cpu/msrs.py); 1-GByte pages (the TLB fill's walk)
ENGINE = {(1, "ecx", 31), (1, "ecx", 24), (1, "edx", 7), (1, "edx", 12), (1, "edx", 14), (1, "edx", 16),
          (7, "ebx", 1), (0x80000001, "edx", 26)}
# System features no single instruction shows, carried by Unicorn's mode switches or the engine's walk and
# delivery, each with tests of its own: DE, PSE, MSR, PAE, APIC, SEP, PGE, PSE-36; SYSCALL, NX, long mode
SYSTEM = {(1, "edx", b) for b in (2, 3, 5, 6, 9, 11, 13, 17)} | {(0x80000001, "edx", b) for b in (11, 20, 29)}
# Real Haswell or later features Unicorn 2.1.4 does not run: never announced
MISSING = {
    (1, "ecx", 12): "vfmadd132ps xmm0, xmm1, xmm2",         # FMA
    (1, "ecx", 28): "vaddps ymm0, ymm1, ymm2",              # AVX (VEX.256)
    (1, "ecx", 29): "vcvtph2ps xmm0, xmm1",                 # F16C
    (1, "ecx", 3): "lea rax, [rdi]\nxor ecx, ecx\nxor edx, edx\nmonitor",
    (7, "ebx", 5): "vpaddd ymm0, ymm1, ymm2",               # AVX2
    (7, "ebx", 10): "xor eax, eax\ninvpcid rax, [rdi]",
    (7, "ebx", 19): "adcx rax, rbx",                         # ADX
    (7, "ebx", 23): "clflushopt [rdi]",
    (7, "ebx", 29): "sha1rnds4 xmm0, xmm1, 0",
    (7, "ecx", 22): "rdpid rax",
}
REGS = {"eax": 0, "ebx": 1, "ecx": 2, "edx": 3}


def raw_run(tmp_path, code):
    """Run `code` after PRE in a bare Unicorn Haswell (no engine): True if it ran to the end, False on #UD or
    another exception."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x400000)
    uc.mem_write(FLAT_BASE, assemble(PRE + code + "\nmov r15, 0x600d\nhlt", tmp_path))
    uc.hook_add(UC_HOOK_INTR, lambda uc, n, ud: uc.emu_stop())
    try:
        uc.emu_start(FLAT_BASE, 0xFFFFF000, count=100)
    except UcError:
        return False
    return uc.reg_read(X.UC_X86_REG_R15) == 0x600D


def unicorn_cpuid(leaf, sub=0):
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x1000)
    uc.mem_write(0, b"\x0f\xa2\xf4")                      # cpuid; hlt
    uc.reg_write(X.UC_X86_REG_RAX, leaf)
    uc.reg_write(X.UC_X86_REG_RCX, sub)
    uc.emu_start(0, 3)
    return [uc.reg_read(r) for r in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX)]


def announced(profile, key):
    leaf, reg, bit = key
    leaf, sub = (0xD, 1) if leaf == 0xD1 else (leaf, 0)
    regs = profile.cpuid.get((leaf, sub), profile.cpuid.get((leaf, P.ANY), (0, 0, 0, 0)))
    return bool(regs[REGS[reg]] >> bit & 1)


def test_each_announced_feature_runs_in_unicorn(tmp_path):
    """One instruction per announced bit runs without #UD; every announced bit of leaves 1, 7 and 0x80000001
    is either tested here or carried by the engine."""
    for profile in P.PROFILES.values():
        for leaf, reg in ((1, "ecx"), (1, "edx"), (7, "ebx"), (7, "ecx"), (0x80000001, "ecx"), (0x80000001, "edx")):
            for bit in range(32):
                key = (leaf, reg, bit)
                if announced(profile, key):
                    assert key in ANNOUNCED or key in ENGINE or key in SYSTEM or \
                        (leaf, reg) == (7, "edx"), (profile.name, key)        # leaf 7 EDX: the MSRs of test_msrs
    for key, code in ANNOUNCED.items():
        assert all(announced(p, key) for p in P.PROFILES.values()), key
        assert raw_run(tmp_path, code), (key, code)


@pytest.mark.parametrize("key", sorted(MISSING))
def test_features_unicorn_does_not_run_are_not_announced(tmp_path, key):
    """AVX, AVX2, FMA, F16C, MONITOR, INVPCID, ADX, CLFLUSHOPT, SHA, RDPID: #UD in Unicorn, absent from CPUID."""
    assert not raw_run(tmp_path, MISSING[key]), key
    assert not any(announced(p, key) for p in P.PROFILES.values()), key


def test_announced_bits_are_unicorns_or_the_engines():
    """The profile's leaf 1, 7 and 0x80000001 feature bits are a subset of what Unicorn's own Haswell answers,
    plus the engine's (ENGINE); SMEP, which Unicorn's answer has, is not announced: the TLB fill's walk does not
    enforce it; leaf 0xD announces the x87 and SSE state only (Unicorn runs no VEX.256 instruction)."""
    for leaf, sub, regs in ((1, 0, ("ecx", "edx")), (7, 0, ("ebx", "ecx", "edx")), (0x80000001, 0, ("ecx", "edx"))):
        native = unicorn_cpuid(leaf, sub)
        for profile in P.PROFILES.values():
            have = profile.cpuid.get((leaf, sub), profile.cpuid.get((leaf, P.ANY)))
            for reg in regs:
                extra = have[REGS[reg]] & ~native[REGS[reg]]
                carried = sum(1 << b for (lf, rg, b) in ENGINE if (lf, rg) == (leaf, reg))
                if (leaf, reg) == (7, "edx"):
                    carried |= P.SPECTRE_2018 | P.CPUID7_EDX_L1D_FLUSH | P.CPUID7_EDX_ARCH_CAPABILITIES
                assert extra & ~carried == 0, (profile.name, hex(leaf), reg, hex(extra))
    assert unicorn_cpuid(7)[1] & P.CPUID7_EBX_SMEP
    assert all(not p.cpuid[(7, 0)][1] & P.CPUID7_EBX_SMEP for p in P.PROFILES.values())
    assert all(p.cpuid[(0xD, 0)][0] == 3 for p in P.PROFILES.values())


@pytest.mark.parametrize("name", sorted(P.PROFILES))
def test_clock_leaves(name):
    """Leaf 0x15: TSC = crystal * EBX / EAX, with the crystal in ECX (a known frequency for Linux); 0x16: base,
    maximum and bus MHz; 0x40000000: "bhyve bhyve " and 0x40000010 as its highest leaf; 0x40000010: the TSC and
    the LAPIC bus in kHz; 0x80000007: invariant TSC; the highest basic leaf is 0x16."""
    p = P.get(name)
    den, num, crystal, _ = p.cpuid[(0x15, P.ANY)]
    base, top, bus, _ = p.cpuid[(0x16, P.ANY)]
    assert p.cpuid[(0, P.ANY)][0] == 0x16
    assert crystal * num == p.tsc_hz * den and crystal == p.crystal_hz
    assert crystal // 1000 * num // den == p.tsc_hz // 1000          # Linux's sum (32-bit kHz) is exact
    assert base == p.tsc_hz // 1000000 and top >= base and bus == 100
    assert p.cpuid[(0x40000000, P.ANY)][0] == 0x40000010
    assert p.cpuid[(0x40000010, P.ANY)][:2] == (p.tsc_hz // 1000, crystal // 1000)
    assert p.cpuid[(0x80000007, P.ANY)][3] == P.CPUID_80000007_EDX_INVARIANT_TSC
    assert (crystal // 1000) * num < 1 << 32                          # Linux multiplies them in 32 bits
