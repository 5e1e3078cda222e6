"""What bhyvectl's getters read beyond the registers, from one visit: segment descriptors, intinfo, capabilities,
and the MSR bitmap page the VMCS points at.

bhyve's libvmmapi gets these with vm_get_desc, vm_get_intinfo and vm_get_capability; here they come out of
the VMCS and the registers one visit read, and the descriptor tables in guest memory (peek.py).
"""
import struct

from ..errors import StateError
from ..vmx import controls
from ..vmx import exits as E
from ..vmx import msr_bitmap as MB
from . import peek

# bhyve's capabilities (libvmmapi capstrmap): those vmx_getcap offers, each a bit of the vCPU's VMCS controls
# (vmx/controls.py CAPABILITIES), then those it does not offer here
CAPABILITIES = tuple(controls.CAPABILITIES) + controls.UNAVAILABLE
UNUSABLE = {"base": 0, "limit": 0, "access": 0x10000}


def descriptors(vm, regs, vmcs):
    """{seg: {base, limit, access}} in the VMCS access-rights format. GDTR/IDTR/LDTR/TR come from the
    guest-state area; CS..SS from the descriptor their selector names (real mode: base = selector << 4)."""
    out = {t: {"base": vmcs["GUEST_%s_BASE" % t.upper()], "limit": vmcs["GUEST_%s_LIMIT" % t.upper()]}
           for t in ("gdtr", "idtr")}
    for t in ("ldtr", "tr"):
        out[t] = {"base": vmcs["GUEST_%s_BASE" % t.upper()], "limit": vmcs["GUEST_%s_LIMIT" % t.upper()],
                  "access": vmcs["GUEST_%s_ACCESS_RIGHTS" % t.upper()]}
    for seg in ("cs", "ds", "es", "fs", "gs", "ss"):
        out[seg] = segment_descriptor(vm, regs, vmcs, out, seg)
    return out


def segment_descriptor(vm, regs, vmcs, tables, seg):
    selector = regs[seg]
    if not regs["cr0"] & 1:
        return {"base": selector << 4, "limit": 0xFFFF, "access": 0x9B if seg == "cs" else 0x93}
    if selector & ~3 == 0:
        return UNUSABLE                                           # a null selector
    table = tables["ldtr" if selector & 4 else "gdtr"]
    raw = peek.read_linear(vm, regs, table["base"] + (selector & ~7), 8)
    if len(raw) < 8:                                              # the table is not mapped: never guess
        return UNUSABLE
    low, high = struct.unpack("<II", raw)
    limit = (low & 0xFFFF) | (high & 0xF0000)
    if high & (1 << 23):                                          # G: 4 KiB granularity
        limit = (limit << 12) | 0xFFF
    base = (low >> 16) | ((high & 0xFF) << 16) | (high & 0xFF000000)
    if seg in ("fs", "gs") and regs["efer"] & peek.W.EFER_LMA:
        base = vmcs["GUEST_%s_BASE" % seg.upper()]                # long mode: the FS/GS base MSRs
    return {"base": base, "limit": limit, "access": (high >> 8) & 0xF0FF}


def intinfo(vmcs, event):
    """vm_get_intinfo: pending = the event the last exit interrupted (IDT-vectoring information), current =
    the event injected at the next entry (or `event`, the one the vCPU is about to deliver); bhyve's format
    (VMCS layout, error code << 32)."""
    pending = with_error_code(vmcs["IDT_VECTORING_INFO"], vmcs["IDT_VECTORING_ERROR"])
    current = with_error_code(vmcs["ENTRY_INTR_INFO"], vmcs["ENTRY_EXCEPTION_ERROR"])
    if not current & E.INTR_VALID and event is not None:
        vector, software, error_code = event
        kind = E.TYPE_SWINTR if software else E.TYPE_HWEXC if vector < 32 else E.TYPE_EXTINT
        current = E.interruption_info(vector, kind, error_code is not None) | (error_code or 0) << 32
    return {"pending": pending, "current": current}


def with_error_code(info, error_code):
    return info | (error_code << 32 if info & E.INTR_ERRCODE else 0)


def capabilities(vmcs, caps):
    """{name: 1, 0 or None (not available)}: vmx_getcap, from the control bits of `vmcs` (a snapshot)."""
    return {name: controls.getcap(vmcs, caps, name) for name in CAPABILITIES}


def set_capability(vmcs, caps, name, value):
    """vmx_setcap on a vCPU's VMCS; StateError for a name bhyve does not know or a capability not available."""
    if name not in CAPABILITIES:
        raise StateError("no capability %r (known: %s)" % (name, ", ".join(CAPABILITIES)))
    if not controls.setcap(vmcs, caps, name, value):
        why = "the modeled CPU's VMX capability MSRs do not allow it" if name in controls.CAPABILITIES else \
            "the engine does not model it"
        raise StateError("capability %r is not available: %s" % (name, why))


def msr_bitmap(vm, vmcs):
    """[[msr, readable, writable]] for each MSR the page at the VMCS's MSR-bitmap address lets through, in
    bhyvectl's dump_intel_msr_pm order (bhyvectl maps that host-physical page through /dev/mem); [] when the
    address is not a page of the modeled host's memory."""
    at, memory = vmcs["MSR_BITMAP"], vm.hypervisor.memory
    if at == 0 or at % MB.PAGE or at + MB.PAGE > len(memory):
        return []
    return [[msr, r, w] for msr, r, w in MB.permissions(memory[at:at + MB.PAGE])]
