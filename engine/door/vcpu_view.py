"""One vCPU as front ends see it: reads done by its own thread in one visit, changes as its requests.

A visit (vcpu.visit) runs a function on the vCPU's thread and hands back its result: a parked vCPU runs it
from its mailbox, a running one leaves the guest at its next block boundary, runs it and goes straight back
in, without a VM exit. Every part read in one visit is from one moment. What needs no visit (guest memory
walks, decoding, formatting) is done afterwards, here, on the caller's thread.
"""
from ..vcpu import Vcpu
from . import bhyve_state, peek
from .tables import format_stats, stats_by_id, stats_rows


def _pending_event(vcpu):
    event = vcpu.pending_event
    return None if event is None else (event.vector, event.software, event.error_code)


# What one visit can read, by name: each runs on the vCPU's thread and returns plain values.
PARTS = {
    "state": lambda vcpu: vcpu.state,
    "registers": Vcpu.read_registers,
    "vmcs": Vcpu.read_vmcs,
    "guest_state": lambda vcpu: vcpu.read_vmcs(sync=True),      # the VMCS, guest-state area saved first
    "exit_log": Vcpu.read_exit_log,
    "counters": Vcpu.read_counters,
    "pending_event": _pending_event,
    "tlb": Vcpu.read_tlb,
    "l1d": Vcpu.read_l1d,
}


class VcpuView:
    """Legend: holds one vCPU and asks it anew on every call; nothing it returns refers into the engine."""

    def __init__(self, vcpu):
        self._vcpu = vcpu

    @property
    def index(self):
        return self._vcpu.index

    # -- reads ------------------------------------------------------------------------------------------
    def read(self, *parts):
        """{part: value} for the named PARTS, all read by the vCPU's thread in one visit."""
        unknown = [p for p in parts if p not in PARTS]
        if unknown:
            raise KeyError("no part %s of a vCPU to read (parts: %s)" % (", ".join(unknown), ", ".join(PARTS)))
        return self._vcpu.visit(lambda vcpu: {p: PARTS[p](vcpu) for p in parts})

    def registers(self):
        return self.read("registers")["registers"]

    def next_instructions(self, regs, count=8):
        """{bits, instructions} at CS:RIP of `regs` (a visit's registers): read from guest memory and decoded
        here, with the door's own decoder."""
        return peek.next_instructions(self._vcpu.vm, regs, count)

    def translate(self, linear, access=peek.W.ACCESS_READ):
        """guest-linear → guest-physical → host-physical with every entry read on the way (mmu/explain.py),
        under the paging registers of one visit."""
        return peek.translate(self._vcpu.vm, self.registers(), linear, access)

    def vmcs(self):
        return self.read("vmcs")["vmcs"]

    def stats(self, counters=None):
        """{rows, by_id, text} of bhyve's stats, from `counters` (a visit's) or a visit of its own."""
        counters = self.read("counters")["counters"] if counters is None else counters
        return {"rows": stats_rows(counters), "by_id": stats_by_id(counters),
                "text": format_stats(self.index, counters)}

    def bhyve_state(self):
        """What bhyvectl's getters print, from one visit: registers, the VMCS with the guest-state area saved,
        descriptors, intinfo, capabilities and the last exits; and the MSR bitmap page the VMCS points at."""
        got = self.read("state", "registers", "guest_state", "pending_event", "exit_log")
        vmcs = got["guest_state"]
        return {"state": got["state"], "registers": got["registers"], "vmcs": vmcs,
                "descriptors": bhyve_state.descriptors(self._vcpu.vm, got["registers"], vmcs),
                "intinfo": bhyve_state.intinfo(vmcs, got["pending_event"]),
                "capabilities": bhyve_state.capabilities(vmcs, self._vcpu.vmxcaps), "exit_log": got["exit_log"],
                "msr_bitmap": bhyve_state.msr_bitmap(self._vcpu.vm, vmcs)}

    # -- changes: requests the vCPU's thread carries out ------------------------------------------------
    def set_register(self, name, value):
        """bhyvectl --set-REG; StateError while the vCPU runs. Returns the value the register now holds."""
        self._vcpu.set_register(name, value)
        return self.registers()[name]

    def set_capability(self, name, value):
        """bhyvectl --setcap: vmx_setcap's control bit in this vCPU's VMCS, changed by its own thread (from its
        next entry); StateError for what is not available. Returns the capability as it now reads."""
        self._vcpu.visit(lambda vcpu: bhyve_state.set_capability(vcpu.vmcs, vcpu.vmxcaps, name, value))
        return bhyve_state.capabilities(self.vmcs(), self._vcpu.vmxcaps)[name]

    def inject_nmi(self):
        """vm_inject_nmi: delivered through the guest's IDT at the next entry; it also ends a HLT."""
        self._vcpu.inject_nmi()

    def pin(self, hostcpu):
        """Run on host CPU `hostcpu` from the next entry."""
        self._vcpu.pin(hostcpu)

