"""bhyve's userspace exit handlers (vm_run's dispatch table in bhyverun.c): one short function per VM_EXITCODE
the kernel loop hands back, run on the vCPU's thread.

Each takes the vCPU, does what the exit needs and returns; the driver loop (thread.py) goes on by the
vCPU's run state. Paging exits are in paging.py, halts in halting.py.
"""
from unicorn import x86_const as X

from .. import stats as S
from ..core import ctx as C
from ..cpu import l1tf
from ..errors import UnsupportedByModel
from ..io.lapic import deliver, regs as L
from ..mmu import access
from ..vmx import exits as E
from ..vmx import hooks, inject, vmx
from . import build, halting
from .guest import RealModeRegs
from .paging import exit_paging
from .states import HALTED, RUNNING


def exit_bogus(vcpu):
    """AST: a message is waiting (or the timeslice ran out); the driver loop takes it next."""


def exit_mtrap(vcpu):
    """vmexit_mtrap: one instruction ran under the monitor trap flag (bhyvectl --setcap mtrap_exit); the vCPU
    goes on with the next. (bhyve hands it to its gdb stub when one is attached; ours steps by itself.)"""


def exit_hlt(vcpu):
    if vcpu.boot is not None and vcpu.linear_pc() == vcpu.boot[0]:
        image, vcpu.boot = vcpu.boot[1], None            # the reset stub reached the boot mode
        vcpu.apply_regs(image.regs, segments=True)
        build.load_system_segments(vcpu.uc, long_mode=False)
        return
    vcpu.sync_vmcs()
    interrupts_on = bool(vcpu.uc.reg_read(X.UC_X86_REG_EFLAGS) & inject.RFLAGS_IF)
    vcpu.state, vcpu.halt_interruptible, vcpu.halt_for_input = HALTED, interrupts_on, False
    if interrupts_on and halting.interrupt_pending(vcpu):
        vcpu.state = RUNNING                             # vm_handle_hlt: a pending interrupt ends the halt
        return
    vcpu.vm.vcpu_halted(vcpu, interrupts_on)


def exit_exception(vcpu):
    """An exception the kernel left to userspace, classified there (vmx/faults.py, which also recorded the VM exit
    the exception bitmap asks for): real mode, a triple fault, an L1TF transient window first (cpu/l1tf.py)."""
    c = vcpu.ctx
    flags = int(c[C.EV_FLAGS])
    event = inject.Event(int(c[C.EV_VECTOR]), kind=int(c[C.EV_KIND]),
                         error_code=int(c[C.EV_ERROR]) if flags & C.EV_HAS_ERROR else None,
                         cr2=int(c[C.EV_CR2]) if flags & C.EV_HAS_CR2 else None, length=int(c[C.EV_LENGTH]))
    if int(c[C.EXIT]) == C.X_GUEST_PF:
        l1tf.transient_window(vcpu)              # an affected CPU runs ahead before the #PF retires
    deliver(vcpu, event)


def exit_inject(vcpu):
    """Deliver the interrupt the kernel found deliverable (vmx_inject_interrupts step 7) and accept it."""
    vector = int(vcpu.ctx[C.INJECT])
    if vector == vmx.intr.EXTINT:                        # the 8259's INTA cycle gives the vector
        vcpu.lapic.block[L.IB_EXTINT_MSG] = 0            # (and answers an ExtINT message from the I/O APIC)
        vector = vcpu.vm.pic.acknowledge()
        if vector is not None and deliver(vcpu, inject.external_interrupt(vector)):
            vcpu.counters[S.VCPU_EXTINT_COUNT] += 1
        return
    if deliver(vcpu, inject.external_interrupt(vector)):
        deliver.accept(vcpu.ctx, vector)


def exit_ipi(vcpu):
    """An NMI to deliver (or to wait for its window), or INIT/SIPI handled by the messages."""
    c = vcpu.ctx
    if int(vcpu.vmcs["EXIT_REASON"]) == E.NMI_WINDOW:
        vcpu.nmi_blocked = False                         # the stepped instruction was the handler's IRET
    if int(c[C.PENDING]) & L.PEND_NMI:
        if inject.can_take_nmi(vcpu):
            c[C.PENDING] = int(c[C.PENDING]) & ~L.PEND_NMI
            if deliver(vcpu, inject.nmi()):
                vcpu.counters[S.VCPU_NMI_COUNT] += 1
        else:
            c[C.NMI_WINDOW] = 1


def exit_vminsn(vcpu):
    """VMCALL: the BIOS stubs' way into the userspace firmware; anywhere else a #UD."""
    bios = vcpu.vm.bios
    vector = bios.vector_at(vcpu.linear_pc()) if bios else None
    if vector is None:
        deliver(vcpu, inject.Event(6))
        return
    vcpu.counters[S.VMEXIT_USERSPACE] += 1
    if bios.call(vector, RealModeRegs(vcpu.uc), vcpu.vm.memory_access) == "wait_input":
        vcpu.state, vcpu.halt_for_input = HALTED, True   # parked until the console has a key ("wake")
        vcpu.vm.wait_for_input(vcpu)
        return
    vcpu.uc.reg_write(X.UC_X86_REG_RIP, vcpu.uc.reg_read(X.UC_X86_REG_RIP) + 3)


def exit_user(vcpu):
    """A device stopped the vCPU (the VM has already been told why), or a debugger's hook did."""
    if vcpu.ctx[C.DBG_STOP] and vcpu.debug is not None:
        vcpu.debug.trapped()


def exit_unknown(vcpu):
    err = int(vcpu.vmcs["INSTRUCTION_ERROR"])
    vcpu.suspend("error", "the emulator stopped with error %d at rip %#x" % (err, vcpu.uc.reg_read(X.UC_X86_REG_RIP)))


# -- what several handlers share ----------------------------------------------------------------------
def record(vcpu, reason, qualification, stat, intr_info=0):
    vcpu.vmcs["EXIT_INTR_INFO"] = intr_info
    hooks.record_exit(vcpu.ctx, reason, qualification, 0, vcpu.uc.reg_read(X.UC_X86_REG_RIP), stat)


def deliver(vcpu, event):
    """Deliver an event through the guest's IDT; False when it ended in a triple fault (the VM suspends)."""
    try:
        inject.deliver(vcpu, event)
        return True
    except inject.TripleFault as why:
        record(vcpu, E.TRIPLE_FAULT, 0, S.VMEXIT_UNKNOWN)
        vcpu.suspend("triplefault", "triple fault (%s) at rip %#x" % (why, vcpu.uc.reg_read(X.UC_X86_REG_RIP)))
        return False


EXIT_HANDLERS = {
    vmx.EXITCODE_BOGUS: exit_bogus, vmx.EXITCODE_PAUSE: exit_bogus, vmx.EXITCODE_HLT: exit_hlt,
    vmx.EXITCODE_PAGING: exit_paging, vmx.EXITCODE_EXCEPTION: exit_exception, vmx.EXITCODE_VMINSN: exit_vminsn,
    vmx.EXITCODE_USER: exit_user, vmx.EXITCODE_INJECT: exit_inject, vmx.EXITCODE_IPI: exit_ipi,
    vmx.EXITCODE_MTRAP: exit_mtrap,
}


def handle(vcpu, code):
    """Dispatch one VM_EXITCODE; what the model cannot do yet suspends the VM saying so."""
    try:
        EXIT_HANDLERS.get(code, exit_unknown)(vcpu)
    except UnsupportedByModel as problem:
        vcpu.suspend("unsupported", "the model cannot do this yet: %s" % problem)
