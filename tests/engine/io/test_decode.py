"""The MOV-store length decoder behind trap-like APIC-write exits, against the SDM's encodings and its twin."""
import random

import numpy as np
import pytest

from engine.io.decode import MAX_LENGTH, mov_store_length

SEGMENTS = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65}


def twin(code, mode):
    """Plain-Python reference: legacy prefixes, REX right before the opcode, ModRM/SIB/displacement by the
    SDM's tables 2-1 (16-bit) and 2-2/2-3 (32/64-bit), the immediate of C6/C7 by operand size."""
    code = bytes(code)
    op_size, addr_size, i, rex = (16 if mode == 16 else 32), mode, 0, 0
    while i < len(code) and i < MAX_LENGTH:
        b = code[i]
        is_rex = mode == 64 and 0x40 <= b <= 0x4F
        if b == 0x66:
            op_size = 32 if mode == 16 else 16
        elif b == 0x67:
            addr_size = 16 if mode == 32 else 32
        elif b not in SEGMENTS and not is_rex:
            break
        rex = b if is_rex else 0
        i += 1
    if i >= len(code):
        return 0
    op = code[i]
    op_size = 64 if rex & 8 else op_size

    def modrm(at):
        if at >= len(code):
            return -1
        mod, rm = code[at] >> 6, code[at] & 7
        if mod == 3:
            return 0
        if addr_size == 16:
            return 1 + {0: 2 if rm == 6 else 0, 1: 1, 2: 2}[mod]
        if rm == 4 and at + 1 >= len(code):
            return -1
        base = code[at + 1] & 7 if rm == 4 else rm
        return 1 + (rm == 4) + {0: 4 if rm == 5 or (rm == 4 and base == 5) else 0, 1: 1, 2: 4}[mod]

    if op in (0x88, 0x89):
        m = modrm(i + 1)
        length = i + 1 + m if m > 0 else 0
    elif op in (0xC6, 0xC7) and i + 1 < len(code) and (code[i + 1] >> 3) & 7 == 0:
        m = modrm(i + 1)
        length = i + 1 + m + (1 if op == 0xC6 else 2 if op_size == 16 else 4) if m > 0 else 0
    elif op in (0xA2, 0xA3):
        length = i + 1 + addr_size // 8
    else:
        length = 0
    return length if 0 < length <= min(len(code), MAX_LENGTH) else 0


def kernel(code, mode):
    padded = bytes(code)
    return mov_store_length(np.frombuffer(padded, np.uint8), len(padded), mode)


CASES = [   # (bytes, mode, length): assembled by hand from the SDM's MOV page
    ("41 89 87 00 03 00 00", 64, 7),          # mov [r15 + 0x300], eax
    ("41 c7 87 b0 00 00 00 00 00 00 00", 64, 11),   # mov dword [r15 + 0xb0], 0
    ("89 05 10 00 00 00", 64, 6),             # mov [rip + 0x10], eax
    ("89 04 25 00 03 e0 fe", 64, 7),          # mov [0xfee00300], eax (SIB, no base)
    ("48 89 01", 64, 3),                      # mov [rcx], rax
    ("48 c7 01 01 00 00 00", 64, 7),          # mov qword [rcx], 1 (imm32 under REX.W)
    ("66 c7 01 01 00", 64, 5),                # mov word [rcx], 1
    ("c6 41 10 05", 64, 4),                   # mov byte [rcx + 0x10], 5
    ("a3 00 03 e0 fe 00 00 00 00", 64, 9),    # mov [moffs64], eax
    ("a3 00 03 e0 fe", 32, 5),                # mov [moffs32], eax
    ("89 0d 00 03 e0 fe", 32, 6),             # mov [0xfee00300], ecx (disp32, no RIP in 32-bit)
    ("89 44 24 08", 32, 4),                   # mov [esp + 8], eax
    ("64 89 03", 32, 3),                      # mov fs:[ebx], eax
    ("89 07", 16, 2),                         # mov [bx], ax
    ("89 06 34 12", 16, 4),                   # mov [0x1234], ax (mod 0 rm 6: disp16)
    ("66 89 87 00 03", 16, 5),                # mov [bx + 0x300], eax
    ("67 66 89 04 25 00 03 00 00", 16, 9),    # mov [0x300] (32-bit addressing, SIB), eax
    ("09 07", 64, 0),                         # or [rdi], eax: not a MOV
    ("89 c0", 64, 0),                         # mov eax, eax: no memory operand
    ("c7 c8 00 00 00 00", 64, 0),             # C7 /1: not MOV
    ("41 89", 64, 0),                         # cut short
]


@pytest.mark.parametrize("hexbytes,mode,length", CASES)
def test_lengths_follow_the_sdm(hexbytes, mode, length):
    code = bytes.fromhex(hexbytes.replace(" ", "")) + b"\x90" * 4          # whatever follows the instruction
    assert kernel(code, mode) == twin(code, mode) == length


def test_kernel_matches_twin_on_random_bytes():
    rng = random.Random(1)
    interesting = [0x66, 0x67, 0x26, 0x64, 0x41, 0x48, 0x4C, 0x88, 0x89, 0xC6, 0xC7, 0xA2, 0xA3, 0x04, 0x05, 0x44, 0x84]
    for _ in range(20000):
        n = rng.randint(1, 16)
        code = bytes(rng.choice(interesting) if rng.random() < 0.6 else rng.randrange(256) for _ in range(n))
        for mode in (16, 32, 64):
            assert kernel(code, mode) == twin(code, mode), (code.hex(), mode)
