"""Interrupt messages to the local APICs: what the I/O APIC sends (bhyve's vlapic_deliver_intr, lapic_set_intr).

A message names a destination (an APIC ID in physical mode, a set of logical IDs in logical mode, 0xFF for all),
a delivery mode and a vector. The local APICs it reaches are found as an IPI's are (ipi.ipi_targets: physical,
logical flat or cluster, lowest priority to the first that matches, as bhyve's vlapic_calcdest does); then
fixed and lowest-priority messages set the vector in the IRR with its trigger mode in the TMR (or, with virtual-
interrupt delivery, in the PIR, the TMR and EOI-exit bitmap following the redirection table: update_tmr), NMI and
INIT reach the vCPU as its own ICR's would, ExtINT asks the vCPU for an INTA cycle on the 8259 (the vector comes
from there), and SMI is dropped: no SMM is modeled.
"""
import numpy as np

from ..core.sync import full_fence
from .lapic import deliver, ipi, regs as L
from .vioapic import DELMODE_SHIFT, DEST_SHIFT, DESTMODE_LOGICAL, EXTINT, FIXED, INIT, LOWEST_PRIORITY, NMI, VECTOR, \
    level_triggered


class ApicBus:
    """The VM's APIC bus. `request(vcpu_index, kind, vector, _)` is the platform's way to hand a vCPU an NMI or
    INIT (lapic/regs.py CB_*), the same one the local APICs' ICR uses."""

    def __init__(self, vm, request):
        self.vm, self.request = vm, request

    def targets(self, dest, physical, mode):
        """The vCPU indexes a message reaches, from the local APICs' ID, LDR and DFR as they are now."""
        vcpus = self.vm.vcpus
        n = len(vcpus)
        ids, ldrs, dfrs = (np.array([int(v.lapic.regs[reg >> 2]) for v in vcpus], np.int64)
                           for reg in (L.ID, L.LDR, L.DFR))
        hits = np.zeros(n, np.uint8)
        icr_lo = (mode & 7) << 8 | (0 if physical else L.DEST_LOGICAL)
        ipi.ipi_targets(np.int64(icr_lo), np.int64((dest & 0xFF) << 24), np.int64(-1), ids, ldrs, dfrs, n, hits)
        return np.flatnonzero(hits).tolist()

    def deliver(self, dest, physical, mode, vector, level):
        """Send the message; returns how many local APICs accepted it."""
        accepted = 0
        for i in self.targets(dest, physical, mode):
            vcpu = self.vm.vcpus[i]
            if mode in (FIXED, LOWEST_PRIORITY):
                accepted += bool(deliver.set_intr(vcpu.ctx, np.int64(vector), level))
            elif mode == NMI:
                self.request(i, L.CB_NMI, 0, 0)
                accepted += 1
            elif mode == INIT:
                self.request(i, L.CB_INIT, 0, 0)
                accepted += 1
            elif mode == EXTINT:
                vcpu.lapic.block[L.IB_EXTINT_MSG] = 1
                full_fence()
                deliver.notify(vcpu.ctx, False)
                accepted += 1
        return accepted

    def update_tmr(self, entries):
        """bhyve's vioapic_update_tmr, for each vCPU: the vectors of the level-triggered entries (fixed or lowest
        priority) whose destination reaches it, as its TMR and EOI-exit bitmap (vmx_set_tmr). A vCPU takes its
        bitmap at its next entry (apicv.sync_eoi_exit), where the virtual-interrupt delivery uses it."""
        bitmaps = np.zeros((len(self.vm.vcpus), 4), np.uint64)
        for entry in entries:
            if level_triggered(entry):
                vector = entry & VECTOR
                for i in self.targets(entry >> DEST_SHIFT, not entry & DESTMODE_LOGICAL, (entry >> DELMODE_SHIFT) & 7):
                    bitmaps[i, vector >> 6] |= np.uint64(1 << (vector & 63))
        for vcpu, words in zip(self.vm.vcpus, bitmaps):
            vcpu.lapic.post_eoi_exit(words)
