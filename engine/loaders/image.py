"""What a loader hands the engine: the bytes to place in guest-physical memory and the CPU state at entry.

Loaders are pure: they read an image and describe it; the engine copies the segments into guest memory and
sets the vCPU up. The guest-physical layout below is fixed and shared with the engine's firmware and BIOS.
"""
from dataclasses import dataclass, field

from engine.errors import ImageError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = 0x1000

# Guest-physical layout. [base, end) ranges.
IVT_BDA_BASE, IVT_BDA_END = 0x0000, 0x1000      # real-mode IVT + BIOS data area: engine/BIOS
FIRMWARE_BASE, FIRMWARE_END = 0x1000, 0x8000    # engine firmware: reset stub and its GDT
MBI_BASE, MBI_END = 0x9000, 0x10000             # multiboot information area (built by multiboot.py)
BOOTSECTOR_ADDR = 0x7C00                        # where the BIOS puts sector 0 (real mode, CS:IP 0000:7C00)
SECTOR_SIZE = 512
LOW_KERNEL_BASE = 0x10000                       # nothing a loader places may start below this
VGA_BIOS_HOLE_BASE, VGA_BIOS_HOLE_END = 0xA0000, 0x100000
VGA_TEXT_BUFFER = 0xB8000
HIGH_MEM_BASE = 0x100000                        # 1 MiB: where kernels normally load
EBDA_BASE = 0x9FC00                             # top 1 KiB of conventional memory, reserved in the e820 map
BIOS_ROM_BASE = 0xF0000                         # reserved in the e820 map up to HIGH_MEM_BASE
LINUX_BOOT_BASE = 0x10000                       # Linux: boot_params, GDT, page tables, command line (linux.py)

E820_RAM, E820_RESERVED = 1, 2                  # address range types (ACPI "AddressRangeMemory"/"Reserved")


def e820_map(mem_size):
    """[(base, length, type)]: the machine's physical memory map as its firmware reports it (INT 15h E820h),
    the same as QEMU's SeaBIOS: low RAM, the EBDA, the BIOS ROM, RAM from 1 MiB to the top. The VGA hole
    0xA0000-0xF0000 is absent from the map, as there."""
    return [(0, EBDA_BASE, E820_RAM),
            (EBDA_BASE, VGA_BIOS_HOLE_BASE - EBDA_BASE, E820_RESERVED),
            (BIOS_ROM_BASE, HIGH_MEM_BASE - BIOS_ROM_BASE, E820_RESERVED),
            (HIGH_MEM_BASE, mem_size - HIGH_MEM_BASE, E820_RAM)]


@dataclass
class Segment:
    """Bytes to copy to guest-physical `gpa`; `size` bytes in memory, the tail past `data` zero-filled (bss)."""
    gpa: int
    data: bytes
    size: int = 0       # total size in memory, >= len(data); 0 means len(data)
    name: str = ""

    def __post_init__(self):
        if self.size == 0:
            self.size = len(self.data)
        if self.size < len(self.data):
            raise ValueError(f"segment {self.name!r}: size {self.size:#x} < {len(self.data):#x} bytes of data")

    @property
    def end(self):
        return self.gpa + self.size


@dataclass
class BootImage:
    """A loaded guest: memory contents and the registers its boot protocol promises at the first instruction."""
    kind: str                       # "multiboot" | "linux" | "bootsector" | "flat64"
    mode: str                       # "real" | "protected32" | "long64": CPU mode at the first guest instruction
    segments: list[Segment]         # everything to write into guest-physical memory before start
    regs: dict[str, int]            # register values at entry, lower-case names ("rip", "rax", "cr3", "cs"...)
    gdt: Segment | None = None      # long64: the loader's GDT (also in `segments`); GDTR = gdt.gpa, gdt.size - 1
    disk: bytes | None = None       # bootsector: the whole disk image, read by INT 13h
    entry: int = 0                  # guest-physical entry point (also regs["rip"])
    notes: list[str] = field(default_factory=list)   # facts for the console


def fmt_size(n):
    """`64 MiB`, `640 KiB` or `0x1234 bytes`: memory sizes the way a user typed them."""
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n:#x} bytes"


def check_placement(filename, what, start, end, mem_size, low_ok):
    """Refuse `what` at [start, end) unless it lies in RAM a loader may fill.

    That is [HIGH_MEM_BASE, mem_size), and with `low_ok` also [LOW_KERNEL_BASE, VGA_BIOS_HOLE_BASE)
    (multiboot kernels may load there; QEMU's -kernel allows it).
    """
    span = f"{what} [{start:#x}-{end:#x})"
    if start < 0 or end > mem_size:
        raise ImageError(f"{filename}: {span} lies outside guest memory ({fmt_size(mem_size)})")
    if start < LOW_KERNEL_BASE:
        raise ImageError(f"{filename}: {span} overlaps the firmware area below {LOW_KERNEL_BASE:#x}")
    if start < VGA_BIOS_HOLE_END and end > VGA_BIOS_HOLE_BASE:
        raise ImageError(f"{filename}: {span} overlaps the VGA/BIOS hole "
                         f"{VGA_BIOS_HOLE_BASE:#x}-{VGA_BIOS_HOLE_END:#x}; place it at 1 MiB or above")
    if not low_ok and start < HIGH_MEM_BASE:
        raise ImageError(f"{filename}: {span} lies below {HIGH_MEM_BASE:#x}; load it at 1 MiB or above")


def check_disjoint(filename, segments):
    """Refuse segments that overlap one another: the later copy would silently clobber the earlier."""
    ordered = sorted(segments, key=lambda s: s.gpa)
    for a, b in zip(ordered, ordered[1:]):
        if a.end > b.gpa:
            raise ImageError(f"{filename}: {a.name} [{a.gpa:#x}-{a.end:#x}) overlaps "
                             f"{b.name} [{b.gpa:#x}-{b.end:#x})")
