"""The MOV forms of a device access, decoded and emulated in the kernel as bhyve's vmm_instruction_emul.c does
for its MMIO exits (vmm_decode_instruction, emulate_mov/emulate_movx): the fast path before the stepper.

Linux's readl/writel and their kin are plain MOVs, and so are almost all device accesses a guest makes. For
those the loop needs no second Unicorn instance: it decodes the instruction (prefixes, REX, ModRM, SIB,
displacement, immediate; SDM vol. 2 ch. 2), computes the operand's linear address and checks it is the
address whose TLB fill was refused, serves the access through the same device code the stepper's memory hooks
call (io/lapic/access.py, vmx/mmio.py), writes the register, and moves RIP past the instruction. Anything else (other
opcodes, LOCK/REP, 16-bit addressing, an operand that crosses a page, the trap flag set, an address that does
not match) goes to the stepper (vmx/emulate.py), which runs any instruction.

Forms (SDM vol. 2B, MOV, MOVZX, MOVSX): 88/89 store a register, 8A/8B load one, C6/C7 /0 store an immediate,
A0-A3 the moffs forms with AL/rAX, 0F B6/B7 zero-extending and 0F BE/BF sign-extending loads.
"""
import numpy as np
from numba import njit
from unicorn import x86_const as X

from ..core import ctx as C
from ..core.regs import rd, wr
from ..io.lapic import access, regs as L
from ..mmu.access import APIC_GPA, fetch_code, pc_linear
from ..native import NUMBA
from . import cpuctx
from . import mmio
from .hooks import INSN_MAX, REG64

# Fields of a decoded instruction (an int64 array of D_SIZE)
D_KIND, D_WIDTH, D_DSIZE, D_EXTEND, D_REG, D_HIGH8, D_IMM, D_LENGTH, D_BASE, D_INDEX, D_SCALE, D_DISP, D_SEG, \
    D_ADDR = range(14)
D_SIZE = 14
NONE, LOAD, STORE, STORE_IMM = 0, 1, 2, 3
BASE_NONE, BASE_RIP = -1, -2
SEG_DEFAULT_DS, SEG_DEFAULT_SS = -1, -2
ZERO, SIGN = 1, 2
RFLAGS_TF = 1 << 8
PAGE = 4096


@njit(**NUMBA)
def segment_prefix(b):
    if b == 0x26:
        return cpuctx.ES
    if b == 0x2E:
        return cpuctx.CS
    if b == 0x36:
        return cpuctx.SS
    if b == 0x3E:
        return cpuctx.DS
    if b == 0x64:
        return cpuctx.FS
    if b == 0x65:
        return cpuctx.GS
    return -1


@njit(**NUMBA)
def signed(value, bytes_):
    """`bytes_` little-endian bytes read as a two's-complement number."""
    if bytes_ >= 8:
        return value
    bits = 8 * bytes_
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


@njit(**NUMBA)
def little(code, at, count):
    value = np.int64(0)
    for i in range(count):
        value |= np.int64(code[at + i]) << (8 * i)
    return value


@njit(**NUMBA)
def modrm(code, n, at, rex, d):
    """ModRM, SIB and displacement at code[at] (32- or 64-bit addressing): the operand's base, index, scale,
    displacement and default segment into `d`; returns the bytes they take, or -1 (a register operand, too
    few bytes)."""
    if at >= n:
        return -1
    m = code[at]
    mod, rm = m >> 6, m & 7
    if mod == 3:
        return -1
    length = 1
    d[D_INDEX], d[D_SCALE], d[D_SEG] = -1, 1, SEG_DEFAULT_DS
    base = np.int64(rm)
    if rm == 4:                                     # a SIB byte (SDM table 2-3)
        if at + 1 >= n:
            return -1
        sib = code[at + 1]
        length += 1
        index = np.int64((sib >> 3) & 7) + (8 if rex & 2 else 0)
        if index != 4:
            d[D_INDEX], d[D_SCALE] = index, 1 << (sib >> 6)
        base = np.int64(sib & 7)
        if base == 5 and mod == 0:
            d[D_BASE] = BASE_NONE
        else:
            d[D_BASE] = base + (8 if rex & 1 else 0)
    elif rm == 5 and mod == 0:
        d[D_BASE] = BASE_RIP                        # RIP-relative in 64-bit mode, disp32 alone otherwise
    else:
        d[D_BASE] = base + (8 if rex & 1 else 0)
    if d[D_BASE] == 4 or d[D_BASE] == 5:
        d[D_SEG] = SEG_DEFAULT_SS                   # rSP or rBP as the base: SS by default (not R12, R13)
    disp = 4 if mod == 2 or (mod == 0 and base == 5) else 1 if mod == 1 else 0
    if at + length + disp > n:
        return -1
    d[D_DISP] = signed(little(code, at + length, disp), disp) if disp else 0
    return length + disp


@njit(**NUMBA)
def decode(code, n, code_size, d):
    """Decode code[:n] for a CPU running `code_size`-bit code (16, 32, 64) into `d`; d[D_KIND] is NONE for
    anything but the MOV forms above with a memory operand and 32- or 64-bit addressing."""
    d[:] = 0
    d[D_KIND] = NONE
    op_size = 16 if code_size == 16 else 32
    addr = code_size
    rex = 0
    seg = -1
    i = 0
    while i < n and i < INSN_MAX:
        b = code[i]
        if b == 0x66:
            op_size = 32 if code_size == 16 else 16
            rex = 0
        elif b == 0x67:
            addr = 32 if code_size != 32 else 16
            rex = 0
        elif segment_prefix(b) >= 0:
            seg = segment_prefix(b)
            rex = 0
        elif b == 0xF0 or b == 0xF2 or b == 0xF3:
            return                                   # LOCK, REP: the stepper's
        elif code_size == 64 and 0x40 <= b <= 0x4F:
            rex = np.int64(b)                        # counts only right before the opcode
        else:
            break
        i += 1
    if i >= n or addr == 16:
        return
    if rex & 8:
        op_size = 64
    op = code[i]
    at = i + 1
    width = op_size // 8
    kind = NONE
    imm_bytes = 0
    if op == 0x0F:
        if at >= n:
            return
        op2 = code[at]
        at += 1
        if op2 == 0xB6 or op2 == 0xB7 or op2 == 0xBE or op2 == 0xBF:
            kind = LOAD
            d[D_EXTEND] = ZERO if op2 < 0xB8 else SIGN
            width = 1 if op2 == 0xB6 or op2 == 0xBE else 2
            d[D_DSIZE] = op_size // 8
    elif op == 0x88 or op == 0x8A:
        kind, width = (STORE if op == 0x88 else LOAD), 1
        d[D_DSIZE] = 1
    elif op == 0x89 or op == 0x8B:
        kind = STORE if op == 0x89 else LOAD
        d[D_DSIZE] = width
    elif (op == 0xC6 or op == 0xC7) and at < n and (code[at] >> 3) & 7 == 0:
        kind = STORE_IMM
        width = 1 if op == 0xC6 else width
        imm_bytes = 1 if op == 0xC6 else 2 if op_size == 16 else 4
    elif 0xA0 <= op <= 0xA3:
        width = 1 if op == 0xA0 or op == 0xA2 else width
        moffs = addr // 8
        if at + moffs > n:
            return
        d[D_BASE], d[D_INDEX], d[D_SCALE], d[D_SEG] = BASE_NONE, -1, 1, SEG_DEFAULT_DS
        d[D_DISP] = little(code, at, moffs) if moffs < 8 else little(code, at, 8)
        d[D_REG], d[D_DSIZE], d[D_WIDTH], d[D_ADDR] = 0, width, width, addr
        d[D_LENGTH] = at + moffs
        d[D_SEG] = seg if seg >= 0 else SEG_DEFAULT_DS
        d[D_KIND] = LOAD if op <= 0xA1 else STORE
        if d[D_LENGTH] > INSN_MAX:
            d[D_KIND] = NONE
        return
    if kind == NONE:
        return
    reg = np.int64((code[at] >> 3) & 7) if at < n else np.int64(0)
    length = modrm(code, n, at, rex, d)
    if length < 0:
        return
    at += length
    if at + imm_bytes > n:
        return
    if imm_bytes:
        d[D_IMM] = signed(little(code, at, imm_bytes), imm_bytes)
    at += imm_bytes
    if at > INSN_MAX:
        return
    d[D_REG] = reg + (8 if rex & 4 else 0)
    if d[D_DSIZE] == 1 and rex == 0 and 4 <= reg <= 7:
        d[D_REG], d[D_HIGH8] = reg - 4, 1          # AH, CH, DH, BH: bits 15:8 of RAX, RCX, RDX, RBX
    d[D_WIDTH], d[D_ADDR], d[D_LENGTH], d[D_KIND] = width, addr, at, kind
    if seg >= 0:
        d[D_SEG] = seg


@njit(**NUMBA)
def linear_of(c, d, raw, rip, code_size):
    """The operand's linear address: base + index * scale + displacement (RIP-relative from the next
    instruction), truncated to the address size, plus the segment's base (only FS and GS in 64-bit mode)."""
    u = np.uint64
    ea = u(np.int64(d[D_DISP]))
    if d[D_BASE] == BASE_RIP and code_size == 64:
        ea += u(rip) + u(d[D_LENGTH])
    elif d[D_BASE] >= 0:
        ea += rd(c, REG64[d[D_BASE]])
    if d[D_INDEX] >= 0:
        ea += rd(c, REG64[d[D_INDEX]]) * u(d[D_SCALE])
    if d[D_ADDR] == 32:
        ea &= u(0xFFFFFFFF)
    seg = d[D_SEG]
    if seg < 0:
        seg = cpuctx.SS if seg == SEG_DEFAULT_SS else cpuctx.DS
    if code_size != 64 or seg == cpuctx.FS or seg == cpuctx.GS:
        ea += cpuctx.seg(raw, seg)[1]
    return ea if code_size == 64 else ea & u(0xFFFFFFFF)


@njit(**NUMBA)
def read_reg(c, index, size, high8):
    value = rd(c, REG64[index])
    if high8:
        return (value >> np.uint64(8)) & np.uint64(0xFF)
    return value if size == 8 else value & np.uint64((1 << (8 * size)) - 1)


@njit(**NUMBA)
def write_reg(c, index, size, high8, value):
    """A register write as the CPU does it: 32-bit results zero the upper half, 8- and 16-bit ones keep the rest."""
    u = np.uint64
    if size == 8:
        wr(c, REG64[index], value)
        return
    if size == 4:
        wr(c, REG64[index], value & u(0xFFFFFFFF))
        return
    old = rd(c, REG64[index])
    if high8:
        wr(c, REG64[index], (old & ~u(0xFF00)) | ((value & u(0xFF)) << u(8)))
    else:
        mask = u((1 << (8 * size)) - 1)
        wr(c, REG64[index], (old & ~mask) | (value & mask))


@njit(**NUMBA)
def extend(value, width, how, size):
    """A loaded `width`-byte value as the `size`-byte register gets it (MOVZX, MOVSX, MOV)."""
    if how == SIGN and width < size:
        v = np.uint64(np.int64(signed(np.int64(value), width)))
        return v if size == 8 else v & np.uint64((1 << (8 * size)) - 1)
    return value


@njit(**NUMBA)
def device_read(c, gpa, width):
    """What a load of `width` bytes at device address `gpa` gives: the virtual-APIC page after its read hook, or
    the userspace device through the MMIO window (an exit)."""
    offset = np.int64(gpa & np.uint64(PAGE - 1))
    if c[C.APIC_PAGE] != 0 and gpa >> np.uint64(12) == np.uint64(APIC_GPA >> 12):
        access.mmio_read(c, offset, np.int64(width))
        page = L.page_of(c).view(np.uint8)
        value = np.uint64(0)
        for i in range(width):
            value |= np.uint64(page[offset + i]) << np.uint64(8 * i)
        return value
    return mmio.device_read(c, gpa, width)


@njit(**NUMBA)
def device_write(c, gpa, width, value):
    offset = np.int64(gpa & np.uint64(PAGE - 1))
    if c[C.APIC_PAGE] != 0 and gpa >> np.uint64(12) == np.uint64(APIC_GPA >> 12):
        access.mmio_write(c, offset, np.int64(width), np.int64(value))
        page = L.page_of(c).view(np.uint8)
        for i in range(width):                      # the store lands in the page, as on the stepper
            page[offset + i] = np.uint8((value >> np.uint64(8 * i)) & np.uint64(0xFF))
        access.undo_readonly_write(c)
        return
    mmio.device_write(c, gpa, width, value)


@njit(**NUMBA)
def emulate_mov(c):
    """The refused access's instruction, when it is one of the MOV forms: served and completed here. Returns
    False, having changed nothing, for anything the stepper must run."""
    raw = cpuctx.save(c)
    hf = cpuctx.hflags(raw)
    if rd(c, X.UC_X86_REG_EFLAGS) & np.uint64(RFLAGS_TF):
        return False                                # a single-step trap follows the instruction: the stepper's
    code_size = 64 if hf & np.uint64(cpuctx.HF_CS64) else 32 if hf & np.uint64(cpuctx.HF_CS32) else 16
    rip, linear = pc_linear(c)
    code = np.zeros(INSN_MAX, np.uint8)
    n = fetch_code(c, linear, code)
    d = np.zeros(D_SIZE, np.int64)
    decode(code, n, code_size, d)
    if d[D_KIND] == NONE:
        return False
    width = d[D_WIDTH]
    at = linear_of(c, d, raw, rip, code_size)
    if at != c[C.MMIO_GLA] or (at & np.uint64(PAGE - 1)) + np.uint64(width) > np.uint64(PAGE):
        return False                                # not the refused access, or across a page: the stepper's
    gpa = (c[C.FAULT_GPA] & ~np.uint64(PAGE - 1)) | (at & np.uint64(PAGE - 1))
    kind = d[D_KIND]
    if kind == LOAD:
        value = extend(device_read(c, gpa, width), width, d[D_EXTEND], d[D_DSIZE])
        write_reg(c, d[D_REG], d[D_DSIZE], d[D_HIGH8], value)
    elif kind == STORE:
        device_write(c, gpa, width, read_reg(c, d[D_REG], width, d[D_HIGH8]))
    else:
        value = np.uint64(np.int64(d[D_IMM]))
        device_write(c, gpa, width, value if width == 8 else value & np.uint64((1 << (8 * width)) - 1))
    after = rip + np.uint64(d[D_LENGTH])
    wr(c, X.UC_X86_REG_RIP, after if code_size == 64 else after & np.uint64(0xFFFFFFFF))
    if hf & np.uint64(cpuctx.HF_INHIBIT_IRQ):      # the STI/MOV-SS shadow ends with this instruction
        raw = cpuctx.save(c)
        cpuctx.set_lo32(raw, cpuctx.HFLAGS, cpuctx.hflags(raw) & ~np.uint64(cpuctx.HF_INHIBIT_IRQ))
        cpuctx.restore(c)
    return True
