"""The ACPI tables as a guest finds them: a plain parser walks them from the RSDP the way an OS does (ACPI 6.5 §5.2),
checking every length, checksum and field against the spec's layouts and the platform they describe."""
import struct

import pytest

from engine.loaders import acpi_tables as A
from engine.loaders.image import E820_RESERVED, e820_map
from engine.tunables import VM_MAXCPU

BIOS_AREA, BIOS_AREA_END = 0xE0000, 0x100000     # where an OS without EFI scans for "RSD PTR " (§5.2.5.1)
MiB = 1 << 20


class Memory:
    """The BIOS area of a guest with the tables written where build() says."""

    def __init__(self, apic_ids):
        base, blob = A.build(apic_ids)
        self.bytes = bytearray(BIOS_AREA_END - BIOS_AREA)
        self.bytes[base - BIOS_AREA:base - BIOS_AREA + len(blob)] = blob

    def read(self, gpa, size):
        assert BIOS_AREA <= gpa and gpa + size <= BIOS_AREA_END, "%#x+%d is outside the BIOS area" % (gpa, size)
        return bytes(self.bytes[gpa - BIOS_AREA:gpa - BIOS_AREA + size])

    def find_rsdp(self):
        """The OS's scan: "RSD PTR " on a 16-byte boundary whose first 20 bytes sum to zero."""
        for gpa in range(BIOS_AREA, BIOS_AREA_END, 16):
            head = self.read(gpa, 20)
            if head[:8] == b"RSD PTR " and sum(head) % 256 == 0:
                return gpa
        raise AssertionError("no RSDP in the BIOS area")

    def table(self, gpa):
        """(signature, revision, body) of the table at `gpa`, its length and checksum checked."""
        signature, length, revision = struct.unpack("<4sIB", self.read(gpa, 9))
        data = self.read(gpa, length)
        assert sum(data) % 256 == 0, "%s: checksum" % signature
        assert data[10:16] == A.OEM_ID and data[16:24] == b"WH" + signature + b"  "
        return signature.decode(), revision, data[36:]


def walk(apic_ids):
    """{signature: (address, revision, body)} of every table the XSDT reaches, plus "RSDP", "FACS" and "DSDT"."""
    mem = Memory(apic_ids)
    at = mem.find_rsdp()
    rsdp = mem.read(at, 36)
    signature, _, oem, revision, rsdt_addr, length, xsdt_addr, _ = struct.unpack("<8sB6sBIIQB3x", rsdp)
    assert (oem, revision, length) == (A.OEM_ID, 2, 36) and sum(rsdp) % 256 == 0      # the extended checksum
    found = {"RSDP": (at, revision, rsdp)}
    name, _, rsdt = mem.table(rsdt_addr)
    name_x, _, xsdt = mem.table(xsdt_addr)
    assert (name, name_x) == ("RSDT", "XSDT")
    pointers = list(struct.unpack("<%dQ" % (len(xsdt) // 8), xsdt))
    assert pointers == list(struct.unpack("<%dI" % (len(rsdt) // 4), rsdt))
    for gpa in pointers:
        name, revision, body = mem.table(gpa)
        found[name] = (gpa, revision, body)
    fadt = found["FACP"][2]
    facs_addr, dsdt_addr = struct.unpack_from("<II", fadt, 0)
    assert struct.unpack_from("<QQ", fadt, 132 - 36) == (0, dsdt_addr)              # X_FIRMWARE_CTRL, X_DSDT
    facs = mem.read(facs_addr, 64)
    assert facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64
    found["FACS"] = (facs_addr, facs[32], facs)
    name, revision, aml = mem.table(dsdt_addr)
    found["DSDT"] = (dsdt_addr, revision, aml)
    return found


def gas(body, offset):
    """A Generic Address Structure (§5.2.3.2) in a table body, at its offset in the whole table."""
    return struct.unpack_from("<BBBBQ", body, offset - 36)


def test_rsdp_is_found_by_the_bios_area_scan_and_boot_params_address():
    """The RSDP sits on a 16-byte boundary in 0xE0000-0xFFFFF, at RSDP_ADDR (what boot_params names), revision 2
    with both checksums right, pointing at an RSDT and an XSDT that list the FADT first, then the MADT."""
    tables = walk([0])
    assert tables["RSDP"][0] == A.RSDP_ADDR and A.RSDP_ADDR % 16 == 0
    assert list(tables) == ["RSDP", "FACP", "APIC", "FACS", "DSDT"]


def test_fadt_describes_the_fixed_hardware_and_the_reset_register():
    """FADT revision 6.5: SCI on IRQ 9, no SMI_CMD, PM1a event block 0x400 (4 bytes), PM1a control 0x404 (2), the
    32-bit PM timer at 0x408 (4), the same in the X_ blocks with their access sizes; the reset register is a byte
    at I/O port 0xCF9, reset value 6, RESET_REG_SUP set; IA-PC boot flags: legacy devices and an 8042."""
    _, revision, fadt = walk([0])["FACP"]
    assert revision == 6 and len(fadt) + 36 == 276 and fadt[131 - 36] == 5          # FADT Minor Version
    sci, smi_cmd = struct.unpack_from("<HI", fadt, 46 - 36)
    assert (sci, smi_cmd) == (9, 0)
    assert struct.unpack_from("<IIIIII", fadt, 56 - 36) == (0x400, 0, 0x404, 0, 0, 0x408)
    assert tuple(fadt[88 - 36:94 - 36]) == (4, 2, 0, 4, 0, 0)                           # block lengths, no GPE
    flags, = struct.unpack_from("<I", fadt, 112 - 36)
    assert flags & (1 << 10) and flags & (1 << 8)                                     # RESET_REG_SUP, TMR_VAL_EXT
    assert not flags & (1 << 20)                                                      # not HW_REDUCED_ACPI
    assert gas(fadt, 116) == (1, 8, 0, 1, 0xCF9) and fadt[128 - 36] == 6
    assert gas(fadt, 148) == (1, 32, 0, 2, 0x400)                                     # X_PM1a_EVT_BLK
    assert gas(fadt, 160) == (0, 0, 0, 0, 0)                                          # no PM1b
    assert gas(fadt, 172) == (1, 16, 0, 2, 0x404)                                     # X_PM1a_CNT_BLK
    assert gas(fadt, 208) == (1, 32, 0, 3, 0x408)                                     # X_PM_TMR_BLK
    boot_arch, = struct.unpack_from("<H", fadt, 109 - 36)
    assert boot_arch & 0b11 == 0b11 and not boot_arch & (1 << 2) and not boot_arch & (1 << 5)   # VGA, RTC present


@pytest.mark.parametrize("ncpus", [1, 2, 4, 16, VM_MAXCPU])
def test_madt_lists_every_vcpu_the_ioapic_and_bhyves_overrides(ncpus):
    """One enabled Processor Local APIC per vCPU with the engine's APIC ID, UIDs in vCPU order; one I/O APIC with
    ID 0 at 0xFEC00000 from GSI 0; IRQ 0 on GSI 2 (edge, high), the SCI on GSI 9 (level, low); NMI on LINT1."""
    ids = list(range(ncpus))
    _, revision, body = walk(ids)["APIC"]
    assert struct.unpack_from("<II", body, 0) == (0xFEE00000, 1)                       # PCAT_COMPAT
    entries, offset = [], 8
    while offset < len(body):
        kind, length = body[offset], body[offset + 1]
        entries.append((kind, body[offset + 2:offset + length]))
        offset += length
    assert offset == len(body)
    lapics = [struct.unpack("<BBI", e) for k, e in entries if k == 0]
    assert lapics == [(uid, apic_id, 1) for uid, apic_id in enumerate(ids)]
    assert [struct.unpack("<BBII", e) for k, e in entries if k == 1] == [(0, 0, 0xFEC00000, 0)]
    assert [struct.unpack("<BBIH", e) for k, e in entries if k == 2] == [(0, 0, 2, 0x5), (0, 9, 9, 0xF)]
    assert [struct.unpack("<BHB", e) for k, e in entries if k == 4] == [(0xFF, 0x5, 1)]
    assert [k for k, _ in entries] == [0] * ncpus + [1, 2, 2, 4]


def test_madt_takes_the_apic_ids_it_is_given():
    """APIC IDs need not be the vCPU indexes: each Processor Local APIC carries the one given, in vCPU order."""
    _, _, body = walk([3, 0, 7])["APIC"]
    assert [struct.unpack_from("<BBBB", body, 8 + 8 * i)[2:] for i in range(3)] == [(0, 3), (1, 0), (2, 7)]


@pytest.mark.parametrize("ids", [[], [0, 0], [0xFF], [-1]])
def test_apic_ids_an_xapic_cannot_have_are_refused(ids):
    with pytest.raises(ValueError, match="distinct IDs"):
        A.build(ids)


def test_facs_is_aligned_and_empty():
    """The FACS: 64 bytes on a 64-byte boundary (§5.2.10), version 2, no waking vector, global lock free."""
    addr, version, facs = walk([0, 1])["FACS"]
    assert addr % 64 == 0 and version == 2
    assert facs[8:32] == bytes(24) and facs[36:] == bytes(28)


def test_dsdt_holds_s5_for_poweroff():
    """The DSDT's AML is one named object, \\_S5 = Package (2) {5, 0}: SLP_TYPa 5 for PM1a_CNT, SLP_TYPb 0."""
    _, revision, aml = walk([0])["DSDT"]
    assert revision == 2
    assert aml[0] == 0x08 and aml[1:5] == b"_S5_" and aml[5] == 0x12        # NameOp, NameSeg, PackageOp
    pkg_length, count = aml[6], aml[7]
    assert pkg_length == len(aml) - 6 and count == 2                       # PkgLength counts itself
    assert aml[8:] == bytes((0x0A, 5, 0x00))                                # BytePrefix 5, ZeroOp


@pytest.mark.parametrize("ncpus", [1, VM_MAXCPU])
def test_tables_lie_in_memory_the_e820_map_reserves(ncpus):
    """Every table lies inside one E820 reserved range below 1 MiB, whatever the memory size, and none overlaps
    another."""
    placed = sorted((gpa, gpa + len(data)) for gpa, data in A.tables(range(ncpus)).values())
    for (_, end), (start, _) in zip(placed, placed[1:]):
        assert end <= start
    for mem_mb in (1, 256):
        reserved = [(b, b + n) for b, n, kind in e820_map(mem_mb * MiB) if kind == E820_RESERVED]
        assert all(any(lo <= start and end <= hi for lo, hi in reserved) for start, end in placed)
