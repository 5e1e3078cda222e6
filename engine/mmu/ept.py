"""EPT nested paging: 4-level tables in host-physical memory, first-touch backing, A/D bits, superpages.

The tables have the SDM layout (R/W/X bits 0-2, memory type 3-5, ignore-PAT 6, page size 7, accessed 8,
dirty 9) and live in the modeled host memory beside the guests, so Unicorn, numba and the views read the
same bytes. The kernels here are what vmm.ko's pmap does for a guest (pmap.c, ept.c, vm_handle_paging):
map a guest page the first time it is touched, emulate accessed/dirty bits when the CPU lacks them,
promote a fully populated 2 MiB region to a superpage and demote it when part of it changes. The walk
checks every entry as the CPU does: a reserved setting is an EPT misconfiguration. (SDM vol. 3C §29.3;
§28.3 in editions before the chapter was renumbered.)

State is one small uint64 array per VM (S_* slots); page-table pages come from a pool array that the
userspace side refills, so a kernel never allocates. Guest-physical memory is the VM's segments: rows
[gpa, length, hpa], each backed by one host-physical run (bhyve's vm_mem_seg and its VM object).

Concurrency. Every vCPU thread runs these kernels on the same tables at once, with no lock on the way to a
translation. So an entry is only ever changed by a compare-and-swap against the value it was computed
from (the walk's A/D bits, a new table, emulated A/D) or an atomic exchange: a vCPU that loses a race
gives its page back to its pool and uses the winner's. A leaf is claimed (BUSY) before its page is
zero-filled, so that no second zero-fill can wipe a page the winner's guest has written since. Promotion,
demotion and the host's changes are rarer and take the per-VM spinlock S_LOCK, so that a promotion never
reads leaves that a protect is rewriting; a table a promotion retires stays with its 2 MiB region (bhyve's
pmap_insert_pt_page), because a walker may still be reading it. Counters are atomic adds.
"""
import numpy as np
from numba import njit

from ..core.sync import atomic_add, atomic_and, atomic_cas, atomic_xchg, call_void
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
BUSY = 1 << 55                # software: a first touch is filling this leaf (bits 62:52 are ignored, SDM 29.3.2)
ADDR = 0x000FFFFFFFFFF000
LEAF_ATTRS = EPT_MT_WB | EPT_IPAT      # pmap_cache_bits(PT_EPT, write-back)
PAGE, SUPERPAGE = 0x1000, 0x200000

# EPT capabilities (MSR_VMX_EPT_VPID_CAP bits) that ept_init reads
CAP_EXEC_ONLY, CAP_PWL4, CAP_WB, CAP_PDE_2M, CAP_PDPTE_1G = 1 << 0, 1 << 6, 1 << 14, 1 << 16, 1 << 17
CAP_INVEPT, CAP_AD = 1 << 20, 1 << 21

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
S_PTP = 11                    # host-physical address of the saved page-table pages: one per 2 MiB region
S_NPTP = 12                   # how many regions that array covers
S_YIELD = 13                  # address of sched_yield: a waiter gives its host CPU to the owner (0: spin)
S_LOCK = 14                   # spinlock: promotion, demotion and the host's changes
S_PHYS = 15                   # physical-address width N (MAXPHYADDR, CPUID.80000008H:EAX[7:0]), 32..52
S_SIZE = 16
# bhyve's choices (CPU capability and hw.vmm.ept.* tunable), then what the modeled CPU architecturally has
F_HW_AD, F_SUPERPAGES, F_EXEC_ONLY = 1, 2, 4
F_XO_OK = 8                   # EPT execute-only translations exist (cap bit 0); else 100b is a misconfiguration
F_EPT_1G = 16                 # an EPT PDPTE may map 1 GiB (cap bit 17); else its bit 7 is reserved
F_PAGE1GB = 32                # guest paging: CPUID.80000001H:EDX[26], 1-GByte pages (SDM 4.5.4)

# handle_violation results
HANDLED, NOT_MEMORY, NO_POOL, OVER_CAP, DENIED, MISCONFIG = 0, 1, 2, 3, 4, 5
# what an access needs
READ, WRITE, FETCH = 0, 1, 2
# walk() levels that are not a leaf (1..3) or a missing entry (-4..-1)
MISCONFIGURED = 0             # the entry at `ea` has a reserved setting: exit 49
BEYOND = -5                   # the guest-physical address has bits at or above the physical-address width


def eptp(root, ad):
    """ept.c eptp(): PML4 address | (walk length - 1) << 3 | write-back | A/D enable."""
    return root | (4 - 1) << 3 | 6 | (1 << 6 if ad else 0)


# -- atomics on the shared arrays ---------------------------------------------------------------------
@njit(**NUMBA)
def _at(mem64, ea):
    return np.uint64(mem64.ctypes.data) + np.uint64(ea)


@njit(**NUMBA)
def _count(st, slot, n):
    """st[slot] += n (n may be negative), atomically: every vCPU counts into the same array."""
    atomic_add(np.uint64(st.ctypes.data) + np.uint64(8 * slot), np.uint64(np.int64(n)))


@njit(**NUMBA)
def _relax(st):
    """A waiter's turn: the owner may be a preempted thread on the same host core."""
    if st[S_YIELD] != 0:
        call_void(st[S_YIELD])


@njit(**NUMBA)
def _lock(st):
    where = np.uint64(st.ctypes.data) + np.uint64(8 * S_LOCK)
    while atomic_cas(where, np.uint64(0), np.uint64(1)) != 0:
        _relax(st)


@njit(**NUMBA)
def _unlock(st):
    atomic_xchg(np.uint64(st.ctypes.data) + np.uint64(8 * S_LOCK), np.uint64(0))


@njit(**NUMBA)
def _or_bits(mem64, ea, e, bits):
    """Set `bits` in the entry at ea if, apart from its A/D bits, it still is `e`. Returns the entry now, or
    0 when it changed meanwhile (remapped, protected, removed): the caller's view of it is stale."""
    u = np.uint64
    keep = ~u(EPT_A | EPT_D)
    where = _at(mem64, ea)
    while True:
        found = atomic_cas(where, e, e | bits)
        if found == e:
            return e | bits
        if (found ^ e) & keep:
            return u(0)
        e = found


# -- the walk -----------------------------------------------------------------------------------------
@njit(**NUMBA)
def reserved_high(st):
    """Bits 51:N of an entry, N the physical-address width: reserved in every EPT entry (SDM 29.3.2)."""
    return np.uint64(0x000FFFFFFFFFFFFF) & ~((np.uint64(1) << st[S_PHYS]) - np.uint64(1))


@njit(inline="always", **NUMBA)
def misconfigured(e, level, flags, high):
    """Whether a present entry (bits 2:0 not 000b) at `level` is an EPT misconfiguration (SDM 29.3.3.1):
    write-only or write/execute; execute-only without the capability; a reserved bit (51:N everywhere,
    7:3 in a PML4E, 7:3 / 6:3 in a PDPTE / PDE that references a table, 29:12 / 20:12 in a PDPTE / PDE that
    maps a page, bit 7 of a PDPTE without 1-GByte pages); or a leaf whose memory type is 2, 3 or 7."""
    u = np.uint64
    rwx = e & u(EPT_RWX)
    if rwx == u(EPT_W) or rwx == u(EPT_W | EPT_X):
        return True
    if rwx == u(EPT_X) and not flags & u(F_XO_OK):
        return True
    if e & high:
        return True
    large = level > 1 and (e & u(EPT_PS)) != 0
    if level == 4:
        rsvd = u(0xF8)
    elif level == 3 and large:
        if not flags & u(F_EPT_1G):
            return True
        rsvd = u(0x3FFFF000)
    elif level == 2 and large:
        rsvd = u(0x1FF000)
    elif level == 3:
        rsvd = u(0xF8)
    elif level == 2:
        rsvd = u(0x78)
    else:
        rsvd = u(0)
    if e & rsvd:
        return True
    if level == 1 or large:
        mt = (e >> u(3)) & u(7)
        return mt == 2 or mt == 3 or mt == 7
    return False


@njit(**NUMBA)
def walk(mem64, st, gpa, set_a):
    """→ (level, entry address, entry, R/W/X allowed). level 1/2/3 is a leaf (4 KiB/2 MiB/1 GiB); -4..-1
    means the entry at that level is not present (bits 2:0 clear); MISCONFIGURED, that the entry at `ea` is
    an EPT misconfiguration; BEYOND, that `gpa` has a bit at or above the physical-address width, which no
    entry translates (an EPT violation). With set_a, marks each entry used accessed (EPT A/D, SDM 29.3.5)."""
    u = np.uint64
    gpa = u(gpa)
    if gpa >> st[S_PHYS]:
        return np.int64(BEYOND), u(0), u(0), u(0)
    flags = st[S_FLAGS]
    high = reserved_high(st)
    table = st[S_ROOT]
    rwx = u(EPT_RWX)
    limit = u(mem64.size * 8)
    for level in range(4, 0, -1):
        ea = table + ((gpa >> u(12 + 9 * (level - 1))) & u(0x1FF)) * u(8)
        if ea >= limit:
            return np.int64(-level), ea, u(0), u(0)
        e = mem64[ea >> u(3)]
        if e & u(EPT_RWX) == 0:
            return np.int64(-level), ea, e, u(0)
        if misconfigured(e, level, flags, high):
            return np.int64(MISCONFIGURED), ea, e, u(0)
        if set_a and not e & u(EPT_A):
            now = _or_bits(mem64, ea, e, u(EPT_A))
            if now != 0:                               # else it changed under us: this walk read it just before
                e = now
        rwx &= e
        if level == 1 or (level <= 3 and e & u(EPT_PS)):
            return np.int64(level), ea, e, rwx
        table = e & u(ADDR)
    return np.int64(-1), u(0), u(0), u(0)


@njit(**NUMBA)
def mapped_level(level, e):
    """The leaf level of a mapping the walk found: `level` for a present leaf, and for a leaf without R/W/X
    that still holds its page — software-valid (emulated A/D, not accessed yet) or protected to no access —
    the level it maps at. 0 for nothing mapped (empty, being filled, or a missing table)."""
    u = np.uint64
    if level > 0:
        return level
    if level < 0 and level != BEYOND and not e & u(BUSY) and e & u(ADDR | EMUL_V):
        if level == -1 or e & u(EPT_PS):
            return -level
    return np.int64(0)


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


# -- page-table pages ---------------------------------------------------------------------------------
@njit(**NUMBA)
def _pool_pop(mem64, pool):
    """A zeroed page-table page from the pool (one vCPU's own), or 0 when it is empty."""
    n = np.int64(pool[0])
    if n <= 0 or n >= pool.size:
        return np.uint64(0)
    page = pool[n]
    pool[0] = np.uint64(n - 1)
    mem64[page >> np.uint64(3):(page >> np.uint64(3)) + np.uint64(512)] = 0
    return page


@njit(**NUMBA)
def _pool_push(pool, page):
    """Back into a pool; should it be full the page is dropped, still the VM's until it is destroyed."""
    n = np.int64(pool[0])
    if n + 1 < pool.size:
        pool[n + 1] = page
        pool[0] = np.uint64(n + 1)


@njit(**NUMBA)
def _ptp_slot(mem64, st, gpa):
    """Host address of the saved page-table page slot of gpa's 2 MiB region, or 0 when there is none."""
    u = np.uint64
    region = u(gpa) >> u(21)
    if region >= st[S_NPTP] or st[S_PTP] + (region + u(1)) * u(8) > u(mem64.size * 8):
        return u(0)
    return st[S_PTP] + region * u(8)


@njit(**NUMBA)
def _new_table(mem64, st, pool, level, gpa):
    """A zeroed page for a missing table at `level`: the region's saved page table first (a level-2 entry
    only), else one from the pool; 0 when the pool is empty."""
    if level == 2:
        slot = _ptp_slot(mem64, st, gpa)
        if slot != 0:
            page = atomic_xchg(_at(mem64, slot), np.uint64(0))
            if page != 0:
                mem64[page >> np.uint64(3):(page >> np.uint64(3)) + np.uint64(512)] = 0
                return page
    return _pool_pop(mem64, pool)


@njit(**NUMBA)
def _give_back(mem64, st, pool, level, gpa, page):
    """A table page that lost the race to install it (never reachable): to the region or to the pool."""
    if level == 2:
        slot = _ptp_slot(mem64, st, gpa)
        if slot != 0 and atomic_cas(_at(mem64, slot), np.uint64(0), page) == 0:
            return
    _pool_push(pool, page)


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


# -- first touch --------------------------------------------------------------------------------------
@njit(**NUMBA)
def populate(mem64, st, pool, segs, nsegs, gpa, write):
    """vm_fault for a guest page not yet mapped: zero-fill it and map it. write: 1 store, 0 load or fetch,
    -1 the host holding the page. Returns HANDLED (also when another vCPU mapped it first), NOT_MEMORY,
    NO_POOL, OVER_CAP, DENIED (the page is the guest's with no access) or MISCONFIG."""
    u = np.uint64
    gpa = u(gpa) & ~u(0xFFF)
    hpa = segment_hpa(segs, nsegs, gpa)
    if hpa < 0 or gpa >> st[S_PHYS] or hpa + PAGE > mem64.size * 8:
        return NOT_MEMORY
    flags = st[S_FLAGS]
    high = reserved_high(st)
    limit = u(mem64.size * 8)
    table = st[S_ROOT]
    pde = u(0)
    for level in range(4, 1, -1):
        ea = table + ((gpa >> u(12 + 9 * (level - 1))) & u(0x1FF)) * u(8)
        if ea >= limit:
            return NOT_MEMORY
        e = mem64[ea >> u(3)]
        while e & u(EPT_RWX | ADDR | EMUL_V) == 0:    # no table yet: build one and install it unless beaten
            page = _new_table(mem64, st, pool, level, gpa)
            if page == 0:
                return NO_POOL
            found = atomic_cas(_at(mem64, ea), e, page | u(EPT_RWX))
            if found == e:
                e = page | u(EPT_RWX)
            else:                                      # another vCPU installed one: use it, return ours
                _give_back(mem64, st, pool, level, gpa, page)
                e = found
        if e & u(EPT_RWX) == 0:
            return DENIED                              # a superpage with no access: the guest's, not new
        if misconfigured(e, level, flags, high):
            return MISCONFIG
        if level < 4 and e & u(EPT_PS):
            return HANDLED                             # a superpage already maps it
        if level == 2:
            pde = ea
        table = e & u(ADDR)
    ea = table + ((gpa >> u(12)) & u(0x1FF)) * u(8)
    if ea >= limit:
        return NOT_MEMORY
    where = _at(mem64, ea)
    while True:                                        # claim the leaf: BUSY is ours to fill
        old = mem64[ea >> u(3)]
        if old & u(EPT_RWX | EMUL_V):
            return HANDLED                             # mapped meanwhile, by another vCPU or the host
        if old & u(ADDR):
            return DENIED                              # the guest's page, protected to no access
        if old & u(BUSY):
            _relax(st)                                 # another vCPU is filling it: wait for its mapping
            continue
        if atomic_cas(where, old, u(BUSY)) == old:
            break
    if atomic_add(np.uint64(st.ctypes.data) + np.uint64(8 * S_RESIDENT), u(1)) >= st[S_CAP]:
        _count(st, S_RESIDENT, -1)
        atomic_xchg(where, old)
        return OVER_CAP
    h = u(hpa)
    mem64[h >> u(3):(h >> u(3)) + u(512)] = 0          # first touch: a zero-filled page, before anyone sees it
    atomic_xchg(where, h | _leaf_bits(flags, write))  # published after the zeroes (a seq_cst exchange)
    _count(st, S_FIRST_TOUCH, 1)
    if flags & u(F_SUPERPAGES):
        _lock(st)
        _promote(mem64, st, pool, pde, gpa)
        _unlock(st)
    return HANDLED


# -- superpages (callers hold S_LOCK) -----------------------------------------------------------------
@njit(**NUMBA)
def _fold_mask(flags):
    """What walkers add to a leaf without the lock, and a promotion must not lose: A/D, or emulated W."""
    return np.uint64(EPT_A | EPT_D) if flags & np.uint64(F_HW_AD) else np.uint64(EPT_W)


@njit(**NUMBA)
def _promote(mem64, st, pool, pde, gpa):
    """pmap_promote_pde: 512 accessed leaves, physically contiguous from a 2 MiB boundary, same bits → one
    PDE. The table is kept for the region (pmap_insert_pt_page): a walker may still be reading it."""
    u = np.uint64
    same = ~u(EPT_A | EPT_D)
    fold = _fold_mask(st[S_FLAGS])
    slot = _ptp_slot(mem64, st, gpa)
    if slot == 0:
        return False
    e = mem64[pde >> u(3)]
    while True:
        if e & u(EPT_PS) or e & u(EPT_RWX) == 0:
            return False
        table = e & u(ADDR)
        first = mem64[table >> u(3)]
        base = first & u(ADDR)
        if base & u(SUPERPAGE - 1) or first & u(EPT_RWX) == 0:
            return False
        ad = u(0)
        for i in range(512):
            leaf = mem64[(table >> u(3)) + u(i)]
            if leaf & u(EPT_RWX) == 0:
                return False
            if leaf & u(ADDR) != base + u(i * PAGE) or (leaf ^ first) & same & ~u(ADDR):
                return False
            ad |= leaf & u(EPT_A | EPT_D)
        new = base | (first & ~u(ADDR) & same) | ad | u(EPT_PS)
        found = atomic_cas(_at(mem64, pde), e, new)
        if found == e:
            break
        e = found                                      # a walker set A on the PDE: look again
    late = u(0)
    for i in range(512):                               # set through the table after we read it
        late |= mem64[(table >> u(3)) + u(i)] & fold
    if late & ~new:
        _or_bits(mem64, pde, new, late)
    old = atomic_xchg(_at(mem64, slot), table)
    if old != 0 and old != table:                      # a page given back by a vCPU that lost the race to
        _pool_push(pool, old)                          # install this table: never reachable, free to reuse
    _count(st, S_SUPER, 1)
    _count(st, S_PROMOTIONS, 1)
    return True


@njit(**NUMBA)
def promote(mem64, st, pool, pde, gpa):
    """_promote for the host (a restored snapshot's full regions), under the lock."""
    _lock(st)
    done = _promote(mem64, st, pool, pde, gpa)
    _unlock(st)
    return done


@njit(**NUMBA)
def _fold_into_superpage(mem64, st, gpa, bits):
    """A walker set `bits` on a 4 KiB leaf: if its region was promoted meanwhile, the PDE gets them too
    (the promotion may have read the leaf before they were set)."""
    u = np.uint64
    level, ea, e, rwx = walk(mem64, st, gpa, False)
    if level != 2 or e & bits == bits:
        return
    if bits & u(EPT_W) and not st[S_FLAGS] & u(F_HW_AD) and not e & u(EMUL_RW):
        return
    _or_bits(mem64, ea, e, bits)


@njit(**NUMBA)
def _demote(mem64, st, pool, pde, gpa):
    """pmap_demote_pde: split a 2 MiB mapping back into a page table of 512 equal leaves (the region's
    saved table if it has one). False when the pool is empty."""
    u = np.uint64
    e = mem64[pde >> u(3)]
    if not e & u(EPT_PS):
        return True
    table = _new_table(mem64, st, pool, 2, gpa)
    if table == 0:
        return False
    while True:
        bits = e & ~u(ADDR) & ~u(EPT_PS)
        base = e & u(ADDR)
        for i in range(512):
            mem64[(table >> u(3)) + u(i)] = (base + u(i * PAGE)) | bits
        found = atomic_cas(_at(mem64, pde), e, table | u(EPT_RWX))
        if found == e:
            break
        e = found                                      # a walker set A/D meanwhile: copy them too
    _count(st, S_SUPER, -1)
    _count(st, S_DEMOTIONS, 1)
    return True


@njit(**NUMBA)
def demote(mem64, st, pool, pde, gpa):
    _lock(st)
    done = _demote(mem64, st, pool, pde, gpa)
    _unlock(st)
    return done


# -- A/D emulation and the access check ------------------------------------------------------------------
@njit(**NUMBA)
def emulate_ad(mem64, st, ea, e, write):
    """pmap_emulate_accessed_dirty: a leaf marked valid in software gets R (accessed), and W (dirty) on a
    write when it is writable in software. False if this leaf cannot be fixed that way."""
    u = np.uint64
    if st[S_FLAGS] & u(F_HW_AD):
        return False
    where = _at(mem64, ea)
    while True:
        if not e & u(EMUL_V):
            return False
        if write and not e & u(EMUL_RW):
            return False
        new = e | u(EPT_R | EPT_X) | (u(EPT_W) if write else u(0))
        found = atomic_cas(where, e, new)
        if found == e:
            break
        e = found
    _count(st, S_AD_FAULTS, 1)
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
    """vm_handle_paging: emulate A/D on a software-valid leaf, else back the page on first touch. HANDLED
    also when another vCPU has mapped the page since this one's walk."""
    level, ea, e, rwx = walk(mem64, st, gpa, False)
    if level == MISCONFIGURED:
        return MISCONFIG
    if level > 0 and allowed(rwx, access):
        return HANDLED
    write = access == WRITE
    leaf = mapped_level(level, e)
    if leaf > 0:
        if emulate_ad(mem64, st, ea, e, write):
            if leaf == 1 and st[S_FLAGS] & np.uint64(F_SUPERPAGES):
                _fold_into_superpage(mem64, st, gpa, np.uint64(EPT_W) if write else np.uint64(0))
            return HANDLED
        return DENIED
    return populate(mem64, st, pool, segs, nsegs, gpa, np.int64(1 if write else 0))


@njit(**NUMBA)
def translate(mem64, st, pool, segs, nsegs, gpa, access, tries):
    """Guest-physical → host-physical for `access`, handling first-touch and A/D faults in place (each one
    a nested page fault, counted by the caller through `faults`). Returns (status, hpa, rwx, faults, q):
    status HANDLED with the address and the R/W/X to cache, or why not; q is what the EPT allowed at the last
    violation (the logical AND of bits 2:0 of the entries its walk used, 0 when one was not present): bits
    5:3 of that exit's qualification (SDM Table 28-7)."""
    u = np.uint64
    hw_ad = (st[S_FLAGS] & u(F_HW_AD)) != 0
    faults = 0
    q = u(0)
    for _ in range(tries):
        level, ea, e, rwx = walk(mem64, st, gpa, hw_ad)
        if level == MISCONFIGURED:
            return MISCONFIG, u(0), u(0), faults, q
        if level > 0 and allowed(rwx, access):
            perms = rwx
            if hw_ad and not e & u(EPT_D):
                if access != WRITE:
                    perms &= ~u(EPT_W)                 # clean: the first write must come back to set D
                elif _or_bits(mem64, ea, e, u(EPT_D)) == 0:
                    continue                           # the leaf changed under us: walk again
                elif level == 1 and st[S_FLAGS] & u(F_SUPERPAGES):
                    _fold_into_superpage(mem64, st, gpa, u(EPT_D))
            return HANDLED, leaf_hpa(level, e, gpa), perms, faults, q
        faults += 1
        q = rwx if level > 0 else u(0)                 # a missing entry allows nothing
        result = handle_violation(mem64, st, pool, segs, nsegs, gpa, access)
        if result != HANDLED:
            return result, u(0), u(0), faults, q
    return DENIED, u(0), u(0), faults, q


# -- the host's changes (under S_LOCK) -------------------------------------------------------------------
@njit(**NUMBA)
def change(mem64, st, pool, gpa, size, rwx, remove):
    """Protect (new R/W/X) or, with `remove`, unmap the mapped pages in [gpa, gpa+size); a superpage only
    partly inside is demoted first. Returns the number of 4 KiB pages changed, or -1 when the pool ran out
    (the caller refills and calls again: pages already done are simply done again). The lock is taken page
    by page, so that a vCPU promoting a region waits for one step, not for the whole range."""
    u = np.uint64
    done = 0
    end = u(gpa) + u(size)
    g = u(gpa) & ~u(0xFFF)
    while g < end:
        _lock(st)
        step, pages = _change_one(mem64, st, pool, g, end, rwx, remove)
        _unlock(st)
        if pages < 0:
            return -1
        done += pages
        g += step
    return done


@njit(**NUMBA)
def _change_one(mem64, st, pool, g, end, rwx, remove):
    """One step of change() at g, under the lock: (bytes to advance, pages changed or -1)."""
    u = np.uint64
    level, ea, e, old = walk(mem64, st, g, False)
    level = mapped_level(level, e)
    if level == 2 and not ((g & u(SUPERPAGE - 1)) == 0 and g + u(SUPERPAGE) <= end):
        return u(0), (np.int64(0) if _demote(mem64, st, pool, ea, g) else np.int64(-1))
    if level != 1 and level != 2:
        return u(PAGE), np.int64(0)
    pages = 512 if level == 2 else 1
    if remove:
        if atomic_xchg(_at(mem64, ea), u(0)) != 0:
            _count(st, S_RESIDENT, -pages)
            if level == 2:
                _count(st, S_SUPER, -1)
    else:
        while True:                                    # walkers may set A/D (or emulated R/W) meanwhile
            found = atomic_cas(_at(mem64, ea), e, _with_rwx(e, rwx, st[S_FLAGS]))
            if found == e:
                break
            e = found
    return u(SUPERPAGE if level == 2 else PAGE), np.int64(pages)


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
def remap(mem64, st, pool, gpa, hpa):
    """Point the mapped 4 KiB page at `gpa` to host page `hpa`, keeping its bits (page migration); its
    superpage is demoted first. Returns 1, 0 when nothing is mapped there, -1 when the pool ran out."""
    u = np.uint64
    _lock(st)
    level, ea, e, rwx = walk(mem64, st, gpa, False)
    level = mapped_level(level, e)
    result = 0
    if level == 2:
        result = -1 if not _demote(mem64, st, pool, ea, gpa) else 0
        level, ea, e, rwx = walk(mem64, st, gpa, False)
        level = mapped_level(level, e)
    if level == 1 and result == 0:
        while True:
            found = atomic_cas(_at(mem64, ea), e, (u(hpa) & u(ADDR)) | (e & ~u(ADDR)))
            if found == e:
                break
            e = found
        result = 1
    _unlock(st)
    return result


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
        level, ea, e, rwx = walk(mem64, st, g, False)
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
                atomic_and(_at(mem64, ea), ~dirty_bit)
        g += step
    return n


@njit(**NUMBA)
def resident(mem64, st, gpa, size, out):
    """Every mapped 4 KiB guest page number in [gpa, gpa+size) into `out` (a superpage gives its 512; a leaf
    with emulated A/D not yet accessed counts); how many there are (may exceed out.size)."""
    u = np.uint64
    n = 0
    end = u(gpa) + u(size)
    g = u(gpa) & ~u(0xFFF)
    while g < end:
        level, ea, e, rwx = walk(mem64, st, g, False)
        leaf = mapped_level(level, e)
        if leaf == 2:
            for i in range(512):
                if n < out.size:
                    out[n] = (g >> u(12)) + u(i)
                n += 1
            g += u(SUPERPAGE)
        elif leaf == 1:
            if n < out.size:
                out[n] = g >> u(12)
            n += 1
            g += u(PAGE)
        elif level <= -2 and level != BEYOND and e == u(0):   # no page table for this 2 MiB region: skip it
            g = (g | u(SUPERPAGE - 1)) + u(1)
        else:
            g += u(PAGE)
    return n


@njit(**NUMBA)
def gather(mem8, mem64, st, pages, bits, data):
    """Copy guest pages (page numbers in `pages`) out through the EPT: each one's 4 KiB leaf bits (address and
    page size dropped, as fill_pages takes them) into `bits`, its contents into row i of `data`. A page not
    mapped (any more) reads as zeros with bits 0. Returns how many were mapped."""
    u = np.uint64
    mapped = 0
    for i in range(pages.size):
        gpa = pages[i] << u(12)
        level, ea, e, rwx = walk(mem64, st, gpa, False)
        leaf = mapped_level(level, e)
        if leaf <= 0:
            bits[i] = u(0)
            data[i, :] = 0
            continue
        hpa = leaf_hpa(leaf, e, gpa)
        bits[i] = e & ~u(ADDR | EPT_PS)
        data[i, :] = mem8[hpa:hpa + u(PAGE)]
        mapped += 1
    return mapped


@njit(**NUMBA)
def fill_pages(mem8, mem64, st, pool, segs, nsegs, gpas, bits, data, start):
    """Map guest pages and give them contents and leaf bits (restoring a snapshot), from index `start`.
    Returns the index reached: len(gpas) when done, less when the pool ran out (refill and call again),
    -1 - index for a page outside memory or over the cap. The bits come from a file: address, page-size and
    BUSY bits are dropped (a reserved setting left in them is the guest's EPT misconfiguration)."""
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
        level, ea, e, rwx = walk(mem64, st, gpa, False)
        if mapped_level(level, e) != 1:
            reached = np.int64(-1 - i)
            break
        hpa = e & u(ADDR)
        mem8[hpa:hpa + u(PAGE)] = data[i * PAGE:(i + 1) * PAGE]
        mem64[ea >> u(3)] = hpa | (bits[i] & ~u(ADDR | EPT_PS | BUSY))
    st[S_FLAGS] = flags
    return reached
