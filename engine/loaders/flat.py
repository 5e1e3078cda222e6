"""Flat 64-bit images: raw code loaded at one address and entered in long mode with identity paging.

The loader plays the part of a 64-bit boot loader: it builds a GDT (null, 64-bit code 0x08, data 0x10)
and 4-level page tables that identity-map guest memory, rounded up to 1 GiB, with 2 MiB pages
(SDM Vol. 3A 4.5, Table 4-17: a PDE with PS=1 maps a 2 MiB page). Below the image lies the stack,
below the stack the GDT and the tables.
"""
import struct

from engine.errors import ImageError
from engine.loaders.image import (PAGE_SIZE, GiB, MiB, BootImage, Segment, check_disjoint, check_placement,
                                  fmt_size)

DEFAULT_LOAD_ADDR = 0x200000
STACK_SIZE = 0x10000                    # reserved between the tables and the image; RSP starts at load_addr
CODE64_DESCRIPTOR = 0x00AF9A000000FFFF  # 64-bit code: L=1, DPL 0, execute/read (SDM Vol. 3A 3.4.5)
DATA_DESCRIPTOR = 0x00CF92000000FFFF    # flat 4 GiB data: read/write, G=1, B=1
GDT_ENTRIES = (0, CODE64_DESCRIPTOR, DATA_DESCRIPTOR)
CODE_SELECTOR, DATA_SELECTOR = 0x08, 0x10
PTE_P, PTE_RW, PDE_PS = 1 << 0, 1 << 1, 1 << 7
ENTRIES_PER_TABLE = 512
LARGE_PAGE = 2 * MiB
MAX_MAPPED = ENTRIES_PER_TABLE * GiB    # one PDPT


def page_tables(base, mem_size):
    """(bytes, gib): PML4 at base, PDPT at base+4K, one PD per GiB after, identity-mapping [0, gib GiB)."""
    gib = -(-mem_size // GiB)
    tables = bytearray(PAGE_SIZE * (2 + gib))
    pdpt, first_pd = base + PAGE_SIZE, base + 2 * PAGE_SIZE
    struct.pack_into("<Q", tables, 0, pdpt | PTE_P | PTE_RW)
    for g in range(gib):
        struct.pack_into("<Q", tables, PAGE_SIZE + 8 * g, (first_pd + g * PAGE_SIZE) | PTE_P | PTE_RW)
        pd = struct.pack(f"<{ENTRIES_PER_TABLE}Q", *((g * GiB + i * LARGE_PAGE) | PTE_P | PTE_RW | PDE_PS
                                                    for i in range(ENTRIES_PER_TABLE)))
        tables[(2 + g) * PAGE_SIZE:(3 + g) * PAGE_SIZE] = pd
    return bytes(tables), gib


def load_flat64(data, filename, mem_size, load_addr=None):
    """BootImage for a flat 64-bit image at `load_addr` (default 2 MiB), entered there in long mode."""
    load_addr = DEFAULT_LOAD_ADDR if load_addr is None else load_addr
    if not data:
        raise ImageError(f"{filename}: empty image: nothing to load")
    if load_addr < 0 or load_addr % PAGE_SIZE:
        raise ImageError(f"{filename}: load address {load_addr:#x} is not a 4 KiB-aligned guest-physical address")
    if mem_size > MAX_MAPPED:
        raise ImageError(f"{filename}: guest memory of {fmt_size(mem_size)} is more than the "
                         f"{fmt_size(MAX_MAPPED)} a flat64 identity map covers")
    check_placement(filename, "image", load_addr, load_addr + len(data), mem_size, low_ok=False)
    stack_base = load_addr - STACK_SIZE
    tables_size = PAGE_SIZE * (3 + -(-mem_size // GiB))          # GDT page + PML4 + PDPT + PDs
    gdt_base = stack_base - tables_size
    if gdt_base < 0:
        raise ImageError(f"{filename}: load address {load_addr:#x} leaves no room below it for the stack and "
                         f"page tables ({fmt_size(STACK_SIZE + tables_size)}); use the default "
                         f"{DEFAULT_LOAD_ADDR:#x}")
    check_placement(filename, "stack and page tables below the load address", gdt_base, load_addr, mem_size,
                    low_ok=True)
    gdt = Segment(gdt_base, struct.pack(f"<{len(GDT_ENTRIES)}Q", *GDT_ENTRIES), name="GDT")
    pml4 = gdt_base + PAGE_SIZE
    tables, gib = page_tables(pml4, mem_size)
    segments = [gdt, Segment(pml4, tables, name="page tables"), Segment(load_addr, bytes(data), name="image")]
    check_disjoint(filename, segments)
    notes = [f"flat64: {len(data):#x} bytes at {load_addr:#x}, entered there in long mode",
             f"flat64: identity map of the first {gib} GiB with 2 MiB pages, CR3 {pml4:#x}; GDT at {gdt_base:#x}",
             f"flat64: stack grows down from {load_addr:#x} (below the image; {fmt_size(STACK_SIZE)} reserved)"]
    regs = {"rip": load_addr, "rsp": load_addr, "cr3": pml4,
            "cs": CODE_SELECTOR, "ds": DATA_SELECTOR, "es": DATA_SELECTOR, "ss": DATA_SELECTOR}
    return BootImage(kind="flat64", mode="long64", segments=segments, regs=regs, gdt=gdt, entry=load_addr,
                     notes=notes)
