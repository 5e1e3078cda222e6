"""Building a vCPU: its Unicorn instance and context block, the exit hooks, the VMCS controls bhyve's
vmx_vcpu_init sets, its place on a host CPU, and the registers a boot starts from.

Every vCPU is a UC_MODE_64 instance over all of host-physical memory, in Unicorn's virtual-TLB mode with
our TLB fill as the translation (docs/engine.md). Its context block holds the addresses of everything the
kernels reach, so one compiled hook serves every vCPU.
"""
import ctypes

import numpy as np
from unicorn import UC_ARCH_X86, UC_HOOK_BLOCK, UC_HOOK_INSN, UC_HOOK_INTR, UC_HOOK_TLB_FILL, UC_MODE_64, UC_PROT_ALL, \
    UC_TLB_VIRTUAL, Uc
from unicorn import x86_const as X

from .. import firmware
from ..core import ctx as C
from ..cpu import cachesim, tsc
from ..io import buslock
from ..mmu import walk as W
from ..native import address, function_table, hook_add
from ..vmx import cpuctx, hooks, segcache, syscall

XTAB_PAIRS = 4096                                # the exec-scan table's slots (core/ctx.py XTAB)


class ResetImage:
    """What an application processor looks like after INIT: real mode, waiting for its SIPI."""
    mode, regs = "real", {"ds": 0, "es": 0, "ss": 0, "rsp": 0}


def make_uc(vcpu):
    """The Unicorn instance, the context block pointing at the vCPU's and its VM's arrays, the exit hooks."""
    vm, hv = vcpu.vm, vcpu.vm.hypervisor
    uc = vcpu.uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.ctl_exits_enabled(True)
    uc.ctl_set_exits([])                         # `until` never translates through our fill (unicorn.md §1)
    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    uc.mem_map_ptr(0, hv.memory.size, UC_PROT_ALL, hv.memory.ctypes.data)
    segcache.check(uc)                           # the context layout the delivery kernel reads (vmx/deliver.py)
    cpuctx.check()
    vcpu.xtab = np.zeros(2 * XTAB_PAIRS, np.uint64)
    vcpu.lockbits = np.zeros(buslock.WORDS * XTAB_PAIRS, np.uint64)    # io/buslock.py, per exec-scan slot
    c = vcpu.ctx = C.new()
    vcpu.fns = function_table()
    for slot, value in ((C.UC, uc._uch.value), (C.FN, vcpu.fns.ctypes.data), (C.MEM, hv.memory.ctypes.data),
                        (C.MEMSIZE, hv.memory.size), (C.SEGS, vm.segtab.ctypes.data), (C.NSEGS, len(vm.segtab) // 3),
                        (C.VMCS, vcpu.vmcs.store.ctypes.data), (C.STATS, vcpu.counters.ctypes.data),
                        (C.PARAMS, hv.tunables.values.ctypes.data), (C.CPUID, vm.cpuid.ctypes.data),
                        (C.NCPUID, len(vm.cpuid)), (C.MSR, vcpu.msrs.ctypes.data), (C.NMSR, len(vcpu.msrs)),
                        (C.PORTS, vm.portmap.ctypes.data), (C.HOSTCB, address(vm.port_callback)),
                        (C.VCPUID, vcpu.index), (C.XTAB, vcpu.xtab.ctypes.data), (C.XMASK, XTAB_PAIRS - 1),
                        (C.CODE, vm.code_state.ctypes.data), (C.NPAGES, len(vm.code_state)),
                        (C.SCRATCH, vcpu.scratch.ctypes.data), (C.RING, vcpu.ring.ctypes.data),
                        (C.EPT, vm.pmap.st.ctypes.data), (C.POOL, vcpu.pool.ctypes.data),
                        (C.POOL_SIZE, len(vcpu.pool)), (C.VPID, vcpu.vpid), (C.EPTP, vm.pmap.eptp),
                        (C.EPTGEN, vm.eptgen.ctypes.data)):
        c[slot] = value
    c[C.CPU_ENV] = cpuctx.env_address(uc)        # the kernels' way to segment caches and hidden flags
    attach_hostcpu(vcpu, vcpu.hostcpu)
    add_exit_hooks(uc, c.ctypes.data)
    tsc.attach(vcpu)                             # RDTSC and RDTSCP at the profile's frequency, in numba
    init_vmcs(vcpu)
    hv.l1d.attach_vcpu(vcpu)
    cachesim.apply(vcpu)


def add_exit_hooks(uc, ud):
    """The in-kernel exits as numba cfuncs (vmx/hooks.py), SYSCALL and SYSENTER (vmx/syscall.py), and the block
    hook that turns kicks into stops."""
    hook_add(uc, UC_HOOK_TLB_FILL, hooks.tlb_fill_hook.address, ud)
    hook_add(uc, UC_HOOK_INSN, hooks.in_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_IN))
    hook_add(uc, UC_HOOK_INSN, hooks.out_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_OUT))
    hook_add(uc, UC_HOOK_INSN, hooks.cpuid_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_CPUID))
    hook_add(uc, UC_HOOK_INSN, syscall.syscall_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_SYSCALL))
    hook_add(uc, UC_HOOK_INSN, syscall.sysenter_hook.address, ud, 1, 0, ctypes.c_int(X.UC_X86_INS_SYSENTER))
    hook_add(uc, UC_HOOK_INTR, hooks.intr_hook.address, ud)
    hook_add(uc, UC_HOOK_BLOCK, buslock.block_hook.address, ud)        # kicks leave at block boundaries; the bus lock


# vmx_modinit's CR0/CR4 guest/host masks, from a Haswell's IA32_VMX_CR0_FIXED0/1 (0x80000021, 0xFFFFFFFF) and
# IA32_VMX_CR4_FIXED0/1 (0x2000, 0x1767FF): the bits fixed to 1 (CR0.PE and PG dropped: unrestricted guest) and to
# 0 (everything FIXED1 clears, bits 63:32 included), plus CR0.CD and NW, which bhyve never lets the guest set.
CR0_MASK = (0x80000021 & ~0x80000001) | (~0x80000021 & ~0xFFFFFFFF & (1 << 64) - 1) | 0x60000000
CR4_MASK = 0x2000 | (~0x1767FF & (1 << 64) - 1)


def init_vmcs(vcpu):
    """Controls as bhyve's vmx_vcpu_init sets them."""
    v, index = vcpu.vmcs, vcpu.index
    v["VPID"] = vcpu.vpid                                              # vpid_alloc (vmx/vpid.py)
    v["EPTP"] = vcpu.vm.pmap.eptp
    v["LINK_POINTER"] = (1 << 64) - 1
    v["EXCEPTION_BITMAP"] = 0xFFFFFFFF if vcpu.vm.hypervisor.tunables.get("hw.vmm.trace_guest_exceptions") else 1 << 18
    v["CR0_SHADOW"] = 0x60000010                                       # vmx_setup_cr0_shadow(vmcs, 0x60000010)
    v["CR0_MASK"], v["CR4_MASK"] = CR0_MASK, CR4_MASK                  # vmx_setup_cr_shadow; CR4's shadow is 0
    v["APIC_ACCESS"] = 0xFFFFF000
    v["HOST_RIP"] = 0xFFFFFFFF80000000 + 0x1000 * index               # vmx_exit_guest in the modeled host
    v["HOST_CR3"] = 0x1000


def attach_hostcpu(vcpu, hostcpu):
    """Point the kernels at the host CPU's TLB model (and its L1D, when the VM models one)."""
    c = vcpu.ctx
    c[C.TLB], c[C.TLB_LEN], c[C.HOSTCPU] = hostcpu.tlb.ctypes.data, len(hostcpu.tlb), hostcpu.index
    c[C.TLB_SEEN] = (1 << 64) - 1                # Unicorn's TLB is flushed at the first entry there
    if c[C.L1D]:
        vcpu.vm.hypervisor.l1d.use_cache_of(vcpu, hostcpu.index)


def prepare(vcpu, image):
    """Set up the boot: the reset stub for real/protected32, registers directly for long64."""
    uc = vcpu.uc
    if image.mode == "long64":
        uc.reg_write(X.UC_X86_REG_GDTR, (0, image.gdt.gpa, image.gdt.size - 1, 0))
        uc.reg_write(X.UC_X86_REG_CR3, image.regs["cr3"])
        uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | W.CR4_PAE)
        uc.reg_write(X.UC_X86_REG_CR0, uc.reg_read(X.UC_X86_REG_CR0) | W.CR0_PG | W.CR0_PE)
        vcpu.apply_regs(image.regs, segments=False)
        load_boot_segments(vcpu, image)
        return
    if image.mode == "real":
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))         # the IVT, as at reset
    target, done = firmware.TARGETS[image.mode]
    uc.reg_write(X.UC_X86_REG_RBX, target)
    uc.reg_write(X.UC_X86_REG_RSP, firmware.STUB_BASE)
    uc.reg_write(X.UC_X86_REG_RIP, firmware.STUB_BASE)
    vcpu.boot = (done, image)


def load_boot_segments(vcpu, image):
    """CS, SS, DS, ES as the loader's GDT describes them, selector and descriptor cache, as a far jump and
    segment loads by a boot loader leave them (a 64-bit instance's reg_write would set only selectors)."""
    loads = []
    for name, seg in (("cs", segcache.CS), ("ss", segcache.SS), ("ds", segcache.DS), ("es", segcache.ES)):
        selector = image.regs.get(name)
        if selector is not None:
            index = selector & ~7
            desc = segcache.Descriptor(image.gdt.data[index:index + 8])
            loads.append((seg, selector, desc.base, desc.limit, desc.flags | segcache.DESC_A))
    segcache.load(vcpu.uc, loads)
