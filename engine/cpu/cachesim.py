"""Guest accesses through the L1D model (hw.vmm.l1d_sim): memory hooks, the modeled cycle counter, CLFLUSH.

With the tunable on, each vCPU carries two more hooks, both numba cfuncs: guest loads and stores fill the
L1D of the host CPU the vCPU runs on (tagged with the VM's owner tag) and each load adds its latency to
the modeled cycle counter (hit or miss); every instruction adds one cycle; RDTSC and RDTSCP return the
counter (tsc.py's hooks read it while the tunable is on). With it off the hooks are not registered at all,
so they cost nothing (Unicorn drops translated code when hooks change, so the next blocks are translated
without the calls).

CLFLUSH is hooked where the exec-scan finds it (`scan_clflush`, called from vcpu/paging.py scan_page): capstone
decodes the operand once, and the site's hook computes the address from the registers and evicts that
line, whether or not the simulation is on (the host's lines are in the model either way). A rescanned page
(its code was written) is decoded again.
"""
import numpy as np
from capstone import CS_ARCH_X86, CS_MODE_32, CS_MODE_64, Cs
from capstone import x86_const as CX
from numba import carray, njit, types
from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn import x86_const as X

from .. import stats as S
from .. import tunables as T
from ..core import ctx as C
from ..core.regs import rd
from ..mmu.access import linear_to_hpa
from ..native import NUMBA, hook, hook_add, hook_del, u64_ptr
from . import l1d

U64P = types.CPointer(types.uint64)
UC_MEM_READ = 16
PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF2, 0xF3}
SITE_CTX, SITE_BASE, SITE_INDEX, SITE_SCALE, SITE_DISP, SITE_SEG, SITE_WIDTH = range(7)
BASE_RIP = 0xFFFF                      # SITE_BASE value for RIP-relative operands


# -- the hooks ----------------------------------------------------------------------------------------
@njit(**NUMBA)
def guest_access(c, hpa, size, load):
    """A guest load or store of `size` bytes at host-physical `hpa`: every line it covers goes through the L1D."""
    l1 = carray(u64_ptr(c[C.L1D]), l1d.STATE_SIZE)
    line = np.uint64(hpa) >> np.uint64(6)
    last = (np.uint64(hpa) + np.uint64(max(size, 1) - 1)) >> np.uint64(6)
    hit = True
    while line <= last:
        hit = l1d.access(l1, line, c[C.L1D_OWNER]) and hit
        line += np.uint64(1)
    if load:
        counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
        if hit:
            counters[S.L1D_GUEST_HITS] += 1
            c[C.CYCLES] += np.uint64(l1d.L1_HIT_CYCLES)
        else:
            counters[S.L1D_GUEST_MISSES] += 1
            c[C.CYCLES] += np.uint64(l1d.L1_MISS_CYCLES)


@hook(types.void(types.voidptr, types.int32, types.uint64, types.int32, types.int64, U64P))
def mem_hook(uc, kind, address, size, value, ud):
    guest_access(carray(ud, C.SIZE), address, size, kind == UC_MEM_READ)   # addresses are host-physical


@hook(types.void(types.voidptr, types.uint64, types.uint32, U64P))
def insn_hook(uc, address, size, ud):
    ud[C.CYCLES] += np.uint64(1)                 # one cycle per instruction; loads add their latency


@hook(types.void(types.voidptr, types.uint64, types.uint32, U64P))
def clflush_hook(uc, address, size, ud):
    """CLFLUSH/CLFLUSHOPT m8 at a scanned site: the operand's line leaves this host CPU's L1D."""
    site = carray(ud, 7)
    c = carray(u64_ptr(site[SITE_CTX]), C.SIZE)
    ea = site[SITE_DISP]
    if site[SITE_BASE] == BASE_RIP:
        ea += np.uint64(address) + np.uint64(size)
    elif site[SITE_BASE] != 0:
        ea += rd(c, np.int64(site[SITE_BASE]))
    if site[SITE_INDEX] != 0:
        ea += rd(c, np.int64(site[SITE_INDEX])) * site[SITE_SCALE]
    if site[SITE_SEG] != 0:
        ea += rd(c, np.int64(site[SITE_SEG]))
    if site[SITE_WIDTH] == 4:
        ea &= np.uint64(0xFFFFFFFF)
    hpa = linear_to_hpa(c, ea)
    if hpa >= 0:
        l1d.evict(carray(u64_ptr(c[C.L1D]), l1d.STATE_SIZE), np.uint64(hpa) >> np.uint64(6))


# -- the Python side ---------------------------------------------------------------------------------
def apply(vcpu):
    """Register or remove the simulation hooks to match hw.vmm.l1d_sim (on the vCPU's thread, or parked)."""
    want = bool(vcpu.vm.hypervisor.tunables.get("hw.vmm.l1d_sim"))
    handles = getattr(vcpu, "sim_hooks", [])
    if want == bool(handles):
        return
    uc, ud = vcpu.uc, vcpu.ctx.ctypes.data
    if want:
        handles = [hook_add(uc, UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE, mem_hook.address, ud),
                   hook_add(uc, UC_HOOK_CODE, insn_hook.address, ud)]
    else:
        for handle in handles:
            hook_del(uc, handle)
        handles = []
    vcpu.sim_hooks = handles
    uc.ctl_flush_tb()                            # translated blocks carry (or lack) the hook calls


def on_tunable(hypervisor, tunable, old, new):
    """A tunables listener: hw.vmm.l1d_sim changes reach every vCPU on its own thread."""
    if tunable.slot != T.L1D_SIM or old == new:
        return
    for vm in list(hypervisor.vms.values()):
        for vcpu in vm.vcpus:
            if vcpu.thread is not None and vcpu.thread.is_alive():
                vcpu.post(("call", apply))
            else:
                apply(vcpu)


def _operand(insn):
    """(base, index, scale, disp, segment base, address width) of a decoded CLFLUSH's memory operand."""
    op = insn.operands[0]
    mem = op.mem

    def reg(r):                                  # riz/eiz: a SIB byte whose index field says "none"
        return 0 if r in (0, CX.X86_REG_RIZ, CX.X86_REG_EIZ) else getattr(X, "UC_X86_REG_" + insn.reg_name(r).upper())
    base = BASE_RIP if mem.base == CX.X86_REG_RIP else reg(mem.base)
    seg = {CX.X86_REG_FS: X.UC_X86_REG_FS_BASE, CX.X86_REG_GS: X.UC_X86_REG_GS_BASE}.get(mem.segment, 0)
    return base, reg(mem.index), max(mem.scale, 1), mem.disp & 0xFFFFFFFFFFFFFFFF, seg, insn.addr_size


def scan_clflush(vcpu, linear_page, hpa, long_mode):
    """Hook every CLFLUSH/CLFLUSHOPT on a page being scanned for execution (0F AE /7 with a memory operand).

    A page is scanned again after it was written: its old sites go, the code is decoded afresh."""
    sites = getattr(vcpu, "clflush_sites", None)
    if sites is None:
        sites = vcpu.clflush_sites = {}
    for where in [w for w in sites if linear_page <= w < linear_page + 0x1000]:
        hook_del(vcpu.uc, sites.pop(where)[0])
    mem = vcpu.vm.hypervisor.memory
    code = mem[hpa:min(hpa + 0x1000 + 15, mem.size)]
    hits = np.flatnonzero((code[:-2] == 0x0F) & (code[1:-1] == 0xAE) & ((code[2:] >> 3 & 7) == 7) &
                          ((code[2:] >> 6) != 3))
    if not len(hits):
        return
    cs = Cs(CS_ARCH_X86, CS_MODE_64 if long_mode else CS_MODE_32)
    cs.detail = True
    for k in hits.tolist():
        start = k
        while True:                              # the instruction may start at a prefix (or REX) before 0F
            where = linear_page + start
            if where not in sites:
                insn = next(cs.disasm(code[start:start + 15].tobytes(), where, 1), None)
                flush = insn is not None and insn.id in (CX.X86_INS_CLFLUSH, CX.X86_INS_CLFLUSHOPT)
                if flush and insn.size > k - start + 2:          # the 0F AE /7 found is this instruction's
                    site = np.array([vcpu.ctx.ctypes.data, *_operand(insn)], np.uint64)
                    handle = hook_add(vcpu.uc, UC_HOOK_CODE, clflush_hook.address, site.ctypes.data, where, where)
                    sites[where] = (handle, site)
            if start == 0 or k - start >= 4:
                break
            prev = code[start - 1]
            if not (prev in PREFIXES or (long_mode and 0x40 <= prev <= 0x4F)):
                break
            start -= 1
