"""Both walks again in plain Python, step by step: the views' translation and the kernels' twin.

`translate` is what a user sees for "guest-linear → guest-physical → host-physical": every entry read,
where it lives and what it says (QEMU's `info tlb`/`gva2gpa`, bhyvectl's `--get-gpa-pmap`). Written from
SDM §4 and §28.3 without looking at the numba code, it is also the twin the property tests compare the
kernels with. It never changes memory: no A/D bits, no pages backed.
"""
from . import ept as E
from . import walk as W


def ept_walk(mem64, root, gpa):
    """(steps, hpa or None, R/W/X of the walk). A software-valid leaf (emulated A/D) counts as mapped
    for the host's view but grants nothing until the guest's access sets its bits."""
    steps, table, rwx = [], root, 7
    for level in (4, 3, 2, 1):
        ea = table + ((gpa >> (12 + 9 * (level - 1))) & 0x1FF) * 8
        if ea + 8 > mem64.size * 8:
            return steps, None, 0
        e = int(mem64[ea >> 3])
        steps.append({"stage": "ept", "level": level, "entry_hpa": ea, "entry": e})
        if not e & E.EPT_RWX:
            return steps, None, 0
        rwx &= e & 7
        if level == 1 or e & E.EPT_PS:
            size = 1 << (12 + 9 * (level - 1))
            return steps, (e & E.ADDR & ~(size - 1)) | (gpa & (size - 1)), rwx
        table = e & E.ADDR
    return steps, None, 0


def guest_walk(read_entry, cr0, cr3, cr4, efer, cpl, va, access):
    """SDM §4.3-4.5 from the guest's registers. read_entry(gpa, wide) → value or None when the EPT does
    not map that paging-structure page. Returns (steps, code, gpa, perms, error code)."""
    steps = []
    if not cr0 & W.CR0_PG:
        return steps, W.OK, va, 7, 0
    write, fetch, user = access == W.ACCESS_WRITE, access == W.ACCESS_FETCH, cpl == 3
    nxe = bool(efer & W.EFER_NXE)
    if efer & W.EFER_LMA:
        levels, table, wide = [(39, 0x1FF), (30, 0x1FF), (21, 0x1FF), (12, 0x1FF)], cr3 & W.ADDR_MASK, True
    elif cr4 & W.CR4_PAE:
        levels, table, wide, va = [(30, 3), (21, 0x1FF), (12, 0x1FF)], cr3 & 0xFFFFFFE0, True, va & 0xFFFFFFFF
    else:
        levels, table, wide, va = [(22, 0x3FF), (12, 0x3FF)], cr3 & 0xFFFFF000, False, va & 0xFFFFFFFF

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
        if not pdpt:
            rw, us = rw and bool(e & W.PG_RW), us and bool(e & W.PG_US)
            nx = nx or (nxe and bool(e >> 63 & 1))
        last = depth == len(levels) - 1
        large = not last and not pdpt and e & W.PG_PS and (wide or cr4 & W.CR4_PSE)
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


def translate(mem64, root, cr0, cr3, cr4, efer, cpl, va, access=W.ACCESS_READ):
    """guest-linear → guest-physical → host-physical, with every entry read on the way."""
    ept_steps = []

    def read_entry(gpa, wide):
        steps, hpa, rwx = ept_walk(mem64, root, gpa)
        ept_steps.extend(steps)
        if hpa is None or not rwx & E.EPT_R:
            return None
        value = int(mem64[hpa >> 3])
        return value if wide else (value >> (32 * ((hpa >> 2) & 1))) & 0xFFFFFFFF

    steps, code, gpa, perms, err = guest_walk(read_entry, cr0, cr3, cr4, efer, cpl, va, access)
    result = {"linear": va, "steps": steps + ept_steps, "gpa": None, "hpa": None, "fault": None}
    if code == W.GUEST_PF:
        result["fault"] = "guest #PF, error code %#x" % err
        return result
    if code == W.EPT_FAULT:
        result["fault"] = "EPT violation reading the paging structure at guest-physical %#x" % gpa
        return result
    steps, hpa, rwx = ept_walk(mem64, root, gpa)
    result["steps"] += steps
    result["gpa"] = gpa
    if hpa is None:
        result["fault"] = "EPT violation: guest-physical %#x is not mapped (backed on first touch)" % gpa
    else:
        result["hpa"] = hpa
        result["perms"] = perms & rwx
    return result
