"""The two-stage walk: guest paging (none, 32-bit, PAE, 4-level) then guest-physical to host-physical.

Every guest paging-structure read is itself translated to host-physical through EPT first, as the
hardware does (SDM §29.3.3); with `guest` set, a page-structure page not yet backed is backed on first
touch like any guest page (a nested page fault, counted), and the access is an EPT write as with EPT A/D.
The walk sets the guest's accessed/dirty bits and reports a guest #PF with the architectural error code
(SDM §4.7), RSVD included: an entry with a reserved bit set (SDM §4.3-4.5, with MAXPHYADDR from the EPT
state, i.e. the profile's CPUID.80000008H:EAX[7:0]) ends the walk. Without `guest` (the host's views)
nothing in memory changes.
"""
import numpy as np
from numba import njit

from ..native import NUMBA
from . import ept as EPT

PG_P, PG_RW, PG_US, PG_A, PG_D, PG_PS, PG_G = 1, 2, 4, 0x20, 0x40, 0x80, 0x100
PG_NX = 1 << 63
ADDR_MASK = 0x000FFFFFFFFFF000
CR0_PE, CR0_WP, CR0_PG = 1, 1 << 16, 1 << 31
CR4_PSE, CR4_PAE, CR4_PGE = 1 << 4, 1 << 5, 1 << 7
EFER_LMA, EFER_NXE = 1 << 10, 1 << 11
PF_P, PF_W, PF_U, PF_RSVD, PF_I = 1, 2, 4, 8, 16
ACCESS_READ, ACCESS_WRITE, ACCESS_FETCH = 0, 1, 2
PROT_R, PROT_W, PROT_X = 1, 2, 4
PROT_GLOBAL = 8             # not a Unicorn permission: the translation came from a global (G=1) entry
PROT_USER = 16              # nor this: U/S set at every level, CPL 3 may use it (the TLB keeps it, SDM 4.10.2.2)

# walk() result codes
OK, GUEST_PF, EPT_FAULT = 0, 1, 2


@njit(**NUMBA)
def _entry(mem64, mem32, st, pool, segs, nsegs, gpa, wide, guest):
    """(host address, value, EPT status, nested faults, the EPT's R/W/X at the last of them) of a
    paging-structure entry."""
    q = np.uint64(0)
    if guest:
        status, hpa, rwx, faults, q = EPT.translate(mem64, st, pool, segs, nsegs, gpa, EPT.WRITE, 4)
    else:
        level, ea, e, rwx = EPT.walk(mem64, st, gpa, False)
        status, faults = (EPT.HANDLED if level > 0 and rwx & np.uint64(EPT.EPT_R) else
                          EPT.MISCONFIG if level == EPT.MISCONFIGURED else EPT.DENIED), 0
        hpa = EPT.leaf_hpa(level, e, gpa) if status == EPT.HANDLED else np.uint64(0)
    if status != EPT.HANDLED or hpa + np.uint64(8) > np.uint64(mem64.size * 8):
        return np.int64(-1), np.uint64(0), status, faults, q
    if wide:
        return np.int64(hpa), mem64[hpa >> np.uint64(3)], status, faults, q
    return np.int64(hpa), np.uint64(mem32[hpa >> np.uint64(2)]), status, faults, q


@njit(inline="always", **NUMBA)
def reserved(e, level, levels, pse, nxe, m, page1gb):
    """Whether a present guest paging entry has a reserved bit set (a #PF with RSVD=1). m is MAXPHYADDR.
    32-bit paging (SDM 4.3): only a 4-MByte PDE, bits 21:(M'-19) with M' = min(M, 40) (PSE-36).
    PAE (4.4.1, 4.4.2): a PDPTE's bits 2:1, 8:5 and 63:M; elsewhere 62:M, bit 63 without EFER.NXE and
    bits 20:13 of a 2-MByte PDE. 4-level (4.5.4): bits 51:M, bit 63 without NXE, the PS bit of a PML4E,
    bits 29:13 of a 1-GByte PDPTE (its PS bit without Page1GB) and bits 20:13 of a 2-MByte PDE."""
    u = np.uint64
    m = u(m)
    large = level > 1 and (e & u(PG_PS)) != 0
    if levels == 2:
        if level == 2 and large and pse:
            top = min(m, u(40))
            return e & (u(0x3FFFFF) & ~((u(1) << (top - u(19))) - u(1))) != 0
        return False
    nx = u(0) if nxe else u(PG_NX)
    if levels == 3:
        if level == 3:
            return e & (u(0x1E6) | (~u(0) << m)) != 0
        rsvd = (u(0x7FFFFFFFFFFFFFFF) & (~u(0) << m)) | nx
    else:
        rsvd = (u(0x000FFFFFFFFFFFFF) & (~u(0) << m)) | nx
        if level == 4:
            rsvd |= u(PG_PS)
        elif level == 3 and large:
            if not page1gb:
                return True
            rsvd |= u(0x3FFFE000)
    if level == 2 and large:
        rsvd |= u(0x1FE000)
    return e & rsvd != 0


@njit(**NUMBA)
def walk(mem64, mem32, st, pool, segs, nsegs, cr0, cr3, cr4, efer, cpl, va, access, set_ad):
    """Guest-linear → guest-physical. Returns (code, gpa, perms, error code, faulting entry gpa, nested
    faults taken, EPT status of the faulting entry, the EPT's R/W/X for the paging-structure entry at the last
    nested fault: bits 5:3 of its exit qualification, SDM Table 28-7). set_ad: a guest access (A/D set, pages
    backed).

    Everything is uint64: numba turns mixed signed/unsigned 64-bit arithmetic into floats.
    """
    u = np.uint64
    va, cr0, cr3, cr4, efer = u(va), u(cr0), u(cr3), u(cr4), u(efer)
    if not cr0 & CR0_PG:
        return OK, va, PROT_R | PROT_W | PROT_X | PROT_USER, 0, u(0), 0, 0, u(0)
    write, fetch, user = access == ACCESS_WRITE, access == ACCESS_FETCH, cpl == 3
    nxe = (efer & EFER_NXE) != 0
    m = st[EPT.S_PHYS]
    page1gb = (st[EPT.S_FLAGS] & u(EPT.F_PAGE1GB)) != 0
    if efer & EFER_LMA:
        levels, wide, table = 4, True, cr3 & u(ADDR_MASK)
    elif cr4 & CR4_PAE:
        levels, wide, table = 3, True, cr3 & u(0xFFFFFFE0)
        va &= u(0xFFFFFFFF)
    else:
        levels, wide, table = 2, False, cr3 & u(0xFFFFF000)
        va &= u(0xFFFFFFFF)
    pse = (cr4 & CR4_PSE) != 0
    rw, us, nx = True, True, False
    last = np.int64(0)                                 # host address of the entry that maps the page
    shift = u(12)
    e = u(0)
    faults = 0
    q = u(0)
    for level in range(levels, 0, -1):
        pdpt = levels == 3 and level == 3             # PAE PDPTEs: 4 of them, no R/W, U/S or NX
        if wide:
            shift = u(12 + 9 * (level - 1))
            gpa = table + ((va >> shift) & u(0x3 if pdpt else 0x1FF)) * u(8)
        else:
            shift = u(12 + 10 * (level - 1))
            gpa = table + ((va >> shift) & u(0x3FF)) * u(4)
        hpa, e, status, taken, rwx = _entry(mem64, mem32, st, pool, segs, nsegs, gpa, wide, set_ad)
        if taken or hpa < 0:
            q = rwx
        faults += taken
        if hpa < 0:
            return EPT_FAULT, u(0), 0, 0, gpa, faults, status, q
        if not e & u(PG_P):
            code = (PF_W if write else 0) | (PF_U if user else 0) | (PF_I if fetch and nxe else 0)
            return GUEST_PF, u(0), 0, code, u(0), faults, 0, q
        if reserved(e, level, levels, pse, nxe, m, page1gb):
            code = PF_P | PF_RSVD | (PF_W if write else 0) | (PF_U if user else 0) | (PF_I if fetch and nxe else 0)
            return GUEST_PF, u(0), 0, code, u(0), faults, 0, q
        last = hpa
        if set_ad and not pdpt and not e & u(PG_A):   # A in each entry used (SDM 4.8; PAE PDPTEs have none)
            if wide:
                mem64[hpa >> 3] |= u(PG_A)
            else:
                mem32[hpa >> 2] |= np.uint32(PG_A)
        if not pdpt:
            rw = rw and (e & u(PG_RW)) != 0
            us = us and (e & u(PG_US)) != 0
            nx = nx or (nxe and (e & u(PG_NX)) != 0)
        large = level > 1 and not pdpt and (e & u(PG_PS)) != 0 and (wide or pse)
        if level == 1 or large:
            break
        table = e & u(ADDR_MASK if wide else 0xFFFFF000)
    writable = rw if (user or (cr0 & CR0_WP) != 0) else True
    if (write and not writable) or (user and not us) or (fetch and nx):
        code = PF_P | (PF_W if write else 0) | (PF_U if user else 0) | (PF_I if fetch and nxe else 0)
        return GUEST_PF, u(0), 0, code, u(0), faults, 0, q
    offset_mask = (u(1) << shift) - u(1)
    if shift == 22:                                   # 4 MiB page: PSE-36 puts bits 39:32 in 20:13
        frame = (e & u(0xFFC00000)) | (((e >> u(13)) & u(0xFF)) << u(32))
    else:
        frame = e & u(ADDR_MASK) & ~offset_mask
    gpa = frame | (va & offset_mask)
    dirty = (e & u(PG_D)) != 0
    if set_ad and write and not dirty:
        if wide:
            mem64[last >> 3] |= u(PG_D)
        else:
            mem32[last >> 2] |= np.uint32(PG_D)
        dirty = True
    perms = PROT_R
    if writable and dirty:                            # a clean page stays read-only until its first write sets D
        perms |= PROT_W
    if not nx:
        perms |= PROT_X
    if e & u(PG_G) and cr4 & u(CR4_PGE):
        perms |= PROT_GLOBAL
    if us:
        perms |= PROT_USER
    return OK, gpa, perms, 0, u(0), faults, 0, q
