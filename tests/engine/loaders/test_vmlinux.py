"""Tests for engine/loaders/vmlinux.py: the vmlinux `make linux` takes out of Debian's bzImage (guests/linux/
extract_vmlinux.py), read back against its own program headers with readelf, and crafted ELF files."""
import shutil
import struct
import subprocess

import pytest

from engine.errors import ImageError
from engine.loaders import detect_kind, load_image
from engine.loaders.vmlinux import is_vmlinux
from tests.guests.linux_images import linux_images

MiB = 1 << 20
MEM = 256 * MiB


@pytest.fixture(scope="module")
def vmlinux():
    path, initrd = linux_images("vmlinux")
    return path, path.read_bytes(), initrd.read_bytes()


def readelf_loads(path):
    """[(p_paddr, p_offset, p_filesz, p_memsz)] of the PT_LOAD headers, as binutils' readelf reads them."""
    if shutil.which("readelf") is None:
        pytest.skip("readelf (binutils) is missing")
    out = subprocess.run(["readelf", "-lW", str(path)], capture_output=True, text=True, check=True).stdout
    return [(int(w[3], 16), int(w[1], 16), int(w[4], 16), int(w[5], 16))
            for w in (line.split() for line in out.splitlines()) if w and w[0] == "LOAD"]


def elf64(notes=(b"Linux",), entry=0x1000000, paddr=0x1000000, body=b"\x90" * 64, machine=62):
    """A minimal x86-64 ELF executable: one PT_LOAD of `body` at `paddr`, one PT_NOTE per owner in `notes`."""
    note = b"".join(struct.pack("<III", len(o) + 1, 4, 6) + (o + b"\0").ljust(-(-(len(o) + 1) // 4) * 4, b"\0")
                    + b"\0" * 4 for o in notes)
    phnum = 1 + bool(notes)
    data_at = 64 + 56 * phnum
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, machine, 1, entry, 64, 0, 0, 64,
                         56, phnum, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, data_at, 0xFFFFFFFF80000000 + paddr, paddr, len(body), len(body) + 4096,
                       0x1000)
    phdrs = load + (struct.pack("<IIQQQQQQ", 4, 4, data_at + len(body), 0, 0, len(note), len(note), 4) if notes else b"")
    return header + phdrs + body + note


def test_the_vmlinux_of_debians_kernel_is_detected_as_linux_and_its_bzimage_too(vmlinux):
    path, data, _ = vmlinux
    assert is_vmlinux(data) and detect_kind(data, "vmlinux") == "linux"
    bzimage = linux_images()[0].read_bytes()
    assert not is_vmlinux(bzimage) and detect_kind(bzimage, "vmlinuz") == "linux"


def test_each_segment_goes_to_its_physical_address_with_its_bss_and_entry_is_startup_64(vmlinux):
    path, data, initrd = vmlinux
    image = load_image(data, "vmlinux", MEM, cmdline="console=ttyS0", initrd=initrd)
    kernel = sorted((s for s in image.segments if s.name.startswith("kernel")), key=lambda s: s.gpa)
    loads = readelf_loads(path)
    assert [(s.gpa, s.size) for s in kernel] == [(paddr, memsz) for paddr, _, _, memsz in loads]
    for segment, (_, offset, filesz, _) in zip(kernel, loads):
        assert segment.data == data[offset:offset + filesz]
    entry, = struct.unpack_from("<Q", data, 24)
    assert image.entry == image.regs["rip"] == entry == kernel[0].gpa == 0x1000000     # LOAD_PHYSICAL_ADDR
    assert image.kind == "linux" and image.mode == "long64"


def test_boot_params_carry_a_setup_header_the_kernel_reads(vmlinux):
    """No setup header comes with a vmlinux: boot_params get one with "HdrS", protocol 2.15 (so the kernel reads
    acpi_rsdp_addr), the command line, the initrd and the E820 map, as for the bzImage."""
    _, data, initrd = vmlinux
    image = load_image(data, "vmlinux", MEM, cmdline="console=ttyS0 quiet", initrd=initrd)
    params = next(s for s in image.segments if s.name == "boot_params")
    assert image.regs["rsi"] == params.gpa
    zero = params.data
    assert zero[0x202:0x206] == b"HdrS" and struct.unpack_from("<H", zero, 0x1FE)[0] == 0xAA55
    assert struct.unpack_from("<H", zero, 0x206)[0] == 0x020F
    cmdline = next(s for s in image.segments if s.name == "command line")
    ramdisk = next(s for s in image.segments if s.name == "initrd")
    assert struct.unpack_from("<I", zero, 0x228)[0] == cmdline.gpa and cmdline.data == b"console=ttyS0 quiet\0"
    assert struct.unpack_from("<II", zero, 0x218) == (ramdisk.gpa, len(initrd))
    assert struct.unpack_from("<Q", zero, 0x070)[0] != 0                                # acpi_rsdp_addr
    entries = zero[0x1E8]
    top = struct.unpack_from("<QQI", zero, 0x2D0 + 20 * (entries - 1))
    assert top == (MiB, MEM - MiB, 1)


def test_a_guest_too_small_for_the_kernel_is_refused_before_it_starts(vmlinux):
    _, data, _ = vmlinux
    with pytest.raises(ImageError, match="guest memory of 64 MiB is too small for this kernel"):
        load_image(data, "vmlinux", 64 * MiB)


@pytest.mark.parametrize("data, message", [
    (elf64(notes=()), "an x86-64 ELF file without the \"Linux\" note"),
    (elf64(machine=3), "neither a multiboot header"),                      # not x86-64
    (elf64()[:100], "truncated or damaged: 2 program headers"),
    (elf64(entry=0x2000000), "entry point 0x2000000 is outside its segments"),
], ids=["no Linux note", "i386", "cut in its program headers", "entry outside"])
def test_crafted_elf_files_are_refused_with_the_reason(data, message):
    with pytest.raises(ImageError, match=message):
        load_image(data, "crafted", MEM, cmdline="console=ttyS0")


def test_a_vmlinux_cut_inside_a_segment_is_refused():
    data = elf64(body=b"\x90" * 4096)
    with pytest.raises(ImageError, match="truncated or damaged: segment 0"):
        load_image(data[:-2000], "cut", MEM)


def test_a_crafted_vmlinux_loads_where_its_header_says():
    image = load_image(elf64(), "crafted", MEM, cmdline="x")
    segment = next(s for s in image.segments if s.name.startswith("kernel"))
    assert (segment.gpa, segment.size, segment.data) == (0x1000000, 64 + 4096, b"\x90" * 64)
