"""Hostile instructions at the in-kernel exits: I/O instructions across the end of guest memory.

An instruction that starts on the last guest page goes on at guest-physical 0 (MAP_PAST_END): the host page
after the guest's last one belongs to someone else, and the kernels must read the guest's bytes, not its.
Every result is compared with a plain-Python twin of the architected answer.
"""
from engine.vmx import exits as E
from tests.engine.hostile.conftest import END, MAP_PAST_END, exits

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
