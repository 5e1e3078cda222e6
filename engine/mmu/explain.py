"""Both walks again in plain Python, step by step: the views' translation and the kernels' twin.

`translate` is what a user sees for "guest-linear → guest-physical → host-physical": every entry read,
where it lives and what it says (QEMU's `info tlb`/`gva2gpa`, bhyvectl's `--get-gpa-pmap`). Written from
SDM §4 and §29.3 without looking at the numba code, it is also the twin the property tests compare the
kernels with. It never changes memory: no A/D bits, no pages backed.
"""
from . import ept as E
from . import walk as W


def bits(high, low):
    """Mask of bits high..low (none when high < low)."""
    return ((1 << (high + 1)) - 1) & ~((1 << low) - 1) if high >= low else 0


# EPT entries' reserved bits below bit 52 besides 51:N, by (level, maps a page) (SDM 29.3.2, the entry formats)
EPT_RESERVED = {(4, False): bits(7, 3), (3, False): bits(7, 3), (3, True): bits(29, 12),
                (2, False): bits(6, 3), (2, True): bits(20, 12), (1, True): 0}


def ept_misconfiguration(e, level, width, flags):
    """Why a present EPT entry is a misconfiguration (SDM 29.3.3.1), or None."""
    xwr = e & 7
    if xwr in (0b010, 0b110):
        return "write without read"
    if xwr == 0b100 and not flags & E.F_XO_OK:
        return "execute-only, which this CPU lacks"
    if e & bits(51, width):
        return "address bits above the %d-bit physical-address width" % width
    page = level == 1 or (level in (2, 3) and bool(e & E.EPT_PS))
    if level == 4 and e & E.EPT_PS or level == 3 and page and not flags & E.F_EPT_1G:
        return "bit 7 reserved at this level"
    if e & EPT_RESERVED[(level, page)]:
        return "reserved bits %#x" % (e & EPT_RESERVED[(level, page)])
    if page and (e >> 3) & 7 in (2, 3, 7):
        return "reserved memory type %d" % ((e >> 3) & 7)
    return None


def ept_walk(mem64, st, gpa):
    """(steps, hpa or None, R/W/X of the walk, why not). `st` gives the root, the physical-address width
    and what the CPU allows. A software-valid leaf (emulated A/D) counts as mapped for the host's view but
    grants nothing until the guest's access sets its bits."""
    width, flags = int(st[E.S_PHYS]), int(st[E.S_FLAGS])
    if gpa >> width:
        return [], None, 0, "guest-physical %#x is beyond the %d-bit physical-address width" % (gpa, width)
    steps, table, rwx = [], int(st[E.S_ROOT]), 7
    for level in (4, 3, 2, 1):
        ea = table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8
        if ea + 8 > mem64.size * 8:
            return steps, None, 0, "not present"
        e = int(mem64[ea >> 3])
        steps.append({"stage": "ept", "level": level, "entry_hpa": ea, "entry": e})
        if not e & E.EPT_RWX:
            return steps, None, 0, "not present"
        why = ept_misconfiguration(e, level, width, flags)
        if why:
            return steps, None, 0, "EPT misconfiguration: " + why
        rwx &= e & 7
        if level == 1 or e & E.EPT_PS:
            size = 1 << (12 + 9 * (level - 1))
            return steps, (e & E.ADDR & ~(size - 1)) | (gpa & (size - 1)), rwx, None
        table = e & E.ADDR
    return steps, None, 0, "not present"


def guest_reserved(e, mode, level, large, nxe, maxphyaddr, page1gb):
    """The reserved bits set in a present guest paging entry (SDM 4.3, 4.4.2 and 4.5.4, the entry formats);
    mode is '32', 'pae' or 'long'."""
    m = maxphyaddr
    if mode == "32":
        return e & bits(21, min(m, 40) - 19) if level == 2 and large else 0
    if mode == "pae" and level == 3:
        return e & (bits(2, 1) | bits(8, 5) | bits(63, m))
    mask = bits(62, m) if mode == "pae" else bits(51, m)
    if not nxe:
        mask |= 1 << 63
    if mode == "long" and level == 4:
        mask |= 1 << 7
    if mode == "long" and level == 3 and large:
        mask |= bits(29, 13) if page1gb else 1 << 7
    if level == 2 and large:
        mask |= bits(20, 13)
    return e & mask


def guest_walk(read_entry, cr0, cr3, cr4, efer, cpl, va, access, maxphyaddr, page1gb):
    """SDM §4.3-4.5 from the guest's registers. read_entry(gpa, wide) → value or None when the EPT does
    not map that paging-structure page. Returns (steps, code, gpa, perms, error code)."""
    steps = []
    if not cr0 & W.CR0_PG:
        return steps, W.OK, va, 7, 0
    write, fetch, user = access == W.ACCESS_WRITE, access == W.ACCESS_FETCH, cpl == 3
    nxe = bool(efer & W.EFER_NXE)
    if efer & W.EFER_LMA:
        levels, table, wide = [(39, 0x1FF), (30, 0x1FF), (21, 0x1FF), (12, 0x1FF)], cr3 & W.ADDR_MASK, True
        mode = "long"
    elif cr4 & W.CR4_PAE:
        levels, table, wide, va = [(30, 3), (21, 0x1FF), (12, 0x1FF)], cr3 & 0xFFFFFFE0, True, va & 0xFFFFFFFF
        mode = "pae"
    else:
        levels, table, wide, va = [(22, 0x3FF), (12, 0x3FF)], cr3 & 0xFFFFF000, False, va & 0xFFFFFFFF
        mode = "32"

    def pf(present):
        return steps, W.GUEST_PF, 0, 0, present | (2 if write else 0) | (4 if user else 0) | (16 if fetch and nxe else 0)

    rw = us = True
    nx = False
    for depth, (shift, mask) in enumerate(levels):
        gpa = table + ((va >> shift) & mask) * (8 if wide else 4)
        e = read_entry(gpa, wide)
        if e is None:
            return steps, W.EPT_FAULT, gpa, 0, 0
        steps.append({"stage": "guest", "level": len(levels) - depth, "entry_gpa": gpa, "entry": e})
        if not e & W.PG_P:
            return pf(0)
        pdpt = len(levels) == 3 and depth == 0
        last = depth == len(levels) - 1
        large = bool(not last and e & W.PG_PS and (wide or cr4 & W.CR4_PSE))
        if guest_reserved(e, mode, len(levels) - depth, large, nxe, maxphyaddr, page1gb):
            return pf(1 | 8)
        large = large and not pdpt
        if not pdpt:
            rw, us = rw and bool(e & W.PG_RW), us and bool(e & W.PG_US)
            nx = nx or (nxe and bool(e >> 63 & 1))
        if last or large:
            break
        table = e & (W.ADDR_MASK if wide else 0xFFFFF000)
    writable = rw if (user or cr0 & W.CR0_WP) else True
    if (write and not writable) or (user and not us) or (fetch and nx):
        return pf(1)
    size = 1 << shift
    if shift == 22:
        frame = (e & 0xFFC00000) | (((e >> 13) & 0xFF) << 32)
    else:
        frame = e & W.ADDR_MASK & ~(size - 1)
    perms = W.PROT_R | (W.PROT_W if writable and e & W.PG_D else 0) | (0 if nx else W.PROT_X)
    return steps, W.OK, frame | (va & (size - 1)), perms, 0


def translate(mem64, st, cr0, cr3, cr4, efer, cpl, va, access=W.ACCESS_READ):
    """guest-linear → guest-physical → host-physical, with every entry read on the way. `st` is the VM's
    EPT state (root, physical-address width, what the CPU allows)."""
    ept_steps, ept_faults = [], []

    def read_entry(gpa, wide):
        steps, hpa, rwx, why = ept_walk(mem64, st, gpa)
        ept_steps.extend(steps)
        if hpa is None or not rwx & E.EPT_R:
            ept_faults.append(why or "not readable")
            return None
        value = int(mem64[hpa >> 3])
        return value if wide else (value >> (32 * ((hpa >> 2) & 1))) & 0xFFFFFFFF

    steps, code, gpa, perms, err = guest_walk(read_entry, cr0, cr3, cr4, efer, cpl, va, access,
                                              int(st[E.S_PHYS]), bool(st[E.S_FLAGS] & E.F_PAGE1GB))
    result = {"linear": va, "steps": steps + ept_steps, "gpa": None, "hpa": None, "fault": None}
    if code == W.GUEST_PF:
        result["fault"] = "guest #PF, error code %#x%s" % (err, " (reserved bit set)" if err & W.PF_RSVD else "")
        return result
    if code == W.EPT_FAULT:
        why = ept_faults[-1]
        kind = why if why.startswith("EPT misconfiguration") else "EPT violation (%s)" % why
        result["fault"] = "%s reading the paging structure at guest-physical %#x" % (kind, gpa)
        return result
    steps, hpa, rwx, why = ept_walk(mem64, st, gpa)
    result["steps"] += steps
    result["gpa"] = gpa
    if hpa is None and why.startswith("EPT misconfiguration"):
        result["fault"] = "%s at guest-physical %#x" % (why, gpa)
    elif hpa is None:
        result["fault"] = "EPT violation: guest-physical %#x is not mapped (backed on first touch)" % gpa
    else:
        result["hpa"] = hpa
        result["perms"] = perms & rwx
    return result
