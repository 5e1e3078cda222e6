"""Linux's boot_params, the "zero page" (Documentation/arch/x86/zero-page.rst, boot.rst "64-bit Boot Protocol").

4 KiB, zero except for what a boot loader fills: the kernel's own setup header copied to 0x1F1 and modified
(who loaded it, where the command line and the initrd are), the E820 memory map, and where the ACPI RSDP is
(acpi_rsdp_addr, read by kernels of boot protocol 2.14 and later). linux.py places it.
"""
import struct

from engine.loaders.image import PAGE_SIZE, e820_map

SIZE = PAGE_SIZE
HEADER_START = 0x1F1                    # the setup header's place in the image and in boot_params
MAX_E820_ENTRIES = 128                  # E820_MAX_ENTRIES_ZEROPAGE: 0xA00 bytes of 20-byte entries
LOADER_UNDEFINED = 0xFF                 # type_of_loader: no assigned boot loader ID
VID_MODE_NORMAL = 0xFFFF                # vid_mode "normal" (boot.rst, special command line options)
RSDP_ADDR_VERSION = 0x020E              # acpi_rsdp_addr: read from boot_params by kernels of protocol 2.14 on

# Offsets of the fields we fill (zero-page.rst and boot.rst's setup header table): name, offset, format.
FIELDS = {
    "acpi_rsdp_addr": (0x070, "Q"), "ext_ramdisk_image": (0x0C0, "I"), "ext_ramdisk_size": (0x0C4, "I"),
    "ext_cmd_line_ptr": (0x0C8, "I"),
    "e820_entries": (0x1E8, "B"), "vid_mode": (0x1FA, "H"), "type_of_loader": (0x210, "B"),
    "code32_start": (0x214, "I"), "ramdisk_image": (0x218, "I"), "ramdisk_size": (0x21C, "I"),
    "cmd_line_ptr": (0x228, "I"),
}
E820_TABLE = 0x2D0
_E820_ENTRY = struct.Struct("<QQI")     # struct boot_e820_entry: addr, size, type (packed, 20 bytes)


def header_end(image):
    """Where the setup header ends: the jump at 0x200 skips it, so 0x202 + its offset byte (boot.rst)."""
    return 0x202 + image[0x201]


def build_boot_params(image, load_addr, cmdline_addr, mem_size, initrd_addr=0, initrd_size=0, rsdp_addr=0):
    """The zero page's bytes for `image` loaded at `load_addr`; `rsdp_addr` goes to acpi_rsdp_addr when the
    kernel's boot protocol is 2.14 or later (before, the field was padding)."""
    params = bytearray(SIZE)
    end = header_end(image)
    params[HEADER_START:end] = image[HEADER_START:end]
    entries = e820_map(mem_size)
    for i, (base, length, kind) in enumerate(entries):
        _E820_ENTRY.pack_into(params, E820_TABLE + i * _E820_ENTRY.size, base, length, kind)
    values = {"e820_entries": len(entries), "vid_mode": VID_MODE_NORMAL, "type_of_loader": LOADER_UNDEFINED,
              "code32_start": load_addr, "cmd_line_ptr": cmdline_addr & 0xFFFFFFFF,
              "ext_cmd_line_ptr": cmdline_addr >> 32, "ramdisk_image": initrd_addr & 0xFFFFFFFF,
              "ext_ramdisk_image": initrd_addr >> 32, "ramdisk_size": initrd_size & 0xFFFFFFFF,
              "ext_ramdisk_size": initrd_size >> 32}
    if struct.unpack_from("<H", image, 0x206)[0] >= RSDP_ADDR_VERSION:
        values["acpi_rsdp_addr"] = rsdp_addr
    for name, value in values.items():
        offset, fmt = FIELDS[name]
        struct.pack_into("<" + fmt, params, offset, value)
    return bytes(params)
