"""Linux bzImage kernels, started through the x86 boot protocol's 64-bit entry (Documentation/arch/x86/boot.rst).

A bzImage is the real-mode setup (a boot sector and `setup_sects` sectors, the setup header at 0x1F1)
followed by the protected-mode kernel. Like a 64-bit boot loader ("64-bit Boot Protocol"), this loader
skips the real-mode code: the protected-mode kernel goes to pref_address with init_size bytes of room,
the initrd page-aligned as high as initrd_addr_max and RAM allow, boot_params (linux_params.py), the GDT,
the page tables and the command line into the low boot area (boot_params also names the RSDP of the ACPI tables
the VM writes, acpi_tables.py), and the kernel is entered at its load address + 0x200 in long mode: paging on over
flat.py's identity map (at least 4 GiB), __BOOT_CS 0x10 and __BOOT_DS 0x18 flat, interrupts off, RSI = boot_params.
"""
import struct

from engine.errors import ImageError
from engine.loaders.acpi_tables import RSDP_ADDR
from engine.loaders.flat import CODE64_DESCRIPTOR, DATA_DESCRIPTOR, page_tables
from engine.loaders.image import (GiB, HIGH_MEM_BASE, LINUX_BOOT_BASE, MiB, PAGE_SIZE, BootImage, Segment,
                                  check_disjoint, check_placement, fmt_size)
from engine.loaders.linux_params import build_boot_params, header_end

HDRS_MAGIC = b"HdrS"                    # "header" at 0x202
BOOT_FLAG = 0xAA55                      # "boot_flag" at 0x1FE
MIN_VERSION = 0x020C                    # 2.12 (Linux 3.8): xloadflags, which announces the 64-bit entry
LOADED_HIGH = 1 << 0                    # loadflags: a bzImage, protected-mode code loaded high
XLF_KERNEL_64 = 1 << 0                  # xloadflags: the 64-bit entry point at load address + 0x200
ENTRY_64_OFFSET = 0x200
SECTOR = 512
DEFAULT_SETUP_SECTS = 4                 # setup_sects 0 means 4
BOOT_CS, BOOT_DS = 0x10, 0x18           # __BOOT_CS, __BOOT_DS
GDT_ENTRIES = (0, 0, CODE64_DESCRIPTOR, DATA_DESCRIPTOR)
RFLAGS_RESERVED = 0x2                   # bit 1 is always set; IF clear: interrupts disabled at entry
IDENTITY_MAP_MIN = 4 * GiB
# The decompressor of Linux 6.1 borrows the two pages below 0x9F000 for its paging trampoline
# (find_trampoline_placement, with no EBDA in the BIOS data area): the boot area ends below them.
BOOT_AREA_END = 0x9D000

# The setup header (boot.rst, "The Real-Mode Kernel Header"): field, offset, struct format.
HEADER_FIELDS = (
    ("setup_sects", 0x1F1, "B"), ("root_flags", 0x1F2, "H"), ("syssize", 0x1F4, "I"), ("vid_mode", 0x1FA, "H"),
    ("root_dev", 0x1FC, "H"), ("boot_flag", 0x1FE, "H"), ("jump", 0x200, "H"), ("header", 0x202, "4s"),
    ("version", 0x206, "H"), ("kernel_version", 0x20E, "H"), ("type_of_loader", 0x210, "B"),
    ("loadflags", 0x211, "B"), ("code32_start", 0x214, "I"), ("ramdisk_image", 0x218, "I"),
    ("ramdisk_size", 0x21C, "I"), ("cmd_line_ptr", 0x228, "I"), ("initrd_addr_max", 0x22C, "I"),
    ("kernel_alignment", 0x230, "I"), ("relocatable_kernel", 0x234, "B"), ("min_alignment", 0x235, "B"),
    ("xloadflags", 0x236, "H"), ("cmdline_size", 0x238, "I"), ("payload_offset", 0x248, "I"),
    ("payload_length", 0x24C, "I"), ("setup_data", 0x250, "Q"), ("pref_address", 0x258, "Q"),
    ("init_size", 0x260, "I"), ("handover_offset", 0x264, "I"),
)
HEADER_212_END = 0x268                  # the 2.12 header ends after handover_offset


def is_bzimage(data):
    """The setup header's signature and the boot flag: what says "a Linux kernel" (boot.rst)."""
    return (len(data) >= 0x206 and data[0x202:0x206] == HDRS_MAGIC
            and struct.unpack_from("<H", data, 0x1FE)[0] == BOOT_FLAG)


def parse_header(data, filename):
    """{field: value} of a bzImage's setup header, refusing what the 64-bit entry cannot start."""
    if not is_bzimage(data):
        raise ImageError(f"{filename}: not a Linux kernel: no setup header signature \"HdrS\" at 0x202 with the "
                         f"boot flag {BOOT_FLAG:#06x} at 0x1FE")
    if len(data) < HEADER_212_END or len(data) < header_end(data):
        raise ImageError(f"{filename}: truncated: the setup header ends at {max(HEADER_212_END, header_end(data)):#x}, "
                         f"the file has {len(data):#x} bytes")
    hdr = {name: struct.unpack_from("<" + fmt, data, offset)[0] for name, offset, fmt in HEADER_FIELDS}
    version = hdr["version"]
    if version < MIN_VERSION:
        raise ImageError(f"{filename}: boot protocol {version >> 8}.{version & 0xFF:02d} is older than 2.12: webhyve "
                         "starts Linux at its 64-bit entry, which kernels announce from protocol 2.12 (Linux 3.8) on")
    if not hdr["xloadflags"] & XLF_KERNEL_64:
        raise ImageError(f"{filename}: not a 64-bit kernel: xloadflags {hdr['xloadflags']:#x} lacks XLF_KERNEL_64 "
                         "(bit 0); webhyve starts Linux only at its 64-bit entry: build it for x86_64")
    if not hdr["loadflags"] & LOADED_HIGH:
        raise ImageError(f"{filename}: a zImage (loadflags LOADED_HIGH clear) loads at 0x10000 through the "
                         "real-mode setup; webhyve loads bzImages only")
    hdr["setup_sects"] = hdr["setup_sects"] or DEFAULT_SETUP_SECTS
    kernel_offset, kernel_size = (hdr["setup_sects"] + 1) * SECTOR, hdr["syssize"] * 16
    if kernel_size == 0:
        raise ImageError(f"{filename}: its setup header declares no protected-mode kernel (syssize 0)")
    if len(data) < kernel_offset + kernel_size:
        raise ImageError(f"{filename}: truncated: its header declares {hdr['setup_sects']} setup sectors and syssize "
                         f"{hdr['syssize']:#x} (a {kernel_size:#x}-byte kernel at file offset {kernel_offset:#x}), "
                         f"so the file needs {kernel_offset + kernel_size:#x} bytes; it has {len(data):#x}")
    if kernel_size > hdr["init_size"]:
        raise ImageError(f"{filename}: its protected-mode kernel of {kernel_size:#x} bytes is larger than the "
                         f"init_size {hdr['init_size']:#x} it declares: the header is damaged")
    return hdr


def kernel_address(hdr):
    """Where the protected-mode kernel goes: pref_address, aligned up to kernel_alignment when relocatable
    (boot.rst, init_size: runtime_start = align_up(load_address, kernel_alignment))."""
    address = hdr["pref_address"] or HIGH_MEM_BASE
    align = hdr["kernel_alignment"]
    if hdr["relocatable_kernel"] and align:
        address = -(-address // align) * align
    return address


def place_initrd(size, hdr, kernel, mem_size, filename):
    """The initrd's address: page-aligned, as high as possible below min(initrd_addr_max + 1, RAM top),
    above the kernel's [start, start + init_size) or else below it, never below 1 MiB."""
    limit = min(hdr["initrd_addr_max"] + 1, mem_size)
    start, end = kernel
    for top in (limit, min(start, limit)):
        address = (top - size) & ~(PAGE_SIZE - 1)
        if address >= HIGH_MEM_BASE and (address + size <= start or address >= end):
            return address
    raise ImageError(f"{filename}: an initrd of {fmt_size(size)} does not fit in guest memory below {limit:#x} "
                     f"(initrd_addr_max {hdr['initrd_addr_max']:#x}, memory {fmt_size(mem_size)}) beside the kernel "
                     f"at [{start:#x}-{end:#x}); give the guest more memory (--mem) or use a smaller initrd")


def load_linux(data, filename, mem_size, cmdline="", initrd=None):
    """BootImage for a bzImage: the kernel, the initrd, boot_params, the command line, entry in long mode."""
    hdr = parse_header(data, filename)
    start = kernel_address(hdr)
    kernel_offset = (hdr["setup_sects"] + 1) * SECTOR
    kernel_bytes = bytes(data[kernel_offset:kernel_offset + hdr["syssize"] * 16])
    note = (f"linux: boot protocol {hdr['version'] >> 8}.{hdr['version'] & 0xFF:02d}, {len(kernel_bytes):#x}-byte "
            f"protected-mode kernel at {start:#x} (init_size {hdr['init_size']:#x}: up to "
            f"{start + hdr['init_size']:#x}), entered at {start + ENTRY_64_OFFSET:#x} in long mode")
    image = boot_linux(data, [Segment(start, kernel_bytes, name="kernel")], (start, start + hdr["init_size"]),
                       start + ENTRY_64_OFFSET, note, filename, mem_size, cmdline, initrd, hdr)
    tail = len(data) - kernel_offset - len(kernel_bytes)
    if tail:
        image.notes.append(f"linux: the {tail:#x} bytes after the kernel that syssize declares (a signature) are "
                           "not loaded")
    return image


def boot_linux(header, kernel_segments, kernel, entry, note, filename, mem_size, cmdline, initrd, hdr=None):
    """The 64-bit boot protocol around a kernel already placed (`kernel_segments` over [start, end) of `kernel`):
    the initrd, boot_params with `header`'s setup header (the image's first HEADER_212_END bytes or more), the
    boot area, and the registers at `entry`. Shared by bzImages and vmlinux (vmlinux.py)."""
    hdr = hdr or {name: struct.unpack_from("<" + fmt, header, offset)[0] for name, offset, fmt in HEADER_FIELDS}
    raw_cmdline = _cmdline(cmdline, hdr, filename)
    _check_room(hdr, kernel, mem_size, len(initrd or b""), filename)
    area, notes = _boot_area(raw_cmdline, mem_size, filename)
    notes.insert(0, note)
    segments = kernel_segments + area
    initrd_addr = 0
    if initrd is not None:
        if not initrd:
            raise ImageError(f"{filename}: the initrd is empty; leave it out or give one with content")
        initrd_addr = place_initrd(len(initrd), hdr, kernel, mem_size, filename)
        segments.append(Segment(initrd_addr, bytes(initrd), name="initrd"))
        notes.append(f"linux: initrd of {len(initrd):#x} bytes at {initrd_addr:#x}")
    gdt, tables, cmdline_seg = area
    params = Segment(LINUX_BOOT_BASE, build_boot_params(header, kernel[0], cmdline_seg.gpa, mem_size, initrd_addr,
                                                        len(initrd or b""), RSDP_ADDR), name="boot_params")
    segments.append(params)
    check_disjoint(filename, segments)
    regs = {"rip": entry, "rsi": params.gpa, "rsp": params.gpa, "cr3": tables.gpa,
            "rflags": RFLAGS_RESERVED, "cs": BOOT_CS, "ds": BOOT_DS, "es": BOOT_DS, "ss": BOOT_DS}
    return BootImage(kind="linux", mode="long64", segments=segments, regs=regs, gdt=gdt, entry=entry, notes=notes)


def _check_room(hdr, kernel, mem_size, initrd_size, filename):
    """The kernel's [start, start + init_size) must lie in guest memory (and below 4 GiB, where we load)."""
    start, end = kernel
    if end > mem_size:
        need = -(-(end + initrd_size) // MiB)
        raise ImageError(f"{filename}: guest memory of {fmt_size(mem_size)} is too small for this kernel: it runs at "
                         f"{start:#x} and needs init_size {hdr['init_size']:#x} bytes from there, up to {end:#x}; "
                         f"give the guest at least {need} MiB (--mem {need})")
    if end > IDENTITY_MAP_MIN:
        raise ImageError(f"{filename}: the kernel would run at [{start:#x}-{end:#x}), above 4 GiB: its "
                         f"pref_address {hdr['pref_address']:#x} is not one webhyve loads at")
    check_placement(filename, "kernel", start, end, mem_size, low_ok=False)


def _boot_area(raw_cmdline, mem_size, filename):
    """([GDT, page tables, command line] segments from one page above boot_params up, notes)."""
    gdt = Segment(LINUX_BOOT_BASE + PAGE_SIZE, struct.pack(f"<{len(GDT_ENTRIES)}Q", *GDT_ENTRIES), name="GDT")
    pml4 = gdt.gpa + PAGE_SIZE
    tables, gib = page_tables(pml4, max(mem_size, IDENTITY_MAP_MIN))
    cmdline = Segment(pml4 + len(tables), raw_cmdline, name="command line")
    if cmdline.end > BOOT_AREA_END:
        raise ImageError(f"{filename}: boot_params, the GDT, the page tables for {gib} GiB and the command line "
                         f"need [{LINUX_BOOT_BASE:#x}-{cmdline.end:#x}), beyond the boot area's end at "
                         f"{BOOT_AREA_END:#x}; give the guest less memory")
    check_placement(filename, "boot area", LINUX_BOOT_BASE, cmdline.end, mem_size, low_ok=True)
    notes = [f"linux: boot_params at {LINUX_BOOT_BASE:#x}, GDT at {gdt.gpa:#x}, identity map of {gib} GiB with "
             f"2 MiB pages at {pml4:#x}, command line at {cmdline.gpa:#x}"]
    return [gdt, Segment(pml4, tables, name="page tables"), cmdline], notes


def _cmdline(cmdline, hdr, filename):
    """The NUL-terminated command line; at most cmdline_size characters (boot.rst: without the NUL)."""
    raw = cmdline.encode()
    if b"\0" in raw:
        raise ImageError(f"{filename}: the command line contains a NUL byte, which would end it early")
    if len(raw) > hdr["cmdline_size"]:
        raise ImageError(f"{filename}: the command line of {len(raw)} bytes is longer than the {hdr['cmdline_size']} "
                         "this kernel accepts (cmdline_size); shorten it")
    return raw + b"\0"
