"""REST endpoints vmmctl needs beyond api.py (/api/v1/ctl): one vCPU's whole state in one read, register
writes, capabilities, one `--run`, NMI injection. Everything goes through the engine's door: a vCPU's state
is read by its own thread in one visit, and changes are requests its thread carries out."""
from flask import Blueprint, g

from engine.door import CAPABILITIES
from engine.door.tables import REGISTERS

from ..sessions.errors import ApiError
from ..sessions.fleet import engine_error
from . import panels
from .access import control_required
from .api import fleet
from .api_schema import guard

bp = Blueprint("ctl", __name__, url_prefix="/api/v1/ctl")
bp.before_request(guard)


def session_vcpu(name, index):
    vm = fleet().get(name).vm
    return vm, panels.vcpu_of(vm, index)


def engine_call(action, *args):
    try:
        return action(*args)
    except Exception as problem:
        raise engine_error(problem) from None


@bp.get("/vms/<name>/vcpus/<int:index>")
def vcpu_state(name, index):
    """Everything bhyvectl's getters print for one vCPU, read by its thread at one moment."""
    _, vcpu = session_vcpu(name, index)
    state = vcpu.bhyve_state()
    return {"vcpu": index, "vm": name, "state": state["state"], "registers": state["registers"],
            "descriptors": state["descriptors"], "vmcs": state["vmcs"], "intinfo": state["intinfo"],
            "capabilities": state["capabilities"], "exit_log": state["exit_log"][-16:],
            "msr_bitmap": state["msr_bitmap"]}


@bp.put("/vms/<name>/vcpus/<int:index>/registers/<reg>")
@control_required
def set_register(name, index, reg):
    """bhyvectl --set-REG: only while the VM is paused; 409 otherwise."""
    vm, vcpu = session_vcpu(name, index)
    if reg not in REGISTERS:
        raise ApiError(404, "no register %r: the engine has %s" % (reg, ", ".join(REGISTERS)))
    value = g.body["value"]
    if vm.state != "paused":
        raise ApiError(409, "VM %r is %s: pause it before setting %s" % (name, vm.state, reg))
    return {"vcpu": index, "register": reg, "value": engine_call(vcpu.set_register, reg, value)}


@bp.put("/vms/<name>/vcpus/<int:index>/capabilities/<cap>")
@control_required
def set_capability(name, index, cap):
    """bhyvectl --setcap: only what the engine honours; the rest is 'not available' (409)."""
    _, vcpu = session_vcpu(name, index)
    if cap not in CAPABILITIES:
        raise ApiError(404, "no capability %r (known: %s)" % (cap, ", ".join(CAPABILITIES)))
    return {"vcpu": index, "capability": cap, "value": engine_call(vcpu.set_capability, cap, g.body["value"])}


@bp.post("/vms/<name>/vcpus/<int:index>/run")
@control_required
def run_once(name, index):
    """bhyvectl --run on a paused VM: one VM_RUN of this vCPU, to the first exit bhyve's kernel hands to
    userspace; the exit, its vm_exitcode and RAX as the exit saw them (engine/door/vm_view.py run_once)."""
    vm, _ = session_vcpu(name, index)
    answer = engine_call(vm.run_once, index)
    return {"vcpu": index, **answer}


@bp.post("/vms/<name>/vcpus/<int:index>/nmi")
@control_required
def inject_nmi(name, index):
    """bhyvectl --inject-nmi."""
    _, vcpu = session_vcpu(name, index)
    engine_call(vcpu.inject_nmi)
    return {"vcpu": index, "injected": "nmi"}
