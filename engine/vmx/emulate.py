"""Instruction emulation for device pages, as bhyve's vmm_instruction_emul.c: the one instruction that touched
the APIC page or an MMIO page runs on the vCPU's stepper, a second Unicorn instance whose memory hooks are the
devices.

Why a second instance (docs/engine.md, "Device pages and the stepper"): Unicorn 2.1.4 sends every guest load
and store of an instance through its slow path once any UC_HOOK_MEM_READ/WRITE hook exists on it, whatever the
hook's range (tcg_uc_has_hookmem): with the device hooks on the vCPU's own instance every memory access cost
4-5x as much. So the vCPU's instance has no memory hooks. Its TLB fill refuses a device page (X_MMIO), which
leaves emu_start with RIP on the instruction (raise_mmu_exception restores the state); this kernel copies the
CPU state into the stepper, runs that one instruction there (the stepper's TLB fill maps the device pages,
its hooks serve them: io/lapic/access.py, vmx/mmio.py), and copies the state back. The MOV forms, nearly every
device access a guest makes, are decoded and served in the loop instead (vmx/vie.py): no step at all. The instruction completes before
the guest goes on, whatever its form, as on VT-x after bhyve has emulated it or the CPU has virtualized the
APIC access.

The stepper's translations are thrown away before each step (the guest may have changed its page tables or
its code since), which makes a step cost a few tens of microseconds: a price paid per device access, not per
memory access (bench/memory.py prints both).
"""
import numpy as np
from numba import carray, njit
from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_HOOK_TLB_FILL, UC_MODE_64, UC_PROT_ALL, UC_TLB_VIRTUAL, Uc
from unicorn import x86_const as X
from unicorn.unicorn_py3.unicorn import uclib

from ..core import ctx as C
from ..core.regs import rd
from ..core.sync import call_ctl2, call_uc_ptr
from ..io.lapic import access
from ..native import CTL_TLB_FLUSH, FN_CTL, FN_EMU_START, NFN, NUMBA, address, call_ctl, call_emu_start, hook_add, \
    u64_ptr, u8_ptr
from .cpuctx import UC_INVALID_ADDR
from .hooks import intr_hook, tlb_fill_hook
from . import vie
from .intr import HF_INHIBIT_IRQ, HFLAGS_OFFSET, UC_CTL_TB_FLUSH_WRITE

# The stepper block (ctx STEPPER points at it): the instance, the context buffer the state goes through, and
# uc_context_save/uc_context_restore.
S_UC, S_CONTEXT, S_SAVE, S_RESTORE = range(4)
S_SIZE = 4
UC_ERR_OK = 0
TCG_BUFFER = 16 << 20           # translations of one instruction at a time: a small code buffer is plenty


@njit(**NUMBA)
def emulate(c):
    """Run the instruction at RIP, whose TLB fill found a device page, on the stepper; returns its
    uc_emu_start status. EXIT stays X_MMIO when it completed (the loop then knows the entry ran no HLT), else
    it says why the instruction did not (a fault on another operand, an EPT violation), with RIP on it."""
    s = carray(u64_ptr(c[C.STEPPER]), S_SIZE)
    fns = carray(u64_ptr(c[C.FN]), NFN)
    vcpu_uc, stepper, buf = c[C.UC], s[S_UC], s[S_CONTEXT]
    c[C.MMIO_GLA] = carray(u64_ptr(vcpu_uc + np.uint64(UC_INVALID_ADDR)), 1)[0]    # the access's linear address
    if vie.emulate_mov(c):                          # a MOV form: decoded and served here, no step (vmx/vie.py)
        return UC_ERR_OK
    call_uc_ptr(s[S_SAVE], vcpu_uc, buf)
    call_uc_ptr(s[S_RESTORE], stepper, buf)
    call_ctl(fns[FN_CTL], stepper, CTL_TLB_FLUSH)
    call_ctl2(fns[FN_CTL], stepper, UC_CTL_TB_FLUSH_WRITE, np.uint64(0), np.uint64(0))
    c[C.EXIT] = C.X_NONE
    c[C.MMIO_STEP] = 1
    c[C.UC] = stepper
    rip = rd(c, X.UC_X86_REG_RIP)
    err = call_emu_start(fns[FN_EMU_START], stepper, rip, 0, 0, 1)
    completed = c[C.EXIT] == C.X_NONE and err == UC_ERR_OK and rd(c, X.UC_X86_REG_RIP) != rip
    c[C.UC] = vcpu_uc
    c[C.MMIO_STEP] = 0
    failed_at = carray(u64_ptr(stepper + np.uint64(UC_INVALID_ADDR)), 1)[0]
    carray(u64_ptr(vcpu_uc + np.uint64(UC_INVALID_ADDR)), 1)[0] = failed_at      # CR2 of a #PF in the step
    call_uc_ptr(s[S_SAVE], stepper, buf)
    if completed:
        # An STI/MOV-SS shadow ends with the instruction in it; QEMU clears HF_INHIBIT_IRQ at the end of the
        # instruction's block, which one counted instruction never reaches.
        carray(u8_ptr(buf), HFLAGS_OFFSET + 4)[HFLAGS_OFFSET] &= ~np.uint8(HF_INHIBIT_IRQ)
    call_uc_ptr(s[S_RESTORE], vcpu_uc, buf)
    if c[C.APIC_PAGE] != 0:
        access.undo_readonly_write(c)           # what the store left in a read-only APIC register, put back now
    if c[C.EXIT] == C.X_NONE:
        c[C.EXIT] = C.X_MMIO
    return err


class Stepper:
    """One vCPU's second Unicorn instance over the same host memory, with the same TLB fill and exception hook,
    and the device pages' memory hooks (added by io/lapic/vlapic.py and vmx/mmio.py through `hook`).

    Legend: made by the vCPU's constructor; only the vCPU's thread runs it, inside the vcpu loop."""

    def __init__(self, vcpu):
        hv = vcpu.vm.hypervisor
        self.vcpu = vcpu
        uc = self.uc = Uc(UC_ARCH_X86, UC_MODE_64)
        uc.ctl_set_tcg_buffer_size(TCG_BUFFER)
        uc.ctl_exits_enabled(True)
        uc.ctl_set_exits([])
        uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
        uc.mem_map_ptr(0, hv.memory.size, UC_PROT_ALL, hv.memory.ctypes.data)
        ud = vcpu.ctx.ctypes.data
        hook_add(uc, UC_HOOK_TLB_FILL, tlb_fill_hook.address, ud)
        hook_add(uc, UC_HOOK_INTR, intr_hook.address, ud)
        self._context = vcpu.uc.context_save()             # the buffer the CPU state goes through
        self.block = np.array([uc._uch.value, address(self._context.context), address(uclib.uc_context_save),
                               address(uclib.uc_context_restore)], np.uint64)
        vcpu.ctx[C.STEPPER] = self.block.ctypes.data

    def hook(self, kind, cfunc, first, last):
        """A device's memory hook on host-physical [first, last] (its pages), with the vCPU's context block."""
        hook_add(self.uc, kind, cfunc.address, self.vcpu.ctx.ctypes.data, first, last)
