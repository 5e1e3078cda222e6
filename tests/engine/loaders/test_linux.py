"""Tests for engine/loaders/linux.py and linux_params.py: Debian's real bzImage and crafted ones, read back the way
boot.rst and zero-page.rst lay them out."""
import struct

import pytest

from engine.errors import ImageError
from engine.loaders.acpi_tables import RSDP_ADDR
from engine.loaders import detect_kind, load_image
from engine.loaders.linux import load_linux, parse_header
from tests.engine.loaders.bzimage import FIELDS, crafted
from tests.guests.linux_images import linux_images

MiB, GiB = 1 << 20, 1 << 30
MEM = 256 * MiB
CMDLINE = "console=ttyS0 earlyprintk=serial,ttyS0 loglevel=8"
E820 = [(0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xF0000, 0x10000, 2)]       # then (1 MiB, RAM top - 1 MiB, 1)


@pytest.fixture(scope="module")
def vmlinuz():
    return linux_images()[0].read_bytes()


@pytest.fixture(scope="module")
def initrd():
    return linux_images()[1].read_bytes()


def field(data, name):
    offset, fmt = FIELDS[name]
    return struct.unpack_from("<" + fmt, data, offset)[0]


def segment(image, name):
    return next(seg for seg in image.segments if seg.name == name)


def memory_of(image):
    return {seg.gpa: seg.data + bytes(seg.size - len(seg.data)) for seg in image.segments}


def read(memory, gpa, size):
    for base, body in memory.items():
        if base <= gpa and gpa + size <= base + len(body):
            return body[gpa - base:gpa - base + size]
    raise AssertionError(f"{gpa:#x}+{size:#x} is outside every segment")


def translate(memory, cr3, linear):
    """The SDM 4.5 4-level walk to a 2 MiB page, through the tables the loader wrote."""
    entry = cr3
    for shift in (39, 30):
        entry, = struct.unpack("<Q", read(memory, (entry & 0xFFFFFFFFFF000) + 8 * (linear >> shift & 0x1FF), 8))
        assert entry & 1, f"{linear:#x}: not present at level {shift}"
    pde, = struct.unpack("<Q", read(memory, (entry & 0xFFFFFFFFFF000) + 8 * (linear >> 21 & 0x1FF), 8))
    assert pde & 0x81 == 0x81, f"{linear:#x}: expected a present 2 MiB page"
    return (pde & 0xFFFFFFFE00000) | (linear & 0x1FFFFF)


# -- the real kernel --------------------------------------------------------------------------------------------
def test_debian_kernel_is_detected_as_linux(vmlinuz):
    """Debian's vmlinuz ends its first sector with 0x55AA too: the setup header makes it Linux, not a boot sector."""
    assert vmlinuz[510:512] == b"\x55\xaa"
    assert detect_kind(vmlinuz, "vmlinuz") == "linux"
    assert load_image(vmlinuz, "vmlinuz", MEM).kind == "linux"


def test_header_fields_match_struct(vmlinuz):
    """Every field the loader parses equals the bytes at boot.rst's offset, and the kernel is one it can start."""
    hdr = parse_header(vmlinuz, "vmlinuz")
    for name in FIELDS:
        assert hdr[name] == field(vmlinuz, name), name
    assert hdr["version"] >= 0x020C and hdr["xloadflags"] & 1 and hdr["loadflags"] & 1
    assert hdr["relocatable_kernel"] and hdr["kernel_alignment"] == 1 << hdr["min_alignment"]


def test_kernel_placement_and_entry(vmlinuz):
    """The protected-mode kernel sits at pref_address, its bytes are the file's after the setup sectors, and the
    entry is load + 0x200 in long mode with RSI = boot_params, CS 0x10, DS/ES/SS 0x18 and interrupts off."""
    image = load_linux(vmlinuz, "vmlinuz", MEM, CMDLINE)
    kernel, params = segment(image, "kernel"), segment(image, "boot_params")
    setup = (field(vmlinuz, "setup_sects") + 1) * 512
    assert kernel.gpa == field(vmlinuz, "pref_address") == 0x1000000
    assert kernel.data == vmlinuz[setup:setup + field(vmlinuz, "syssize") * 16]
    assert (image.kind, image.mode, image.entry) == ("linux", "long64", kernel.gpa + 0x200)
    regs = image.regs
    assert (regs["rip"], regs["rsi"]) == (kernel.gpa + 0x200, params.gpa)
    assert (regs["cs"], regs["ds"], regs["es"], regs["ss"]) == (0x10, 0x18, 0x18, 0x18)
    assert not regs["rflags"] & (1 << 9)


def test_gdt_has_boot_cs_and_ds(vmlinuz):
    """__BOOT_CS (0x10) is 64-bit code, __BOOT_DS (0x18) flat read/write data, both DPL 0 and present."""
    gdt = load_linux(vmlinuz, "vmlinuz", MEM).gdt
    code, data = struct.unpack_from("<QQ", gdt.data, 0x10)
    assert code >> 47 & 1 and code >> 43 & 1 and code >> 41 & 1 and code >> 53 & 1      # P, code, readable, L
    assert data >> 47 & 1 and not data >> 43 & 1 and data >> 41 & 1                    # P, data, writable
    assert (data & 0xFFFF) | (data >> 32 & 0xF0000) == 0xFFFFF and data >> 55 & 1      # 4 GiB limit (G)
    assert (code >> 45 & 3, data >> 45 & 3) == (0, 0)


def test_identity_map_covers_what_the_kernel_touches(vmlinuz, initrd):
    """Paging maps linear = physical over 4 GiB: boot_params, the command line, the kernel's init_size, the initrd."""
    image = load_linux(vmlinuz, "vmlinuz", MEM, CMDLINE, initrd)
    memory, cr3 = memory_of(image), image.regs["cr3"]
    kernel = segment(image, "kernel")
    for name in ("boot_params", "command line", "initrd", "GDT"):
        seg = segment(image, name)
        assert translate(memory, cr3, seg.gpa) == seg.gpa and translate(memory, cr3, seg.end - 1) == seg.end - 1
    for linear in (kernel.gpa, kernel.gpa + field(vmlinuz, "init_size") - 1, MEM - 1, 4 * GiB - 1):
        assert translate(memory, cr3, linear) == linear


def test_boot_params_bytes(vmlinuz, initrd):
    """The zero page: the setup header copied to 0x1F1 with type_of_loader, vid_mode, code32_start, cmd_line_ptr and
    the ramdisk fields written; acpi_rsdp_addr at 0x070 (Debian's 6.1 speaks protocol 2.15); the E820 table at
    0x2D0; everything else zero."""
    image = load_linux(vmlinuz, "vmlinuz", MEM, CMDLINE, initrd)
    params, kernel, rd = segment(image, "boot_params"), segment(image, "kernel"), segment(image, "initrd")
    zp = params.data
    assert len(zp) == 4096
    end = 0x202 + vmlinuz[0x201]
    written = {0x1FA: (2, 0xFFFF), 0x210: (1, 0xFF), 0x214: (4, kernel.gpa), 0x218: (4, rd.gpa),
               0x21C: (4, len(initrd)), 0x228: (4, segment(image, "command line").gpa)}
    for offset, (size, value) in written.items():
        assert int.from_bytes(zp[offset:offset + size], "little") == value, hex(offset)
    for offset in range(0x1F1, end):
        if not any(o <= offset < o + size for o, (size, _) in written.items()):
            assert zp[offset] == vmlinuz[offset], hex(offset)
    assert struct.unpack_from("<Q", zp, 0x070)[0] == RSDP_ADDR
    assert zp[0x0C0:0x0CC] == bytes(12)                        # ext_ramdisk_image/size, ext_cmd_line_ptr: below 4 GiB
    assert zp[0x1E8] == 4 and zp[0x1EF] == 0                    # e820_entries; the sentinel stays 0
    table = [struct.unpack_from("<QQI", zp, 0x2D0 + 20 * i) for i in range(zp[0x1E8])]
    assert table == E820 + [(MiB, MEM - MiB, 1)]
    outside = bytes(zp[:0x070]) + bytes(zp[0x078:0x0C0]) + bytes(zp[0x0CC:0x1E8]) + bytes(zp[0x1E9:0x1F1]) + \
        bytes(zp[end:0x2D0]) + bytes(zp[0x2D0 + 20 * 4:])
    assert outside == bytes(len(outside))
    cmdline = segment(image, "command line")
    assert cmdline.gpa < 0xA0000 and cmdline.data == CMDLINE.encode() + b"\0"


def test_initrd_high_page_aligned_and_clear_of_the_kernel(vmlinuz, initrd):
    """The initrd is page-aligned, ends within the last page below RAM top (initrd_addr_max is higher), and lies
    outside [kernel, kernel + init_size)."""
    image = load_linux(vmlinuz, "vmlinuz", MEM, initrd=initrd)
    rd, kernel = segment(image, "initrd"), segment(image, "kernel")
    assert rd.data == initrd and rd.gpa % 4096 == 0
    assert MEM - 4096 < rd.end <= MEM
    assert rd.gpa >= kernel.gpa + field(vmlinuz, "init_size")


# -- crafted images: the placement rules and every refusal ------------------------------------------------------
def test_crafted_image_loads():
    """The crafted header alone is enough: kernel at pref_address, boot_params's header copy ends at 0x268."""
    image = load_linux(crafted(), "k", 64 * MiB, "quiet")
    assert segment(image, "kernel").gpa == 0x1000000
    assert segment(image, "boot_params").data[0x264:0x268] == bytes(4)


@pytest.mark.parametrize("version, rsdp", [(0x020C, 0), (0x020D, 0), (0x020E, RSDP_ADDR), (0x020F, RSDP_ADDR)])
def test_acpi_rsdp_addr_from_protocol_2_14(version, rsdp):
    """acpi_rsdp_addr (boot_params 0x070) names the RSDP for kernels of boot protocol 2.14 and later, which read it;
    for older ones those bytes were padding and stay zero."""
    zp = segment(load_linux(crafted(version=version), "k", 64 * MiB), "boot_params").data
    assert struct.unpack_from("<Q", zp, 0x070)[0] == rsdp


def test_initrd_below_initrd_addr_max():
    """initrd_addr_max is the highest byte the initrd may occupy: it ends at or below it, as high as possible."""
    image = load_linux(crafted(initrd_addr_max=0x2FFFFFF), "k", 64 * MiB, initrd=b"x" * 5000)
    rd = segment(image, "initrd")
    assert rd.end - 1 <= 0x2FFFFFF and rd.gpa == 0x3000000 - 0x2000


def test_initrd_goes_below_the_kernel_when_above_is_taken():
    """With the kernel's init_size reaching RAM top, the initrd goes right below the kernel, still above 1 MiB."""
    image = load_linux(crafted(init_size=0x3000000), "k", 64 * MiB, initrd=b"y" * 0x1000)
    assert segment(image, "initrd").gpa == 0x1000000 - 0x1000


def test_relocatable_kernel_is_aligned():
    """A relocatable kernel whose pref_address is not aligned goes up to the next kernel_alignment boundary."""
    image = load_linux(crafted(pref_address=0x1100000), "k", 64 * MiB)
    assert segment(image, "kernel").gpa == 0x1200000


def test_exactly_cmdline_size_characters_fit():
    """cmdline_size counts the characters without the NUL: that many are accepted."""
    image = load_linux(crafted(cmdline_size=10), "k", 64 * MiB, "a" * 10)
    assert segment(image, "command line").data == b"a" * 10 + b"\0"


@pytest.mark.parametrize("data, mem, kwargs, message", [
    (b"\x90" * 4096, 64 * MiB, {}, r"^k: not a Linux kernel: no setup header signature \"HdrS\" at 0x202"),
    (crafted()[:0x300], 64 * MiB, {}, r"^k: truncated: its header declares 1 setup sectors and syssize 0x100 "
                                     r"\(a 0x1000-byte kernel at file offset 0x400\), so the file needs 0x1400 "
                                     r"bytes; it has 0x300"),
    (crafted()[:0x240], 64 * MiB, {}, r"^k: truncated: the setup header ends at 0x268"),
    (crafted(version=0x020B), 64 * MiB, {}, r"^k: boot protocol 2\.11 is older than 2\.12"),
    (crafted(xloadflags=0x2), 64 * MiB, {}, r"^k: not a 64-bit kernel: xloadflags 0x2 lacks XLF_KERNEL_64"),
    (crafted(loadflags=0), 64 * MiB, {}, r"^k: a zImage \(loadflags LOADED_HIGH clear\)"),
    (crafted(syssize=0), 64 * MiB, {}, r"^k: its setup header declares no protected-mode kernel"),
    (crafted(init_size=0x800), 64 * MiB, {}, r"^k: its protected-mode kernel of 0x1000 bytes is larger than"),
    (crafted(cmdline_size=10), 64 * MiB, {"cmdline": "a" * 11},
     r"^k: the command line of 11 bytes is longer than the 10 this kernel accepts \(cmdline_size\)"),
    (crafted(), 64 * MiB, {"cmdline": "a\0b"}, r"^k: the command line contains a NUL byte"),
    (crafted(init_size=0x4000000), 64 * MiB, {},
     r"^k: guest memory of 64 MiB is too small for this kernel: it runs at 0x1000000 and needs init_size "
     r"0x4000000 bytes from there, up to 0x5000000; give the guest at least 80 MiB \(--mem 80\)"),
    (crafted(), 64 * MiB, {"initrd": b"z" * (60 * MiB)},
     r"^k: an initrd of 60 MiB does not fit in guest memory below 0x4000000"),
    (crafted(initrd_addr_max=0xFFFFF), 64 * MiB, {"initrd": b"z"}, r"^k: an initrd of 0x1 bytes does not fit"),
    (crafted(), 64 * MiB, {"initrd": b""}, r"^k: the initrd is empty"),
])
def test_refusals_name_the_problem(data, mem, kwargs, message):
    with pytest.raises(ImageError, match=message):
        load_linux(data, "k", mem, **kwargs)


def test_initrd_only_with_linux():
    """An initrd given with any other kind of image is refused, naming the kind."""
    sector = bytes(510) + b"\x55\xaa"
    with pytest.raises(ImageError, match=r"^boot\.img: an initrd goes only with a Linux kernel \(bzImage or vmlinux\); this is a "
                                         r"bootsector image"):
        load_image(sector, "boot.img", 64 * MiB, initrd=b"x")


def test_huge_guest_overflows_the_boot_area():
    """Page tables for more memory than the low boot area holds are refused, not written over the EBDA."""
    with pytest.raises(ImageError, match=r"beyond the boot area's end at 0x9d000; give the guest less memory"):
        load_linux(crafted(), "k", 200 * GiB)
