"""Tests for engine/loaders/__init__.py: kind detection, dispatch, and that every refusal names the file."""
import random
import struct

import pytest

from engine.errors import ImageError
from engine.loaders import detect_kind, load_image

MEM = 64 << 20
BOOT_SECTOR = bytes.fromhex("ebfe") + bytes(508) + b"\x55\xaa"     # jmp $


def test_detects_multiboot(hello_kernel):
    """An ELF with a multiboot header is a multiboot kernel."""
    assert detect_kind(hello_kernel, "kernel.elf") == "multiboot"
    assert load_image(hello_kernel, "kernel.elf", MEM).kind == "multiboot"


def test_detects_bootsector():
    """A sector ending in 0x55AA is a boot sector."""
    assert load_image(BOOT_SECTOR, "boot.img", MEM).kind == "bootsector"


def test_neither_points_to_flat64():
    """Random bytes are neither; the message says how to load a flat image."""
    with pytest.raises(ImageError) as info:
        load_image(b"\x90" * 600, "blob.bin", MEM)
    assert str(info.value) == ("blob.bin: neither a multiboot header in the first 8 KiB, a Linux setup header "
                               "(\"HdrS\" at 0x202), a vmlinux (an x86-64 ELF with a \"Linux\" note) nor a boot "
                               "signature 0x55AA at offset 510 was found; --kind "
                               "flat64 loads a flat 64-bit image")


def test_explicit_kind_skips_detection():
    """kind="flat64" loads even a boot sector as flat code; an explicit multiboot gives that loader's error."""
    assert load_image(BOOT_SECTOR, "boot.img", MEM, kind="flat64").mode == "long64"
    with pytest.raises(ImageError, match=r"^boot\.img: multiboot header not found"):
        load_image(BOOT_SECTOR, "boot.img", MEM, kind="multiboot")


def test_cmdline_noted_when_ignored():
    """A command line for a boot sector is ignored with a note, not silently."""
    image = load_image(BOOT_SECTOR, "boot.img", MEM, cmdline="quiet")
    assert "bootsector: command line 'quiet' ignored: only multiboot and Linux kernels receive one" in image.notes


def _patched(data, offset, fmt, value):
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


BAD_IMAGES = {
    "unknown kind": lambda k: dict(data=BOOT_SECTOR, kind="pe"),
    "load_addr for multiboot": lambda k: dict(data=k, load_addr=0x200000),
    "no magic at all": lambda k: dict(data=b"\0" * 600),
    "no multiboot header": lambda k: dict(data=BOOT_SECTOR, kind="multiboot"),
    "bad checksum": lambda k: dict(data=_patched(k, k.index(b"\x02\xb0\xad\x1b") + 8, "<I", 0)),
    "ELF64": lambda k: dict(data=_patched(k, 4, "B", 2)),
    "not ET_EXEC": lambda k: dict(data=_patched(k, 0x10, "<H", 3)),
    "not EM_386": lambda k: dict(data=_patched(k, 0x12, "<H", 62)),
    "no program headers": lambda k: dict(data=_patched(k, 0x2C, "<H", 0)),
    "phdrs past the end": lambda k: dict(data=_patched(k, 0x1C, "<I", 0xFFFFFF00)),
    "truncated ELF header": lambda k: dict(data=k[:0x40]),
    "entry outside": lambda k: dict(data=_patched(k, 0x18, "<I", 0)),
    "memory too small": lambda k: dict(data=k, mem_size=1 << 20),
    "no boot signature": lambda k: dict(data=bytes(512), kind="bootsector"),
    "short boot sector": lambda k: dict(data=b"\x55\xaa", kind="bootsector"),
    "empty flat": lambda k: dict(data=b"", kind="flat64"),
    "flat past memory": lambda k: dict(data=b"\xf4", kind="flat64", load_addr=MEM),
}


@pytest.mark.parametrize("case", BAD_IMAGES)
def test_every_error_names_the_file(case, hello_kernel):
    """Whatever is wrong, the message starts with the file's name, and only ImageError escapes."""
    args = {"mem_size": MEM, **BAD_IMAGES[case](hello_kernel)}
    with pytest.raises(ImageError) as info:
        load_image(filename="my kernel.img", **args)
    assert str(info.value).startswith("my kernel.img: ")


@pytest.mark.parametrize("kind", [None, "multiboot", "bootsector", "flat64"])
def test_mutated_kernels_raise_only_image_error(kind, hello_kernel, aout_kernel):
    """Seeded random edits of real kernels (huge sizes, wild offsets, valid checksums) load or raise ImageError."""
    rng = random.Random(1234)
    bases = [hello_kernel, aout_kernel()]
    nasty = [0, 1, 0x9000, 0x100000, 0x7FFFFFFF, 0xFFFFF000, 0xFFFFFFFF]
    for _ in range(400):
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 4)):
            value = rng.choice(nasty) if rng.random() < 0.6 else rng.getrandbits(32)
            struct.pack_into("<I", data, rng.randrange(0, len(data) - 3) & ~3, value)
        at = data.find(b"\x02\xb0\xad\x1b")
        if at >= 0 and at % 4 == 0 and at + 12 <= len(data):      # re-sign so the loader gets past the checksum
            flags = struct.unpack_from("<I", data, at + 4)[0] & 0x10007
            struct.pack_into("<II", data, at + 4, flags, -(0x1BADB002 + flags) & 0xFFFFFFFF)
        try:
            load_image(bytes(data), "fuzz.bin", MEM, kind=kind)
        except ImageError as error:
            assert str(error).startswith("fuzz.bin: ")
