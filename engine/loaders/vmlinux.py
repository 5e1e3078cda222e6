"""Linux's uncompressed vmlinux (ELF64), started at its 64-bit entry as Firecracker and Cloud Hypervisor start it.

A bzImage (linux.py) carries the kernel compressed behind a decompressor; vmlinux is the kernel itself, as the
build links it: PT_LOAD segments at their physical addresses (p_paddr, the kernel's LOAD_PHYSICAL_ADDR on),
e_entry the physical address of startup_64. Loaded there, the kernel needs no relocation, and what the
decompressor would have done is done: the decompression (20 s of a 45 s boot for Debian's xz-packed kernel
here, docs/linux.md) and KASLR, which a vmlinux boot has not. The rest is linux.py's 64-bit boot protocol:
boot_params with a setup header made here (a vmlinux has none to copy), the E820 map, the command line, the
initrd, the GDT and the identity map, entry in long mode with RSI = boot_params.
"""
import struct

from engine.errors import ImageError
from engine.loaders.elf32 import ELF_MAGIC, ELFCLASS64, ELFDATA2LSB, ET_EXEC, PT_LOAD
from engine.loaders.image import PAGE_SIZE, Segment
from engine.loaders.linux import (BOOT_FLAG, HDRS_MAGIC, HEADER_212_END, HEADER_FIELDS, LOADED_HIGH, XLF_KERNEL_64,
                                  boot_linux)

EM_X86_64 = 62
PT_NOTE = 4
LINUX_NOTE_OWNER = b"Linux"             # the build salt note (include/linux/build-salt.h), in every kernel since 4.18

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")     # Elf64_Ehdr, 64 bytes
_PHDR = struct.Struct("<IIQQQQQQ")             # Elf64_Phdr, 56 bytes
_NHDR = struct.Struct("<III")                  # Elf64_Nhdr: namesz, descsz, type

# The setup header a bzImage of the same kernel would carry, for the fields the kernel reads from boot_params
# (boot.rst): protocol 2.15, loaded high, the initrd anywhere below 2 GiB, a 2 KiB command line, the 64-bit entry.
VERSION = 0x020F
INITRD_ADDR_MAX = 0x7FFFFFFF
CMDLINE_SIZE = 2047                     # COMMAND_LINE_SIZE (2048) without the NUL


def _headers(data, filename):
    if len(data) < _EHDR.size:
        raise ImageError(f"{filename}: truncated: the ELF header needs {_EHDR.size} bytes, the file has {len(data)}")
    (_ident, e_type, _machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize,
     e_phentsize, e_phnum, _shentsize, _shnum, _shstrndx) = _EHDR.unpack_from(data)
    if e_phentsize < _PHDR.size or e_phoff + e_phnum * e_phentsize > len(data):
        raise ImageError(f"{filename}: truncated or damaged: {e_phnum} program headers of {e_phentsize} bytes at "
                         f"{e_phoff:#x} do not fit in the file's {len(data):#x} bytes")
    return e_type, e_entry, [_PHDR.unpack_from(data, e_phoff + i * e_phentsize) for i in range(e_phnum)]


def _notes(data, offset, size):
    """The owners of the notes in a PT_NOTE segment."""
    end, owners = min(offset + size, len(data)), []
    while offset + _NHDR.size <= end:
        namesz, descsz, _type = _NHDR.unpack_from(data, offset)
        name = offset + _NHDR.size
        owners.append(bytes(data[name:name + namesz]).rstrip(b"\0"))
        offset = name + (-(-namesz // 4) * 4) + (-(-descsz // 4) * 4)
    return owners


def is_vmlinux(data):
    """An x86-64 ELF file: loaded as a vmlinux, which says why when it is not one (parse_vmlinux)."""
    return (len(data) >= 20 and data[:4] == ELF_MAGIC and data[4] == ELFCLASS64 and data[5] == ELFDATA2LSB
            and struct.unpack_from("<H", data, 18)[0] == EM_X86_64)


def parse_vmlinux(data, filename):
    """(entry, [(p_paddr, file bytes, p_memsz)]) of a vmlinux, every offset and size checked against the file."""
    if not is_vmlinux(data):
        raise ImageError(f"{filename}: not an x86-64 ELF file, so not a vmlinux")
    e_type, entry, headers = _headers(data, filename)
    if e_type != ET_EXEC:
        raise ImageError(f"{filename}: ELF type {e_type} is not ET_EXEC (2): not a kernel linked to run")
    loads = []
    for i, (p_type, _flags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _align) in enumerate(headers):
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz or p_offset + p_filesz > len(data):
            raise ImageError(f"{filename}: truncated or damaged: segment {i} ({p_filesz:#x} bytes at file offset "
                             f"{p_offset:#x}, {p_memsz:#x} in memory) does not fit in the file's {len(data):#x} bytes")
        loads.append((p_paddr, bytes(data[p_offset:p_offset + p_filesz]), p_memsz))
    owners = [o for p in headers if p[0] == PT_NOTE for o in _notes(data, p[2], p[5])]
    if LINUX_NOTE_OWNER not in owners:
        raise ImageError(f"{filename}: an x86-64 ELF file without the \"Linux\" note every kernel since 4.18 "
                         "carries: not a vmlinux (a multiboot kernel is 32-bit ELF; --kind flat64 loads a flat image)")
    if not loads:
        raise ImageError(f"{filename}: no PT_LOAD segment, so nothing to load")
    if not min(p for p, _, _ in loads) <= entry < max(p + m for p, _, m in loads):
        raise ImageError(f"{filename}: its entry point {entry:#x} is outside its segments: not a vmlinux linked with "
                         "physical addresses (p_paddr)")
    return entry, loads


def setup_header(start, end):
    """The setup header's bytes (0 to HEADER_212_END, only 0x1F1 on filled) for a kernel occupying [start, end),
    written through linux.py's table of its fields."""
    header = bytearray(HEADER_212_END)
    values = {"boot_flag": BOOT_FLAG, "jump": 0xEB | (HEADER_212_END - 0x202) << 8, "header": HDRS_MAGIC,
              "version": VERSION, "loadflags": LOADED_HIGH, "initrd_addr_max": INITRD_ADDR_MAX,
              "xloadflags": XLF_KERNEL_64, "cmdline_size": CMDLINE_SIZE, "pref_address": start,
              "init_size": end - start}
    for name, offset, fmt in HEADER_FIELDS:
        if name in values:
            struct.pack_into("<" + fmt, header, offset, values[name])
    return bytes(header)


def load_vmlinux(data, filename, mem_size, cmdline="", initrd=None):
    """BootImage for a vmlinux: its segments, the initrd, boot_params, the command line, entry in long mode."""
    entry, loads = parse_vmlinux(data, filename)
    start = min(p for p, _, _ in loads) & ~(PAGE_SIZE - 1)
    end = max(p + m for p, _, m in loads)
    segments = [Segment(p, body, size=m, name="kernel segment %d" % i) for i, (p, body, m) in enumerate(loads)]
    note = (f"linux: vmlinux (ELF, uncompressed), {len(loads)} segments in [{start:#x}-{end:#x}), entered at "
            f"{entry:#x} in long mode")
    return boot_linux(setup_header(start, end), segments, (start, end), entry, note, filename, mem_size, cmdline,
                      initrd)
