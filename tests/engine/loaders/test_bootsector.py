"""Tests for engine/loaders/bootsector.py: sector 0 at 0x7C00, the whole disk behind INT 13h."""
import pytest

from engine.errors import ImageError
from engine.loaders.bootsector import load_bootsector

MEM = 16 << 20
# jmp $ ; then zeros and the signature
BOOT_CODE = bytes.fromhex("ebfe")


def sector(code=BOOT_CODE, signature=b"\x55\xaa"):
    return code + bytes(510 - len(code)) + signature


def test_boot_sector_loads_at_7c00():
    """A 512-byte boot sector: real mode at 0000:7C00, stack below it, DL = first hard disk."""
    image = load_bootsector(sector(), "boot.img", MEM)
    assert (image.kind, image.mode, image.entry) == ("bootsector", "real", 0x7C00)
    assert [(s.gpa, s.data) for s in image.segments] == [(0x7C00, sector())]
    assert image.regs == {"rip": 0x7C00, "cs": 0, "ds": 0, "es": 0, "ss": 0, "rsp": 0x7C00, "rdx": 0x80}
    assert image.disk == sector()


def test_raw_disk_of_three_sectors():
    """A 3-sector raw disk: only sector 0 is placed; all three are on the disk for INT 13h."""
    disk = sector() + b"\x11" * 512 + b"\x22" * 512
    image = load_bootsector(disk, "disk.img", MEM)
    assert image.segments[0].data == sector() and image.disk == disk
    assert image.notes == ["bootsector: sector 0 at 0x7c00, disk of 3 sectors"]


def test_partial_last_sector_is_padded():
    """A disk of 512+100 bytes becomes two whole sectors, the tail zero, with a note."""
    image = load_bootsector(sector() + b"\x33" * 100, "disk.img", MEM)
    assert image.disk == sector() + b"\x33" * 100 + bytes(412)
    assert "padded with 412 zero bytes" in image.notes[1]


def test_floppy_image_boots_as_drive_0():
    """A 1.44 MB floppy image gets DL=0x00, as a BIOS booting from A: gives."""
    image = load_bootsector(sector() + bytes(1474560 - 512), "floppy.img", MEM)
    assert image.regs["rdx"] == 0x00 and any("floppy" in note for note in image.notes)


def test_no_signature():
    """A sector without 0x55AA at offset 510 is not bootable."""
    with pytest.raises(ImageError, match=r"^disk\.img: no boot signature 0x55AA at offset 510 \(found 0000\)$"):
        load_bootsector(sector(signature=b"\0\0"), "disk.img", MEM)


def test_shorter_than_a_sector():
    """100 bytes cannot be a boot sector."""
    with pytest.raises(ImageError, match=r"^disk\.img: 100 bytes is smaller than one 512-byte sector$"):
        load_bootsector(bytes(100), "disk.img", MEM)


def test_disk_over_cap(monkeypatch):
    """A disk larger than the 1 GiB cap is refused (cap lowered here so the test needs no gigabyte)."""
    monkeypatch.setattr("engine.loaders.bootsector.MAX_DISK_SIZE", 1024)
    with pytest.raises(ImageError, match=r"^disk\.img: disk image of 0x600 bytes is larger than the 1 KiB"):
        load_bootsector(sector() * 3, "disk.img", MEM)
