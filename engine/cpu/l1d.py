"""The L1 data cache of each modeled host CPU, and bhyve's flush of it on VM entry (CVE-2018-3646).

32 KiB, 8-way set associative, 64-byte lines, 64 sets indexed by host-physical line bits 11:6, LRU
replacement. Each way holds a host-physical line number and who filled it: the host (tag 0) or a VM
(its owner tag). The model holds no data: what a line "contains" is host memory itself, which is what
the modeled L1TF transient load may read, and only for lines the model holds (cpu/l1tf.py).

The host fills it on every VM exit (its vmxctx, the VMCS, the device state for I/O and MMIO exits, and
any host data placed with `HostCaches.place_secret`); guest loads and stores fill it when
hw.vmm.l1d_sim is on (cpu/cachesim.py). On VM entry it is flushed as bhyve's vmx_enter_guest does, when
enabled: through the VM-entry MSR-load list (IA32_FLUSH_CMD) when CPUID.7.0:EDX[28] says the MSR exists,
else by software, reading 64 KiB of host memory one byte per 4 KiB page, then one byte per 64-byte line
(flush_l1d_sw).

State layout, one uint64 array per host CPU: the LRU clock and the last software flush's buffer, then
tags (line + 1, 0 = invalid), owners and last-use stamps, LINES of each, way w of set s at
s * WAYS + w, then a touched-since-the-last-software-flush flag per set.
"""
import numpy as np
from numba import carray, njit

from .. import stats as S
from .. import tunables as T
from ..core import ctx as C
from ..core import vmcs as V
from ..errors import ConfigError
from ..native import NUMBA, u64_ptr
from . import profiles as P

SETS, WAYS, LINE = 64, 8, 64
LINES = SETS * WAYS                    # 512 lines = 32 KiB
CLOCK, SWEPT, HDR = 0, 1, 2           # LRU clock; buffer line + 1 of the last software flush (0: none)
TAG, OWNER, STAMP, TOUCHED = HDR, HDR + LINES, HDR + 2 * LINES, HDR + 3 * LINES
STATE_SIZE = TOUCHED + SETS            # TOUCHED: per set, changed since the last software flush
HOST = 0                               # owner tag of the host's own lines

# Modeled latencies and costs, in core cycles. One cache level is modeled: a miss is served at L2 speed.
L1_HIT_CYCLES = 4                      # load-to-use of an L1D hit (Haswell/Skylake: 4-5)
L1_MISS_CYCLES = 14                    # an L1D miss (Haswell/Skylake L2 hit: 12-14)
ROUNDTRIP_CYCLES = 500                 # VM exit + VM entry, without the flush
FLUSH_CMD_CYCLES = 512                 # IA32_FLUSH_CMD: an assumption, one cycle per line invalidated
FLUSH_BYTES = 64 << 10                 # L1D_FLUSH_SIZE in support.S
PAGE = 0x1000
PAGES = FLUSH_BYTES // PAGE            # the page pass's reads, all in one set
READS = FLUSH_BYTES // LINE // SETS    # the line pass's reads per set (16)

CPUF_FLUSH_CMD = 1                     # CPUID.7.0:EDX[28]
CPUF_L1TF = 2                          # no RDCL_NO: a not-present entry's address reaches the L1D
TOUCH_MAX = 32                         # lines per touch table
ENTRY_MSR_LOAD_COUNT = V.BY_NAME["ENTRY_MSR_LOAD_COUNT"].slot
EXIT_INOUT, EXIT_EPT_VIOLATION = 30, 48


def new_state():
    return np.zeros(STATE_SIZE, np.uint64)


def touch_table(hpas):
    """[n, line...] for exit_touch, from host-physical addresses."""
    return np.array([len(hpas)] + [hpa // LINE for hpa in hpas] + [0] * (TOUCH_MAX - len(hpas)), np.uint64)


# -- the kernels: numba, over one host CPU's state array ---------------------------------------------
@njit(inline="always")
def _access_at(l1, line, owner, clock):
    """An access stamped `clock` (the LRU order): True on a hit; a miss fills the least recently used way."""
    line = np.uint64(line)
    key = line + np.uint64(1)
    base = np.int64(line % np.uint64(SETS)) * WAYS
    l1[TOUCHED + base // WAYS] = 1
    for i in range(base, base + WAYS):
        if l1[TAG + i] == key:
            l1[STAMP + i] = clock
            return True
    victim = base                                   # invalid ways keep stamp 0, so they go first
    for i in range(base + 1, base + WAYS):
        if l1[STAMP + i] < l1[STAMP + victim]:
            victim = i
    l1[TAG + victim] = key
    l1[OWNER + victim] = np.uint64(owner)
    l1[STAMP + victim] = clock
    return False


@njit(inline="always")
def _access(l1, line, owner):
    clock = l1[CLOCK] + np.uint64(1)
    l1[CLOCK] = clock
    return _access_at(l1, line, owner, clock)


@njit(**NUMBA)
def access(l1, line, owner):
    """A load or store of one line: True on a hit; a miss fills the least recently used way."""
    return _access(l1, line, owner)


@njit(**NUMBA)
def holds(l1, line):
    """Is the line in the cache? No LRU update."""
    key = np.uint64(line) + np.uint64(1)
    base = np.int64(np.uint64(line) % np.uint64(SETS)) * WAYS
    for w in range(WAYS):
        if l1[TAG + base + w] == key:
            return True
    return False


@njit(**NUMBA)
def evict(l1, line):
    """CLFLUSH: drop the line if present."""
    key = np.uint64(line) + np.uint64(1)
    base = np.int64(np.uint64(line) % np.uint64(SETS)) * WAYS
    l1[TOUCHED + base // WAYS] = 1
    l1[CLOCK] += np.uint64(1)                       # every change moves the clock (exit_touch relies on it)
    for w in range(WAYS):
        if l1[TAG + base + w] == key:
            l1[TAG + base + w] = 0
            l1[STAMP + base + w] = 0


@njit(**NUMBA)
def invalidate(l1):
    """IA32_FLUSH_CMD.L1D: every line written back and invalidated."""
    for i in range(LINES):
        l1[TAG + i] = 0
        l1[STAMP + i] = 0
    l1[SWEPT] = 0
    l1[CLOCK] += np.uint64(1)


@njit(**NUMBA)
def _sweep_hits(l1, base, first_line, stamps, ks, where, gone):
    """Hits among one set's READS reads of first_line + SETS*k (k = 0..READS-1, all distinct), by LRU.

    Lines read in the sweep are newer than every line the set held before it, so a miss takes an
    invalid way, else the oldest earlier line not yet read, else (no effect on hits) a swept line. A
    read hits iff its line was held and not yet taken. `stamps`, `ks`, `where`, `gone` are scratch."""
    n = 0
    for w in range(WAYS):
        tag = l1[TAG + base + w]
        if tag == 0:
            continue
        off = (tag - np.uint64(1)) - first_line        # wraps for lines below the buffer: k stays -1
        k = np.int64(off // np.uint64(SETS)) if off % np.uint64(SETS) == 0 and off < np.uint64(SETS * READS) else -1
        j = n                                          # insertion sort by stamp: eviction order
        while j > 0 and stamps[j - 1] > l1[STAMP + base + w]:
            stamps[j], ks[j] = stamps[j - 1], ks[j - 1]
            j -= 1
        stamps[j], ks[j] = l1[STAMP + base + w], k
        n += 1
    where[:] = -1
    for j in range(n):
        gone[j] = False
        if ks[j] >= 0:
            where[ks[j]] = j
    free, head, hits = WAYS - n, 0, 0
    for k in range(READS):
        j = where[k]
        if j >= 0 and not gone[j]:
            hits += 1
            gone[j] = True                             # read: now among the swept lines
        elif free > 0:
            free -= 1
        else:
            while head < n and gone[head]:
                head += 1
            if head < n:
                gone[head] = True
                head += 1
    return hits


@njit(**NUMBA)
def software_flush(l1, buffer_hpa):
    """flush_l1d_sw: read 64 KiB, a byte per 4 KiB page, then a byte per line. Returns the cycles it took.

    The same result as the reads one by one (the twin does that), computed set by set: sets are
    independent, each set sees READS distinct lines (the page pass's set sees them twice), and after
    at least WAYS distinct reads a set holds the last WAYS lines read, stamped in read order. Only the
    hits need working out (_sweep_hits); the page pass's set misses on all of its second sweep. A set
    untouched since a sweep of the same buffer holds its last WAYS lines, oldest first: every read misses.
    """
    start = np.uint64(buffer_hpa) >> np.uint64(6)
    clock = l1[CLOCK]
    page_set = np.int64(start % np.uint64(SETS))
    stamps, ks = np.zeros(WAYS, np.uint64), np.zeros(WAYS, np.int64)
    where, gone = np.zeros(READS, np.int64), np.zeros(WAYS, np.bool_)
    cycles = np.uint64(0)
    same_buffer = l1[SWEPT] == start + np.uint64(1)
    for s in range(SETS):
        base = s * WAYS
        first = np.uint64((s - page_set) % SETS)                   # the line pass's first read in set s
        hits = 0
        if not same_buffer or l1[TOUCHED + s] != 0:
            hits = _sweep_hits(l1, base, start + first, stamps, ks, where, gone)
        l1[TOUCHED + s] = 0
        reads = READS * (2 if s == page_set else 1)
        cycles += np.uint64(hits * L1_HIT_CYCLES + (reads - hits) * L1_MISS_CYCLES)
        for w in range(WAYS):
            i = first + np.uint64(SETS * (READS - WAYS + w))        # line-pass read number
            l1[TAG + base + w] = start + i + np.uint64(1)
            l1[OWNER + base + w] = HOST
            l1[STAMP + base + w] = clock + np.uint64(PAGES) + i + np.uint64(1)
    l1[CLOCK] = clock + np.uint64(PAGES + FLUSH_BYTES // LINE)
    l1[SWEPT] = start + np.uint64(1)
    return cycles


# -- the vcpu loop's side: numba, over the vCPU's context block ---------------------------------------
@njit(**NUMBA)
def touch(l1, table_address):
    table = carray(u64_ptr(table_address), TOUCH_MAX + 1)
    for k in range(np.int64(table[0])):
        _access(l1, table[1 + k], HOST)


@njit(inline="always")
def exit_touch(c, reason):
    """The host's exit path runs on this host CPU: its data lands in the L1D; the next entry may flush.

    Nothing touched this L1D since this vCPU's last exit path ran (its clock has not moved) and that run
    covered these lines: they are still its most recent, so running it again changes nothing. That check
    is inlined into every exit; the touches themselves are not."""
    l1 = carray(u64_ptr(c[C.L1D]), STATE_SIZE)
    want = np.uint64(2 if reason == EXIT_INOUT or reason == EXIT_EPT_VIOLATION else 1)  # a device model too
    if l1[CLOCK] + np.uint64(1) != c[C.L1D_SEEN] or c[C.L1D_SEEN_KIND] < want:
        exit_path_touch(c, l1, want)
    c[C.L1D_EXITED] = 1
    c[C.CYCLES] += np.uint64(ROUNDTRIP_CYCLES)


@njit(**NUMBA)
def exit_path_touch(c, l1, want):
    touch(l1, c[C.HOST_TOUCH])
    if want == 2:
        touch(l1, c[C.DEVICE_TOUCH])
    touch(l1, c[C.SECRET_TOUCH])
    c[C.L1D_SEEN], c[C.L1D_SEEN_KIND] = l1[CLOCK] + np.uint64(1), want


@njit(**NUMBA)
def flush_wanted(params, cpu_flags, arch_caps):
    """(flush, by software) for this entry, from the tunables and the CPU: vmx_modinit's guest_l1d_flush and
    guest_l1d_flush_sw, exactly (tunables.effective_l1d is the twin). A tunable not set (-1, read as uint64)
    takes bhyve's default: the flush is on unless SKIP_L1DFL_VMENTRY; hw.vmm.l1d_flush_sw is read only when the
    flush is on and the CPU lacks IA32_FLUSH_CMD, and then defaults to 1."""
    flush = params[T.L1D_FLUSH]
    if flush > 1:
        flush = np.uint64(0) if arch_caps & np.uint64(P.ARCH_CAP_SKIP_L1DFL_VMENTRY) else np.uint64(1)
    software = False
    if flush != 0 and (cpu_flags & np.uint64(CPUF_FLUSH_CMD)) == 0:
        software = params[T.L1D_FLUSH_SW] != 0
    return flush != 0, software


@njit(inline="always")
def entry_flush(c):
    """Step 4 of the loop, when an exit happened since the last entry: flush the L1D if enabled.
    Inlined into every in-kernel exit: with hw.vmm.l1d_flush=0 it is two loads and two stores."""
    if c[C.L1D_EXITED] == 0:
        return
    c[C.L1D_EXITED] = 0
    params = carray(u64_ptr(c[C.PARAMS]), T.COUNT)
    if params[T.L1D_FLUSH] == 0:
        vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
        vmcs[ENTRY_MSR_LOAD_COUNT] = 0
        return
    entry_flush_wanted(c, params)


@njit(**NUMBA)
def entry_flush_wanted(c, params):
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    flush, software = flush_wanted(params, c[C.CPU_FLAGS], c[C.ARCH_CAPS])
    vmcs[ENTRY_MSR_LOAD_COUNT] = 1 if flush and not software else 0
    if not flush:
        return
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    l1 = carray(u64_ptr(c[C.L1D]), STATE_SIZE)
    if software:
        cycles = software_flush(l1, c[C.FLUSH_BUF])
        counters[S.L1D_FLUSH_SW] += 1
    else:
        invalidate(l1)
        cycles = np.uint64(FLUSH_CMD_CYCLES)
        counters[S.L1D_FLUSH_MSR] += 1
    counters[S.L1D_FLUSH_CYCLES] += cycles
    c[C.CYCLES] += cycles


# -- the plain-Python twin the tests compare the kernels against -------------------------------------
class Twin:
    """The same cache as lists: per set, (line, owner) from least to most recently used."""

    def __init__(self):
        self.sets = [[] for _ in range(SETS)]

    def access(self, line, owner):
        ways = self.sets[line % SETS]
        for i, (held, who) in enumerate(ways):
            if held == line:
                ways.append(ways.pop(i))
                return True
        if len(ways) == WAYS:
            ways.pop(0)
        ways.append((line, owner))
        return False

    def holds(self, line):
        return any(held == line for held, _ in self.sets[line % SETS])

    def evict(self, line):
        self.sets[line % SETS] = [(held, who) for held, who in self.sets[line % SETS] if held != line]

    def invalidate(self):
        self.sets = [[] for _ in range(SETS)]

    def software_flush(self, buffer_hpa):
        lines = [buffer_hpa // LINE + p * (PAGE // LINE) for p in range(FLUSH_BYTES // PAGE)]
        lines += [buffer_hpa // LINE + i for i in range(FLUSH_BYTES // LINE)]
        return sum(L1_HIT_CYCLES if self.access(line, HOST) else L1_MISS_CYCLES for line in lines)


def contents(l1):
    """The kernel state as the twin holds it: per set, (line, owner) from least to most recently used."""
    out = []
    for s in range(SETS):
        ways = [(int(l1[STAMP + s * WAYS + w]), int(l1[TAG + s * WAYS + w]) - 1, int(l1[OWNER + s * WAYS + w]))
                for w in range(WAYS) if l1[TAG + s * WAYS + w]]
        out.append([(line, owner) for _, line, owner in sorted(ways)])
    return out


# -- the Python side: per hypervisor, per VM, per vCPU -------------------------------------------------
class HostCaches:
    """One L1D per host CPU, the software flush's 64 KiB, and host data that every exit touches.

    Legend: `states` and `flush_buffer` are set at creation; `secret_touch` is written by place_secret
    (the kernels read it at each exit, so a new secret counts from the next exit).
    """

    def __init__(self, hypervisor):
        self.hypervisor = hypervisor
        self.states = [new_state() for _ in range(hypervisor.ncpu)]
        self.flush_buffer = hypervisor.allocator.allocate(FLUSH_BYTES, "host: L1D software flush buffer")
        self.secret_touch = np.zeros(1 + TOUCH_MAX, np.uint64)
        self.secret_hpa = None
        self.next_owner = 1

    def state(self, hostcpu):
        return self.states[hostcpu]

    def place_secret(self, data):
        """Put host data in a host page of its own that the exit path reads on every exit; its address."""
        data = bytes(data)
        if not 0 < len(data) <= PAGE:
            raise ConfigError("a host secret is 1 to 4096 bytes (one host page), not %d" % len(data))
        if self.secret_hpa is None:
            self.secret_hpa = self.hypervisor.allocator.allocate(PAGE, "host: secret page (L1TF demo)")
        hpa = self.secret_hpa
        self.hypervisor.memory[hpa:hpa + PAGE] = 0
        self.hypervisor.memory[hpa:hpa + len(data)] = np.frombuffer(data, np.uint8)
        lines = range(hpa // LINE, (hpa + len(data) + LINE - 1) // LINE)
        self.secret_touch[1:1 + len(lines)] = list(lines)
        self.secret_touch[0] = len(lines)
        return hpa

    def attach_vm(self, vm):
        """The VM's owner tag and its device-state page."""
        vm.l1d_owner = self.next_owner
        self.next_owner += 1
        vm.l1d_pages = [self.hypervisor.allocator.allocate(PAGE, "host: VM %r device state" % vm.name)]

    def attach_vcpu(self, vcpu):
        """Context slots for the flush, the exit path's data and the cycle counter."""
        vm, c = vcpu.vm, vcpu.ctx
        if not hasattr(vm, "l1d_owner"):
            self.attach_vm(vm)
        vmxctx = self.hypervisor.allocator.allocate(2 * PAGE, "host: VM %r vcpu%d vmxctx+VMCS" % (vm.name, vcpu.index))
        vm.l1d_pages.append(vmxctx)
        vcpu.vmcs["ENTRY_MSR_LOAD"] = vmxctx + 0x800          # bhyve's one-entry list {IA32_FLUSH_CMD, L1D}
        self.hypervisor.memory[vmxctx + 0x800:vmxctx + 0x810] = np.frombuffer(
            np.array([P.MSR_FLUSH_CMD, P.FLUSH_CMD_L1D], np.uint64).tobytes(), np.uint8)
        vmcs_page, device = vmxctx + PAGE, vm.l1d_pages[0]
        lines = [vmxctx + i * LINE for i in range(4)]                       # guest GPRs, CR2, host state
        lines += [vmcs_page + off for off in (0x0, 0x40, 0x80, 0x400, 0x440, 0x800)]  # exit info, guest state
        vcpu.l1d_touch = touch_table(lines)
        vcpu.l1d_device_touch = touch_table([device, device + LINE])
        profile = vm.profile
        for slot, value in ((C.L1D_OWNER, vm.l1d_owner), (C.HOST_TOUCH, vcpu.l1d_touch.ctypes.data),
                            (C.DEVICE_TOUCH, vcpu.l1d_device_touch.ctypes.data),
                            (C.SECRET_TOUCH, self.secret_touch.ctypes.data), (C.FLUSH_BUF, self.flush_buffer),
                            (C.CPU_FLAGS, (CPUF_FLUSH_CMD if profile.has_flush_cmd else 0) |
                             (CPUF_L1TF if profile.l1tf_vulnerable else 0)),
                            (C.ARCH_CAPS, profile.arch_capabilities), (C.L1D_EXITED, 1)):
            c[slot] = value
        self.use_cache_of(vcpu, int(c[C.HOSTCPU]))

    def use_cache_of(self, vcpu, hostcpu):
        """The vCPU runs on host CPU `hostcpu` (hostcpu.py decides): its exits and flushes use that L1D."""
        if not 0 <= hostcpu < len(self.states):
            raise ConfigError("host CPU %d does not exist: the modeled host has %d (0 to %d)"
                              % (hostcpu, len(self.states), len(self.states) - 1))
        vcpu.ctx[C.L1D] = self.states[hostcpu].ctypes.data
        vcpu.ctx[C.L1D_SEEN] = 0                        # another cache: its exit path has not run there

    def occupancy(self, hostcpu):
        """What one host CPU's L1D holds: {"host" or VM name: lines}, and the lines still free."""
        owners = {0: "host"}
        owners.update({vm.l1d_owner: name for name, vm in list(self.hypervisor.vms.items())
                       if hasattr(vm, "l1d_owner")})
        counts = {}
        for ways in contents(self.state(hostcpu)):
            for _, owner in ways:
                name = owners.get(owner, "destroyed VM")
                counts[name] = counts.get(name, 0) + 1
        return counts, LINES - sum(counts.values())

    def release_vm(self, vm):
        for hpa in getattr(vm, "l1d_pages", []):
            self.hypervisor.allocator.free(hpa)
        vm.l1d_pages = []

    def effective(self, profile):
        """(flush on entry?, method) that the next entry of a VM with this profile will use."""
        params = self.hypervisor.tunables.values.astype(np.uint64)
        flush, software = flush_wanted(params, np.uint64(CPUF_FLUSH_CMD if profile.has_flush_cmd else 0),
                                       np.uint64(profile.arch_capabilities))
        return bool(flush), "software" if software else "msr"
