"""What bhyvectl's getters read beyond the registers, from one visit: segment descriptors, intinfo, capabilities.

bhyve's libvmmapi gets these with vm_get_desc, vm_get_intinfo and vm_get_capability; here they come out of
the VMCS and the registers one visit read, and the descriptor tables in guest memory (peek.py).
"""
import struct

from ..errors import StateError
from ..vmx import exits as E
from . import peek

# bhyve's capabilities (libvmmapi capstrmap), as far as the engine models them:
#   "fixed": always on, cannot be changed; ("bitmap", bit): a bit of the VMCS exception bitmap the engine
#   honours (an exception there is recorded as an EXCEPTION_NMI exit); None: not available.
CAPABILITIES = {
    "hlt_exit": "fixed",                         # every HLT is hooked and exits (the HLT exit handler)
    "mtrap_exit": None, "pause_exit": None,
    "unrestricted_guest": "fixed",               # real-mode guests run directly, as with unrestricted guest
    "enable_invpcid": None,
    "bpt_exit": ("bitmap", 3),                   # #BP in EXCEPTION_BITMAP
    "rdpid": None, "rdtscp": None, "ipi_exit": None, "mask_hwintr": None, "rflags_tf": None,
}
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


def capabilities(exception_bitmap):
    """{name: 1, 0 or None (not available)}."""
    return {name: 1 if how == "fixed" else None if how is None else exception_bitmap >> how[1] & 1
            for name, how in CAPABILITIES.items()}


def capability_change(name, value):
    """The exception-bitmap bit `--setcap=value --capname=name` changes; StateError for what cannot change."""
    if name not in CAPABILITIES:
        raise StateError("no capability %r (known: %s)" % (name, ", ".join(CAPABILITIES)))
    how = CAPABILITIES[name]
    if how is None:
        raise StateError("capability %r is not available: the engine does not model it" % name)
    if how == "fixed":
        if value != 1:
            raise StateError("capability %r is always set in this engine and cannot be cleared" % name)
        return None
    return how[1]
