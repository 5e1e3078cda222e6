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
#                  mov ecx,0xC0000080; rdmsr; and eax,0xFFFFFEFF; wrmsr      (EFER.LME off)
#                  ljmp 0x08:pm32b
#            pm32b: test ebx,ebx; jnz to16; hlt                              (PROTECTED32_DONE)
#            to16: ljmp 0x18:pm16
#   .code16  pm16: mov ax,0x20; mov ds/es/fs/gs/ss,ax
#                  mov eax,cr0; and eax,0xFFFFFFFE; mov cr0,eax; ljmp 0:rm    (CR0.PE off)
#            rm:   xor ax,ax; mov ds/es/fs/gs/ss,ax; hlt                      (REAL_DONE)
STUB = bytes.fromhex(
    "0f01150c0000006a08488d050d0000005048cb2700001000000000000066b810008ed88ec08ee08ee88ed0b9800000"
    "c00f3225fffeffff0f30ea40110000080085db7501f4ea4c1100001800b820008ed88ec08ee08ee88ed00f20c06683"
    "e0fe0f22c0ea6811000031c08ed88ec08ee08ee88ed0f4")
PROTECTED32_DONE = 0x1145          # linear address after the HLT that ends each path
REAL_DONE = 0x1175
TARGETS = {"protected32": (0, PROTECTED32_DONE), "real": (1, REAL_DONE)}
