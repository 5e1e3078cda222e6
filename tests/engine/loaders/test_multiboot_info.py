"""Tests for engine/loaders/multiboot_info.py: the information structure parsed back the way a kernel reads it."""
import struct

import pytest

from engine.errors import ImageError
from engine.loaders.multiboot import load_multiboot

MEM = 64 << 20
MBI_BASE, MBI_END = 0x9000, 0x10000


def read_mbi(segment):
    """Parse the MBI segment like a kernel would: follow guest-physical pointers within the area."""
    assert segment.gpa == MBI_BASE and segment.end <= MBI_END
    area = segment.data

    def at(gpa, size):
        assert MBI_BASE <= gpa and gpa + size <= segment.end, f"pointer {gpa:#x} outside the MBI area"
        return area[gpa - MBI_BASE:gpa - MBI_BASE + size]

    def c_string(gpa):
        tail = area[gpa - MBI_BASE:]
        return tail[:tail.index(0)].decode()

    flags, mem_lower, mem_upper = struct.unpack_from("<III", area, 0)
    cmdline, = struct.unpack_from("<I", area, 16)
    mmap_length, mmap_addr = struct.unpack_from("<II", area, 44)
    loader_name, = struct.unpack_from("<I", area, 64)
    mmap, entries = at(mmap_addr, mmap_length), []
    offset = 0
    while offset < mmap_length:       # the spec's walk: next = this + size + 4
        size, base, length, kind = struct.unpack_from("<IQQI", mmap, offset)
        entries.append((size, base, length, kind))
        offset += size + 4
    at(cmdline, 1), at(loader_name, 1)
    return {"flags": flags, "mem_lower": mem_lower, "mem_upper": mem_upper, "cmdline": c_string(cmdline),
            "loader": c_string(loader_name), "mmap": entries}


def test_mbi_contents(hello_kernel):
    """A 64 MiB guest: mem fields, cmdline with the kernel name first, loader name, e820 map QEMU-style."""
    image = load_multiboot(hello_kernel, "kernel.elf", MEM, cmdline="console=ttyS0 quiet")
    mbi = read_mbi(image.segments[-1])
    assert image.regs["rbx"] == MBI_BASE
    assert mbi["flags"] == (1 << 0) | (1 << 2) | (1 << 6) | (1 << 9)
    assert (mbi["mem_lower"], mbi["mem_upper"]) == (639, 63 * 1024)
    assert mbi["cmdline"] == "kernel.elf console=ttyS0 quiet"
    assert mbi["loader"] == "webhyve"
    assert mbi["mmap"] == [(20, 0, 0x9FC00, 1), (20, 0x9FC00, 0x400, 2),
                           (20, 0xF0000, 0x10000, 2), (20, 0x100000, MEM - 0x100000, 1)]


def test_cmdline_without_arguments(hello_kernel):
    """With no user command line the kernel sees just its own name."""
    image = load_multiboot(hello_kernel, "kernel.elf", 32 << 20)
    mbi = read_mbi(image.segments[-1])
    assert mbi["cmdline"] == "kernel.elf" and mbi["mem_upper"] == 31 * 1024


def test_cmdline_too_long(hello_kernel):
    """A command line larger than the MBI area is refused, not written over the kernel."""
    with pytest.raises(ImageError, match=r"^kernel\.elf: command line of \d+ bytes does not fit"):
        load_multiboot(hello_kernel, "kernel.elf", MEM, cmdline="x" * 0x8000)


def test_cmdline_with_nul(hello_kernel):
    """A NUL inside the command line would cut it short: refused."""
    with pytest.raises(ImageError, match="NUL"):
        load_multiboot(hello_kernel, "kernel.elf", MEM, cmdline="a\0b")
