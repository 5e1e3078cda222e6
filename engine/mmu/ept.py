"""EPT nested paging: 4-level tables in host-physical memory, first-touch backing, A/D bits, superpages.

The tables have the SDM layout (R/W/X bits 0-2, memory type 3-5, ignore-PAT 6, page size 7, accessed 8,
dirty 9) and live in the modeled host memory beside the guests, so Unicorn, numba and the views read the
same bytes. The kernels here are what vmm.ko's pmap does for a guest (pmap.c, ept.c, vm_handle_paging):
map a guest page the first time it is touched, emulate accessed/dirty bits when the CPU lacks them,
promote a fully populated 2 MiB region to a superpage and demote it when part of it changes.

State is one small uint64 array per VM (S_* slots); page-table pages come from a pool array that the
userspace side refills, so a kernel never allocates. Guest-physical memory is the VM's segments: rows
[gpa, length, hpa], each backed by one host-physical run (bhyve's vm_mem_seg and its VM object).
"""
import numpy as np
from numba import njit

from ..native import NUMBA

EPT_R, EPT_W, EPT_X = 1, 2, 4
EPT_RWX = 7
EPT_MT_WB = 6 << 3            # memory type write-back
EPT_IPAT = 1 << 6
EPT_PS = 1 << 7
EPT_A = 1 << 8
EPT_D = 1 << 9
EMUL_V = 1 << 52              # PMAP_EMULATE_AD_BITS: software valid bit
EMUL_RW = 1 << 53             # software writable bit
ADDR = 0x000FFFFFFFFFF000
LEAF_ATTRS = EPT_MT_WB | EPT_IPAT      # pmap_cache_bits(PT_EPT, write-back)
PAGE, SUPERPAGE = 0x1000, 0x200000

# EPT capabilities (MSR_VMX_EPT_VPID_CAP bits) that ept_init reads
CAP_EXEC_ONLY, CAP_PWL4, CAP_WB, CAP_PDE_2M, CAP_INVEPT, CAP_AD = 1 << 0, 1 << 6, 1 << 14, 1 << 16, 1 << 20, 1 << 21

# the per-VM state array
S_ROOT = 0                    # host-physical address of the PML4
S_FLAGS = 1                   # F_* below, fixed when the VM is created (bhyve reads these tunables at boot)
S_GEN = 2                     # pmap->pm_eptgen
S_RESIDENT = 3                # populated 4 KiB pages (a superpage counts 512)
S_CAP = 4                     # most pages that may be resident
S_SUPER = 5                   # 2 MiB mappings now in place
S_PROMOTIONS = 6
S_DEMOTIONS = 7
S_FIRST_TOUCH = 8
S_AD_FAULTS = 9
S_SKIP_INVALIDATE = 10        # debug: pmap_invalidate_ept forgets to bump the generation
S_SIZE = 16
F_HW_AD, F_SUPERPAGES, F_EXEC_ONLY = 1, 2, 4

# handle_violation results
HANDLED, NOT_MEMORY, NO_POOL, OVER_CAP, DENIED = 0, 1, 2, 3, 4
# what an access needs
READ, WRITE, FETCH = 0, 1, 2


def eptp(root, ad):
    """ept.c eptp(): PML4 address | (walk length - 1) << 3 | write-back | A/D enable."""
    return root | (4 - 1) << 3 | 6 | (1 << 6 if ad else 0)


@njit(**NUMBA)
def walk(mem64, root, gpa, set_a):
    """→ (level, entry address, entry, R/W/X allowed). level 1/2/3 is a leaf (4 KiB/2 MiB/1 GiB);
    -4..-1 means the entry at that level is not present (bits 2:0 clear). With set_a, marks each entry used
    accessed (the hardware's EPT A/D)."""
    u = np.uint64
    gpa = u(gpa)
    table = u(root)
    rwx = u(EPT_RWX)
    limit = u(mem64.size * 8)
    for level in range(4, 0, -1):
        ea = table + ((gpa >> u(12 + 9 * (level - 1))) & u(0x1FF)) * u(8)
        if ea >= limit:
            return np.int64(-level), ea, u(0), u(0)
        e = mem64[ea >> u(3)]
        if e & u(EPT_RWX) == 0:
            return np.int64(-level), ea, e, u(0)
        if set_a and not e & u(EPT_A):
            e |= u(EPT_A)
            mem64[ea >> u(3)] = e
        rwx &= e
        if level == 1 or (level <= 3 and e & u(EPT_PS)):
            return np.int64(level), ea, e, rwx
        table = e & u(ADDR)
    return np.int64(-1), u(0), u(0), u(0)


@njit(**NUMBA)
def leaf_hpa(level, e, gpa):
    """Host-physical address of `gpa` through a leaf entry at `level`."""
    u = np.uint64
    size = u(1) << u(12 + 9 * (level - 1))
    return (e & u(ADDR) & ~(size - u(1))) | (u(gpa) & (size - u(1)))


@njit(**NUMBA)
def segment_hpa(segs, nsegs, gpa):
    """The backing host-physical address of a guest-physical one, or -1 outside every segment."""
    gpa = np.uint64(gpa)
    for i in range(np.int64(nsegs)):
        base = segs[3 * i]
        if base <= gpa < base + segs[3 * i + 1]:
            return np.int64(segs[3 * i + 2] + (gpa - base))
    return np.int64(-1)


@njit(**NUMBA)
def _pool_pop(mem64, pool):
    """A zeroed page-table page from the pool, or 0 when it is empty."""
    n = np.int64(pool[0])
    if n == 0:
        return np.uint64(0)
    page = pool[n]
    pool[0] = np.uint64(n - 1)
    mem64[page >> np.uint64(3):(page >> np.uint64(3)) + np.uint64(512)] = 0
    return page


@njit(**NUMBA)
def _pool_push(pool, page):
    n = np.int64(pool[0])
    if n + 1 < pool.size:
        pool[n + 1] = page
        pool[0] = np.uint64(n + 1)


@njit(**NUMBA)
def _leaf_bits(flags, write):
    """A new 4 KiB leaf's bits: with hardware A/D everything allowed; emulated, only what this access needs
    (R, X and W on a write) so that the next kind of access faults and is recorded."""
    u = np.uint64
    if flags & u(F_HW_AD):
        return u(EPT_RWX | LEAF_ATTRS)
    bits = u(EMUL_V | EMUL_RW | LEAF_ATTRS)
    if write < 0:                                     # backed by the host (vm_gpa_hold): not accessed yet
        return bits
    bits |= u(EPT_R | EPT_X)
    if write > 0:
        bits |= u(EPT_W)
    return bits


@njit(**NUMBA)
def populate(mem64, st, pool, segs, nsegs, gpa, write):
    """vm_fault for a guest page not yet mapped: zero-fill it and map it. write: 1 store, 0 load or fetch,
    -1 the host holding the page. Returns HANDLED, NOT_MEMORY, NO_POOL or OVER_CAP."""
    u = np.uint64
    gpa = u(gpa) & ~u(0xFFF)
    hpa = segment_hpa(segs, nsegs, gpa)
    if hpa < 0:
        return NOT_MEMORY
    if st[S_RESIDENT] >= st[S_CAP]:
        return OVER_CAP
    table = st[S_ROOT]
    pde = u(0)
    for level in range(4, 1, -1):
        ea = table + ((gpa >> u(12 + 9 * (level - 1))) & u(0x1FF)) * u(8)
        e = mem64[ea >> u(3)]
        if e & u(EPT_RWX) == 0:
            page = _pool_pop(mem64, pool)
            if page == 0:
                return NO_POOL
            e = page | u(EPT_RWX)
            mem64[ea >> u(3)] = e
        elif e & u(EPT_PS):
            return HANDLED                             # a superpage already maps it
        if level == 2:
            pde = ea
        table = e & u(ADDR)
    ea = table + ((gpa >> u(12)) & u(0x1FF)) * u(8)
    old = mem64[ea >> u(3)]
    if old & u(EPT_RWX) or old & u(EMUL_V):
        return HANDLED                                 # another vCPU got here first
    h = u(hpa)
    mem64[h >> u(3):(h >> u(3)) + u(512)] = 0          # first touch: a zero-filled page
    mem64[ea >> u(3)] = h | _leaf_bits(st[S_FLAGS], write)
    st[S_RESIDENT] += u(1)
    st[S_FIRST_TOUCH] += u(1)
    if st[S_FLAGS] & u(F_SUPERPAGES):
        promote(mem64, st, pool, pde)
    return HANDLED


@njit(**NUMBA)
def promote(mem64, st, pool, pde):
    """pmap_promote_pde: 512 present leaves, physically contiguous from a 2 MiB boundary, same bits → one PDE."""
    u = np.uint64
    e = mem64[pde >> u(3)]
    if e & u(EPT_PS) or e & u(EPT_RWX) == 0:
        return False
    table = e & u(ADDR)
    first = mem64[table >> u(3)]
    base = first & u(ADDR)
    if base & u(SUPERPAGE - 1):
        return False
    same = ~u(EPT_A | EPT_D)
    for i in range(512):
        leaf = mem64[(table >> u(3)) + u(i)]
        if leaf & u(EPT_RWX) == 0 and not leaf & u(EMUL_V):
            return False
        if leaf & u(ADDR) != base + u(i * PAGE) or (leaf ^ first) & same & ~u(ADDR):
            return False
    ad = u(0)
    for i in range(512):
        ad |= mem64[(table >> u(3)) + u(i)] & u(EPT_A | EPT_D)
    mem64[pde >> u(3)] = base | (first & ~u(ADDR) & same) | ad | u(EPT_PS)
    _pool_push(pool, table)
    st[S_SUPER] += u(1)
    st[S_PROMOTIONS] += u(1)
    return True


@njit(**NUMBA)
def demote(mem64, st, pool, pde):
    """pmap_demote_pde: split a 2 MiB mapping back into a page table of 512 equal leaves."""
    u = np.uint64
    e = mem64[pde >> u(3)]
    if not e & u(EPT_PS):
        return True
    table = _pool_pop(mem64, pool)
    if table == 0:
        return False
    bits = e & ~u(ADDR) & ~u(EPT_PS)
    base = e & u(ADDR)
    for i in range(512):
        mem64[(table >> u(3)) + u(i)] = (base + u(i * PAGE)) | bits
    mem64[pde >> u(3)] = table | u(EPT_RWX)
    st[S_SUPER] -= u(1)
    st[S_DEMOTIONS] += u(1)
    return True


@njit(**NUMBA)
def emulate_ad(mem64, st, ea, e, write):
    """pmap_emulate_accessed_dirty: a leaf marked valid in software gets R (accessed), and W (dirty) on a
    write when it is writable in software. False if this leaf cannot be fixed that way."""
    u = np.uint64
    if st[S_FLAGS] & u(F_HW_AD) or not e & u(EMUL_V):
        return False
    if write and not e & u(EMUL_RW):
        return False
    e |= u(EPT_R | EPT_X)
    if write:
        e |= u(EPT_W)
    mem64[ea >> u(3)] = e
    st[S_AD_FAULTS] += u(1)
    return True


@njit(**NUMBA)
def allowed(rwx, access):
    """Whether a present translation permits `access` (an emulated clean page has no W yet)."""
    u = np.uint64
    if access == FETCH:
        return rwx & u(EPT_X) != 0
    if access == WRITE:
        return rwx & u(EPT_W) != 0
    return rwx & u(EPT_R) != 0


@njit(**NUMBA)
def handle_violation(mem64, st, pool, segs, nsegs, gpa, access):
    """vm_handle_paging: emulate A/D on a software-valid leaf, else back the page on first touch."""
    level, ea, e, rwx = walk(mem64, st[S_ROOT], gpa, False)
    write = access == WRITE
    if level > 0:
        if emulate_ad(mem64, st, ea, e, write):
            return HANDLED
        return DENIED
    if level < 0 and e & np.uint64(EMUL_V):          # a software-valid leaf not accessed yet
        if emulate_ad(mem64, st, ea, e, write):
            return HANDLED
        return DENIED
    return populate(mem64, st, pool, segs, nsegs, gpa, np.int64(1 if write else 0))


@njit(**NUMBA)
def translate(mem64, st, pool, segs, nsegs, gpa, access, tries):
    """Guest-physical → host-physical for `access`, handling first-touch and A/D faults in place (each one
    a nested page fault, counted by the caller through `faults`). Returns (status, hpa, rwx, faults, ea-rwx):
    status HANDLED with the address and the R/W/X to cache, or why not; the last value is the walk's R/W/X for
    the exit qualification."""
    u = np.uint64
    hw_ad = (st[S_FLAGS] & u(F_HW_AD)) != 0
    faults = 0
    for _ in range(tries):
        level, ea, e, rwx = walk(mem64, st[S_ROOT], gpa, hw_ad)
        if level > 0 and allowed(rwx, access):
            perms = rwx
            if hw_ad and access == WRITE and not e & u(EPT_D):
                mem64[ea >> u(3)] = e | u(EPT_D)
            elif hw_ad and not e & u(EPT_D):
                perms &= ~u(EPT_W)                     # clean: the first write must come back to set D
            return HANDLED, leaf_hpa(level, e, gpa), perms, faults, rwx
        faults += 1
        result = handle_violation(mem64, st, pool, segs, nsegs, gpa, access)
        if result != HANDLED:
            return result, u(0), u(0), faults, rwx
    return DENIED, u(0), u(0), faults, u(0)


@njit(**NUMBA)
def change(mem64, st, pool, gpa, size, rwx, remove):
    """Protect (new R/W/X) or, with `remove`, unmap the mapped pages in [gpa, gpa+size); a superpage only
    partly inside is demoted first. Returns the number of 4 KiB pages changed, or -1 when the pool ran out
    (the caller refills and calls again: pages already done are simply done again)."""
    u = np.uint64
    done = 0
    end = u(gpa) + u(size)
    g = u(gpa) & ~u(0xFFF)
    while g < end:
        level, ea, e, old = walk(mem64, st[S_ROOT], g, False)
        if level == -1 and e & u(EMUL_V):
            level = 1
        if level == 2 and not ((g & u(SUPERPAGE - 1)) == 0 and g + u(SUPERPAGE) <= end):
            if not demote(mem64, st, pool, ea):
                return -1
            continue
        if level == 1 or level == 2:
            pages = 512 if level == 2 else 1
            if remove:
                mem64[ea >> u(3)] = 0
                st[S_RESIDENT] -= u(pages)
                if level == 2:
                    st[S_SUPER] -= u(1)
            else:
                mem64[ea >> u(3)] = _with_rwx(e, rwx, st[S_FLAGS])
            done += pages
            g += u(SUPERPAGE if level == 2 else PAGE)
            continue
        g += u(PAGE)
    return done


@njit(**NUMBA)
def _with_rwx(e, rwx, flags):
    """New permissions on a leaf. Emulated A/D: the software bits hold the permission, R/W stay A/D."""
    u = np.uint64
    if flags & u(F_HW_AD):
        return (e & ~u(EPT_RWX)) | u(rwx)
    e &= ~u(EMUL_RW)
    if rwx & u(EPT_W):
        e |= u(EMUL_RW)
    else:
        e &= ~u(EPT_W)
    if not rwx & u(EPT_X):
        e &= ~u(EPT_X)
    if rwx == 0:
        e &= ~u(EMUL_V | EPT_RWX)
    return e


@njit(**NUMBA)
def harvest_dirty(mem64, st, pool, gpa, size, out, clear):
    """The dirty-page log: guest-physical page numbers written since the last harvest, into `out`; with
    `clear`, the bits are reset (the caller invalidates). Returns how many were found (may exceed out.size)."""
    u = np.uint64
    n = 0
    hw_ad = (st[S_FLAGS] & u(F_HW_AD)) != 0
    dirty_bit = u(EPT_D) if hw_ad else u(EPT_W)
    end = u(gpa) + u(size)
    g = u(gpa) & ~u(0xFFF)
    while g < end:
        level, ea, e, rwx = walk(mem64, st[S_ROOT], g, False)
        step = u(SUPERPAGE) if level == 2 else u(PAGE)
        if level > 0 and e & dirty_bit:
            if level == 2:
                for i in range(512):
                    if n < out.size:
                        out[n] = (g >> u(12)) + u(i)
                    n += 1
            else:
                if n < out.size:
                    out[n] = g >> u(12)
                n += 1
            if clear:
                mem64[ea >> u(3)] = e & ~dirty_bit
        g += step
    return n


@njit(**NUMBA)
def fill_pages(mem8, mem64, st, pool, segs, nsegs, gpas, bits, data, start):
    """Map guest pages and give them contents and leaf bits (restoring a snapshot), from index `start`.
    Returns the index reached: len(gpas) when done, less when the pool ran out (refill and call again),
    -1 - index for a page outside memory or over the cap."""
    u = np.uint64
    flags = st[S_FLAGS]
    st[S_FLAGS] = flags & ~u(F_SUPERPAGES)             # 4 KiB leaves only: the caller promotes afterwards
    reached = np.int64(gpas.size)
    for i in range(start, gpas.size):
        gpa = gpas[i]
        result = populate(mem64, st, pool, segs, nsegs, gpa, -1)
        if result != HANDLED:
            reached = np.int64(i) if result == NO_POOL else np.int64(-1 - i)
            break
        level, ea, e, rwx = walk(mem64, st[S_ROOT], gpa, False)
        hpa = e & u(ADDR)
        mem8[hpa:hpa + u(PAGE)] = data[i * PAGE:(i + 1) * PAGE]
        mem64[ea >> u(3)] = hpa | bits[i]
    st[S_FLAGS] = flags
    return reached
