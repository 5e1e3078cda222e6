"""L1 Terminal Fault (CVE-2018-3646): the transient window after a load through a not-present guest entry.

On an affected CPU (no RDCL_NO), a load whose guest paging walk ends at an entry with P=0 is not stopped
at once: until the #PF retires, the load returns data from the L1D for the *host-physical* address
formed from the entry's address bits and the page offset — no EPT translation — and the instructions
after it run on that value. Their loads leave lines in the L1D; their results are then thrown away.

The model, run from the #PF exit before the fault is delivered:
- the entry is found by walking the guest's tables again (the walk itself stops at the fault);
- a host page of the vCPU's own (the *transient page*) is filled with what the L1D of the vCPU's host
  CPU holds of the target page: lines the model holds are copied from host memory, the others read as
  zeros. The model holds no data of its own, so this is the only way host memory reaches the guest;
- a second Unicorn instance (the shadow core), given a copy of the vCPU's registers, runs from the
  faulting instruction for at most WINDOW instructions; its TLB fill maps the faulting linear page to
  the transient page (read-only) and every other page through the guest walk and guest-physical →
  host-physical, read/execute only. A store, another fault or an exception ends the window (stores are
  never performed); its loads go through the L1D model tagged with the VM's owner;
- the vCPU's own registers and memory were never touched: the #PF is then delivered as usual.
"""
import numpy as np
from numba import carray, njit, types
from unicorn import (UC_ARCH_X86, UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_HOOK_MEM_READ, UC_HOOK_TLB_FILL,
                     UC_MODE_64, UC_PROT_ALL, UC_TLB_VIRTUAL, Uc, UcError)
from unicorn import x86_const as X

from .. import stats as S
from ..core import ctx as C
from ..core.regs import rd, rd_efer
from ..mmu import walk as W
from ..mmu.access import ept_views, gpa_to_hpa, views
from ..native import NUMBA, function_table, hook, hook_add, u64_ptr
from . import l1d

WINDOW = 16                      # instructions run transiently, the faulting load included
PAGE = 0x1000
U64P = types.CPointer(types.uint64)


@njit(**NUMBA)
def shadow_fill(c, vaddr, access):
    """(ok, hpa, perms) for the shadow core: the transient page for the faulting page, else the guest's pages R/X."""
    if access == 17:                                              # a store: the window ends, nothing is written
        return False, np.uint64(0), np.uint64(0)
    page = np.uint64(vaddr) & ~np.uint64(0xFFF)
    if page | np.uint64(1) == c[C.SPEC_PAGE]:
        return access != 18, c[C.SPEC_HPA], np.uint64(W.PROT_R)
    mem8, mem64, mem32, segs = views(c)
    st, pool = ept_views(c)
    cr0 = rd(c, X.UC_X86_REG_CR0)
    cpl = rd(c, X.UC_X86_REG_CS) & 3 if cr0 & W.CR0_PE else 0
    kind = W.ACCESS_FETCH if access == 18 else W.ACCESS_READ
    code, gpa, perms, err, fgpa, faults, status, _ = W.walk(mem64, mem32, st, pool, segs, c[C.NSEGS], cr0,
                                                         rd(c, X.UC_X86_REG_CR3), rd(c, X.UC_X86_REG_CR4),
                                                         rd_efer(c), cpl, vaddr, kind, False)
    if code != W.OK:
        return False, np.uint64(0), np.uint64(0)
    hpa = gpa_to_hpa(c, gpa)                         # through the EPT, backing nothing
    if hpa < 0:
        return False, np.uint64(0), np.uint64(0)
    return True, np.uint64(hpa) & ~np.uint64(0xFFF), np.uint64(perms) & np.uint64(W.PROT_R | W.PROT_X)


@hook(types.boolean(types.voidptr, types.uint64, types.int32, U64P, U64P))
def shadow_fill_hook(uc, vaddr, access, entry, ud):
    c = carray(ud, C.SIZE)
    ok, hpa, perms = shadow_fill(c, vaddr, access)
    if ok:
        entry[0] = hpa
        entry[1] = perms
    return ok


@hook(types.void(types.voidptr, types.int32, types.uint64, types.int32, types.int64, U64P))
def shadow_read_hook(uc, kind, address, size, value, ud):
    """A transient load fills the L1D like any other (the transient page itself is not a real line)."""
    c = carray(ud, C.SIZE)
    if np.uint64(address) & ~np.uint64(0xFFF) == c[C.SPEC_HPA]:
        return
    l1 = carray(u64_ptr(c[C.L1D]), l1d.STATE_SIZE)
    line = np.uint64(address) >> np.uint64(6)
    last = (np.uint64(address) + np.uint64(max(size, 1) - 1)) >> np.uint64(6)
    while line <= last:
        l1d.access(l1, line, c[C.L1D_OWNER])
        line += np.uint64(1)


@njit(**NUMBA)
def fill_transient_page(mem8, l1, target_page, page_hpa):
    """Copy the lines of the target host page that the L1D holds; the rest reads as zeros. Lines copied."""
    copied = 0
    for i in range(PAGE // l1d.LINE):
        src = np.int64(target_page) + i * l1d.LINE
        dst = np.int64(page_hpa) + i * l1d.LINE
        inside = 0 <= src and src + l1d.LINE <= mem8.size
        if inside and l1d.holds(l1, np.uint64(src) >> np.uint64(6)):
            mem8[dst:dst + l1d.LINE] = mem8[src:src + l1d.LINE]
            copied += 1
        else:
            mem8[dst:dst + l1d.LINE] = 0
    return copied


def not_present_entry(vcpu, linear):
    """The guest paging entry with P=0 that ends the walk for `linear`, as (value, address mask), or None."""
    uc, vm = vcpu.uc, vcpu.vm
    mem = vm.hypervisor.memory
    cr0, cr3, cr4 = (uc.reg_read(r) for r in (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4))
    if not cr0 & W.CR0_PG:
        return None
    if vcpu.efer() & W.EFER_LMA:
        levels, wide, table = [(39, 0x1FF), (30, 0x1FF), (21, 0x1FF), (12, 0x1FF)], True, cr3 & W.ADDR_MASK
    elif cr4 & W.CR4_PAE:
        levels, wide, table = [(30, 3), (21, 0x1FF), (12, 0x1FF)], True, cr3 & 0xFFFFFFE0
    else:
        levels, wide, table = [(22, 0x3FF), (12, 0x3FF)], False, cr3 & 0xFFFFF000
    size = 8 if wide else 4
    mask = W.ADDR_MASK if wide else 0xFFFFF000
    for depth, (shift, index_mask) in enumerate(levels):
        hpa = vm.pmap.lookup(table + ((linear >> shift) & index_mask) * size)   # guest-physical → host-physical
        if hpa is None:
            return None                               # a table the EPT does not map: an EPT matter, not L1TF
        entry = int.from_bytes(mem[hpa:hpa + size].tobytes(), "little")
        if not entry & W.PG_P:
            return entry, mask
        pdpt = len(levels) == 3 and depth == 0
        if depth == len(levels) - 1 or (not pdpt and entry & W.PG_PS and (wide or cr4 & W.CR4_PSE)):
            return None
        table = entry & mask
    return None


class ShadowCore:
    """A second Unicorn instance over the same host memory, for one vCPU's transient windows."""

    def __init__(self, vcpu):
        hv = vcpu.vm.hypervisor
        self.vcpu = vcpu
        self.page = hv.allocator.allocate(PAGE, "host: VM %r vcpu%d L1TF transient page" % (vcpu.vm.name, vcpu.index))
        vcpu.vm.l1d_pages.append(self.page)
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.mem_map_ptr(0, hv.memory.size, UC_PROT_ALL, hv.memory.ctypes.data)
        self.fns, self.scratch = function_table(), np.zeros(8, np.uint64)
        self.ctx = vcpu.ctx.copy()
        ud = self.ctx.ctypes.data
        hook_add(uc, UC_HOOK_TLB_FILL, shadow_fill_hook.address, ud)
        hook_add(uc, UC_HOOK_MEM_READ, shadow_read_hook.address, ud)

    def run(self, linear, target):
        """Run the window from the vCPU's faulting instruction; returns the number of L1D lines it could see."""
        vcpu, c = self.vcpu, self.ctx
        c[:] = vcpu.ctx
        c[C.UC], c[C.FN], c[C.SCRATCH] = self.uc._uch.value, self.fns.ctypes.data, self.scratch.ctypes.data
        c[C.SPEC_PAGE], c[C.SPEC_HPA] = (linear & ~0xFFF) | 1, self.page
        memory = vcpu.vm.hypervisor.memory
        cache = vcpu.vm.hypervisor.l1d.state(int(vcpu.ctx[C.HOSTCPU]))
        visible = fill_transient_page(memory, cache, target & ~0xFFF, self.page)
        self.uc.context_restore(vcpu.uc.context_save())
        self.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)     # new CR3, new transient page
        self.uc.ctl_flush_tb()                             # the guest may have changed its code
        try:
            self.uc.emu_start(self.uc.reg_read(X.UC_X86_REG_RIP), 0, 0, WINDOW)
        except UcError:
            pass                                  # the window ended at a store or a fault
        memory[self.page:self.page + PAGE] = 0
        return visible


def transient_window(vcpu):
    """Called at a guest #PF exit before delivery. Runs the window if the CPU is affected, the L1D is simulated
    (hw.vmm.l1d_sim: without it guest loads never reach the L1D model and RDTSC times nothing, so a window has
    nothing to be seen against; vmx/faults.py then delivers the #PF in the kernel) and the fault is a read
    through a not-present entry; returns how many lines of the target page the L1D held (or None)."""
    if not vcpu.vm.profile.l1tf_vulnerable or not vcpu.vm.hypervisor.tunables.get("hw.vmm.l1d_sim"):
        return None
    if int(vcpu.ctx[C.ERRCODE]) & (W.PF_P | W.PF_W | W.PF_I):
        return None
    linear = int(vcpu.ctx[C.FAULT_GLA])
    found = not_present_entry(vcpu, linear)
    if found is None:
        return None
    entry, mask = found
    target = (entry & mask) | (linear & 0xFFF)       # host-physical, straight from the entry: no EPT
    shadow = getattr(vcpu, "shadow_core", None)
    if shadow is None:
        shadow = vcpu.shadow_core = ShadowCore(vcpu)
    vcpu.counters[S.L1D_L1TF_WINDOWS] += 1
    return shadow.run(linear, target)
