"""The ACPI tables a guest finds in its BIOS area: RSDP, RSDT and XSDT, FADT, FACS, MADT and a DSDT holding \\_S5
(ACPI 6.5, chapter 5.2), laid out as bhyve's acpi.c lays them out from BHYVE_ACPI_BASE.

Pure: `build(apic_ids)` returns the bytes to copy to guest-physical ACPI_BASE; the VM writes them at every load
(machine.py), and the Linux loader puts RSDP_ADDR into boot_params. The tables live in 0xF0000-0xFFFFF, which the
E820 map reports reserved (image.e820_map), where an OS's scan of the BIOS area for "RSD PTR " finds the RSDP on
its 16-byte boundary (ACPI 6.5 §5.2.5.1). Every table's bytes sum to zero (§5.2.6); the RSDP has two checksums.

What the tables describe is the platform platform.py builds: the ACPI fixed hardware of engine/devices/acpi_pm.py
at bhyve's ports (pm.c: PM1a event block 0x400, PM1a control block 0x404, PM timer 0x408, reset register 0xCF9),
one local APIC per vCPU, one I/O APIC (82093AA) at 0xFEC00000 with ID 0 and GSI base 0, ISA IRQ 0 on GSI 2 and
the SCI on IRQ 9 (bhyve's interrupt source overrides), NMI on every local APIC's LINT1. Where bhyve's FADT says
something this platform does not do, the FADT follows the platform (docs/linux.md, "ACPI tables").
"""
import struct

from engine.devices.acpi_pm import SLP_TYP_S5, TIMER_BITS

ACPI_BASE = 0xF2400                     # BHYVE_ACPI_BASE: in the BIOS ROM area, above the BIOS's stubs at 0xF0100
RSDP_ADDR = ACPI_BASE
RSDT_OFFSET, XSDT_OFFSET, MADT_OFFSET = 0x40, 0x80, 0x100      # bhyve's offsets from ACPI_BASE
FADT_SIZE, FACS_SIZE = 0x140, 0x40      # room bhyve gives each (FADT_SIZE, FACS_SIZE in acpi.c)

OEM_ID = b"WEBHYV"                      # six bytes (§5.2.6); the OEM table ID is "WH" + signature, as bhyve's "BV..."
CREATOR_ID, CREATOR_REVISION = b"WHYV", 1
OEM_REVISION = 1

# The platform the tables describe (bhyve's acpi.h and acpi.c).
SCI_INT = 9                             # ISA IRQ of the System Control Interrupt
PM1A_EVT_BLK, PM1_EVT_LEN = 0x400, 4    # PM1a_STS (2 bytes) then PM1a_EN (2 bytes), ACPI 6.5 §4.8.3.1
PM1A_CNT_BLK, PM1_CNT_LEN = 0x404, 2    # PM1a_CNT, §4.8.3.2
PM_TMR_BLK, PM_TMR_LEN = 0x408, 4       # the 32-bit PM timer, §4.8.3.3
RESET_REG_PORT, RESET_VALUE = 0xCF9, 6  # the reset register (the chipset's RST_CNT) and the value that resets
CENTURY_INDEX = 0x32                    # the RTC's century byte in CMOS, as bhyve's and QEMU's FADT say
LAPIC_ADDRESS = 0xFEE00000
IOAPIC_ADDRESS, IOAPIC_ID, IOAPIC_GSI_BASE = 0xFEC00000, 0, 0
LINT_NMI = 1                            # the local APIC input the NMI arrives on (LINT1)
MAX_APIC_ID = 0xFE                      # 8-bit xAPIC IDs; 0xFF is the broadcast address

# The Generic Address Structure (§5.2.3.2): address space IDs and access sizes.
SPACE_SYSTEM_IO = 1
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 1, 2, 3
_GAS = struct.Struct("<BBBBQ")
# The System Description Table header (§5.2.6, Table 5.4): 36 bytes.
_HEADER = struct.Struct("<4sIBB6s8sI4sI")
HEADER_SIZE = _HEADER.size

# MADT (§5.2.12): flags and the interrupt controller structures used here (types 0, 1, 2, 4).
MADT_PCAT_COMPAT = 1 << 0               # dual 8259s present: the OS must mask them when it uses the APICs
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_INTERRUPT_OVERRIDE, MADT_LOCAL_APIC_NMI = 0, 1, 2, 4
LAPIC_ENABLED = 1 << 0
# MPS INTI flags (§5.2.12.5, Table 5.26): polarity in bits 0-1, trigger mode in bits 2-3.
POLARITY_HIGH, POLARITY_LOW = 0b01, 0b11
TRIGGER_EDGE, TRIGGER_LEVEL = 0b01 << 2, 0b11 << 2
ALL_PROCESSORS = 0xFF                   # a Local APIC NMI structure's processor UID for every processor
# (source IRQ, GSI, flags): bhyve's build_madt; IRQ 0 reaches the I/O APIC on pin 2, the SCI is level, active low.
INTERRUPT_OVERRIDES = ((0, 2, POLARITY_HIGH | TRIGGER_EDGE), (SCI_INT, SCI_INT, POLARITY_LOW | TRIGGER_LEVEL))

# FADT (§5.2.9, Table 5.9): revision 6, minor version 5 (ACPI 6.5), 276 bytes. bhyve's is revision 5.1 (268
# bytes, no hypervisor vendor identity); the fields both have hold the same values.
FADT_REVISION, FADT_MINOR_VERSION, FADT_LENGTH = 6, 5, 276
HYPERVISOR_VENDOR_IDENTITY = b"webhyve\0"
# Fixed feature flags (Table 5.10).
WBINVD, PROC_C1, PWR_BUTTON, SLP_BUTTON = 1 << 0, 1 << 2, 1 << 4, 1 << 5
TMR_VAL_EXT, RESET_REG_SUP, FORCE_APIC_PHYSICAL_DESTINATION_MODE = 1 << 8, 1 << 10, 1 << 19
FADT_FLAGS = WBINVD | PROC_C1 | PWR_BUTTON | SLP_BUTTON | (TMR_VAL_EXT if TIMER_BITS == 32 else 0) | \
    RESET_REG_SUP | FORCE_APIC_PHYSICAL_DESTINATION_MODE
# IA-PC boot architecture flags (Table 5.11): ISA devices (the UARTs), an 8042 at 0x60/0x64, no PCIe ASPM.
LEGACY_DEVICES, I8042, PCIE_ASPM_CONTROLS = 1 << 0, 1 << 1, 1 << 4
IAPC_BOOT_ARCH = LEGACY_DEVICES | I8042 | PCIE_ASPM_CONTROLS
C_STATE_UNSUPPORTED = 0x0FFF            # P_LVL2_LAT > 100 and P_LVL3_LAT > 1000 µs: no C2, no C3
# (field, offset, struct format) of the FADT body after the header, Table 5.9.
FADT_FIELDS = (
    ("FIRMWARE_CTRL", 36, "I"), ("DSDT", 40, "I"), ("Preferred_PM_Profile", 45, "B"), ("SCI_INT", 46, "H"),
    ("SMI_CMD", 48, "I"), ("PM1a_EVT_BLK", 56, "I"), ("PM1a_CNT_BLK", 64, "I"), ("PM_TMR_BLK", 76, "I"),
    ("PM1_EVT_LEN", 88, "B"), ("PM1_CNT_LEN", 89, "B"), ("PM_TMR_LEN", 91, "B"), ("P_LVL2_LAT", 96, "H"),
    ("P_LVL3_LAT", 98, "H"), ("CENTURY", 108, "B"), ("IAPC_BOOT_ARCH", 109, "H"), ("Flags", 112, "I"),
    ("RESET_REG", 116, "12s"), ("RESET_VALUE", 128, "B"), ("FADT_Minor_Version", 131, "B"),
    ("X_FIRMWARE_CTRL", 132, "Q"), ("X_DSDT", 140, "Q"), ("X_PM1a_EVT_BLK", 148, "12s"),
    ("X_PM1a_CNT_BLK", 172, "12s"), ("X_PM_TMR_BLK", 208, "12s"), ("Hypervisor_Vendor_Identity", 268, "8s"),
)

# FACS (§5.2.10, Table 5.14): 64 bytes, 64-byte aligned, no header of the common kind.
FACS_VERSION = 2
_FACS = struct.Struct("<4sIIIIIQB3xI24x")

# The DSDT's AML (§20): DefinitionBlock ("", "DSDT", 2, ...) { Name (_S5, Package () { 0x05, Zero }) }.
DSDT_REVISION = 2                       # 64-bit AML integers
NAME_OP, PACKAGE_OP, BYTE_PREFIX, ZERO_OP = 0x08, 0x12, 0x0A, 0x00     # §20.2.5.1, §20.2.5.4, §20.2.3
S5_AML = bytes((NAME_OP,)) + b"_S5_" + bytes((PACKAGE_OP, 5, 2, BYTE_PREFIX, SLP_TYP_S5, ZERO_OP))


# The PCI root bridge (\\_SB.PCI0, ACPI 6.5 §6.1.5 _HID PNP0A03, §6.2.2 _CRS, §6.2.13 _PRT), in the DSDT of a VM with PCI
# devices: bus 0 only, the I/O ports but the configuration mechanism's 0xCF8-0xCFF, and the 32-bit memory window
# the platform places BARs in (its MMIO exits cover exactly that window: vmx/mmio.py), and the INTx routing: slot s's
# pin p (1-4 for A-D) on I/O APIC input PCI_GSI_BASE + (s + p - 1) % PCI_GSIS (the swizzle bhyve's pci_irq.c and
# QEMU's PIIX use), level-triggered, active low (§6.2.13: a _PRT entry with a source of 0 names a GSI).
PCI_WINDOW, PCI_WINDOW_SIZE = 0xC0000000, 0x40000
PCI_GSI_BASE, PCI_GSIS = 16, 8
SCOPE_OP, BUFFER_OP, WORD_PREFIX, DWORD_PREFIX, ONE_OP, EXT_OP, DEVICE_OP = 0x10, 0x11, 0x0B, 0x0C, 0x01, 0x5B, 0x82
ROOT_CHAR = 0x5C
PNP0A03 = 0x030AD041                    # EisaId ("PNP0A03"): PCI bus
# large resource descriptors (§6.4.3): Word and DWord Address Space, End Tag
WORD_SPACE, DWORD_SPACE, END_TAG = 0x88, 0x87, 0x79
SPACE_MEMORY, SPACE_IO, SPACE_BUS = 0, 1, 2
MIN_MAX_FIXED, PRODUCER = 0x0C, 0x00
IO_ENTIRE_RANGE, MEM_READ_WRITE = 0x03, 0x01


def pkg_length(body):
    """`body` preceded by its PkgLength (§20.2.4), which counts its own bytes."""
    for extra in range(4):
        total = len(body) + 1 + extra
        if extra == 0 and total < 64:
            return bytes((total,)) + body
        if extra and total < 1 << (4 + 8 * extra):
            lead = extra << 6 | total & 0xF
            return bytes((lead,)) + (total >> 4).to_bytes(extra, "little") + body
    raise ValueError("an AML package of %d bytes" % len(body))


def aml_integer(value):
    """The shortest integer encoding (§20.2.3): Zero, One, BytePrefix, WordPrefix or DWordPrefix."""
    if value in (0, 1):
        return bytes((ZERO_OP if value == 0 else ONE_OP,))
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4)):
        if value < 1 << 8 * size:
            return bytes((prefix,)) + value.to_bytes(size, "little")
    raise ValueError(value)


def aml_package(items):
    return bytes((PACKAGE_OP,)) + pkg_length(bytes((len(items),)) + b"".join(items))


def aml_name(name, value):
    return bytes((NAME_OP,)) + name + value


def pci_crs():
    """_CRS of the root bridge: bus 0, I/O 0-0xCF7 and 0xD00-0xFFFF, the 32-bit memory window, the end tag."""
    def word(kind, flags, low, high):
        return struct.pack("<BHBBBHHHHH", WORD_SPACE, 13, kind, MIN_MAX_FIXED | PRODUCER, flags, 0, low, high, 0,
                           high - low + 1)
    resources = word(SPACE_BUS, 0, 0, 0) + word(SPACE_IO, IO_ENTIRE_RANGE, 0, 0xCF7) + \
        word(SPACE_IO, IO_ENTIRE_RANGE, 0xD00, 0xFFFF) + \
        struct.pack("<BHBBBIIIII", DWORD_SPACE, 23, SPACE_MEMORY, MIN_MAX_FIXED | PRODUCER, MEM_READ_WRITE, 0,
                    PCI_WINDOW, PCI_WINDOW + PCI_WINDOW_SIZE - 1, 0, PCI_WINDOW_SIZE)
    resources += bytes((END_TAG, 0))
    return bytes((BUFFER_OP,)) + pkg_length(aml_integer(len(resources)) + resources)


def pci_gsi(slot, pin):
    """The I/O APIC input of slot `slot`'s INTx pin `pin` (1 = INTA#)."""
    return PCI_GSI_BASE + (slot + pin - 1) % PCI_GSIS


def pci_prt():
    """_PRT: for every slot 1-31 and pin A-D, Package {address 0xSSSSFFFF, pin 0-3, source 0, GSI}."""
    entries = [aml_package([aml_integer(slot << 16 | 0xFFFF), aml_integer(pin - 1), aml_integer(0),
                            aml_integer(pci_gsi(slot, pin))])
               for slot in range(1, 32) for pin in range(1, 5)]
    return aml_package(entries)


def pci0_aml():
    """Scope (\\_SB) { Device (PCI0) { _HID PNP0A03, _UID 0, _BBN 0, _CRS, _PRT } }."""
    body = b"PCI0" + aml_name(b"_HID", aml_integer(PNP0A03)) + aml_name(b"_UID", aml_integer(0)) + \
        aml_name(b"_BBN", aml_integer(0)) + aml_name(b"_CRS", pci_crs()) + aml_name(b"_PRT", pci_prt())
    device = bytes((EXT_OP, DEVICE_OP)) + pkg_length(body)
    return bytes((SCOPE_OP,)) + pkg_length(bytes((ROOT_CHAR,)) + b"_SB_" + device)


def checksum(data):
    """The byte that makes `data` sum to zero modulo 256 (§5.2.6 "Checksum")."""
    return -sum(data) & 0xFF


def gas(address, bit_width, access_size, space=SPACE_SYSTEM_IO):
    """A Generic Address Structure (§5.2.3.2): address space, register bit width and offset, access size, address."""
    return _GAS.pack(space, bit_width, 0, access_size, address)


def sdt(signature, revision, body):
    """A System Description Table: the 36-byte header (§5.2.6) with its length and checksum, then `body`."""
    oem_table_id = b"WH" + signature + b"  "
    header = _HEADER.pack(signature, HEADER_SIZE + len(body), revision, 0, OEM_ID, oem_table_id, OEM_REVISION,
                          CREATOR_ID, CREATOR_REVISION)
    table = bytearray(header + body)
    table[9] = checksum(table)
    return bytes(table)


def rsdp(rsdt_addr, xsdt_addr):
    """The Root System Description Pointer, revision 2 (§5.2.5.3): the checksum covers the first 20 bytes (the
    ACPI 1.0 structure), the extended checksum all 36."""
    pointer = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, rsdt_addr, 36, xsdt_addr, 0))
    pointer[8] = checksum(pointer[:20])
    pointer[32] = checksum(pointer)
    return bytes(pointer)


def rsdt(addresses):
    """The RSDT (§5.2.7): 32-bit addresses of the other tables."""
    return sdt(b"RSDT", 1, struct.pack("<%dI" % len(addresses), *addresses))


def xsdt(addresses):
    """The XSDT (§5.2.8): the same addresses in 64 bits; an OS that knows ACPI 2.0 uses it over the RSDT."""
    return sdt(b"XSDT", 1, struct.pack("<%dQ" % len(addresses), *addresses))


def madt(apic_ids):
    """The MADT (§5.2.12): one enabled Processor Local APIC per vCPU (processor UID = its index), the I/O APIC,
    the interrupt source overrides and the local APIC NMI on LINT1, bhyve's build_madt."""
    body = struct.pack("<II", LAPIC_ADDRESS, MADT_PCAT_COMPAT)
    for uid, apic_id in enumerate(apic_ids):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, uid, apic_id, LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, IOAPIC_ID, 0, IOAPIC_ADDRESS, IOAPIC_GSI_BASE)
    for irq, gsi, flags in INTERRUPT_OVERRIDES:
        body += struct.pack("<BBBBIH", MADT_INTERRUPT_OVERRIDE, 10, 0, irq, gsi, flags)
    body += struct.pack("<BBBHB", MADT_LOCAL_APIC_NMI, 6, ALL_PROCESSORS, POLARITY_HIGH | TRIGGER_EDGE, LINT_NMI)
    return sdt(b"APIC", 1, body)


def fadt(facs_addr, dsdt_addr):
    """The FADT (§5.2.9): the fixed hardware's ports and widths, the SCI, the reset register, the FACS and DSDT.

    No SMI_CMD: the platform has no SMM, so it is in ACPI mode from power-on (PM1a_CNT.SCI_EN reads 1, §4.8.3.2.1).
    The FACS is named in FIRMWARE_CTRL alone, as SeaBIOS does (X_FIRMWARE_CTRL is for a FACS above 4 GiB; ACPICA
    installs the FACS once per field that names it); the DSDT in both DSDT and X_DSDT, as bhyve does.
    The power and sleep buttons are not fixed hardware (there are none), there is no GPE block, no C2 or C3."""
    values = {"FIRMWARE_CTRL": facs_addr, "DSDT": dsdt_addr, "Preferred_PM_Profile": 0, "SCI_INT": SCI_INT,
              "SMI_CMD": 0, "PM1a_EVT_BLK": PM1A_EVT_BLK, "PM1a_CNT_BLK": PM1A_CNT_BLK, "PM_TMR_BLK": PM_TMR_BLK,
              "PM1_EVT_LEN": PM1_EVT_LEN, "PM1_CNT_LEN": PM1_CNT_LEN, "PM_TMR_LEN": PM_TMR_LEN,
              "P_LVL2_LAT": C_STATE_UNSUPPORTED, "P_LVL3_LAT": C_STATE_UNSUPPORTED, "CENTURY": CENTURY_INDEX,
              "IAPC_BOOT_ARCH": IAPC_BOOT_ARCH, "Flags": FADT_FLAGS,
              "RESET_REG": gas(RESET_REG_PORT, 8, ACCESS_BYTE), "RESET_VALUE": RESET_VALUE,
              "FADT_Minor_Version": FADT_MINOR_VERSION, "X_FIRMWARE_CTRL": 0, "X_DSDT": dsdt_addr,
              "X_PM1a_EVT_BLK": gas(PM1A_EVT_BLK, 8 * PM1_EVT_LEN, ACCESS_WORD),
              "X_PM1a_CNT_BLK": gas(PM1A_CNT_BLK, 8 * PM1_CNT_LEN, ACCESS_WORD),
              "X_PM_TMR_BLK": gas(PM_TMR_BLK, 8 * PM_TMR_LEN, ACCESS_DWORD),
              "Hypervisor_Vendor_Identity": HYPERVISOR_VENDOR_IDENTITY}
    body = bytearray(FADT_LENGTH - HEADER_SIZE)
    for name, offset, fmt in FADT_FIELDS:
        struct.pack_into("<" + fmt, body, offset - HEADER_SIZE, values[name])
    return sdt(b"FACP", FADT_REVISION, bytes(body))


def facs():
    """The FACS (§5.2.10): no waking vector, no global lock owner, no S4BIOS."""
    return _FACS.pack(b"FACS", _FACS.size, 0, 0, 0, 0, 0, FACS_VERSION, 0)


def dsdt(pci=False):
    """The DSDT (§5.2.11.1): \\_S5 = Package {SLP_TYPa 5, SLP_TYPb 0}, what `poweroff` looks up (§7.4.2); with `pci`
    the PCI root bridge \\_SB.PCI0 as well (a VM with PCI devices; without, the tables stay as they were)."""
    return sdt(b"DSDT", DSDT_REVISION, S5_AML + (pci0_aml() if pci else b""))


def layout(ncpus):
    """{name: offset from ACPI_BASE}: bhyve's layout, the MADT's room rounded up to 0x100 for `ncpus` vCPUs."""
    madt_room = -(-(HEADER_SIZE + 8 + 8 * ncpus + 12 + 10 * len(INTERRUPT_OVERRIDES) + 6) // 0x100) * 0x100
    fadt_offset = MADT_OFFSET + madt_room
    return {"RSDP": 0, "RSDT": RSDT_OFFSET, "XSDT": XSDT_OFFSET, "APIC": MADT_OFFSET, "FACP": fadt_offset,
            "FACS": fadt_offset + FADT_SIZE, "DSDT": fadt_offset + FADT_SIZE + FACS_SIZE}


def tables(apic_ids, pci=False):
    """{signature: (guest-physical address, bytes)} for a VM whose vCPUs have these local APIC IDs, in vCPU order
    ("RSDP" for the RSDP); ValueError for IDs an xAPIC cannot have or that repeat."""
    apic_ids = list(apic_ids)
    if not apic_ids or len(set(apic_ids)) != len(apic_ids) or not all(0 <= i <= MAX_APIC_ID for i in apic_ids):
        raise ValueError("local APIC IDs %r: a MADT needs 1 or more distinct IDs of 0-%#x" % (apic_ids, MAX_APIC_ID))
    at = {name: ACPI_BASE + offset for name, offset in layout(len(apic_ids)).items()}
    described = [at["FACP"], at["APIC"]]               # the FADT first, as bhyve orders them (UEFI 2.x §5.1)
    made = {"RSDP": rsdp(at["RSDT"], at["XSDT"]), "RSDT": rsdt(described), "XSDT": xsdt(described),
            "APIC": madt(apic_ids), "FACP": fadt(at["FACS"], at["DSDT"]), "FACS": facs(), "DSDT": dsdt(pci)}
    return {name: (at[name], data) for name, data in made.items()}


def build(apic_ids, pci=False):
    """(ACPI_BASE, bytes): every table of `tables(apic_ids, pci)` at its place, to copy to guest memory at ACPI_BASE."""
    placed = tables(apic_ids, pci)
    blob = bytearray(max(address - ACPI_BASE + len(data) for address, data in placed.values()))
    for address, data in placed.values():
        blob[address - ACPI_BASE:address - ACPI_BASE + len(data)] = data
    return ACPI_BASE, bytes(blob)
