"""Tests for engine/loaders/multiboot.py and elf32.py: real kernels from GNU as/ld, and hostile edits of them."""
import struct

import pytest

from engine.errors import ImageError
from engine.loaders.multiboot import load_multiboot

MULTIBOOT_MAGIC = 0x1BADB002
MEM = 64 << 20
PHDR_FIELD = {"type": 0, "offset": 4, "vaddr": 8, "paddr": 12, "filesz": 16, "memsz": 20}


def patch(data, offset, fmt, value):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def phdr_at(elf, index, field):
    return struct.unpack_from("<I", elf, 0x1C)[0] + 32 * index + PHDR_FIELD[field]


def phdr(elf, index, field):
    return struct.unpack_from("<I", elf, phdr_at(elf, index, field))[0]


def patch_phdr(elf, index, field, value):
    return patch(elf, phdr_at(elf, index, field), "<I", value)


def header_offset(data):
    return data.index(struct.pack("<I", MULTIBOOT_MAGIC))


def error(data, mem=MEM, name="kernel.elf"):
    with pytest.raises(ImageError) as info:
        load_multiboot(data, name, mem)
    return str(info.value)


def test_elf_kernel_loads_by_paddr(hello_kernel):
    """The hello kernel: two PT_LOAD segments at their p_paddr, .bss as zero fill, EAX/EBX/EIP as promised."""
    image = load_multiboot(hello_kernel, "kernel.elf", MEM)
    text, data, mbi = image.segments
    assert (image.kind, image.mode) == ("multiboot", "protected32")
    assert text.gpa == 0x100000 and text.data[:4] == struct.pack("<I", MULTIBOOT_MAGIC)
    assert data.gpa == 0x110000 and data.data == b"hello" and data.size == phdr(hello_kernel, 1, "memsz") >= 5 + 0x3000
    assert image.entry == 0x10000C == image.regs["rip"]
    assert image.regs["rax"] == 0x2BADB002 and image.regs["rbx"] == mbi.gpa == 0x9000
    assert image.notes[0] == "multiboot: ELF32 entry 0x10000c, 2 segments"


def test_kernel_in_low_memory_is_accepted(hello):
    """A kernel linked at 0x20000, below the VGA hole and above the MBI area, loads like QEMU's -kernel does."""
    image = load_multiboot(hello(text=0x20000), "low.elf", MEM)
    assert image.segments[0].gpa == 0x20000


def test_no_header(build):
    """An ELF without the magic is refused: the header is what makes it a multiboot kernel."""
    elf = build(".text\n.globl _start\n_start: hlt\n")
    assert error(elf) == "kernel.elf: multiboot header not found in the first 8 KiB (magic 0x1badb002, 4-byte aligned)"


def test_header_after_8k(hello):
    """A header pushed past the first 8 KiB by 8 KiB of code is not found."""
    elf = hello(pad=8192)
    assert header_offset(elf) > 8192
    assert "multiboot header not found in the first 8 KiB" in error(elf)


def test_bad_checksum(hello_kernel):
    """A checksum that does not cancel magic+flags is reported with the value it should have."""
    at = header_offset(hello_kernel)
    message = error(patch(hello_kernel, at + 8, "<I", 0x12345678))
    assert message == (f"kernel.elf: multiboot header checksum 0x12345678 at offset {at:#x} does not make "
                       f"magic+flags+checksum zero (expected {-(MULTIBOOT_MAGIC + 3) & 0xFFFFFFFF:#010x})")


def test_unknown_required_flag(hello):
    """A required feature bit we do not know (bit 3) is refused, as GRUB refuses it."""
    message = error(hello(flags=0x8 | 0x3))
    assert "requires features this loader does not know (flags bits 3)" in message


def test_video_flag_is_noted(hello):
    """Bit 2 (video mode) is honoured by a note, not an error."""
    image = load_multiboot(hello(flags=0x7), "kernel.elf", MEM)
    assert "multiboot: video mode requested and ignored; the console is VGA text and serial" in image.notes


def test_elf64_refused(hello_kernel):
    """An ELF64 (EI_CLASS 2) kernel is refused with the ways out: a.out kludge or flat64."""
    message = error(patch(hello_kernel, 4, "B", 2))
    assert message.startswith("kernel.elf: ELF64 kernel: multiboot v1 kernels are 32-bit ELF")
    assert "--kind flat64" in message and "a.out kludge" in message


def test_truncated_program_header_table(hello_kernel):
    """A program header table that runs off the end of the file is refused before it is read."""
    phoff = len(hello_kernel) - 40
    message = error(patch(hello_kernel, 0x1C, "<I", phoff))
    assert message == (f"kernel.elf: truncated: program header 1 ends at {phoff + 64:#x} "
                       f"beyond the file's {len(hello_kernel):#x} bytes")


def test_truncated_segment_data(hello_kernel):
    """A file cut inside a segment's bytes is refused."""
    offset = phdr(hello_kernel, 1, "offset")
    message = error(hello_kernel[:offset + 2])
    assert message == (f"kernel.elf: truncated: segment 1 data ends at {offset + 5:#x} "
                       f"beyond the file's {offset + 2:#x} bytes")


def test_filesz_larger_than_memsz(hello_kernel):
    """p_filesz > p_memsz is malformed."""
    assert "p_filesz 0x5 exceeds p_memsz 0x1" in error(patch_phdr(hello_kernel, 1, "memsz", 1))


def test_huge_memsz(hello_kernel):
    """A 4 GiB p_memsz is refused by arithmetic, never allocated."""
    message = error(patch_phdr(hello_kernel, 1, "memsz", 0xFFFFFFFF))
    assert message == "kernel.elf: segment 1 [0x110000-0x10010ffff) lies outside guest memory (64 MiB)"


def test_segment_outside_memory(hello_kernel):
    """A segment placed at 128 MiB in a 64 MiB guest is refused."""
    message = error(patch_phdr(hello_kernel, 1, "paddr", 0x8000000))
    end = 0x8000000 + phdr(hello_kernel, 1, "memsz")
    assert message == f"kernel.elf: segment 1 [0x8000000-{end:#x}) lies outside guest memory (64 MiB)"


def test_segment_over_firmware(hello_kernel):
    """A segment at 0x2000 would clobber the engine's firmware."""
    message = error(patch_phdr(hello_kernel, 1, "paddr", 0x2000))
    end = 0x2000 + phdr(hello_kernel, 1, "memsz")
    assert message == f"kernel.elf: segment 1 [0x2000-{end:#x}) overlaps the firmware area below 0x10000"


def test_segment_over_vga_hole(hello_kernel):
    """A segment straddling 0xB8000 overlaps the VGA/BIOS hole."""
    message = error(patch_phdr(hello_kernel, 1, "paddr", 0xB8000))
    end = 0xB8000 + phdr(hello_kernel, 1, "memsz")
    assert message == (f"kernel.elf: segment 1 [0xb8000-{end:#x}) overlaps the VGA/BIOS hole 0xa0000-0x100000; "
                       "place it at 1 MiB or above")


def test_overlapping_segments(hello_kernel):
    """Two segments on the same bytes are refused rather than silently clobbered."""
    message = error(patch_phdr(hello_kernel, 1, "paddr", 0x100010))
    text_end = 0x100000 + phdr(hello_kernel, 0, "memsz")
    data_end = 0x100010 + phdr(hello_kernel, 1, "memsz")
    assert message == f"kernel.elf: segment 0 [0x100000-{text_end:#x}) overlaps segment 1 [0x100010-{data_end:#x})"


def test_entry_outside_segments(hello_kernel):
    """An entry point in no loaded segment is refused."""
    message = error(patch(hello_kernel, 0x18, "<I", 0x300000))
    assert message == "kernel.elf: entry point 0x300000 is outside every loaded segment"


def test_virtual_entry_gets_a_hint(hello_kernel):
    """A higher-half kernel whose e_entry is virtual is told the physical address to use."""
    elf = patch_phdr(hello_kernel, 0, "vaddr", 0xC0100000)
    message = error(patch(elf, 0x18, "<I", 0xC010000C))
    assert "it is a virtual address in segment 0" in message and "0x10000c" in message


def test_aout_kludge_places_file(aout_kernel):
    """An a.out-kludge kernel (flat binary) lands at load_addr with its bss zero-filled up to bss_end_addr."""
    flat = aout_kernel()
    image = load_multiboot(flat, "aout.bin", MEM)
    kernel = image.segments[0]
    assert kernel.gpa == 0x100000 and kernel.data == flat
    assert kernel.size - len(kernel.data) >= 0x2000       # bss_end_addr - load_end_addr, zero-filled by the engine
    assert image.entry == 0x100000 + flat.index(bytes.fromhex("66baf803"))
    assert image.notes[0].startswith("multiboot: a.out kludge: file offset 0x0 at 0x100000")


def test_aout_kludge_in_elf_wins(aout_kernel):
    """With bit 16 set the header's addresses are used even when the file is also an ELF."""
    elf = aout_kernel(flat=False)
    image = load_multiboot(elf, "aout.elf", MEM)
    assert image.segments[0].gpa == 0x100000
    assert image.segments[0].data[:4] == struct.pack("<I", MULTIBOOT_MAGIC)   # from file offset header - 0
    assert image.notes[0].endswith("the ELF headers are ignored")


def test_aout_kludge_before_file_start(aout_kernel):
    """header_addr - load_addr larger than the header's file offset would load from before the file."""
    flat = aout_kernel()
    message = error(patch(flat, 16, "<I", 0x100000 - 0x1000), name="aout.bin")
    assert message.startswith("aout.bin: a.out kludge: load_addr 0xff000 would start 0x1000 bytes before the file")


def test_aout_kludge_load_end_past_file(aout_kernel):
    """load_end_addr beyond the file's end is a truncated image."""
    flat = aout_kernel()
    message = error(patch(flat, 20, "<I", 0x100000 + 0x10000), name="aout.bin")
    assert message == ("aout.bin: truncated: a.out kludge loads up to file offset 0x10000 "
                       f"beyond the file's {len(flat):#x} bytes")


def test_aout_kludge_bss_below_load_end(aout_kernel):
    """bss_end_addr below the loaded image's end is malformed."""
    flat = aout_kernel()
    assert "bss_end_addr 0x100001 is below the end of the loaded image" in error(patch(flat, 24, "<I", 0x100001))


def test_guest_memory_too_small(hello_kernel):
    """A guest of 1 MiB has no memory for a multiboot kernel."""
    assert error(hello_kernel, mem=1 << 20).startswith("kernel.elf: guest memory of 1 MiB is too small")
