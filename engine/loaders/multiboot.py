"""Multiboot v1 kernels, loaded the way QEMU's `-kernel` loads them (Multiboot Specification 0.6.96).

The header (section 3.1.1) is found in the first 8 KiB; the image is an ELF32 executable placed by its
PT_LOAD headers, or, with the a.out kludge (flags bit 16), a file placed by the header's own addresses.
The kernel is entered in flat 32-bit protected mode with EAX = 0x2BADB002 and EBX = the information
structure (section 3.2), which multiboot_info.py builds.
"""
import struct

from engine.errors import ImageError
from engine.loaders.elf32 import is_elf, parse_elf32
from engine.loaders.image import HIGH_MEM_BASE, BootImage, Segment, check_disjoint, check_placement, fmt_size
from engine.loaders.multiboot_info import BOOTLOADER_MAGIC, build_mbi

HEADER_MAGIC = 0x1BADB002
SEARCH_LIMIT = 8192                     # the header must lie in the first 8 KiB, 4-byte aligned
FLAG_PAGE_ALIGN = 1 << 0                # modules on 4 KiB boundaries
FLAG_MEMORY_INFO = 1 << 1               # mem_* fields wanted (always given)
FLAG_VIDEO_MODE = 1 << 2                # video mode table wanted
FLAG_AOUT_KLUDGE = 1 << 16              # header carries load addresses
REQUIRED_BITS = 0xFFFF                  # bits 0-15: a loader that does not know one must refuse the image
KNOWN_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO_MODE

_HEADER = struct.Struct("<III")         # magic, flags, checksum
_AOUT = struct.Struct("<IIIII")         # header_addr, load_addr, load_end_addr, bss_end_addr, entry_addr
_MAGIC_BYTES = HEADER_MAGIC.to_bytes(4, "little")


def find_magic(data):
    """Offsets of every 4-byte-aligned header magic whose 12-byte header fits in the first 8 KiB."""
    limit = min(len(data), SEARCH_LIMIT) - _HEADER.size
    hits, at = [], data.find(_MAGIC_BYTES, 0, limit + 4)
    while at != -1:
        if at % 4 == 0:
            hits.append(at)
        at = data.find(_MAGIC_BYTES, at + 1, limit + 4)
    return hits


def find_header(data, filename):
    """(offset, flags) of the first header whose checksum is right, as QEMU and GRUB search."""
    hits = find_magic(data)
    for at in hits:
        magic, flags, checksum = _HEADER.unpack_from(data, at)
        if (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return at, flags
    if not hits:
        raise ImageError(f"{filename}: multiboot header not found in the first 8 KiB "
                         f"(magic {HEADER_MAGIC:#010x}, 4-byte aligned)")
    _, flags, checksum = _HEADER.unpack_from(data, hits[0])
    raise ImageError(f"{filename}: multiboot header checksum {checksum:#010x} at offset {hits[0]:#x} does not "
                     f"make magic+flags+checksum zero (expected {-(HEADER_MAGIC + flags) & 0xFFFFFFFF:#010x})")


def load_multiboot(data, filename, mem_size, cmdline=""):
    """BootImage for a Multiboot v1 kernel: its segments, the information structure, EAX/EBX/EIP."""
    if mem_size <= HIGH_MEM_BASE:
        raise ImageError(f"{filename}: guest memory of {fmt_size(mem_size)} is too small for a multiboot kernel "
                         "(it needs memory above 1 MiB)")
    offset, flags = find_header(data, filename)
    notes = _check_flags(flags, filename)
    if flags & FLAG_AOUT_KLUDGE:
        entry, segments, note = _load_aout(data, offset, filename)
    else:
        entry, segments, note = _load_elf(data, filename)
    notes.insert(0, note)
    for seg in segments:
        check_placement(filename, seg.name, seg.gpa, seg.end, mem_size, low_ok=True)
    check_disjoint(filename, segments)
    if not any(seg.gpa <= entry < seg.end for seg in segments):
        raise ImageError(f"{filename}: entry point {entry:#x} is outside every loaded segment")
    kernel_cmdline = filename if not cmdline else f"{filename} {cmdline}"
    mbi = build_mbi(mem_size, _c_string(kernel_cmdline, filename), filename)
    notes.append(f"multiboot: information structure at {mbi.gpa:#x}, command line {kernel_cmdline!r}")
    return BootImage(kind="multiboot", mode="protected32", segments=segments + [mbi],
                     regs={"rip": entry, "rax": BOOTLOADER_MAGIC, "rbx": mbi.gpa}, entry=entry, notes=notes)


def _check_flags(flags, filename):
    """Refuse unknown required features (section 3.1.2: bits 0-15), note the ones we honour by default."""
    unknown = flags & REQUIRED_BITS & ~KNOWN_REQUIRED
    if unknown:
        bits = ", ".join(str(b) for b in range(16) if unknown >> b & 1)
        raise ImageError(f"{filename}: multiboot header requires features this loader does not know "
                         f"(flags bits {bits}); GRUB refuses such a kernel too — clear them in the header")
    notes = []
    if flags & FLAG_PAGE_ALIGN:
        notes.append("multiboot: page-aligned modules requested; no modules are loaded")
    if flags & FLAG_VIDEO_MODE:
        notes.append("multiboot: video mode requested and ignored; the console is VGA text and serial")
    return notes


def _load_elf(data, filename):
    entry, loads = parse_elf32(data, filename)
    segments = [Segment(paddr, body, memsz, name=f"segment {i}") for i, paddr, _vaddr, body, memsz in loads]
    if not any(seg.gpa <= entry < seg.end for seg in segments):
        for i, paddr, vaddr, _body, memsz in loads:
            if vaddr != paddr and vaddr <= entry < vaddr + memsz:
                raise ImageError(f"{filename}: entry point {entry:#x} is outside every loaded segment (it is a "
                                 f"virtual address in segment {i}; multiboot jumps to the physical address, "
                                 f"{paddr + entry - vaddr:#x} — set the ELF entry to it)")
    note = f"multiboot: ELF32 entry {entry:#x}, {len(segments)} segment{'s' if len(segments) != 1 else ''}"
    return entry, segments, note


def _load_aout(data, offset, filename):
    """Place the file by the header's addresses (section 3.1.3)."""
    if offset + _HEADER.size + _AOUT.size > len(data):
        raise ImageError(f"{filename}: truncated: multiboot header at {offset:#x} sets the a.out kludge "
                         f"but its address fields end beyond the file's {len(data):#x} bytes")
    header_addr, load_addr, load_end_addr, bss_end_addr, entry = _AOUT.unpack_from(data, offset + _HEADER.size)
    if load_addr > header_addr:
        raise ImageError(f"{filename}: a.out kludge: load_addr {load_addr:#x} is above header_addr {header_addr:#x}")
    file_offset = offset - (header_addr - load_addr)
    if file_offset < 0:
        raise ImageError(f"{filename}: a.out kludge: load_addr {load_addr:#x} would start "
                         f"{-file_offset:#x} bytes before the file (header_addr {header_addr:#x}, "
                         f"header at file offset {offset:#x})")
    if load_end_addr == 0:
        load_size = len(data) - file_offset
    elif load_end_addr < load_addr:
        raise ImageError(f"{filename}: a.out kludge: load_end_addr {load_end_addr:#x} is below "
                         f"load_addr {load_addr:#x}")
    else:
        load_size = load_end_addr - load_addr
    if file_offset + load_size > len(data):
        raise ImageError(f"{filename}: truncated: a.out kludge loads up to file offset "
                         f"{file_offset + load_size:#x} beyond the file's {len(data):#x} bytes")
    if bss_end_addr == 0:
        mem_size = load_size
    elif bss_end_addr < load_addr + load_size:
        raise ImageError(f"{filename}: a.out kludge: bss_end_addr {bss_end_addr:#x} is below the end of the "
                         f"loaded image {load_addr + load_size:#x}")
    else:
        mem_size = bss_end_addr - load_addr
    if mem_size == 0:
        raise ImageError(f"{filename}: a.out kludge: load_addr = load_end_addr = {load_addr:#x} and no bss: "
                         "nothing to load")
    segment = Segment(load_addr, bytes(data[file_offset:file_offset + load_size]), mem_size, name="a.out image")
    note = (f"multiboot: a.out kludge: file offset {file_offset:#x} at {load_addr:#x} ({load_size:#x} bytes, "
            f"bss to {load_addr + mem_size:#x}), entry {entry:#x}")
    if is_elf(data):
        note += "; the ELF headers are ignored"
    return entry, [segment], note


def _c_string(text, filename):
    raw = text.encode()
    if b"\0" in raw:
        raise ImageError(f"{filename}: the command line contains a NUL byte, which would end it early")
    return raw
