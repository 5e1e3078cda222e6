"""Tests for engine/loaders/flat.py: a flat 64-bit image with identity page tables walked in plain Python."""
import struct

import pytest

from engine.errors import ImageError
from engine.loaders.flat import load_flat64

MEM = 64 << 20
# mov rax, 0x2a ; hlt
CODE = bytes.fromhex("48c7c02a000000f4")


def memory_of(image):
    """Guest memory as the engine would fill it: a dict gpa -> bytes per segment, read with `qword`."""
    return {seg.gpa: seg.data + bytes(seg.size - len(seg.data)) for seg in image.segments}


def qword(memory, gpa):
    for base, body in memory.items():
        if base <= gpa and gpa + 8 <= base + len(body):
            return struct.unpack_from("<Q", body, gpa - base)[0]
    raise AssertionError(f"paging structure read at {gpa:#x} is outside every segment")


def translate(memory, cr3, linear):
    """The SDM 4.5 4-level walk, stopping at a 2 MiB PDE (PS=1); every entry must be present."""
    pml4e = qword(memory, (cr3 & ~0xFFF) + 8 * (linear >> 39 & 0x1FF))
    pdpte = qword(memory, (pml4e & 0xFFFFFFFFFF000) + 8 * (linear >> 30 & 0x1FF))
    pde = qword(memory, (pdpte & 0xFFFFFFFFFF000) + 8 * (linear >> 21 & 0x1FF))
    assert pml4e & 1 and pdpte & 1 and pde & 1, f"{linear:#x} not present"
    assert not pdpte & 0x80 and pde & 0x80, "expected 2 MiB pages"
    return (pde & 0xFFFFFFFE00000) | (linear & 0x1FFFFF)


def test_flat_image_entry_state():
    """A flat image at the default 2 MiB: long mode, RIP=RSP=load address, CS 0x08, DS/SS 0x10."""
    image = load_flat64(CODE, "flat.bin", MEM)
    assert (image.kind, image.mode, image.entry) == ("flat64", "long64", 0x200000)
    assert {k: image.regs[k] for k in ("rip", "rsp", "cs", "ds", "ss")} == {
        "rip": 0x200000, "rsp": 0x200000, "cs": 0x08, "ds": 0x10, "ss": 0x10}
    assert memory_of(image)[0x200000] == CODE
    assert any("stack grows down from 0x200000" in note for note in image.notes)


def test_gdt():
    """The GDT holds null, a 64-bit code descriptor and a flat data descriptor, and is in the segments."""
    image = load_flat64(CODE, "flat.bin", MEM)
    assert image.gdt in image.segments
    assert struct.unpack("<3Q", image.gdt.data) == (0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF)
    assert image.gdt.end <= image.regs["cr3"] < 0x200000 - 0x10000


@pytest.mark.parametrize("mem", [64 << 20, 3 << 30])
def test_page_tables_identity_map(mem):
    """Every 2 MiB page up to memory rounded to 1 GiB maps to itself; nothing past it is mapped."""
    image = load_flat64(CODE, "flat.bin", mem)
    memory, cr3 = memory_of(image), image.regs["cr3"]
    top = -(-mem // (1 << 30)) << 30
    for linear in range(0, top, 2 << 20):
        assert translate(memory, cr3, linear + 0x1234) == linear + 0x1234
    assert qword(memory, (qword(memory, cr3) & ~0xFFF) + 8 * (top >> 30)) == 0


def test_tables_do_not_overlap_image_or_stack():
    """GDT and tables lie below the 64 KiB stack reservation, above the MBI/firmware area."""
    image = load_flat64(CODE, "flat.bin", MEM, load_addr=0x400000)
    tables = [seg for seg in image.segments if seg.name != "image"]
    assert all(0x10000 <= seg.gpa and seg.end <= 0x400000 - 0x10000 for seg in tables)


def test_empty_image():
    """An empty file has nothing to run."""
    with pytest.raises(ImageError, match=r"^flat\.bin: empty image"):
        load_flat64(b"", "flat.bin", MEM)


def test_image_past_end_of_memory():
    """An image that runs past the end of guest memory is refused."""
    expected = r"^flat\.bin: image \[0x3fff000-0x4000008\) lies outside guest memory \(64 MiB\)$"
    with pytest.raises(ImageError, match=expected):
        load_flat64(CODE + bytes(0x1000), "flat.bin", MEM, load_addr=MEM - 0x1000)


def test_load_address_too_low_for_tables():
    """At 1 MiB the stack and tables would fall into the VGA/BIOS hole: refused."""
    with pytest.raises(ImageError, match=r"^flat\.bin: stack and page tables .* overlaps the VGA/BIOS hole"):
        load_flat64(CODE, "flat.bin", MEM, load_addr=0x100000)


def test_load_address_below_1mib():
    """Flat images load at 1 MiB or above."""
    with pytest.raises(ImageError, match=r"^flat\.bin: image \[0x20000-0x20008\) lies below 0x100000"):
        load_flat64(CODE, "flat.bin", MEM, load_addr=0x20000)


def test_unaligned_load_address():
    """The load address must be page aligned (the tables are placed from it)."""
    with pytest.raises(ImageError, match=r"^flat\.bin: load address 0x200010 is not a 4 KiB-aligned"):
        load_flat64(CODE, "flat.bin", MEM, load_addr=0x200010)
