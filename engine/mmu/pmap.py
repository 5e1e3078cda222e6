"""A VM's guest-physical address space as the host manages it: segments, the EPT, page pools, and views.

The host side of bhyve's vmspace: it builds the EPT root, holds guest pages for the host's own
accesses (vm_gpa_hold: backing a page on first touch if needed), changes mappings (protect, unmap,
replace a page) and reads the structures back for the views (`--get-memmap`, `--get-gpa-pmap`, the
dirty log). Changing a mapping is only half of the job: the VM then calls pmap_invalidate_ept.
The kernels doing the work are in ept.py; this class owns the arrays they run on.
"""
import threading

import numpy as np

from ..core.sync import SCHED_YIELD
from ..errors import ConfigError, EngineError
from . import ept as E
from . import explain

POOL_CAP = 256              # page-table pages a pool holds
REFILL = 64                 # pages added per refill (one host allocation)
MiB = 1 << 20


class MemoryCapError(EngineError):
    """The VM asked for more resident memory than its cap allows."""


class GuestPmap:
    """Legend: `st` and the tables are shared with the vCPU kernels, which change entries atomically and
    take st[S_LOCK] for promotions; host-side callers also take `lock` among themselves."""

    def __init__(self, hypervisor, owner, segments, flags, cap_pages, profile):
        self.hv, self.owner = hypervisor, owner
        self.mem64 = hypervisor.memory.view(np.uint64)
        self.segments = segments
        self.segtab = np.array([[s.gpa, s.size, s.hpa] for s in segments], np.uint64).reshape(-1)
        self.lock = threading.RLock()
        self.chunks = []
        self.st = np.zeros(E.S_SIZE, np.uint64)
        self.st[E.S_FLAGS] = flags | cpu_facts(profile)
        self.st[E.S_CAP] = cap_pages
        self.st[E.S_PHYS] = profile.maxphyaddr
        self.st[E.S_YIELD] = SCHED_YIELD
        self._save_tables_per_region(max(s.gpa + s.size for s in segments))
        # pages the host wrote for the guest (device DMA, loaders, a debugger): the dirty log's other half, as
        # KVM's dirty bitmap takes its own writes; the EPT's D bits stay the CPU's alone
        self.host_dirty = np.zeros(max(s.gpa + s.size for s in segments) >> 12, np.uint8)
        self.host_pool = self.new_pool()
        root = self._pop_host_page()
        self.st[E.S_ROOT] = root
        self.eptp = E.eptp(root, flags & E.F_HW_AD)

    def _save_tables_per_region(self, top):
        """The slots where a promotion keeps a region's page table (pmap_insert_pt_page), in host memory."""
        regions = -(-top // E.SUPERPAGE)
        size = -(-regions * 8 // E.PAGE) * E.PAGE
        start = self.hv.allocator.allocate(size, "saved EPT tables of %s" % self.owner)
        self.chunks.append(start)
        self.hv.memory[start:start + size] = 0
        self.st[E.S_PTP], self.st[E.S_NPTP] = start, regions

    # -- pools of page-table pages ------------------------------------------------------------------
    def new_pool(self):
        """A pool with room for POOL_CAP more pages than refills put in: a vCPU gets back pages that other
        vCPUs built (the loser of a race returns its own; a promotion may return another's)."""
        pool = np.zeros(1 + 2 * POOL_CAP, np.uint64)
        self.refill(pool)
        return pool

    def refill(self, pool):
        """Top a pool up with REFILL fresh pages from the host allocator (a pool holding POOL_CAP or more,
        pages given back included, is left as it is)."""
        if int(pool[0]) >= POOL_CAP:
            return
        start = self.hv.allocator.allocate(REFILL * E.PAGE, "EPT tables of %s" % self.owner)
        with self.lock:
            self.chunks.append(start)
        n = int(pool[0])
        take = min(REFILL, POOL_CAP - n)
        pool[n + 1:n + 1 + take] = start + E.PAGE * np.arange(take, dtype=np.uint64)
        pool[0] = n + take

    def _pop_host_page(self):
        page = E._pool_pop(self.mem64, self.host_pool)
        if page == 0:
            self.refill(self.host_pool)
            page = E._pool_pop(self.mem64, self.host_pool)
        return int(page)

    def destroy(self):
        with self.lock:
            for start in self.chunks:
                self.hv.allocator.free(start)
            self.chunks = []

    # -- the host's own accesses -------------------------------------------------------------------
    def hold(self, gpa):
        """vm_gpa_hold: the host-physical address of a guest-physical byte, backing its page if needed."""
        with self.lock:
            for _ in range(3):
                hpa = self.lookup(gpa)
                if hpa is not None:
                    return hpa
                result = E.populate(self.mem64, self.st, self.host_pool, self.segtab, len(self.segments), gpa, -1)
                if result == E.NO_POOL:
                    self.refill(self.host_pool)
                elif result == E.NOT_MEMORY:
                    raise ConfigError("guest-physical %#x is outside %s's memory" % (gpa, self.owner))
                elif result == E.MISCONFIG:
                    raise EngineError("%s: the EPT entries for guest-physical %#x are misconfigured (%s)"
                                      % (self.owner, gpa, "; ".join(s["flags"] for s in self.chain(gpa))))
                elif result == E.OVER_CAP:
                    raise MemoryCapError("%s: guest-physical %#x needs a page beyond the memory cap of %d MiB"
                                         % (self.owner, gpa, int(self.st[E.S_CAP]) * E.PAGE // MiB))
        raise EngineError("%s: guest-physical %#x could not be backed" % (self.owner, gpa))

    def lookup(self, gpa):
        """The host-physical address mapped at `gpa` now, whatever the guest may do with it, or None
        (nothing is backed by looking)."""
        level, ea, e, rwx = E.walk(self.mem64, self.st, gpa, False)
        leaf = E.mapped_level(level, e)
        return int(E.leaf_hpa(leaf, e, gpa)) if leaf > 0 else None

    # -- changing mappings (the caller invalidates) -------------------------------------------------
    def _pooled(self, kernel, *args):
        with self.lock:
            while True:
                done = kernel(self.mem64, self.st, self.host_pool, *args)
                if done >= 0:
                    return done
                self.refill(self.host_pool)

    def protect(self, gpa, size, rwx):
        if rwx & (E.EPT_R | E.EPT_W | E.EPT_X) == E.EPT_X and not self.st[E.S_FLAGS] & E.F_EXEC_ONLY:
            raise ConfigError("execute-only mappings need a CPU with EPT execute-only support and "
                              "hw.vmm.ept.use_exec_only=1")
        if rwx & E.EPT_W and not rwx & E.EPT_R:
            raise ConfigError("write without read is an EPT misconfiguration (SDM 29.3.3.1)")
        return self._pooled(E.change, gpa, size, rwx, False)

    def unmap(self, gpa, size):
        return self._pooled(E.change, gpa, size, 0, True)

    def replace_page(self, gpa, data):
        """Back one guest page with a fresh host page holding `data` (page migration, copy-on-write)."""
        if len(data) > E.PAGE:
            raise ConfigError("a page holds %d bytes, not %d" % (E.PAGE, len(data)))
        with self.lock:
            self.hold(gpa)
            page = self.hv.allocator.allocate(E.PAGE, "page moved from %s gpa %#x" % (self.owner, gpa))
            self.chunks.append(page)
            mem = self.hv.memory
            mem[page:page + E.PAGE] = 0
            mem[page:page + len(data)] = np.frombuffer(bytes(data), np.uint8)
            while E.remap(self.mem64, self.st, self.host_pool, gpa, page) < 0:   # a superpage is demoted first
                self.refill(self.host_pool)
            self.host_wrote(gpa, E.PAGE)
            return page

    def dirty_log(self, clear):
        """Guest-physical page numbers written since the last harvest (superpages count all 512)."""
        return [int(p) for p in self.dirty_pages(clear)]

    def dirty_pages(self, clear):
        """dirty_log as an array of page numbers: the CPU's (EPT D bits, every segment's) and the host's writes."""
        with self.lock:
            cpu = self._per_segment(lambda s, out: E.harvest_dirty(self.mem64, self.st, self.host_pool, s.gpa,
                                                                   s.size, out, clear))
            host = np.flatnonzero(self.host_dirty).astype(np.uint64)
            if clear:
                self.host_dirty[host] = 0
        return np.union1d(cpu, host)

    def host_wrote(self, gpa, size):
        """The host wrote guest-physical [gpa, gpa+size) for the guest: those pages are in the next dirty log."""
        first, last = max(gpa, 0) >> 12, min((gpa + max(size, 1) - 1) >> 12, self.host_dirty.size - 1)
        if first <= last:
            self.host_dirty[first:last + 1] = 1

    def resident_pages(self):
        """The page numbers of every mapped guest page (what a snapshot or a migration copies)."""
        with self.lock:
            return self._per_segment(lambda s, out: E.resident(self.mem64, self.st, s.gpa, s.size, out))

    def _per_segment(self, kernel):
        found = [np.zeros(0, np.uint64)]
        for s in self.segments:
            out = np.zeros(s.size >> 12, np.uint64)
            found.append(out[:kernel(s, out)])
        return np.concatenate(found)

    def read_pages(self, pages):
        """(leaf bits, contents as rows of 4 KiB) of the guest pages numbered `pages`, read through the EPT."""
        pages = np.ascontiguousarray(pages, np.uint64)
        bits, data = np.zeros(pages.size, np.uint64), np.zeros((pages.size, E.PAGE), np.uint8)
        E.gather(self.hv.memory, self.mem64, self.st, pages, bits, data)
        return bits, data

    # -- views ----------------------------------------------------------------------------------------
    def chain(self, gpa):
        """The EPT entries translating `gpa`, PML4 first (bhyvectl --get-gpa-pmap)."""
        steps, hpa, rwx, fault = explain.ept_walk(self.mem64, self.st, gpa)
        return [{"level": s["level"], "entry_hpa": s["entry_hpa"], "entry": s["entry"],
                 "flags": describe(s["entry"], s["level"])} for s in steps]

    def memmap(self):
        """Each segment with its backing, how much of it is resident, and its superpages."""
        out = []
        for s in self.segments:
            pages = supers = 0
            for region in range(s.gpa, s.gpa + s.size, E.SUPERPAGE):
                level, ea, e, rwx = E.walk(self.mem64, self.st, region, False)
                level = E.mapped_level(level, e) or level
                if level == 2:
                    supers += 1
                    pages += 512
                elif level < -2:
                    continue
                else:
                    pages += self._resident_in_table(region)
            out.append({"name": s.name, "gpa": s.gpa, "size": s.size, "hpa": s.hpa, "prot": "rwx",
                        "populated": pages, "superpages": supers})
        return out

    def _resident_in_table(self, region):
        level, ea, e, rwx = E.walk(self.mem64, self.st, region, False)
        if level != 1 and level != -1:
            return 0
        table = (int(ea) & ~0xFFF)
        leaves = self.mem64[table >> 3:(table >> 3) + 512]
        return int(np.count_nonzero(leaves & np.uint64(E.EPT_RWX | E.EMUL_V | E.ADDR)))

    def stats(self):
        st = self.st
        return {"resident_pages": int(st[E.S_RESIDENT]), "cap_pages": int(st[E.S_CAP]),
                "superpages": int(st[E.S_SUPER]), "promotions": int(st[E.S_PROMOTIONS]),
                "demotions": int(st[E.S_DEMOTIONS]), "first_touch": int(st[E.S_FIRST_TOUCH]),
                "ad_faults": int(st[E.S_AD_FAULTS]), "eptgen": int(st[E.S_GEN]), "eptp": self.eptp}


def cpu_facts(profile):
    """What the modeled CPU's EPT and paging architecturally allow (F_* bits the walks check)."""
    cap = profile.facts.get("ept_vpid_cap", 0)
    if not 32 <= profile.maxphyaddr <= 52:
        raise ConfigError("CPU profile %s: MAXPHYADDR %d is outside 32..52 (CPUID.80000008H:EAX[7:0])"
                          % (profile.name, profile.maxphyaddr))
    return ((E.F_XO_OK if cap & E.CAP_EXEC_ONLY else 0) | (E.F_EPT_1G if cap & E.CAP_PDPTE_1G else 0)
            | (E.F_PAGE1GB if profile.page1gb else 0))


def describe(e, level):
    """An EPT entry's bits as text: 'RWX WB IPAT PS A D' and the software bits."""
    leaf = level == 1 or e & E.EPT_PS
    if not e & (E.EPT_RWX | E.EMUL_V) and not (leaf and e & E.ADDR and not e & E.BUSY):
        return "filling" if e & E.BUSY else "not present"
    bits = "".join(c if e & b else "-" for c, b in (("R", E.EPT_R), ("W", E.EPT_W), ("X", E.EPT_X)))
    words = [bits]
    if leaf:
        words.append({6: "WB", 0: "UC", 1: "WC", 4: "WT", 5: "WP"}.get((e >> 3) & 7, "MT%d" % ((e >> 3) & 7)))
        if e & E.EPT_IPAT:
            words.append("IPAT")
    if e & E.EPT_PS:
        words.append("PS")
    for name, bit in (("A", E.EPT_A), ("D", E.EPT_D), ("EMUL_V", E.EMUL_V), ("EMUL_RW", E.EMUL_RW)):
        if e & bit:
            words.append(name)
    return " ".join(words)
