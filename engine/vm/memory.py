"""A VM's guest-physical memory: its segments backed by host memory, byte access for devices and loaders, and
the EPT operations of the host's pmap (protect, unmap, move a page, the dirty log) with the invalidation
each one owes, plus bhyvectl's views of it.

VmMemory is mixed into VM (machine.py).
"""
import numpy as np

from ..errors import ConfigError
from ..mmu import ept as EPT
from ..mmu.pmap import GuestPmap

MiB = 1 << 20


class MemorySegment:
    """A guest-physical range backed by host-physical memory (bhyve's vm_mem_seg + its mapping)."""
    __slots__ = ("name", "gpa", "size", "hpa")

    def __init__(self, name, gpa, size, hpa):
        self.name, self.gpa, self.size, self.hpa = name, gpa, size, hpa


class GuestMemory:
    """Guest-physical byte access for devices and loaders (the vm_gpa_hold/release pair, held briefly):
    page by page through the EPT, backing pages on first touch."""

    def __init__(self, vm):
        self.vm = vm

    def __len__(self):
        return self.vm.mem_size

    def _pages(self, gpa, size):
        if gpa < 0 or size < 0 or gpa + size > self.vm.mem_size:
            raise ConfigError("guest-physical range %#x+%#x is outside VM %r's memory" % (gpa, size, self.vm.name))
        while size > 0:
            chunk = min(size, 0x1000 - (gpa & 0xFFF))
            yield self.vm.pmap.hold(gpa), chunk
            gpa, size = gpa + chunk, size - chunk

    def read(self, gpa, size):
        mem = self.vm.hypervisor.memory
        return b"".join(mem[hpa:hpa + n].tobytes() for hpa, n in self._pages(gpa, size))

    def write(self, gpa, data):
        data = bytes(data)
        mem, done = self.vm.hypervisor.memory, 0
        for hpa, n in self._pages(gpa, len(data)):
            mem[hpa:hpa + n] = np.frombuffer(data, np.uint8, n, done)
            done += n
        self.vm.pmap.host_wrote(gpa, len(data))
        self.vm.code_written(gpa, len(data))


class VmMemory:
    """Legend: `segments`, `pmap` and the arrays below are made once by _build_memory; the EPT itself is
    written by vCPU threads (first touch) and by these methods, each followed by its invalidation."""

    def _build_memory(self, mem_mb, mem_cap_mb):
        if mem_cap_mb is not None and not 1 <= mem_cap_mb <= mem_mb:
            raise ConfigError("VM %r: a memory cap must be 1 to %d MiB, not %s" % (self.name, mem_mb, mem_cap_mb))
        hv = self.hypervisor
        hpa = hv.allocator.allocate(self.mem_size, "VM %r" % self.name, align=EPT.SUPERPAGE)
        self.segments = [MemorySegment("lowmem", 0, self.mem_size, hpa)]
        try:
            self.pmap = GuestPmap(hv, "VM %r" % self.name, self.segments, self._ept_flags(),
                                  (mem_cap_mb or mem_mb) * MiB // EPT.PAGE, self.profile)
        except Exception:
            hv.allocator.free(hpa)
            raise
        self.segtab = self.pmap.segtab
        self.eptgen = np.zeros(len(hv.hostcpus), np.uint64)     # struct vmx eptgen[MAXCPU]
        self.code_state = np.zeros(self.mem_size >> 12, np.uint64)
        self.memory_access = GuestMemory(self)

    def _ept_flags(self):
        """ept_init: what the CPU offers, as far as the hw.vmm.ept.* tunables allow."""
        cap, get = self.profile.facts.get("ept_vpid_cap", 0), self.hypervisor.tunables.get
        flags = 0
        if cap & EPT.CAP_AD and get("hw.vmm.ept.use_hw_ad_bits"):
            flags |= EPT.F_HW_AD
        if cap & EPT.CAP_PDE_2M and get("hw.vmm.ept.use_superpages"):
            flags |= EPT.F_SUPERPAGES
        if cap & EPT.CAP_EXEC_ONLY and get("hw.vmm.ept.use_exec_only"):
            flags |= EPT.F_EXEC_ONLY
        return flags

    def _forget_memory(self):
        """vm_reinit: every page released (zero-filled on next touch), every host CPU invalidates this EPTP."""
        self.pmap.unmap(0, self.mem_size)
        self.pmap.st[EPT.S_GEN] += 1
        self.code_state[:] = 0

    def _free_memory(self):
        self.pmap.destroy()
        self.hypervisor.allocator.free(self.segments[0].hpa)
        self.segments = []

    # -- the host's pmap operations -------------------------------------------------------------------
    def gpa_to_hpa(self, gpa):
        """The host-physical address behind a guest-physical one, backing the page if needed."""
        return self.pmap.hold(gpa)

    def pmap_invalidate_ept(self, why):
        """A mapping changed: bump pm_eptgen and kick every running vCPU, so each host CPU does one
        single-context INVEPT before its next entry. The debug tunable forgets to, on purpose."""
        if self.hypervisor.tunables.get("hw.vmm.ept.skip_invalidation"):
            self.log("EPT changed (%s) and the invalidation was skipped (hw.vmm.ept.skip_invalidation=1)" % why)
            return
        self.pmap.st[EPT.S_GEN] += 1
        for vcpu in self.vcpus:
            vcpu.kick()

    def protect(self, gpa, size, prot):
        """Change EPT permissions ('r', 'rw', 'rx', 'x', 'rwx', '' or bits) of resident pages in a range."""
        rwx = prot if isinstance(prot, int) else sum(b for c, b in (("r", 1), ("w", 2), ("x", 4)) if c in prot)
        done = self.pmap.protect(gpa, size, rwx)
        self.pmap_invalidate_ept("protect %#x+%#x" % (gpa, size))
        return done

    def unmap(self, gpa, size):
        done = self.pmap.unmap(gpa, size)
        self.pmap_invalidate_ept("unmap %#x+%#x" % (gpa, size))
        return done

    def replace_page(self, gpa, data):
        """Move one guest page to a new host page holding `data`; returns the new host-physical address."""
        page = self.pmap.replace_page(gpa, data)
        self.pmap_invalidate_ept("page %#x moved" % (gpa & ~0xFFF))
        return page

    def dirty_log(self, clear=True):
        """Guest-physical page numbers dirtied since the last call; clearing invalidates the EPT."""
        pages = self.pmap.dirty_log(clear)
        if clear and pages:
            self.pmap_invalidate_ept("dirty log harvested")
        return pages

    def code_written(self, gpa, size):
        """The host wrote guest memory: withdraw execute from scanned pages and drop translated code."""
        first, last = gpa >> 12, (gpa + max(size, 1) - 1) >> 12
        scanned = self.code_state[first:last + 1] & 1
        self.code_state[first:last + 1] += scanned     # odd → even: a new generation, not executable
        for vcpu in self.vcpus:
            vcpu.tb_stale = True                       # its thread drops translated code before its next entry

    # -- bhyvectl's views --------------------------------------------------------------------------------
    def memmap(self):
        """bhyvectl --get-memmap: the segments, with what is resident."""
        return self.pmap.memmap()

    def gpa_pmap(self, gpa):
        """bhyvectl --get-gpa-pmap: the EPT entries from PML4 down for one guest-physical address."""
        if not 0 <= gpa < (1 << 48):
            raise ConfigError("guest-physical address %#x is beyond the 48-bit EPT" % gpa)
        return self.pmap.chain(gpa)
