"""A crafted bzImage for the tests: a setup header with the fields the loader reads (boot.rst), then the
protected-mode kernel, whose bytes at +0x200 (the 64-bit entry) may be given."""
import struct

# The setup header fields the loader reads (boot.rst): offset, struct format.
FIELDS = {"setup_sects": (0x1F1, "B"), "syssize": (0x1F4, "I"), "boot_flag": (0x1FE, "H"), "version": (0x206, "H"),
          "loadflags": (0x211, "B"), "code32_start": (0x214, "I"), "initrd_addr_max": (0x22C, "I"),
          "kernel_alignment": (0x230, "I"), "relocatable_kernel": (0x234, "B"), "min_alignment": (0x235, "B"),
          "xloadflags": (0x236, "H"), "cmdline_size": (0x238, "I"), "pref_address": (0x258, "Q"),
          "init_size": (0x260, "I"), "handover_offset": (0x264, "I")}


def crafted(version=0x020F, xloadflags=0x3, loadflags=0x1, setup_sects=1, syssize=0x100, init_size=0x400000,
            pref_address=0x1000000, initrd_addr_max=0x7FFFFFFF, cmdline_size=255, kernel_alignment=0x200000,
            entry_code=b""):
    """A bzImage with nothing but a setup header: boot sector + `setup_sects` sectors, then syssize*16 bytes of
    kernel (a byte pattern, with `entry_code` at its offset 0x200)."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x200:0x202] = bytes([0xEB, 0x66])                    # jmp over the header: it ends at 0x268
    setup[0x202:0x206] = b"HdrS"
    for name, value in dict(setup_sects=setup_sects, syssize=syssize, boot_flag=0xAA55, version=version,
                            loadflags=loadflags, code32_start=0x100000, initrd_addr_max=initrd_addr_max,
                            kernel_alignment=kernel_alignment, relocatable_kernel=1, min_alignment=21,
                            xloadflags=xloadflags, cmdline_size=cmdline_size, pref_address=pref_address,
                            init_size=init_size).items():
        offset, fmt = FIELDS[name]
        struct.pack_into("<" + fmt, setup, offset, value)
    kernel = bytearray(bytes(range(256)) * (syssize * 16 // 256) + bytes(syssize * 16 % 256))
    kernel[0x200:0x200 + len(entry_code)] = entry_code
    return bytes(setup) + bytes(kernel)
