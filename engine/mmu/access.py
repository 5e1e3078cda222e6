"""The kernels' own way to guest memory through a vCPU's context block: guest-physical and guest-linear
addresses to host-physical ones, without side effects (no A/D bits, nothing backed), the exec-scan table
that finds the host page of an instruction, instruction bytes fetched page by page, and the linear address
of the current instruction.

Walks read the guest's registers with core/regs.py, so only the vCPU's own thread calls these.
"""
import numpy as np
from numba import carray, njit
from unicorn import x86_const as X

from ..core import ctx as C
from ..core.regs import rd, rd_efer
from ..native import INLINE, NUMBA, u64_ptr, u8_ptr
from . import ept as EPT
from . import walk as W

APIC_GPA = 0xFEE00000               # the local APIC page, mapped per vCPU to its virtual-APIC page


@njit(**INLINE)
def views(c):
    mem8 = carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])
    segs = carray(u64_ptr(c[C.SEGS]), 3 * np.int64(c[C.NSEGS]))
    return mem8, mem8.view(np.uint64), mem8.view(np.uint32), segs


@njit(**INLINE)
def ept_views(c):
    """The VM's EPT state and this vCPU's page-table page pool."""
    return carray(u64_ptr(c[C.EPT]), EPT.S_SIZE), carray(u64_ptr(c[C.POOL]), np.int64(c[C.POOL_SIZE]))


@njit(**NUMBA)
def gpa_to_hpa(c, gpa):
    """The host address behind a guest-physical byte as the host sees it (no side effects), or -1."""
    mem8, mem64, mem32, segs = views(c)
    st, pool = ept_views(c)
    level, ea, e, rwx = EPT.walk(mem64, st, gpa, False)
    if level > 0:
        return np.int64(EPT.leaf_hpa(level, e, gpa))
    if c[C.APIC_PAGE] != 0 and np.uint64(gpa) & ~np.uint64(0xFFF) == np.uint64(APIC_GPA):
        return np.int64(c[C.APIC_PAGE] + (np.uint64(gpa) & np.uint64(0xFFF)))
    return np.int64(-1)


def u64(address):
    """A guest address as the kernels below take it from Python. A plain int above 2**63 (a higher-half
    kernel's) would be converted to the int64 specialization an earlier call compiled, and overflow."""
    return np.uint64(address & 0xFFFFFFFFFFFFFFFF)


@njit(**NUMBA)
def xtab_find(xtab, mask, linear_page):
    """Slot of a linear page in the exec-scan table (open addressing), or the empty slot it would use."""
    mask = np.int64(mask)
    i = np.int64(((np.uint64(linear_page) >> np.uint64(12)) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40))
    want = np.uint64(linear_page) | np.uint64(1)
    for _ in range(mask + 1):
        i &= mask
        key = xtab[2 * i]
        if key == 0 or key == want:
            return i
        i += 1
    return np.int64(-1)


@njit(**INLINE)
def canonical(linear):
    """Bits 63:47 all equal (SDM 3.3.7.1). 4-level paging translates bits 47:0 only, so a non-canonical
    address would alias a canonical one; the CPU raises #GP(0) instead (#SS(0) for a stack access)."""
    return (np.uint64(linear) + np.uint64(1 << 47)) >> np.uint64(48) == 0


@njit(**NUMBA)
def linear_to_hpa(c, linear):
    """Host address of a guest-linear byte for the host's own reads (no A/D side effects), or -1."""
    if not canonical(linear):
        return np.int64(-1)
    mem8, mem64, mem32, segs = views(c)
    st, pool = ept_views(c)
    cs = rd(c, X.UC_X86_REG_CS)
    code, gpa, perms, err, fgpa, faults, status, _ = W.walk(mem64, mem32, st, pool, segs, c[C.NSEGS],
                                                         rd(c, X.UC_X86_REG_CR0), rd(c, X.UC_X86_REG_CR3),
                                                         rd(c, X.UC_X86_REG_CR4), rd_efer(c), cs & 3, linear,
                                                         W.ACCESS_READ, False)
    if code != W.OK:
        return np.int64(-1)
    return gpa_to_hpa(c, gpa)


@njit(**INLINE)
def code_to_hpa(c, linear):
    """Host address of an instruction byte: the exec-scan table knows every page the guest executes."""
    page = np.uint64(linear) & ~np.uint64(0xFFF)
    st = carray(u64_ptr(c[C.EPT]), EPT.S_SIZE)
    if c[C.CODE_PAGE] == page | np.uint64(1) and c[C.CODE_GEN] == st[EPT.S_GEN] + c[C.TLB_SEEN]:
        return np.int64(c[C.CODE_HPA]) + np.int64(np.uint64(linear) & np.uint64(0xFFF))   # the last page again
    return code_page_to_hpa(c, linear)


@njit(**NUMBA)
def code_page_to_hpa(c, linear):
    """code_to_hpa on a page other than the last one: look it up and remember it."""
    page = np.uint64(linear) & ~np.uint64(0xFFF)
    st = carray(u64_ptr(c[C.EPT]), EPT.S_SIZE)
    xtab = carray(u64_ptr(c[C.XTAB]), 2 * (np.int64(c[C.XMASK]) + 1))
    slot = xtab_find(xtab, c[C.XMASK], page)
    if slot >= 0 and xtab[2 * slot] != 0:
        hpa = gpa_to_hpa(c, xtab[2 * slot + 1] & ~np.uint64(0xFFF))
        if hpa >= 0:
            c[C.CODE_PAGE], c[C.CODE_HPA] = page | np.uint64(1), np.uint64(hpa)
            c[C.CODE_GEN] = st[EPT.S_GEN] + c[C.TLB_SEEN]
            return hpa + np.int64(np.uint64(linear) & np.uint64(0xFFF))
    return linear_to_hpa(c, linear)


@njit(**NUMBA)
def fetch_code(c, linear, out):
    """Copy the instruction bytes at guest-linear `linear` into `out`, each page through its own translation:
    an instruction may go on into a page mapped anywhere, or nowhere (its fetch faults there, SDM 6.15 #PF).
    Returns how many bytes were copied; never a byte of host memory that is not the guest's."""
    mem8 = carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])
    n = np.int64(0)
    while n < out.size:
        at = np.uint64(linear) + np.uint64(n)
        hpa = code_to_hpa(c, at)
        chunk = min(out.size - n, 0x1000 - np.int64(at & np.uint64(0xFFF)), np.int64(c[C.MEMSIZE]) - hpa)
        if hpa < 0 or chunk <= 0:
            break
        out[n:n + chunk] = mem8[hpa:hpa + chunk]
        n += chunk
    return n


@njit(**INLINE)
def pc_linear(c):
    """The linear address of the current instruction: CS.base + RIP (CS.base = selector*16 in real mode)."""
    rip = rd(c, X.UC_X86_REG_RIP)
    if c[C.GUEST_PE] == 0:
        c[C.GUEST_PE] = 2 if rd(c, X.UC_X86_REG_CR0) & W.CR0_PE else 1
    if c[C.GUEST_PE] == 2:
        return rip, rip
    return rip, ((rd(c, X.UC_X86_REG_CS) & np.uint64(0xFFFF)) << np.uint64(4)) + (rip & np.uint64(0xFFFF))
