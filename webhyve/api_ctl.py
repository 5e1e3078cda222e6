"""REST endpoints vmmctl needs beyond api.py (/api/v1/ctl): one vCPU's whole state in one read, register
writes, capabilities, one `--run`, NMI injection. Everything is read and changed through the engine's
public API (registers, set_register, sync_vmcs, read_linear, the VMCS, stats and the exit log)."""
import struct
import time

from flask import Blueprint, g

from engine import stats as S
from engine.vcpu import GPRS, SEGMENTS
from engine.vmx import exits as E

from . import panels
from .access import control_required
from .api import fleet
from .api_schema import guard
from .errors import ApiError
from .fleet import engine_error

bp = Blueprint("ctl", __name__, url_prefix="/api/v1/ctl")
bp.before_request(guard)
REGISTERS = GPRS + SEGMENTS + ("efer",)          # the engine's register table: what --get/--set-REG cover
RUN_TIMEOUT = 5.0
RUNNING_REGISTERS = ("rip", "rsp", "rflags")      # what the engine knows of a running vCPU
CR0_PE, EFER_LMA = 1, 1 << 10

# bhyve's capabilities (libvmmapi capstrmap), as far as the engine models them:
#   "fixed": always on, cannot be changed; ("bitmap", bit): a bit of the VMCS exception bitmap the engine
#   honours (an exception there is recorded as an EXCEPTION_NMI exit); None: not available.
CAPABILITIES = {
    "hlt_exit": "fixed",                         # every HLT is hooked and exits (vcpu._exit_hlt)
    "mtrap_exit": None, "pause_exit": None,
    "unrestricted_guest": "fixed",               # real-mode guests run directly, as with unrestricted guest
    "enable_invpcid": None,
    "bpt_exit": ("bitmap", 3),                   # #BP in EXCEPTION_BITMAP
    "rdpid": None, "rdtscp": None, "ipi_exit": None, "mask_hwintr": None, "rflags_tf": None,
}


def session_vcpu(name, index):
    vm = fleet().get(name).vm
    return vm, panels.vcpu_of(vm, index)


@bp.get("/vms/<name>/vcpus/<int:index>")
def vcpu_state(name, index):
    """Everything bhyvectl's getters print for one vCPU, read at one moment."""
    vm, vcpu = session_vcpu(name, index)
    regs = {k: int(v) for k, v in vcpu.registers().items()}
    if vcpu.state == "running":                  # parked between two entries is no stable state to show
        regs = {k: regs[k] for k in RUNNING_REGISTERS}
    complete = "cr0" in regs
    if complete:
        vcpu.sync_vmcs()                         # the guest-state area as a VM exit would save it now
    vmcs = vcpu.vmcs.snapshot()
    return {"vcpu": index, "vm": name, "state": vcpu.state, "complete": complete, "registers": regs,
            "descriptors": descriptors(vcpu, regs, vmcs) if complete else None, "vmcs": vmcs,
            "intinfo": intinfo(vcpu, vmcs), "capabilities": capabilities(vcpu),
            "exit_log": vcpu.exit_log()[-16:]}


def descriptors(vcpu, regs, vmcs):
    """{seg: {base, limit, access}} in the VMCS access-rights format. GDTR/IDTR/LDTR/TR come from the
    guest-state area; CS..SS from the descriptor their selector names (real mode: base = selector << 4)."""
    out = {t: {"base": vmcs["GUEST_%s_BASE" % t.upper()], "limit": vmcs["GUEST_%s_LIMIT" % t.upper()]}
           for t in ("gdtr", "idtr")}
    for t in ("ldtr", "tr"):
        out[t] = {"base": vmcs["GUEST_%s_BASE" % t.upper()], "limit": vmcs["GUEST_%s_LIMIT" % t.upper()],
                  "access": vmcs["GUEST_%s_ACCESS_RIGHTS" % t.upper()]}
    for seg in SEGMENTS:
        out[seg] = segment_descriptor(vcpu, regs, vmcs, out, seg)
    return out


def segment_descriptor(vcpu, regs, vmcs, tables, seg):
    selector = regs[seg]
    if not regs["cr0"] & CR0_PE:
        return {"base": selector << 4, "limit": 0xFFFF, "access": 0x9B if seg == "cs" else 0x93}
    if selector & ~3 == 0:
        return {"base": 0, "limit": 0, "access": 0x10000}         # a null selector: unusable
    table = tables["ldtr" if selector & 4 else "gdtr"]
    try:
        low, high = struct.unpack("<II", vcpu.read_linear(table["base"] + (selector & ~7), 8))
    except Exception:                            # the table is not mapped: say unusable, never guess
        return {"base": 0, "limit": 0, "access": 0x10000}
    limit = (low & 0xFFFF) | (high & 0xF0000)
    if high & (1 << 23):                         # G: 4 KiB granularity
        limit = (limit << 12) | 0xFFF
    base = (low >> 16) | ((high & 0xFF) << 16) | (high & 0xFF000000)
    if seg in ("fs", "gs") and regs.get("efer", 0) & EFER_LMA:
        base = vmcs["GUEST_%s_BASE" % seg.upper()]              # long mode: the FS/GS base MSRs, not the descriptor
    return {"base": base, "limit": limit, "access": (high >> 8) & 0xF0FF}


def intinfo(vcpu, vmcs):
    """vm_get_intinfo: pending = the event the last exit interrupted (IDT-vectoring information),
    current = the event being injected at the next entry; bhyve's format (VMCS layout, error code << 32)."""
    pending = with_error_code(vmcs["IDT_VECTORING_INFO"], vmcs["IDT_VECTORING_ERROR"])
    current = with_error_code(vmcs["ENTRY_INTR_INFO"], vmcs["ENTRY_EXCEPTION_ERROR"])
    event = vcpu.pending_event
    if not current & E.INTR_VALID and event is not None:
        kind = E.TYPE_SWINTR if event.software else E.TYPE_HWEXC if event.vector < 32 else E.TYPE_EXTINT
        current = E.interruption_info(event.vector, kind, event.error_code is not None)
        current |= (event.error_code or 0) << 32
    return {"pending": pending, "current": current}


def with_error_code(info, error_code):
    return info | (error_code << 32 if info & E.INTR_ERRCODE else 0)


def capabilities(vcpu):
    """{name: 1, 0 or None (not available)}."""
    out = {}
    for name, how in CAPABILITIES.items():
        if how == "fixed":
            out[name] = 1
        elif how is None:
            out[name] = None
        else:
            out[name] = int(vcpu.vmcs["EXCEPTION_BITMAP"]) >> how[1] & 1
    return out


@bp.put("/vms/<name>/vcpus/<int:index>/registers/<reg>")
@control_required
def set_register(name, index, reg):
    """bhyvectl --set-REG: only while the vCPU is parked (paused); 409 while it runs."""
    vm, vcpu = session_vcpu(name, index)
    if reg not in REGISTERS:
        raise ApiError(404, "no register %r: the engine has %s" % (reg, ", ".join(REGISTERS)))
    value = g.body["value"]
    if vm.state != "paused":
        raise ApiError(409, "VM %r is %s: pause it before setting %s" % (name, vm.state, reg))
    try:
        vcpu.set_register(reg, value)
    except Exception as problem:
        raise engine_error(problem) from None
    return {"vcpu": index, "register": reg, "value": int(vcpu.registers()[reg])}


@bp.put("/vms/<name>/vcpus/<int:index>/capabilities/<cap>")
@control_required
def set_capability(name, index, cap):
    """bhyvectl --setcap: only what the engine honours; the rest is 'not available' (409)."""
    _, vcpu = session_vcpu(name, index)
    if cap not in CAPABILITIES:
        raise ApiError(404, "no capability %r (known: %s)" % (cap, ", ".join(CAPABILITIES)))
    value = g.body["value"]
    how = CAPABILITIES[cap]
    if how is None:
        raise ApiError(409, "capability %r is not available: the engine does not model it" % cap)
    if how == "fixed":
        if value != 1:
            raise ApiError(409, "capability %r is always set in this engine and cannot be cleared" % cap)
    else:
        bitmap = int(vcpu.vmcs["EXCEPTION_BITMAP"])
        vcpu.vmcs["EXCEPTION_BITMAP"] = bitmap | (1 << how[1]) if value else bitmap & ~(1 << how[1])
    return {"vcpu": index, "capability": cap, "value": capabilities(vcpu)[cap]}


@bp.post("/vms/<name>/vcpus/<int:index>/run")
@control_required
def run_once(name, index):
    """bhyvectl --run on a paused VM: resume until this vCPU records its next VM exit, pause again, and
    return that exit (from the exit log) with the registers an INOUT dump needs."""
    vm, vcpu = session_vcpu(name, index)
    if vm.state != "paused":
        raise ApiError(409, "VM %r is %s: --run steps a paused VM to its next exit (pause it first)" % (name, vm.state))
    before = int(vcpu.counters[S.VMEXIT_COUNT])
    try:
        vm.resume()
        deadline = time.monotonic() + RUN_TIMEOUT
        while int(vcpu.counters[S.VMEXIT_COUNT]) == before and time.monotonic() < deadline \
                and vm.state == "running":
            time.sleep(0.001)
        if vm.state in ("running", "halted"):
            vm.pause()
    except Exception as problem:
        raise engine_error(problem) from None
    new = int(vcpu.counters[S.VMEXIT_COUNT]) - before
    log = vcpu.exit_log()
    if new <= 0 or not log:
        raise ApiError(409, "vcpu%d of %r made no VM exit in %gs (VM now %s)" % (index, name, RUN_TIMEOUT, vm.state))
    record = log[-min(new, len(log))]
    regs = vcpu.registers()
    return {"vcpu": index, "state": vm.state, "exit": record, "rax": int(regs.get("rax", 0)),
            "instruction_error": int(vcpu.vmcs["INSTRUCTION_ERROR"]), "exits": new}


@bp.post("/vms/<name>/vcpus/<int:index>/nmi")
@control_required
def inject_nmi(name, index):
    """bhyvectl --inject-nmi, when the engine has an NMI injection API; 501 until it does."""
    _, vcpu = session_vcpu(name, index)
    if not hasattr(vcpu, "inject_nmi"):
        raise ApiError(501, "NMI injection is not supported: the engine has no NMI injection API yet")
    try:
        vcpu.inject_nmi()
    except Exception as problem:
        raise engine_error(problem) from None
    return {"vcpu": index, "injected": "nmi"}

