"""The userspace side of one vCPU's local APIC: its pages and interrupt block, reset, readers, and its peers."""
import numpy as np
from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn.unicorn_py3.unicorn import uclib

from ...core import ctx as C
from ...core.sync import CLOCK_GETTIME, SCHED_YIELD, SYSCALL, full_fence
from ...native import address
from .access import read_hook, write_hook
from .regs import (DFR, ESR, IB_BUS_WORD, IB_CALLBACK, IB_CLOCK, IB_CONTEXT, IB_CONTEXT_RESTORE, IB_CONTEXT_SAVE,
                   IB_EOI_EXIT, IB_EOI_EXIT_SEEN, IB_EOI_EXIT_SEQ, IB_NVCPUS, IB_SCHED_YIELD, IB_SIZE, IB_SYSCALL,
                   IB_TIMER_HZ, IB_UC_CTL, IB_VCPUS, ICR_HI, ICR_LO, ID, IRR, ISR, LDR, LVT_ERROR, LVT_INDEX,
                   LVT_LINT0, LVT_LINT1, LVT_MASKED, LVT_TIMER, PPR, SVR, TIMER_DCR, TIMER_ICR, TMR, TPR, VER, VERSION)


class Vlapic:
    """One vCPU's local APIC: its virtual-APIC page and PIR descriptor (two host pages), its interrupt block.

    Legend: set up once by the vCPU's constructor; `block` entries IB_VCPUS/IB_NVCPUS are filled by the VM
    when every vCPU exists. The page is written by the vCPU's kernels and (atomically) by notifiers.
    """

    def __init__(self, vcpu, callback_address):
        hv = vcpu.vm.hypervisor
        self.vcpu, self.memory = vcpu, hv.memory
        self.hpa = hv.allocator.allocate(2 * 4096, "vcpu%d local APIC" % vcpu.index)
        self.pir_hpa = self.hpa + 4096
        self.memory[self.hpa:self.hpa + 2 * 4096] = 0
        self.regs = self.memory[self.hpa:self.hpa + 4096].view(np.uint32)
        self.block = np.zeros(IB_SIZE, np.uint64)
        self._context = vcpu.uc.context_save()          # the buffer intr.shadowed() saves into
        self.block[IB_CLOCK] = CLOCK_GETTIME
        self.block[IB_TIMER_HZ] = vcpu.vm.profile.crystal_hz
        self.block[IB_CONTEXT] = address(self._context.context)
        self.block[IB_CONTEXT_SAVE] = address(uclib.uc_context_save)
        self.block[IB_CONTEXT_RESTORE] = address(uclib.uc_context_restore)
        self.block[IB_CALLBACK] = callback_address
        self.block[IB_UC_CTL] = address(uclib.uc_ctl)
        self.block[IB_SCHED_YIELD] = SCHED_YIELD
        self.block[IB_SYSCALL] = SYSCALL
        c = vcpu.ctx
        c[C.APIC_PAGE], c[C.PIR_DESC], c[C.INTR] = self.hpa, self.pir_hpa, self.block.ctypes.data
        for kind, hook in ((UC_HOOK_MEM_READ, read_hook), (UC_HOOK_MEM_WRITE, write_hook)):
            vcpu.stepper.hook(kind, hook, self.hpa, self.hpa + 0xFFF)
        self.reset()

    def reset(self):
        """The state after RESET or INIT (SDM §10.4.7.1): IRR/ISR/TMR clear, LVTs masked, timer stopped."""
        ident = self.vcpu.index
        r = np.zeros_like(self.regs)
        r[ID >> 2], r[VER >> 2], r[DFR >> 2], r[SVR >> 2] = ident << 24, VERSION, 0xFFFFFFFF, 0xFF
        for lvt in LVT_INDEX:
            r[lvt >> 2] = LVT_MASKED
        # One pass over the page: the ID, LDR and DFR words go from old to new without reading 0 on the way.
        # Another vCPU looks them up for an IPI's destination at any moment; zeroing first lost the SIPI that
        # a BSP sends right after the INIT this reset handles (the smp guest on 16 vCPUs under load).
        self.regs[:] = r
        self.memory[self.pir_hpa:self.pir_hpa + 64] = 0
        c = self.vcpu.ctx
        for slot in (C.TIMER_DEADLINE, C.TIMER_PERIOD, C.TIMER_START, C.INTR_WINDOW, C.NMI_WINDOW, C.LAPIC_FIX,
                     C.LAPIC_ZERO):
            c[slot] = 0
        self.block[IB_EOI_EXIT_SEEN] = ~np.uint64(0)    # the TMR just cleared: the next entry copies the bitmap again

    def post_eoi_exit(self, words):
        """The I/O APIC's EOI-exit bitmap for this vCPU (io/apicbus.py update_tmr, under the I/O APIC's lock, so
        one writer at a time): an odd sequence number while the words change, the next even one after."""
        self.block[IB_EOI_EXIT_SEQ] += np.uint64(1)
        full_fence()
        self.block[IB_EOI_EXIT:IB_EOI_EXIT + 4] = words
        full_fence()
        self.block[IB_EOI_EXIT_SEQ] += np.uint64(1)

    def register(self, offset):
        return int(self.regs[offset >> 2])

    def vector_set(self, base):
        """The vectors set in IRR, ISR or TMR."""
        return [v for v in range(256) if self.regs[(base >> 2) + 4 * (v >> 5)] >> (v & 31) & 1]

    def snapshot(self):
        """Named registers, for panels and tests."""
        names = {"ID": ID, "VER": VER, "TPR": TPR, "PPR": PPR, "LDR": LDR, "DFR": DFR, "SVR": SVR, "ESR": ESR,
                 "ICR_LO": ICR_LO, "ICR_HI": ICR_HI, "LVT_TIMER": LVT_TIMER, "LVT_LINT0": LVT_LINT0,
                 "LVT_LINT1": LVT_LINT1, "LVT_ERROR": LVT_ERROR, "TIMER_ICR": TIMER_ICR, "TIMER_DCR": TIMER_DCR}
        out = {name: self.register(off) for name, off in names.items()}
        out.update(IRR=self.vector_set(IRR), ISR=self.vector_set(ISR), TMR=self.vector_set(TMR))
        return out

    def free(self):
        self.vcpu.ctx[C.APIC_PAGE] = 0
        self.vcpu.vm.hypervisor.allocator.free(self.hpa)


def connect(vcpus):
    """Give every vCPU's kernels the table of its peers' context blocks (IPI destinations)."""
    table = np.array([v.ctx.ctypes.data for v in vcpus] + [0], np.uint64)     # the last word: the bus lock
    for v in vcpus:
        v.lapic.block[IB_VCPUS], v.lapic.block[IB_NVCPUS] = table.ctypes.data, len(vcpus)
        v.lapic.block[IB_BUS_WORD] = table.ctypes.data + 8 * len(vcpus)
    return table
