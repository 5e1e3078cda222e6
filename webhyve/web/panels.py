"""What the VM page's panels show, as JSON-ready dicts, built from the engine's door and its tables.

Registers (with the next instructions disassembled), the VMCS by group with encodings and the last exit
decoded, bhyve's stats with the last exits, the VGA screen, the EPT/TLB/L1D views and the PCI devices. What one vCPU's
panels show is read by that vCPU's thread in one visit (engine/door). The REST API and the /inspect
namespace both serve these, so a panel and `curl` always agree.
"""
from engine.door.tables import exits as E
from engine.door.tables import vmcs as V

from ..sessions.errors import ApiError

VCPU_PANELS = ("registers", "vmcs", "stats")
READS = {"registers": ("state", "registers"), "vmcs": ("vmcs",), "stats": ("counters", "exit_log")}


def vcpu_of(vm, index):
    if not isinstance(index, int) or not 0 <= index < vm.cpus:
        raise ApiError(404, "VM %r has vCPUs 0 to %d, not %r" % (vm.name, vm.cpus - 1, index))
    return vm.vcpu(index)


def vcpu_panels(vm, index, panels=VCPU_PANELS):
    """{panel: value} of one vCPU, everything read by its thread in one visit."""
    vcpu = vcpu_of(vm, index)
    got = vcpu.read(*sorted({part for panel in panels for part in READS[panel]}))
    build = {"registers": registers, "vmcs": vmcs, "stats": stats}
    return {panel: build[panel](vcpu, got) for panel in panels}


def registers(vcpu, got):
    """Every register, the mode the code runs in and the next instructions disassembled."""
    code = vcpu.next_instructions(got["registers"])
    return {"vcpu": vcpu.index, "state": got["state"], "registers": got["registers"], "bits": code["bits"],
            "disassembly": code["instructions"]}


def last_exit(snapshot):
    reason, qual = snapshot["EXIT_REASON"], snapshot["EXIT_QUALIFICATION"]
    return {"reason": reason & 0xFFFF, "name": E.reason_name(reason), "qualification": qual,
            "decoded": E.decode(reason, qual),
            "interruption": E.decode_interruption_info(snapshot["EXIT_INTR_INFO"])}


def vmcs(vcpu, got):
    """The VMCS grouped as the SDM and bhyvectl group it, each field with its encoding and width."""
    snap = got["vmcs"]
    groups = {group: [] for group in V.GROUPS}
    for f in V.FIELDS:
        groups[f.group].append({"name": f.name, "encoding": f.encoding, "width": f.width, "value": snap[f.name]})
    return {"vcpu": vcpu.index, "groups": [{"name": g, "fields": groups[g]} for g in V.GROUPS],
            "last_exit": last_exit(snap)}


def stats(vcpu, got):
    table = vcpu.stats(got["counters"])
    return {"vcpu": vcpu.index, "rows": [{"description": d, "value": v} for d, v in table["rows"]],
            "by_id": table["by_id"], "text": table["text"], "exit_log": got["exit_log"][-16:]}


def add_rates(stats_panel, rates):
    """Each stats row's rate per second over the last tick (webhyve/sessions/counters.py), None where there is none:
    a gauge, or no tick measured yet."""
    for i, row in enumerate(stats_panel["rows"]):
        row["rate"] = None if rates is None else rates[i]


def vga(vm):
    """The 80x25 text screen: each row's text and its attribute bytes as hex (2 digits per cell)."""
    screen = vm.vga()
    return {"lines": screen["lines"], "attrs": ["".join("%02x" % attr for _, attr in row) for row in screen["cells"]],
            "cursor": screen["cursor"]}


def ept(vm):
    return {"available": True, "value": vm.memmap()}


def ept_lookup(vm, gpa):
    return {"available": True, "value": vm.gpa_pmap(gpa)}


def translate(vm, index, gla):
    return {"available": True, "value": vcpu_of(vm, index).translate(gla)}


def devices(vm):
    """The PCI bus slot by slot (VmView.devices): IDs, class, BARs, MSI-X, virtio queues and the device's counts."""
    return {"functions": vm.devices()}


def caches(vm):
    """TLB and L1D per vCPU, each read by its vCPU's thread; the VM-wide L1D view the engine has not yet."""
    reads = [v.read("tlb", "l1d") for v in vm.vcpus()]
    return {"tlb": [{"available": True, "value": r["tlb"]} for r in reads],
            "l1d": [{"available": True, "value": r["l1d"]} for r in reads],
            "vm_l1d": {"available": False, "reason": "l1d_info() of a whole VM is not in this engine yet"}}
