"""Instruction lengths an exit needs from guest code bytes: the MOV stores behind trap-like APIC writes.

An APIC write that exits (exit 56) is trap-like (SDM 29.4.3.3): the guest leaves right after the writing
instruction. The write hook cannot end the instruction itself — Unicorn restarts it after a stop — so the
hook stops the guest and the loop moves RIP past it: exact when the instruction does nothing but the
store, which a MOV to memory is (SDM vol. 2, MOV: 88, 89, C6 /0, C7 /0, A2, A3). Other forms (an RMW
such as `or [apic], eax`) leave at the next block boundary instead (core/kick.py).
"""
import numpy as np
from numba import carray, njit

from ..core import ctx as C
from ..core.regs import rd_efer
from ..mmu import walk as W
from ..mmu.access import code_to_hpa, pc_linear
from ..native import NUMBA, u8_ptr

MODE_REAL, MODE_PROT32, MODE_LONG = 16, 32, 64
MAX_LENGTH = 15                     # SDM 2.3.11: longer is #GP


@njit(**NUMBA)
def _modrm_length(code, at, n, addr_size):
    """Bytes of ModRM, SIB and displacement starting at code[at]; 0 for a register operand, -1 past n."""
    if at >= n:
        return -1
    modrm = code[at]
    mod, rm = modrm >> 6, modrm & 7
    if mod == 3:
        return 0                                  # a register operand: not a store
    if addr_size == 16:                           # SDM table 2-1
        disp = 2 if (mod == 0 and rm == 6) or mod == 2 else 1 if mod == 1 else 0
        return 1 + disp
    length = 1
    base = rm
    if rm == 4:                                   # SIB follows (SDM table 2-3)
        if at + 1 >= n:
            return -1
        length += 1
        base = code[at + 1] & 7
    if mod == 1:
        length += 1
    elif mod == 2 or (mod == 0 and (rm == 5 or (rm == 4 and base == 5))):
        length += 4                               # disp32 (RIP-relative for rm 5 in 64-bit mode)
    return length


@njit(**NUMBA)
def mov_store_length(code, n, mode):
    """Length of the MOV-to-memory instruction in code[:n] for a CPU in `mode` (16, 32, 64), else 0."""
    op_size = 16 if mode == MODE_REAL else 32
    addr_size = mode
    i = 0
    rex = 0
    while i < n and i < MAX_LENGTH:
        b = code[i]
        if b == 0x66:
            op_size = 32 if mode == MODE_REAL else 16
        elif b == 0x67:
            addr_size = 32 if mode != MODE_PROT32 else 16
        elif b == 0x26 or b == 0x2E or b == 0x36 or b == 0x3E or b == 0x64 or b == 0x65:
            pass
        elif mode == MODE_LONG and 0x40 <= b <= 0x4F:
            rex = b                               # must come right before the opcode: checked below
        else:
            break
        if not (mode == MODE_LONG and 0x40 <= b <= 0x4F):
            rex = 0
        i += 1
    if i >= n:
        return 0
    op = code[i]
    if rex & 8:
        op_size = 64
    length = 0
    if op == 0x88 or op == 0x89:
        m = _modrm_length(code, i + 1, n, addr_size)
        length = 0 if m <= 0 else i + 1 + m
    elif op == 0xC6 or op == 0xC7:
        if i + 1 >= n or (code[i + 1] >> 3) & 7 != 0:
            return 0                              # /0 only
        m = _modrm_length(code, i + 1, n, addr_size)
        imm = 1 if op == 0xC6 else 2 if op_size == 16 else 4
        length = 0 if m <= 0 else i + 1 + m + imm
    elif op == 0xA2 or op == 0xA3:
        length = i + 1 + addr_size // 8           # moffs: an address of the address size
    return length if 0 < length <= min(n, MAX_LENGTH) else 0


@njit(**NUMBA)
def after_mov_store(c):
    """RIP after the instruction at RIP when it is a MOV to memory whose bytes lie on one page, else 0."""
    rip, linear = pc_linear(c)
    hpa = code_to_hpa(c, linear)
    if hpa < 0:
        return np.uint64(0)
    n = min(MAX_LENGTH, 0x1000 - np.int64(linear & np.uint64(0xFFF)), np.int64(c[C.MEMSIZE]) - hpa)
    code = carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])[hpa:hpa + n]
    mode = MODE_REAL if c[C.GUEST_PE] == 1 else MODE_LONG if rd_efer(c) & np.uint64(W.EFER_LMA) else MODE_PROT32
    length = mov_store_length(code, n, mode)
    return rip + np.uint64(length) if length else np.uint64(0)
