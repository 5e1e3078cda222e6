"""The MSR bitmap: the 4 KiB page that decides which RDMSR/WRMSR cause a VM exit (SDM Vol. 3C 25.6.9, 26.1.3).

Layout (SDM 25.6.9): four 1 KiB bitmaps, read-low (MSRs 00000000H-00001FFFH), read-high (C0000000H-C0001FFFH),
write-low, write-high; bit n of a bitmap stands for MSR base + n. With the "use MSR bitmaps" control set, an
RDMSR/WRMSR whose bit is 0 runs in the guest without a VM exit; one whose bit is 1, or whose ECX is outside the
two ranges, exits (reason 31/32). With the control clear every RDMSR/WRMSR exits.

bhyve allocates one page per VM in vmx_init (`vmx->msr_bitmap`, shared by its vCPUs), sets every bit
(msr_bitmap_initialize) and clears the bits of the MSRs the VMCS itself saves and restores or that are cheap to
switch: guest_msr_rw/guest_msr_ro over msr_bitmap_change_access (vmx_msr.c), in vmx_init and, for the syscall
MSRs and KGSBASE, vmx_msr_guest_init. Every vCPU's VMCS points at it (vmx_vcpu_init: VMCS_MSR_BITMAP).

`exits` is the hardware's lookup, a numba kernel on the RDMSR/WRMSR hook's path (vmx/hooks.py msr_exit); the
rest runs once per VM or for a reader (bhyvectl --get-msr-bitmap).
"""
import numpy as np
from numba import njit

from ..native import INLINE

PAGE = 4096
READ_LOW, READ_HIGH, WRITE_LOW, WRITE_HIGH = 0, 1024, 2048, 3072     # byte offsets of the four bitmaps
LOW_END = 0x2000                                                   # MSRs 0 .. 1FFFH
HIGH_BASE, HIGH_END = 0xC0000000, 0xC0002000                       # MSRs C0000000H .. C0001FFFH

# MSR_BITMAP_ACCESS_* (vmx_msr.h)
ACCESS_READ, ACCESS_WRITE = 1, 2
ACCESS_RW = ACCESS_READ | ACCESS_WRITE

# The MSRs bhyve lets through, by specialreg.h's names, and how (vmx.c vmx_init; vmx_msr.c vmx_msr_guest_init).
MSR_TSC, MSR_SYSENTER_CS_MSR, MSR_SYSENTER_ESP_MSR, MSR_SYSENTER_EIP_MSR = 0x10, 0x174, 0x175, 0x176
MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_SF_MASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084
MSR_FSBASE, MSR_GSBASE, MSR_KGSBASE, MSR_TSC_AUX = 0xC0000100, 0xC0000101, 0xC0000102, 0xC0000103
GUEST_MSRS = (
    # vmx_init: the VMCS saves and restores them (FS/GS base, SYSENTER, EFER); the TSC read-only (a write
    # becomes a TSC offset); TSC_AUX read-only only with guest RDPID or RDTSCP (cap_rdpid/cap_rdtscp)
    (MSR_GSBASE, ACCESS_RW), (MSR_FSBASE, ACCESS_RW), (MSR_SYSENTER_CS_MSR, ACCESS_RW),
    (MSR_SYSENTER_ESP_MSR, ACCESS_RW), (MSR_SYSENTER_EIP_MSR, ACCESS_RW), (MSR_EFER, ACCESS_RW),
    (MSR_TSC, ACCESS_READ),
    # vmx_msr_guest_init (vCPU 0): switched by vmx_msr_guest_enter/exit around every entry
    (MSR_LSTAR, ACCESS_RW), (MSR_CSTAR, ACCESS_RW), (MSR_STAR, ACCESS_RW), (MSR_SF_MASK, ACCESS_RW),
    (MSR_KGSBASE, ACCESS_RW),
)

@njit(**INLINE)
def exits(bitmap, index, is_write):
    """Whether RDMSR (WRMSR if `is_write`) of MSR `index` exits under `bitmap` (the page's 4096 bytes), with the
    "use MSR bitmaps" control set (SDM 26.1.3): outside both ranges always; inside, as its bit says."""
    index = np.uint64(index) & np.uint64(0xFFFFFFFF)
    if index < np.uint64(LOW_END):
        base = np.int64(WRITE_LOW if is_write else READ_LOW)
    elif np.uint64(HIGH_BASE) <= index < np.uint64(HIGH_END):
        base = np.int64(WRITE_HIGH if is_write else READ_HIGH)
        index -= np.uint64(HIGH_BASE)
    else:
        return True
    return (bitmap[base + np.int64(index >> np.uint64(3))] >> (index & np.uint64(7))) & 1 != 0


# -- the Python side: filling the page, reading it back ------------------------------------------------------
def allocate(hv, owner):
    """vmx_init's page (malloc_aligned(PAGE_SIZE, PAGE_SIZE)), filled as it fills it: its host-physical address."""
    hpa = hv.allocator.allocate(PAGE, "MSR bitmap of %s" % owner)
    vmx_init(hv.memory[hpa:hpa + PAGE])
    return hpa


def initialize(bitmap):
    """msr_bitmap_initialize: every bit set, every MSR access exits."""
    bitmap[:] = 0xFF


def change_access(bitmap, msr, access):
    """msr_bitmap_change_access: clear the read and/or write bit of `msr` (its access goes through), set the other.
    ValueError (bhyve's EINVAL) for an MSR outside both ranges."""
    if msr < LOW_END:
        byte = msr // 8
    elif HIGH_BASE <= msr < HIGH_END:
        byte = READ_HIGH + (msr - HIGH_BASE) // 8
    else:
        raise ValueError("MSR %#x is outside the MSR bitmap's ranges (0-0x1fff, 0xc0000000-0xc0001fff)" % msr)
    bit = 1 << (msr & 7)
    for offset, flag in ((byte, ACCESS_READ), (byte + WRITE_LOW, ACCESS_WRITE)):
        bitmap[offset] = int(bitmap[offset]) & ~bit & 0xFF if access & flag else int(bitmap[offset]) | bit


def vmx_init(bitmap):
    """What vmx_init and vmx_msr_guest_init leave in a VM's page. TSC_AUX stays exiting: the modeled CPUs give
    guests neither RDPID nor RDTSCP (controls.modinit), and the x2APIC MSRs too: bhyve opens them
    (vmx_allow_x2apic_msrs) from vmx_enable_x2apic_mode_vid, when a guest whose VMCS has virtual-interrupt delivery
    turns its local APIC to x2APIC mode; no modeled CPU offers x2APIC (CPUID.1:ECX[21] clear), so none can."""
    initialize(bitmap)
    for msr, access in GUEST_MSRS:
        change_access(bitmap, msr, access)


def permissions(bitmap):
    """[(msr, readable, writable)] for each MSR whose read or write goes through, in dump_intel_msr_pm's order:
    for each offset n, MSR n then MSR C0000000H + n."""
    bits = np.unpackbits(np.frombuffer(bytes(bitmap), np.uint8), bitorder="little").reshape(4, 8192) == 0
    out = []
    for n in np.flatnonzero(bits.any(axis=0)):
        for half, base in ((0, 0), (1, HIGH_BASE)):
            readable, writable = bool(bits[half, n]), bool(bits[2 + half, n])
            if readable or writable:
                out.append((base + int(n), readable, writable))
    return out

