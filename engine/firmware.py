"""The reset path: a stub the vCPU runs to walk itself from Unicorn's 64-bit state down to the boot mode.

Every vCPU is a UC_MODE_64 instance (its register accessors stay valid whatever mode the guest reaches,
reference/unicorn.md §3), so real mode and flat 32-bit protected mode are reached the way firmware
reaches them: by executing mode switches (probe boot_modes.py). The stub ends on a HLT in the target
mode; the engine then sets the registers the boot protocol promises.
"""
import struct

GDT_BASE = 0x1000
STUB_BASE = 0x1100
# null, 0x08 flat 32-bit code, 0x10 flat 32-bit data, 0x18 16-bit code, 0x20 16-bit data
GDT = struct.pack("<5Q", 0, 0x00CF9A000000FFFF, 0x00CF92000000FFFF, 0x00009A000000FFFF, 0x000092000000FFFF)

# Assembled with GNU as at STUB_BASE (Intel syntax); RBX selects the target: 0 protected32, 1 real.
#   .code64  lgdt [rip+gdtr]; push 0x08; lea rax,[rip+pm32]; push rax; retfq
#            gdtr: .word 39; .quad 0x1000
#   .code32  pm32: mov ax,0x10; mov ds/es/fs/gs/ss,ax
#                  mov cr3,0x2000; CR4.PAE on; CR0.PG on; CR0.PG off; CR4.PAE off; cr3 = 0
#                       (Unicorn starts with EFER.LMA set and paging off; only a PG 1->0 change clears LMA)
#                  mov ecx,0xC0000080; rdmsr; and eax,0xFFFFFEFF; wrmsr      (EFER.LME off)
#                  ljmp 0x08:pm32b
#            pm32b: test ebx,ebx; jnz to16; hlt                              (PROTECTED32_DONE)
#            to16: ljmp 0x18:pm16
#   .code16  pm16: mov ax,0x20; mov ds/es/fs/gs/ss,ax
#                  mov eax,cr0; and eax,0xFFFFFFFE; mov cr0,eax; ljmp 0:rm    (CR0.PE off)
#            rm:   xor ax,ax; mov ds/es/fs/gs/ss,ax; hlt                      (REAL_DONE)
STUB = bytes.fromhex(
    "0f01150c0000006a08488d050d0000005048cb2700001000000000000066b810008ed88ec08ee08ee88ed0b8002000"
    "000f22d80f20e083c8200f22e00f20c00d000000800f22c025ffffff7f0f22c00f20e083e0df0f22e031c00f22d8b9"
    "800000c00f3225fffeffff0f30ea72110000080085db7501f4ea7e1100001800b820008ed88ec08ee08ee88ed00f20"
    "c06683e0fe0f22c0ea9a11000031c08ed88ec08ee08ee88ed0f4")
PROTECTED32_DONE = 0x1177          # linear address after the HLT that ends each path
REAL_DONE = 0x11A7
# Identity page tables for the stub's paging toggle: PML4 0x2000 -> PDPT 0x3000 -> PD 0x4000, one 2 MiB page.
PAGE_TABLES = {0x2000: struct.pack("<Q", 0x3003), 0x3000: struct.pack("<Q", 0x4003), 0x4000: struct.pack("<Q", 0x83)}
TARGETS = {"protected32": (0, PROTECTED32_DONE), "real": (1, REAL_DONE)}


# -- what the firmware sets up on every CPU before any guest code runs -------------------------------------------
MTRR_UC, MTRR_WB = 0, 6
MTRR_DEF_E, MTRR_DEF_FE = 1 << 11, 1 << 10
MTRR_VALID = 1 << 11
MTRR_FIXED_WB = 0x0606060606060606


def mtrr_settings(mem_size, maxphyaddr):
    """{MSR: value} for the MTRRs as a PC BIOS leaves them (SeaBIOS's mtrr_setup): write-back by default and in
    the fixed ranges but for the VGA window 0xA0000-0xBFFFF (uncacheable), and one variable range making the
    device hole below 4 GiB uncacheable (the LAPIC and IOAPIC pages, PCI memory): 1 GiB from 3 GiB, or the
    naturally aligned block above the end of RAM. Every vCPU gets the same (Linux compares them across CPUs)."""
    size = 1 << 30
    while 4 * (1 << 30) - size < mem_size and size > 1 << 25:
        size >>= 1
    base = 4 * (1 << 30) - size
    settings = {0x250: MTRR_FIXED_WB, 0x258: MTRR_FIXED_WB, 0x259: 0}
    settings.update({0x268 + i: MTRR_FIXED_WB for i in range(8)})
    settings[0x200] = base | MTRR_UC
    settings[0x201] = (-size & ((1 << maxphyaddr) - 1)) | MTRR_VALID
    settings[0x2FF] = MTRR_DEF_E | MTRR_DEF_FE | MTRR_WB
    return settings
