"""ELF32 executables for Multiboot: the PT_LOAD program headers, placed by p_paddr, and e_entry.

Every offset and size comes from the file, so each is checked against the file before it is used; memory
sizes are never allocated (the engine zero-fills `Segment.size - len(data)`).
"""
import struct

from engine.errors import ImageError

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386 = 3
PT_LOAD = 1

_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")     # Elf32_Ehdr, 52 bytes
_PHDR = struct.Struct("<IIIIIIII")             # Elf32_Phdr, 32 bytes


def is_elf(data):
    return data[:4] == ELF_MAGIC


def parse_elf32(data, filename):
    """Return (entry, [(index, p_paddr, p_vaddr, file bytes, p_memsz)]) for the PT_LOAD headers with p_memsz > 0."""
    if not is_elf(data):
        raise ImageError(f"{filename}: not an ELF file (no \\x7fELF magic) and its multiboot header "
                         "has no a.out kludge (flags bit 16)")
    if len(data) < _EHDR.size:
        raise ImageError(f"{filename}: truncated: ELF header needs {_EHDR.size} bytes, the file has {len(data)}")
    (ident, e_type, e_machine, _version, e_entry, e_phoff, _shoff, _flags, _ehsize,
     e_phentsize, e_phnum, _shentsize, _shnum, _shstrndx) = _EHDR.unpack_from(data)
    _check_ident(ident, filename)
    if e_type != ET_EXEC:
        raise ImageError(f"{filename}: ELF type {e_type} is not ET_EXEC (2); link the kernel as an executable "
                         "(not -r, not -pie)")
    if e_machine != EM_386:
        raise ImageError(f"{filename}: ELF machine {e_machine} is not EM_386 (3); multiboot v1 kernels are i386")
    if e_phnum == 0:
        raise ImageError(f"{filename}: ELF has no program headers, so nothing to load")
    if e_phentsize < _PHDR.size:
        raise ImageError(f"{filename}: ELF program header size {e_phentsize} is smaller than {_PHDR.size}")
    loads = []
    for i in range(e_phnum):
        at = e_phoff + i * e_phentsize
        if at + _PHDR.size > len(data):
            raise ImageError(f"{filename}: truncated: program header {i} ends at {at + _PHDR.size:#x} "
                             f"beyond the file's {len(data):#x} bytes")
        p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, _pflags, _align = _PHDR.unpack_from(data, at)
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_filesz > p_memsz:
            raise ImageError(f"{filename}: program header {i}: p_filesz {p_filesz:#x} exceeds p_memsz {p_memsz:#x}")
        if p_offset + p_filesz > len(data):
            raise ImageError(f"{filename}: truncated: segment {i} data ends at {p_offset + p_filesz:#x} "
                             f"beyond the file's {len(data):#x} bytes")
        loads.append((i, p_paddr, p_vaddr, bytes(data[p_offset:p_offset + p_filesz]), p_memsz))
    if not loads:
        raise ImageError(f"{filename}: ELF has no PT_LOAD segment, so nothing to load")
    return e_entry, loads


def _check_ident(ident, filename):
    if ident[4] == ELFCLASS64:
        raise ImageError(f"{filename}: ELF64 kernel: multiboot v1 kernels are 32-bit ELF (QEMU refuses them too); "
                         "set the a.out kludge (flags bit 16) in the multiboot header, link with -m elf_i386, "
                         "or load a flat binary with --kind flat64")
    if ident[4] != ELFCLASS32:
        raise ImageError(f"{filename}: ELF class {ident[4]} is neither 32- nor 64-bit")
    if ident[5] != ELFDATA2LSB:
        raise ImageError(f"{filename}: ELF data encoding {ident[5]} is not little-endian (1)")
