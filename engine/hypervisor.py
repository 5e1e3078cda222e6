"""The modeled host: host CPUs, host-physical memory and its page allocator, tunables, and the VMs.

Host-physical memory is one numpy array that every vCPU's Unicorn instance maps with mem_map_ptr, so
kernels and the emulator see the same bytes. The array is allocated lazily by the OS, so a large modeled
host costs only what guests touch.
"""
import atexit
import functools
import mmap
import threading
import weakref

import numpy as np

from . import names, snapshot
from .cpu import cachesim, profiles
from .cpu.l1d import HostCaches
from .errors import ConfigError
from .hostcpu import HostCpu
from .tunables import Tunables
from .vcpu import build
from .vm import VM
from .vmx.vpid import VpidPool

PAGE = 0x1000
MiB = 1 << 20


class PageAllocator:
    """First-fit allocation of contiguous host-physical runs, in pages. Page 0 stays reserved."""

    def __init__(self, size):
        self.size = size
        self.free_runs = [(PAGE, size - PAGE)]            # (start, length), sorted, coalesced
        self.used = {}
        self.lock = threading.Lock()

    @property
    def free_bytes(self):
        return sum(length for _, length in self.free_runs)

    def allocate(self, size, owner, align=PAGE):
        """The start of `size` bytes (rounded up to pages) on an `align` boundary; ConfigError if none."""
        size = (size + PAGE - 1) & ~(PAGE - 1)
        with self.lock:
            for i, (start, length) in enumerate(self.free_runs):
                first = (start + align - 1) & ~(align - 1)
                if first + size <= start + length:
                    pieces = [(start, first - start)] if first > start else []
                    if first + size < start + length:
                        pieces.append((first + size, start + length - first - size))
                    self.free_runs[i:i + 1] = pieces
                    self.used[first] = (size, owner)
                    return first
        raise ConfigError("%s: the modeled host cannot give %d MiB: %d MiB of its %d MiB are free in one piece at most "
                          "%d MiB (start the server with more host memory, or ask for less)"
                          % (owner, size // MiB, self.free_bytes // MiB, self.size // MiB,
                             max((length for _, length in self.free_runs), default=0) // MiB))

    def free(self, start):
        with self.lock:
            size, _ = self.used.pop(start)
            runs = sorted(self.free_runs + [(start, size)])
            merged = [runs[0]]
            for s, n in runs[1:]:
                last_s, last_n = merged[-1]
                merged[-1:] = [(last_s, last_n + n)] if last_s + last_n == s else [merged[-1], (s, n)]
            self.free_runs = merged


_LIVE = weakref.WeakSet()


def host_memory(size):
    """Zeroed anonymous memory the OS backs on first touch, in 2 MiB pages where it can (MADV_HUGEPAGE):
    a guest's first touches then cost the host one fault per 2 MiB instead of one per 4 KiB."""
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            area.madvise(mmap.MADV_HUGEPAGE)
        except OSError:                      # a kernel without transparent huge pages: 4 KiB it is
            pass
    return np.frombuffer(area, np.uint8)


@atexit.register
def _stop_every_vcpu():
    """At interpreter exit, vCPU threads still inside Unicorn would run hooks into a dying runtime and
    crash the process: power every VM off first."""
    for hv in list(_LIVE):
        for vm in list(hv.vms.values()):
            vm.poweroff()


class Hypervisor:
    """Legend: `vms` is guarded by `lock`; memory, allocator and tunables are shared by every VM."""

    def __init__(self, host_mem_mb=2048, ncpu=2, tunables=None):
        if host_mem_mb < 2:
            raise ConfigError("the modeled host needs at least 2 MiB of memory")
        self.memory = host_memory(host_mem_mb * MiB)
        self.allocator = PageAllocator(self.memory.size)
        if not 1 <= ncpu <= 64:
            raise ConfigError("the modeled host has 1 to 64 CPUs, not %s" % ncpu)
        self.ncpu = ncpu
        self.hostcpus = [HostCpu(i) for i in range(ncpu)]
        host = profiles.get(profiles.DEFAULT)         # the modeled host CPU, which the read-only sysctls describe
        self.tunables = Tunables(tunables, host_cpu=(host.has_flush_cmd,
                                                     bool(host.arch_capabilities & profiles.ARCH_CAP_SKIP_L1DFL_VMENTRY)))
        self.l1d = HostCaches(self)                   # per-host-CPU L1D state, the flush buffer, host data
        # vpid_init: unique VPIDs above vm_maxcpu, which bhyve reads at boot (vmx/vpid.py)
        self.vpids = VpidPool(self.tunables.get("hw.vmm.maxcpu") + 1)
        self.tunables.listeners.append(functools.partial(cachesim.on_tunable, self))
        self.tunables.listeners.append(functools.partial(build.on_tunable, self))
        self.vms = {}
        self.lock = threading.Lock()
        _LIVE.add(self)

    def create_vm(self, name, mem_mb=64, cpus=1, profile="haswell", mem_cap_mb=None, slots=()):
        names.check(name)
        with self.lock:
            if name in self.vms:
                raise ConfigError("a VM named %r already exists" % name)
            vm = VM(self, name, mem_mb=mem_mb, cpus=cpus, profile=profile, mem_cap_mb=mem_cap_mb, slots=slots)
            self.vms[name] = vm
            return vm

    def restore_vm(self, path, name=None, start=True):
        """A VM rebuilt from a snapshot file (engine/snapshot.py); SnapshotError if the file is unusable."""
        return snapshot.restore(self, path, name=name, start=start)

    def destroy_vm(self, name):
        with self.lock:
            vm = self.vms.pop(name)
        vm.destroy()

    def vm(self, name):
        try:
            return self.vms[name]
        except KeyError:
            raise ConfigError("no VM named %r" % name) from None
