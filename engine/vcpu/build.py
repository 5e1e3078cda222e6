"""Building a vCPU: its Unicorn instance and context block, the exit hooks, the VMCS controls bhyve's
vmx_vcpu_init sets, its place on a host CPU, and the registers a boot starts from.

Every vCPU is a UC_MODE_64 instance over all of host-physical memory, in Unicorn's virtual-TLB mode with
our TLB fill as the translation (docs/engine.md), and a second one, its stepper, for the instructions that
touch device pages (vmx/emulate.py). Its context block holds the addresses of everything the
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
from ..vmx import controls, cpuctx, emulate, hooks, segcache, syscall

XTAB_PAIRS = 4096                                # the exec-scan table's slots (core/ctx.py XTAB)
DESC_P = 1 << 15                                 # a descriptor cache's present bit (QEMU's flags, vmx/segcache.py)


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
    c[C.CFLAGS_NEXT] = cpuctx.cflags_next_tb(uc)  # what the next block is translated as (io/buslock.py)
    attach_hostcpu(vcpu, vcpu.hostcpu)
    add_exit_hooks(uc, c.ctypes.data)
    vcpu.stepper = emulate.Stepper(vcpu)         # runs the instructions that touch device pages (vmx/emulate.py)
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


def vmx_caps(vm):
    """vmx_modinit's choices for the VM's CPU profile and the APICv loader tunables (vmx/controls.py)."""
    tunables = vm.hypervisor.tunables
    return controls.modinit(vm.profile.facts["vmx_msrs"], use_tpr_shadowing=tunables.get("hw.vmm.vmx.cap.tpr_shadowing"),
                            use_apic_vid=tunables.get("hw.vmm.vmx.cap.virtual_interrupt_delivery"),
                            use_apic_pir=tunables.get("hw.vmm.vmx.cap.posted_interrupts"))


def init_vmcs(vcpu):
    """Controls as bhyve's vmx_vcpu_init sets them, then the capabilities bhyve's userspace turns on for a
    vCPU it starts (controls.STARTUP)."""
    v, index = vcpu.vmcs, vcpu.index
    caps = vcpu.vmxcaps = vmx_caps(vcpu.vm)
    controls.vcpu_init(v, caps, vcpu.vpid, vcpu.vm.pmap.eptp, vcpu.vm.msr_bitmap,
                       vcpu.vm.hypervisor.tunables.get("hw.vmm.trace_guest_exceptions"))
    for name in controls.STARTUP:
        controls.setcap(v, caps, name, 1)
    v["LINK_POINTER"] = (1 << 64) - 1
    v["GUEST_DR7"] = 0x400                                             # DBREG_DR7_RESERVED1
    v["HOST_RIP"] = 0xFFFFFFFF80000000 + 0x1000 * index               # vmx_exit_guest in the modeled host
    v["HOST_CR3"] = 0x1000


def init_apic_vmcs(vcpu, lapic):
    """vmx_vcpu_init's virtual-APIC, APIC-access and posted-interrupt fields, once the local APIC's pages exist."""
    controls.apic_init(vcpu.vmcs, vcpu.vmxcaps, lapic.hpa, lapic.pir_hpa,
                       vcpu.vm.hypervisor.tunables.get("hw.vmm.vmx.posted_interrupt_vector"))
    vcpu.ctx[C.APICV] = controls.apicv(vcpu.vmcs, vcpu.vmxcaps)


def apply_posted(vcpu):
    """hw.vmm.vmx.cap.posted_interrupts as it stands now, into the vCPU's VMCS and the controls its local APIC
    follows (on the vCPU's thread, or parked). A CPU profile without APICv keeps them clear."""
    tunables = vcpu.vm.hypervisor.tunables
    controls.set_posted(vcpu.vmcs, vcpu.vmxcaps, bool(tunables.get("hw.vmm.vmx.cap.posted_interrupts")),
                        vcpu.lapic.pir_hpa, tunables.get("hw.vmm.vmx.posted_interrupt_vector"))
    vcpu.ctx[C.APICV] = controls.apicv(vcpu.vmcs, vcpu.vmxcaps)


def on_tunable(hypervisor, tunable, old, new):
    """A tunables listener: a change of hw.vmm.vmx.cap.posted_interrupts reaches every vCPU on its own thread
    (a visit: no VM exit is recorded for it) before the change is answered."""
    if tunable.name != "hw.vmm.vmx.cap.posted_interrupts" or old == new:
        return
    for vm in list(hypervisor.vms.values()):
        for vcpu in vm.vcpus:
            vcpu.visit(apply_posted)


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
        load_system_segments(uc, long_mode=True)
        return
    if image.mode == "real":
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))         # the IVT, as at reset
    target, done = firmware.TARGETS[image.mode]
    uc.reg_write(X.UC_X86_REG_RBX, target)
    uc.reg_write(X.UC_X86_REG_RSP, firmware.STUB_BASE)
    uc.reg_write(X.UC_X86_REG_RIP, firmware.STUB_BASE)
    vcpu.boot = (done, image)


def load_system_segments(uc, long_mode):
    """TR and LDTR caches a VM entry accepts (SDM 26.3.1.2: TR a usable busy TSS, LDTR an LDT or unusable), which
    Unicorn's 64-bit instance starts without: as RESET leaves them (SDM 9.1.1 Table 9-1: base 0, limit FFFFH,
    present) for the reset stub's modes, and as bhyve's vm_setup_freebsd_registers sets them for a 64-bit start
    (TR base 0, limit 0, access 0x8b; LDTR unusable)."""
    uc.reg_write(X.UC_X86_REG_TR, (0, 0, 0 if long_mode else 0xFFFF, DESC_P | 11 << 8))
    uc.reg_write(X.UC_X86_REG_LDTR, (0, 0, 0, 0) if long_mode else (0, 0, 0xFFFF, DESC_P | 2 << 8))


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
