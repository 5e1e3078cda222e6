"""The MMIO pages served by userspace devices (the I/O APIC's at 0xFEC00000, the PCI BARs' window): each vCPU's
window pages, and the exit every load or store in them is.

On VT-x a guest-physical page with no memory behind it is an EPT violation (exit 48) on every access; bhyve
decodes the instruction (vm_handle_inst_emul, VM_EXITCODE_INST_EMUL) and calls the device's read or write
handler with the address, the width and the value. Here the vCPU's TLB fill refuses the page and the
instruction runs on the vCPU's stepper (vmx/emulate.py), whose TLB fill maps the page (never executable) to a
host page of the vCPU's own, its window, and whose memory hooks on the window run for every access in it,
whatever the instruction. The read hook runs before the load: it asks the device for the value and puts those
bytes in the window, where the load then finds them. The write hook runs before the store: it hands the device
the value, and the store lands in the window, where nothing reads it (every read is answered afresh). Each
access is recorded as the EPT violation it is, with the guest-linear address of the refused access (bits 7
and 8 set: the access was to the linear address's translation, which is what tells bhyve's vmx_exit_process
an MMIO access from a paging fault), and counted as bhyve counts an instruction-emulation exit handled in
userspace. A window per vCPU: two vCPUs reading at once never see each other's answer.

The window is MMIO_PAGES pages: page 0 stands for the I/O APIC's page (MMIO_GPA), page 1 + i for the PCI
memory window's page i (MMIO_RANGE + 4096 i), so the page of the host address says which guest-physical page an
access is to (PCI devices' BARs: engine/pci/device.py).
"""
import numpy as np
from numba import carray, njit
from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE
from unicorn import x86_const as X

from .. import stats as S
from ..core import ctx as C
from ..core import vmcs as V
from ..core.regs import rd
from ..io.lapic.access import MEM_HOOK
from ..native import NUMBA, call_host, hook, u64_ptr, u8_ptr
from . import exits as E
from .hooks import record_exit

PAGE = 4096
WRITE = 1 << 8              # the callback's `how`: size in bits 7:0, a store when bit 8 is set
U = np.uint64


@njit(**NUMBA)
def qualification(write):
    """Exit 48's qualification for an access to a page the EPT does not map (SDM Table 28-7): a read or a write,
    the entry's permissions (bits 3-5) all clear, the guest-linear address valid (bit 7) and the access to its
    translation (bit 8)."""
    return U(E.EPT_WRITE if write else E.EPT_READ) | U(E.EPT_GLA_VALID) | U(E.EPT_TRANSLATION)


@njit(**NUMBA)
def fill(window, offset, size, value):
    """Put the `size` bytes of `value` (little-endian; bytes past its 8 are 0) at `offset` of the window, the part
    inside the page only."""
    end = min(np.int64(offset) + np.int64(size), np.int64(PAGE))
    for at in range(max(np.int64(offset), np.int64(0)), end):
        shift = 8 * (at - np.int64(offset))
        window[at] = np.uint8((U(value) >> U(shift)) & U(0xFF)) if shift < 64 else np.uint8(0)


@njit(**NUMBA)
def exit_for(c, gpa, write):
    """The access as VT-x reports it and bhyve counts it: exit 48 at the device's guest-physical address and the
    linear address the guest used (its page the refused access's, MMIO_GLA), instruction emulation, handled in
    userspace."""
    record_exit(c, E.EPT_VIOLATION, qualification(write), 0, rd(c, X.UC_X86_REG_RIP), S.VMEXIT_INST_EMUL)
    carray(u64_ptr(c[C.STATS]), S.NSLOTS)[S.VMEXIT_USERSPACE] += 1
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    vmcs[V.GUEST_PHYSICAL_ADDRESS] = gpa
    vmcs[V.GUEST_LINEAR_ADDRESS] = (c[C.MMIO_GLA] & ~U(PAGE - 1)) | (U(gpa) & U(PAGE - 1))


@njit(**NUMBA)
def window_of(c, index):
    return carray(u8_ptr(U(c[C.MEM]) + U(c[C.MMIO_PAGE]) + U(index) * U(PAGE)), PAGE)


@njit(**NUMBA)
def gpa_of(c, index, offset):
    """The guest-physical address window page `index` and `offset` stand for."""
    if index == 0:
        return c[C.MMIO_GPA] + U(offset)
    return c[C.MMIO_RANGE] + U(index - 1) * U(PAGE) + U(offset)


@njit(**NUMBA)
def device_read(c, gpa, size):
    """A load of `size` bytes at the device's guest-physical `gpa`: the exit, and what the device answers (bytes
    past the access's width are 0)."""
    exit_for(c, gpa, False)
    got = call_host(c[C.MMIO_CALLBACK], c[C.VCPUID], gpa, U(size), U(0))
    return got if size >= 8 else got & ((U(1) << U(8 * size)) - U(1))


@njit(**NUMBA)
def device_write(c, gpa, size, value):
    """A store of `size` bytes of `value` at the device's guest-physical `gpa`: the exit, and the device's write."""
    exit_for(c, gpa, True)
    call_host(c[C.MMIO_CALLBACK], c[C.VCPUID], gpa, U(size) | U(WRITE), U(value))


@hook(MEM_HOOK)
def read_hook(uc, access, address, size, value, ud):
    c = carray(ud, C.SIZE)
    index = np.int64(U(address) - c[C.MMIO_PAGE]) >> 12
    offset = np.int64(U(address) - c[C.MMIO_PAGE]) & (PAGE - 1)
    fill(window_of(c, index), offset, np.int64(size), device_read(c, gpa_of(c, index, offset), size))


@hook(MEM_HOOK)
def write_hook(uc, access, address, size, value, ud):
    c = carray(ud, C.SIZE)
    index = np.int64(U(address) - c[C.MMIO_PAGE]) >> 12
    offset = np.int64(U(address) - c[C.MMIO_PAGE]) & (PAGE - 1)
    device_write(c, gpa_of(c, index, offset), size, U(value))


class Window:
    """One vCPU's window on the MMIO page at guest-physical `gpa` and on the `range_pages` pages from `range_gpa`
    (the PCI memory window): host pages, their two hooks, the context slots.

    Legend: made by the vCPU's constructor, freed with the VM; only the vCPU's own hooks touch the pages."""

    def __init__(self, vcpu, gpa, callback_address, range_gpa=0, range_pages=0):
        hv = vcpu.vm.hypervisor
        self.vcpu = vcpu
        size = PAGE * (1 + range_pages)
        self.hpa = hv.allocator.allocate(size, "vcpu%d MMIO window" % vcpu.index)
        hv.memory[self.hpa:self.hpa + size] = 0
        c = vcpu.ctx
        c[C.MMIO_PAGE], c[C.MMIO_GPA], c[C.MMIO_CALLBACK] = self.hpa, gpa, callback_address
        c[C.MMIO_RANGE], c[C.MMIO_PAGES] = range_gpa, 1 + range_pages
        for kind, hook in ((UC_HOOK_MEM_READ, read_hook), (UC_HOOK_MEM_WRITE, write_hook)):
            vcpu.stepper.hook(kind, hook, self.hpa, self.hpa + size - 1)

    def free(self):
        self.vcpu.ctx[C.MMIO_PAGE] = 0
        self.vcpu.vm.hypervisor.allocator.free(self.hpa)
