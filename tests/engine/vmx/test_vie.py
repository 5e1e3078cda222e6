"""The MOV decoder of the device-access fast path (vmx/vie.py) against capstone, an independent x86 decoder, on
generated encodings; and guests whose every MOV form reaches the APIC page and the I/O APIC's, in 64-bit and
32-bit code, with the registers and memory each instruction leaves checked."""
import random

import capstone
import numpy as np
from capstone import x86_const as CX

from engine.vmx import cpuctx
from engine.vmx import vie

REGS64 = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi"] + ["r%d" % i for i in range(8, 16)]
SEGS = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
OPCODES = [b"\x88", b"\x89", b"\x8a", b"\x8b", b"\xc6", b"\xc7", b"\xa0", b"\xa1", b"\xa2", b"\xa3",
           b"\x0f\xb6", b"\x0f\xb7", b"\x0f\xbe", b"\x0f\xbf"]


def encoding(rng, bits):
    """A MOV form with random prefixes, ModRM, SIB, displacement and immediate, padded with random bytes."""
    prefixes = bytearray()
    for _ in range(rng.choice((0, 0, 1, 2))):
        prefixes.append(rng.choice((0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65)))
    if bits == 64 and rng.random() < 0.6:
        prefixes.append(0x40 | rng.randrange(16))
    op = rng.choice(OPCODES)
    modrm = rng.randrange(256)
    if op in (b"\xc6", b"\xc7"):
        modrm &= ~0x38
    if rng.random() < 0.1:
        modrm |= 0xC0                               # a register operand: not a memory access
    rest = bytes(rng.randrange(256) for _ in range(16))
    body = op if 0xA0 <= op[0] <= 0xA3 else op + bytes([modrm])
    return bytes(prefixes) + body + rest


def reg_index(name):
    """(index, high8) of a general register's name, of any width."""
    for base in ("ah", "ch", "dh", "bh"):
        if name == base:
            return "acdb".index(base[0]), 1
    table = {}
    for i, r in enumerate(REGS64):
        table[r] = i
        if i < 8:
            table["e" + r[1:]] = i
            table[r[1:]] = i
        else:
            table[r + "d"], table[r + "w"], table[r + "b"] = i, i, i
    table.update({"al": 0, "cl": 1, "dl": 2, "bl": 3, "spl": 4, "bpl": 5, "sil": 6, "dil": 7})
    return table[name], 0


def test_decode_matches_capstone_on_generated_encodings():
    """For 20,000 generated MOV/MOVZX/MOVSX encodings in 64- and 32-bit code: whenever our decoder takes one,
    capstone reads the same instruction: length, memory operand (base, index, scale, displacement, segment
    override, access size), register operand (its number, AH-BH, its size) or immediate; and the forms it
    must take (no LOCK/REP, a memory operand, 32- or 64-bit addressing) it does take."""
    rng = random.Random(5)
    d = np.zeros(vie.D_SIZE, np.int64)
    taken = 0
    for i in range(20000):
        bits = rng.choice((32, 64))
        code = encoding(rng, bits)
        buf = np.frombuffer(code, np.uint8)[:vie.INSN_MAX].copy()
        vie.decode(buf, len(buf), bits, d)
        cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
        cs.detail = True
        insn = next(cs.disasm(bytes(buf), 0x1000), None)
        mem = [o for o in insn.operands if o.type == CX.X86_OP_MEM] if insn is not None else []
        addr16 = insn is not None and mem and insn.addr_size == 2
        must = insn is not None and insn.mnemonic in ("mov", "movzx", "movsx", "movabs") and len(mem) == 1 and \
            not addr16 and not any(p in (0xF0, 0xF2, 0xF3) for p in insn.prefix)
        assert (d[vie.D_KIND] != vie.NONE) == bool(must), (code[:insn.size if insn else 15].hex(), insn and insn.op_str)
        if not must:
            continue
        taken += 1
        m = mem[0].mem
        where = (code[:insn.size].hex(), bits, insn.mnemonic, insn.op_str)
        assert d[vie.D_LENGTH] == insn.size, where
        assert d[vie.D_WIDTH] == mem[0].size, where
        base = insn.reg_name(m.base) if m.base else None
        index = insn.reg_name(m.index) if m.index else None
        index = None if index in ("riz", "eiz") else index          # SIB without an index
        if base in ("rip", "eip"):
            assert d[vie.D_BASE] == vie.BASE_RIP, where
        elif base is None:
            assert d[vie.D_BASE] in (vie.BASE_NONE, vie.BASE_RIP), where     # disp32 alone in 32-bit code
        else:
            assert d[vie.D_BASE] == reg_index(base)[0], where
        assert d[vie.D_INDEX] == (reg_index(index)[0] if index else -1), where
        if index:
            assert d[vie.D_SCALE] == m.scale, where
        assert np.uint64(d[vie.D_DISP]) & np.uint64(2 ** 64 - 1) == np.uint64(m.disp & (2 ** 64 - 1)) or \
            (d[vie.D_ADDR] == 32 and (int(d[vie.D_DISP]) - m.disp) % (1 << 32) == 0), where
        override = [SEGS[p] for p in insn.prefix if p in SEGS]
        if override:
            assert d[vie.D_SEG] == ["es", "cs", "ss", "ds", "fs", "gs"].index(override[0]), where
        regs = [o for o in insn.operands if o.type == CX.X86_OP_REG]
        imms = [o for o in insn.operands if o.type == CX.X86_OP_IMM]
        if regs:
            index_, high8 = reg_index(insn.reg_name(regs[0].reg))
            assert (d[vie.D_REG], d[vie.D_HIGH8], d[vie.D_DSIZE]) == (index_, high8, regs[0].size), where
            assert d[vie.D_KIND] == (vie.STORE if insn.operands[0].type == CX.X86_OP_MEM else vie.LOAD), where
            assert d[vie.D_EXTEND] == (vie.ZERO if insn.mnemonic == "movzx" else vie.SIGN
                                       if insn.mnemonic == "movsx" else 0), where
        else:
            assert d[vie.D_KIND] == vie.STORE_IMM and len(imms) == 1, where
            assert (int(d[vie.D_IMM]) - imms[0].imm) % (1 << (8 * mem[0].size)) == 0, where
    assert taken > 12000


def test_register_writes_match_the_cpu_rules():
    """MOVSX of a byte or a word into each register size, and the extension kernel against Python's ints."""
    rng = random.Random(6)
    for _ in range(5000):
        width, size = rng.choice(((1, 2), (1, 4), (1, 8), (2, 4), (2, 8), (4, 4), (8, 8)))
        value = rng.getrandbits(8 * width)
        want = value - (1 << (8 * width)) if value >> (8 * width - 1) else value
        want &= (1 << (8 * size)) - 1
        assert int(vie.extend(np.uint64(value), width, vie.SIGN, size)) == want, (width, size, hex(value))
        assert int(vie.extend(np.uint64(value), width, vie.ZERO, size)) == value


def test_segment_prefixes_are_the_cpu_segments():
    assert [vie.segment_prefix(b) for b in (0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x90)] == \
        [cpuctx.ES, cpuctx.CS, cpuctx.SS, cpuctx.DS, cpuctx.FS, cpuctx.GS, -1]


OUT = 0x400000
FORMS = """
    mov r14, 0xFEC00000
    mov rdi, {out}
    mov qword ptr [rdi], 0                  # the output page's first touch
    mov byte ptr [r14], 1                   # C6: IOREGSEL = 1, the I/O APIC's version register
    mov eax, dword ptr [r14 + 0x10]         # 8B
    mov [rdi + 8], rax
    mov rbx, -1
    mov bx, word ptr [r15 + 0x30]           # 66 8B from the APIC's version register: the upper bits stay
    mov [rdi + 16], rbx
    mov rcx, -1
    mov rbp, r15
    mov ch, byte ptr [rbp + 0x30]           # 8A into CH (no REX: RBP as the base, SS by default)
    mov [rdi + 24], rcx
    movsx rdx, byte ptr [r15 + 0xE0]        # 0F BE: DFR's low byte, 0xFF
    mov [rdi + 32], rdx
    mov rsi, -1
    movsx esi, word ptr [r15 + 0xE0]        # 0F BF into a 32-bit register: the upper half cleared
    mov [rdi + 40], rsi
    .byte 0xA1                              # A1: mov eax, [moffs64] with the APIC's version register
    .quad 0xFEE00030
    mov [rdi + 48], rax
    mov ecx, 0xC0000100
    mov eax, 0xFEE00000
    xor edx, edx
    wrmsr                                   # FS.base = the APIC page
    mov eax, dword ptr fs:[0x30]            # a segment override: FS.base + 0x30
    mov [rdi + 56], rax
    mov ecx, 8
    mov eax, dword ptr [r15 + rcx * 4 + 0x10]   # SIB with an index: 0x30 again
    mov [rdi + 64], rax
    mov rax, 0x1234567890ABCD40
    mov qword ptr [r15 + 0x80], rax         # 48 89: TPR gets the low byte, its reserved bytes stay 0
    mov r8, qword ptr [r15 + 0x80]
    mov [rdi + 72], r8
    mov qword ptr [r15 + 0x80], -16         # 48 C7: an immediate sign-extended to 8 bytes
    mov r9d, dword ptr [r15 + 0x80]
    mov [rdi + 80], r9
    mov ah, 0x10
    mov rbp, r14
    mov byte ptr [rbp], ah                  # 88 from AH: IOREGSEL = pin 0's low dword
    mov r10d, dword ptr [r14 + 0x10]        # masked (bit 16)
    mov [rdi + 88], r10
    movzx r12d, word ptr [r15 + 0x32]       # 0F B7: the version register's high word
    mov [rdi + 104], r12
    mov word ptr [r14], 0x0001              # 66 C7
    mov r11d, dword ptr [r14]
    mov [rdi + 96], r11
    cli
    hlt
""".format(out=OUT)


def test_every_mov_form_reaches_the_device_and_the_register(hv, tmp_path):
    """Each MOV form the fast path decodes, on the I/O APIC's and the APIC's pages: the value the device gives,
    written to the register as the CPU writes it (16- and 8-bit loads keep the rest, 32-bit ones clear the upper
    half, MOVSX sign-extends), stores and immediates reaching the device, moffs and segment-override addresses."""
    from engine.io.lapic import regs as L
    from tests.engine.io.test_vlapic_guest import MAP_APIC, run
    from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE
    vm = run(hv, tmp_path, LONG_PROLOGUE + MAP_APIC + FORMS + LONG_DATA)
    assert vm.suspend_reason == "halt", vm.suspend_message
    got = np.frombuffer(vm.memory_access.read(OUT + 8, 8 * 13), "<u8").tolist()
    ver = L.VERSION
    assert got == [0x00170011, (2 ** 64 - 1) & ~0xFFFF | ver & 0xFFFF, (2 ** 64 - 1) & ~0xFF00 | (ver & 0xFF) << 8,
                   2 ** 64 - 1, 0xFFFFFFFF, ver, ver, ver, 0x40, 0xF0, 0x10000, 0x0001, ver >> 16], \
        [hex(x) for x in got]
