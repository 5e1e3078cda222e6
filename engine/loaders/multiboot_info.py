"""The Multiboot v1 information structure (spec section 3.3), built in the MBI area at MBI_BASE.

Layout in the area: the 0x58-byte structure, then the memory map, the boot loader name, the command line.
Every address inside is guest-physical and inside [MBI_BASE, MBI_END).
"""
import struct

from engine.errors import ImageError
from engine.loaders.image import EBDA_BASE, HIGH_MEM_BASE, KiB, MBI_BASE, MBI_END, Segment, e820_map

BOOTLOADER_MAGIC = 0x2BADB002           # EAX at entry
BOOT_LOADER_NAME = b"webhyve\0"
MBI_SIZE = 0x58                         # through vbe_interface_len; no framebuffer fields

MBI_FLAG_MEM = 1 << 0
MBI_FLAG_CMDLINE = 1 << 2
MBI_FLAG_MMAP = 1 << 6
MBI_FLAG_LOADER_NAME = 1 << 9

# Offsets of the fields we fill (spec 3.3).
OFF_FLAGS, OFF_MEM_LOWER, OFF_MEM_UPPER, OFF_CMDLINE = 0, 4, 8, 16
OFF_MMAP_LENGTH, OFF_MMAP_ADDR, OFF_BOOT_LOADER_NAME = 44, 48, 64

_MMAP_ENTRY = struct.Struct("<IQQI")    # size (20, not counting itself), base, length, type
MEM_LOWER_KIB = EBDA_BASE // KiB        # 639


def build_mbi(mem_size, cmdline, filename):
    """One Segment at MBI_BASE holding the structure, memory map, loader name and NUL-terminated command line."""
    mmap = b"".join(_MMAP_ENTRY.pack(_MMAP_ENTRY.size - 4, base, length, kind)
                    for base, length, kind in e820_map(mem_size))
    mmap_addr = MBI_BASE + MBI_SIZE
    name_addr = mmap_addr + len(mmap)
    cmdline_addr = name_addr + len(BOOT_LOADER_NAME)
    cmd = cmdline + b"\0"
    room = MBI_END - cmdline_addr
    if len(cmd) > room:
        raise ImageError(f"{filename}: command line of {len(cmd)} bytes does not fit in the multiboot "
                         f"information area ({room} bytes free); shorten it")
    mbi = bytearray(MBI_SIZE)
    struct.pack_into("<III", mbi, OFF_FLAGS,
                     MBI_FLAG_MEM | MBI_FLAG_CMDLINE | MBI_FLAG_MMAP | MBI_FLAG_LOADER_NAME,
                     MEM_LOWER_KIB, (mem_size - HIGH_MEM_BASE) // KiB)
    struct.pack_into("<I", mbi, OFF_CMDLINE, cmdline_addr)
    struct.pack_into("<II", mbi, OFF_MMAP_LENGTH, len(mmap), mmap_addr)
    struct.pack_into("<I", mbi, OFF_BOOT_LOADER_NAME, name_addr)
    return Segment(MBI_BASE, bytes(mbi) + mmap + BOOT_LOADER_NAME + cmd, name="multiboot info")
