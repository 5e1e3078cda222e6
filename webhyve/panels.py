"""What the VM page's panels show, as JSON-ready dicts, built from the engine's tables and public API.

Registers (with a capstone disassembly of the next instructions), the VMCS by group with encodings and
the last exit decoded, bhyve's stats, the tunables, and the EPT/TLB/L1D views when the engine has them.
The REST API and the /inspect namespace both serve these, so a panel and `curl` always agree.
"""
import capstone

from engine import stats as S
from engine.vmx import exits as E
from engine.vmx import vmcs as V

from .errors import ApiError

CR0_PE, EFER_LMA = 1, 1 << 10
DISASM_BYTES, DISASM_COUNT = 64, 8
_CS_MODES = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}


def vcpu_of(vm, index):
    if not isinstance(index, int) or not 0 <= index < len(vm.vcpus):
        raise ApiError(404, "VM %r has vCPUs 0 to %d, not %r" % (vm.name, len(vm.vcpus) - 1, index))
    return vm.vcpus[index]


def code_bits(regs):
    """16, 32 or 64: the mode the next instruction decodes in (EFER.LMA and CR0.PE; CS.D/L are not modeled)."""
    if regs.get("efer", 0) & EFER_LMA:
        return 64
    return 32 if regs.get("cr0", 0) & CR0_PE else 16


def disassemble(vcpu, regs):
    """The next instructions at CS:RIP, read through the guest's paging; [] while the vCPU runs."""
    if "cr0" not in regs:
        return []
    bits = code_bits(regs)
    pc = regs["rip"] if regs["cr0"] & CR0_PE else (regs["cs"] << 4) + (regs["rip"] & 0xFFFF)
    try:
        code = vcpu.read_linear(pc, DISASM_BYTES)
    except Exception:                      # not mapped: the panel says so instead of guessing
        return [{"address": pc, "bytes": "", "text": "(no code mapped at this address)"}]
    md = capstone.Cs(capstone.CS_ARCH_X86, _CS_MODES[bits])
    return [{"address": insn.address, "bytes": insn.bytes.hex(), "text": ("%s %s" % (insn.mnemonic, insn.op_str)).strip()}
            for insn in md.disasm(code, pc, DISASM_COUNT)]


def registers(vm, index):
    """Registers of one vCPU; all of them while it is parked (paused, halted), else RIP/RSP/RFLAGS."""
    vcpu = vcpu_of(vm, index)
    regs = vcpu.registers()
    return {"vcpu": index, "state": vcpu.state, "complete": "cr0" in regs,
            "registers": {k: int(v) for k, v in regs.items()}, "bits": code_bits(regs) if "cr0" in regs else None,
            "disassembly": disassemble(vcpu, regs)}


def last_exit(snapshot):
    reason, qual = snapshot["EXIT_REASON"], snapshot["EXIT_QUALIFICATION"]
    return {"reason": reason & 0xFFFF, "name": E.reason_name(reason), "qualification": qual,
            "decoded": E.decode(reason, qual),
            "interruption": E.decode_interruption_info(snapshot["EXIT_INTR_INFO"])}


def vmcs(vm, index):
    """The VMCS grouped as the SDM and bhyvectl group it, each field with its encoding and width."""
    snap = vcpu_of(vm, index).vmcs.snapshot()
    groups = {group: [] for group in V.GROUPS}
    for f in V.FIELDS:
        groups[f.group].append({"name": f.name, "encoding": f.encoding, "width": f.width, "value": snap[f.name]})
    return {"vcpu": index, "groups": [{"name": g, "fields": groups[g]} for g in V.GROUPS],
            "last_exit": last_exit(snap)}


def stats(vm, index):
    vcpu = vcpu_of(vm, index)
    return {"vcpu": index, "rows": [{"description": d, "value": v} for d, v in S.rows(vcpu.counters)],
            "by_id": S.by_id(vcpu.counters), "text": S.format_stats(index, vcpu.counters),
            "exit_log": vcpu.exit_log()[-16:]}


def vga(vm):
    """The 80x25 text screen: each row's text and its attribute bytes as hex (2 digits per cell)."""
    rows = vm.vga.cells()
    return {"lines": vm.vga.text(), "attrs": ["".join("%02x" % attr for _, attr in row) for row in rows],
            "cursor": list(vm.vga.cursor)}


def optional(obj, method, *args):
    """An engine view that may not exist yet: (available, value)."""
    if not hasattr(obj, method):
        return {"available": False, "reason": "%s() is not in this engine yet" % method}
    return {"available": True, "value": getattr(obj, method)(*args)}


def ept(vm):
    return optional(vm, "memmap")


def ept_lookup(vm, gpa):
    return optional(vm, "gpa_pmap", gpa)


def translate(vm, index, gla):
    return optional(vcpu_of(vm, index), "translate", gla)


def caches(vm):
    """TLB and L1D per vCPU, and the VM's own L1D view, each when the engine provides it."""
    return {"tlb": [optional(v, "tlb_info") for v in vm.vcpus], "l1d": [optional(v, "l1d_info") for v in vm.vcpus],
            "vm_l1d": optional(vm, "l1d_info")}

