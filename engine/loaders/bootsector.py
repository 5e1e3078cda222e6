"""Boot sectors and raw disks: sector 0 at 0000:7C00 in real mode, the whole image behind INT 13h.

This is what a PC BIOS does after POST: read the first sector of the boot drive to 0x7C00, check the
0x55AA signature at offset 510, and jump there with DL = the BIOS drive number.
"""
from engine.errors import ImageError
from engine.loaders.image import BOOTSECTOR_ADDR, SECTOR_SIZE, GiB, BootImage, Segment, fmt_size

BOOT_SIGNATURE = b"\x55\xaa"
SIGNATURE_OFFSET = 510
MAX_DISK_SIZE = 1 * GiB
FLOPPY_1440K_SIZE = 1474560
DRIVE_FLOPPY, DRIVE_HARD_DISK = 0x00, 0x80


def has_boot_signature(data):
    return len(data) >= SECTOR_SIZE and data[SIGNATURE_OFFSET:SECTOR_SIZE] == BOOT_SIGNATURE


def load_bootsector(data, filename, mem_size):
    """BootImage for a boot sector or raw disk image."""
    if len(data) < SECTOR_SIZE:
        raise ImageError(f"{filename}: {len(data)} bytes is smaller than one {SECTOR_SIZE}-byte sector")
    if not has_boot_signature(data):
        raise ImageError(f"{filename}: no boot signature 0x55AA at offset {SIGNATURE_OFFSET} "
                         f"(found {data[SIGNATURE_OFFSET:SECTOR_SIZE].hex().upper()})")
    if len(data) > MAX_DISK_SIZE:
        raise ImageError(f"{filename}: disk image of {fmt_size(len(data))} is larger than the "
                         f"{fmt_size(MAX_DISK_SIZE)} webhyve holds in memory")
    if mem_size < BOOTSECTOR_ADDR + SECTOR_SIZE:
        raise ImageError(f"{filename}: guest memory of {fmt_size(mem_size)} ends below the boot sector at "
                         f"{BOOTSECTOR_ADDR:#x}")
    tail = len(data) % SECTOR_SIZE
    disk = bytes(data) + bytes(-len(data) % SECTOR_SIZE)
    notes = [f"bootsector: sector 0 at {BOOTSECTOR_ADDR:#x}, disk of {len(disk) // SECTOR_SIZE} sectors"]
    if tail:
        notes.append(f"bootsector: image size {len(data)} is not a multiple of {SECTOR_SIZE}; "
                     f"the last sector is padded with {SECTOR_SIZE - tail} zero bytes")
    drive = DRIVE_HARD_DISK
    if len(data) == FLOPPY_1440K_SIZE:
        drive = DRIVE_FLOPPY
        notes.append("bootsector: 1.44 MB floppy image: booting as drive 0x00 (DL=0x00)")
    regs = {"rip": BOOTSECTOR_ADDR, "cs": 0, "ds": 0, "es": 0, "ss": 0, "rsp": BOOTSECTOR_ADDR, "rdx": drive}
    return BootImage(kind="bootsector", mode="real", segments=[Segment(BOOTSECTOR_ADDR, disk[:SECTOR_SIZE],
                     name="boot sector")], regs=regs, disk=disk, entry=BOOTSECTOR_ADDR, notes=notes)
