"""VM snapshots: a paused VM's whole state in one file, and a VM rebuilt from it (bhyvectl --checkpoint).

The file (format version 3, snapshot_file.py) is a zip: `manifest.json` holds the configuration a fresh
server needs, the tunables, device and vCPU state; `.npy` arrays hold each vCPU's CPU state (cpu/ucstate.py),
VMCS, counters, MSRs and virtual-APIC page, the populated guest pages with their EPT bits, the TLB model's
entries, the boot image and its initrd. The -s PCI devices are rebuilt from their slot arguments and get their
saved state back (configuration space, MSI-X, the virtio transport and queue positions, the NIC's MAC and port);
a disk image's contents are the user's file and are not copied (docs/devices.md, "Snapshots"). Only pages the
guest (or the host for it) touched are written, so a large mostly-empty guest is small. Nothing is unpickled:
every manifest field, member dtype, shape and value is checked (snapshot_schema.py) before the restore changes
anything, and a bad file is refused with a SnapshotError naming the problem.
"""
import time

import numpy as np
import unicorn

from . import firmware, loaders
from . import snapshot_file as F
from . import snapshot_schema as SCHEMA
from .core import ctx as C
from .cpu import msrs as MSRS
from .cpu import tsc, ucstate
from .errors import ConfigError, ImageError, SnapshotError
from .mmu import ept as EPT
from .mmu import tlb as TLB
from .pci.host import bdf
from .vmx import controls
from . import slots as SLOTS

__all__ = ["FORMAT", "VERSION", "SnapshotError", "read_header", "restore", "save"]

FORMAT = "webhyve-snapshot"
VERSION = 3
PIC_FIELDS = ("irr", "isr", "imr", "vector_base", "icw_step", "icw4_wanted", "aeoi", "read_isr", "lines")
# vLAPIC context slots that are state, not addresses; the two clock readings are saved relative to now
LAPIC_SLOTS = (C.TIMER_PERIOD, C.INTR_WINDOW, C.INJECT, C.PENDING, C.LAPIC_FIX, C.LAPIC_FIXVAL,
               C.NMI_WINDOW, C.LAPIC_STEP)
LAPIC_CLOCKS = (C.TIMER_DEADLINE, C.TIMER_START)
UART_FIELDS = ("ier", "lcr", "mcr", "lsr", "fcr", "scr", "dll", "dlm", "msr", "thre_int_pending", "_irq_level",
               "_claimed", "_rx_size")
HOST_VMCS_FIELDS = ("VPID", "EPTP", "ENTRY_MSR_LOAD", "MSR_BITMAP")    # this host's values, not the saving host's


# -- saving -------------------------------------------------------------------------------------------
def save(vm, path):
    """Write the VM (which must be paused, halted, suspended or idle: not running) to `path`, atomically."""
    manifest, arrays = capture(vm)
    F.write(path, manifest, arrays)
    return {"path": str(path), "pages": len(arrays["pages_gpa"]), "bytes": arrays["pages_data"].size}


def capture(vm, pages=True):
    """(manifest, arrays) of a VM that is not running; without `pages`, no guest memory (a live migration
    has sent it already: migration/source.py)."""
    if any(v.thread is not None and v.thread.is_alive() and not v.parked.is_set() for v in vm.vcpus):
        raise SnapshotError("VM %r is running: pause it before taking a snapshot" % vm.name)
    vcpus = [{"index": v.index, "state": v.state, "started": v.thread is not None,
              "hostcpu": v.hostcpu.index, "boot": v.boot is not None,
              "cycles": int(v.ctx[C.CYCLES]),                   # the modeled cycle counter (cpu/cachesim.py)
              "tsc": tsc.value(v),                              # the TSC goes on from here (cpu/tsc.py)
              "lapic": {str(slot): int(v.ctx[slot]) for slot in LAPIC_SLOTS},
              "lapic_clocks": {str(slot): _since(int(v.ctx[slot])) for slot in LAPIC_CLOCKS},
              "nmi_blocked": v.nmi_blocked, "waiting_sipi": v.waiting_sipi,
              "halt_interruptible": v.halt_interruptible, "halt_for_input": v.halt_for_input,
              "paused_from": v.paused_from} for v in vm.vcpus]
    for device in vm.pci_devices:                 # bhyve's vm_pause_user_devs: nothing feeds them while saved
        device.pause_device()
    try:
        return _capture(vm, vcpus, pages)
    finally:
        for device in vm.pci_devices:
            device.resume_device()


def _capture(vm, vcpus, pages):
    gpas, bits, data = _pages(vm) if pages else (np.zeros(0, np.uint64), np.zeros(0, np.uint64),
                                                 np.zeros(0, np.uint8))
    image_bytes, filename, kind, cmdline, load_addr = vm._load_args or (b"", None, None, "", None)
    arrays = {"cpu": np.concatenate([ucstate.read(v.uc) for v in vm.vcpus]),
              "vmcs": np.stack([v.vmcs.store for v in vm.vcpus]),
              "counters": np.stack([v.counters for v in vm.vcpus]),
              "msrs": np.stack([v.msrs.reshape(-1, MSRS.COLUMNS) for v in vm.vcpus]),
              "lapic": np.stack([lapic_pages(v) for v in vm.vcpus]),
              "pages_gpa": gpas, "pages_bits": bits, "pages_data": data.reshape(-1, EPT.PAGE),
              "tlb": _tlb_rows(vm), "image": np.frombuffer(image_bytes, np.uint8),
              "initrd": np.frombuffer(vm.initrd or b"", np.uint8)}
    st = vm.pmap.st
    manifest = {
        "format": FORMAT, "version": VERSION, "unicorn": unicorn.__version__, "saved_at": time.time(),
        "vm": {"name": vm.name, "mem_mb": vm.mem_size >> 20, "cpus": len(vm.vcpus), "profile": vm.profile.name,
               "mem_cap_mb": int(st[EPT.S_CAP]) * EPT.PAGE >> 20, "state": vm.state,
               "suspend": [vm.suspend_reason, vm.suspend_message], "slots": list(vm.slots)},
        "image": {"filename": filename, "kind": kind, "cmdline": cmdline, "load_addr": load_addr,
                  "bytes": len(image_bytes), "initrd_bytes": len(vm.initrd or b"")},
        "memory": {"pages": len(gpas)},
        "tlb_entries": len(arrays["tlb"]),
        "ept": {"flags": int(st[EPT.S_FLAGS]), "eptp": vm.pmap.eptp,
                "counters": {k: int(st[s]) for k, s in (("promotions", EPT.S_PROMOTIONS), ("demotions", EPT.S_DEMOTIONS),
                                                       ("first_touch", EPT.S_FIRST_TOUCH), ("ad_faults", EPT.S_AD_FAULTS))}},
        "tunables": {t["name"]: t["value"] for t in vm.hypervisor.tunables.describe() if not t["read_only"]},
        "devices": device_state(vm),
        "vcpus": vcpus,
    }
    return manifest, arrays


def _pages(vm):
    """(gpa pages, leaf bits, data) of every populated guest page, read through the EPT."""
    pages = vm.pmap.resident_pages()
    bits, data = vm.pmap.read_pages(pages)
    return pages << np.uint64(12), bits, data.reshape(-1)


def _tlb_rows(vm):
    """The TLB model's entries for this VM's vCPUs: rows [hostcpu, vpid, linear, gpa, perms, global]."""
    rows = []
    tags = {v.vpid: v.index + 1 for v in vm.vcpus}    # saved as vcpuid + 1: the restoring host allocates its own
    for host in vm.hypervisor.hostcpus:
        for e in host.tlb_entries():
            if e["eptp"] == vm.pmap.eptp and e["vpid"] in tags:
                rows.append((host.index, tags[e["vpid"]], e["linear"], e["gpa"], e["perms"], int(e["global"])))
    return np.array(rows, np.uint64).reshape(-1, 6)


def _since(ns):
    """A CLOCK_MONOTONIC reading as an offset from now (0 stays 0: not counting)."""
    return ns - time.monotonic_ns() if ns else None


def _at(offset):
    """A saved offset as a CLOCK_MONOTONIC reading here (None: not counting); never 0 or before boot."""
    return max(time.monotonic_ns() + offset, 1) if offset is not None else 0


def lapic_pages(vcpu):
    """The virtual-APIC page and the posted-interrupt descriptor, as bytes (host pages, not guest memory)."""
    mem = vcpu.vm.hypervisor.memory
    apic, pir = int(vcpu.ctx[C.APIC_PAGE]), int(vcpu.ctx[C.PIR_DESC])
    return np.concatenate([mem[apic:apic + 4096] if apic else np.zeros(4096, np.uint8),
                           mem[pir:pir + 64] if pir else np.zeros(64, np.uint8)])


def device_state(vm):
    state = {"vga": {"index": vm.vga._index, "crtc": {str(k): v for k, v in vm.vga._crtc.items()}}}
    state["pic"] = {name: {f: getattr(getattr(vm.pic, name), f) for f in PIC_FIELDS} for name in ("master", "slave")}
    state["pic"]["output"] = vm.pic.output
    state["pit"] = vm.pit.state()
    state["port61"] = {"bits": vm.nmisc.bits}
    state["rtc"], state["kbc"], state["pci"] = vm.rtc.state(), vm.kbc.state(), vm.pci.state()
    state["ioapic"] = vm.ioapic.state()
    for name in ("com1", "com2"):
        uart = getattr(vm, name)
        state[name] = {f: getattr(uart, f) for f in UART_FIELDS}
        state[name]["rx"] = list(uart._rx)
    if vm.bios is not None:
        state["bios"] = {"elapsed": vm.bios.clock() - vm.bios._start if vm.bios._start else 0.0,
                         "disk_last": vm.bios._disk_last, "peeked": vm.bios._peeked}
    state["acpi"] = {"pm": vm.acpi_pm.state(), "reset_control": vm.reset_control.state()}
    state["pci_devices"] = {bdf(d, f): config.device_state() for (d, f), config in sorted(vm.pci.functions.items())
                            if config in vm.pci_devices}
    return state


# -- reading --------------------------------------------------------------------------------------------
def _manifest(reader):
    """The file's manifest, every field checked; SnapshotError naming the first that is wrong."""
    manifest = reader.manifest()
    if manifest.get("format") != FORMAT:
        raise reader.refuse("is not a webhyve snapshot (format %r)" % (manifest.get("format"),))
    if manifest.get("version") != VERSION:
        raise reader.refuse("is snapshot format version %s; this webhyve reads version %d"
                            % (manifest.get("version"), VERSION))
    if manifest.get("unicorn") != unicorn.__version__:
        raise reader.refuse("was saved with Unicorn %s; its CPU state layout is Unicorn %s's"
                            % (manifest.get("unicorn"), unicorn.__version__))
    try:
        SCHEMA.check(manifest)
    except SCHEMA.Invalid as bad:
        raise reader.refuse("is damaged or crafted: %s" % bad) from None
    return manifest


def read_header(path):
    """The checked manifest alone (for listings): the arrays are not read."""
    with F.Reader(path) as reader:
        return _manifest(reader)


def _fits(hypervisor, path, manifest, name):
    """Refuse, before anything changes, what this host cannot give the VM the file describes."""
    vm, host_mb = manifest["vm"], hypervisor.memory.size >> 20
    if vm["mem_mb"] > host_mb:
        raise SnapshotError("%s describes a VM of %d MiB; this modeled host has %d MiB in all"
                            % (path, vm["mem_mb"], host_mb))
    maxcpu = manifest["tunables"].get("hw.vmm.maxcpu", hypervisor.tunables.get("hw.vmm.maxcpu"))
    if vm["cpus"] > maxcpu:
        raise SnapshotError("%s describes %d vCPUs; hw.vmm.maxcpu is %d" % (path, vm["cpus"], maxcpu))
    if name is not None:
        try:
            SCHEMA.vm_name(name, "VM name")
        except SCHEMA.Invalid as bad:
            raise ConfigError(str(bad)) from None
    if (name or vm["name"]) in hypervisor.vms:
        raise ConfigError("a VM named %r already exists" % (name or vm["name"]))


def _arrays(reader, manifest):
    arrays = reader.arrays(SCHEMA.members(manifest))
    try:
        SCHEMA.check_arrays(manifest, arrays)
    except SCHEMA.Invalid as bad:
        raise reader.refuse("is damaged or crafted: %s" % bad) from None
    return arrays


def _image(path, manifest, arrays):
    """The saved boot image, parsed again (so reset works after a restore), or None; a vCPU still to boot
    needs one that boots through the reset stub."""
    info, image = manifest["image"], None
    if info["filename"]:
        try:
            image = loaders.load_image(arrays["image"].tobytes(), info["filename"], manifest["vm"]["mem_mb"] << 20,
                                       kind=info["kind"], cmdline=info["cmdline"], load_addr=info["load_addr"],
                                       initrd=_initrd(arrays))
        except ImageError as problem:
            raise SnapshotError("%s holds a boot image that cannot be loaded: %s" % (path, problem)) from None
    for i, vcpu in enumerate(manifest["vcpus"]):
        if vcpu["boot"] and (image is None or image.mode not in firmware.TARGETS):
            raise SnapshotError("%s is damaged or crafted: vcpus[%d] is to boot through the reset stub, which "
                                "its %s image does not use" % (path, i, image.kind if image else "missing"))
    return image


def _initrd(arrays):
    return arrays["initrd"].tobytes() if "initrd" in arrays and arrays["initrd"].size else None


def _slots(path, manifest):
    """The VM's -s arguments, parsed as `vmmctl run` does: a disk image that is gone is an error naming it."""
    try:
        return SLOTS.parse_all(manifest["vm"].get("slots", []))
    except ConfigError as problem:
        raise SnapshotError("%s cannot rebuild the VM's PCI devices: %s" % (path, problem)) from None


# -- restoring ------------------------------------------------------------------------------------------
def restore(hypervisor, path, name=None, start=True):
    """A new VM from a snapshot: same configuration, memory, CPU and device state. It runs again when
    the snapshot was taken of a started VM and `start` is set; otherwise it stays paused. The whole file is
    read and checked first: a refused one leaves the host as it was."""
    with F.Reader(path) as reader:
        manifest = _manifest(reader)
        _fits(hypervisor, path, manifest, name)
        arrays = _arrays(reader, manifest)
    image = _image(path, manifest, arrays)
    slots = _slots(path, manifest)
    changed = apply_tunables(hypervisor, manifest["tunables"])
    cfg = manifest["vm"]
    try:
        vm = hypervisor.create_vm(name or cfg["name"], mem_mb=cfg["mem_mb"], cpus=cfg["cpus"],
                                  profile=cfg["profile"], mem_cap_mb=cfg["mem_cap_mb"], slots=slots)
    except Exception:
        undo_tunables(hypervisor, changed)
        raise
    try:
        _restore_into(vm, manifest, arrays, image)
    except Exception:
        hypervisor.destroy_vm(vm.name)
        undo_tunables(hypervisor, changed)
        raise
    vm.log("restored from %s (saved %s)%s" % (path, time.strftime("%Y-%m-%d %H:%M:%S",
                                                                   time.localtime(manifest["saved_at"])),
                                             "; tunables set as saved: " + ", ".join(
                                                 "%s=%d" % (n, new) for n, _, new in changed) if changed else ""))
    started = [v for v, info in zip(vm.vcpus, manifest["vcpus"]) if info["started"]]
    for vcpu in started:
        vcpu.start_paused(vcpu.restored_state)
    if start and started and cfg["suspend"][0] is None:
        vm.resume()
    return vm


def adopt(vm, path):
    """Give `vm` the CPU, vCPU and device state of snapshot `path`: a live migration's target, whose VM was made
    from the same configuration and whose memory the migration has filled (pages in the file are filled too).
    The file is checked as restore checks it; the started vCPUs then wait paused. The host's tunables are not
    changed (a migration moves one VM, not its source's settings). Returns the manifest."""
    with F.Reader(path) as reader:
        manifest = _manifest(reader)
        arrays = _arrays(reader, manifest)
    cfg, st = manifest["vm"], vm.pmap.st
    mine = {"mem_mb": vm.mem_size >> 20, "cpus": len(vm.vcpus), "profile": vm.profile.name,
            "mem_cap_mb": int(st[EPT.S_CAP]) * EPT.PAGE >> 20, "slots": list(vm.slots)}
    for field, value in mine.items():
        if cfg[field] != value:
            raise SnapshotError("%s describes a VM with %s %r; VM %r has %r" % (path, field, cfg[field], vm.name, value))
    image = _image(path, manifest, arrays)
    _restore_into(vm, manifest, arrays, image)
    for vcpu, info in zip(vm.vcpus, manifest["vcpus"]):
        if info["started"]:
            vcpu.start_paused(vcpu.restored_state)
    return manifest


def apply_tunables(hypervisor, saved):
    """The snapshot's tunables, on the host it is restored into (they are host-wide): [(name, old, new)]."""
    changed = []
    for name, value in saved.items():
        old = hypervisor.tunables.get(name)
        if old != value:
            hypervisor.tunables.set(name, value)
            changed.append((name, old, value))
    return changed


def undo_tunables(hypervisor, changed):
    for name, old, _ in reversed(changed):
        hypervisor.tunables.set(name, old)


def _restore_into(vm, manifest, arrays, image):
    if image is not None:
        info = manifest["image"]
        vm._load_args = (arrays["image"].tobytes(), info["filename"], info["kind"], info["cmdline"], info["load_addr"])
        vm.image, vm.initrd = image, _initrd(arrays)
    st = vm.pmap.st
    if int(st[EPT.S_FLAGS]) != manifest["ept"]["flags"]:
        vm.log("snapshot EPT flags %#x differ from this server's %#x (tunables or CPU profile)"
               % (manifest["ept"]["flags"], int(st[EPT.S_FLAGS])))
    mem = vm.hypervisor.memory
    mem64 = mem.view(np.uint64)
    gpas, bits, data = arrays["pages_gpa"], arrays["pages_bits"], arrays["pages_data"].reshape(-1)
    done = 0
    while done < gpas.size:
        done = EPT.fill_pages(mem, mem64, st, vm.pmap.host_pool, vm.pmap.segtab, len(vm.segments), gpas, bits,
                              data, done)
        if done < 0:
            raise SnapshotError("guest-physical %#x in the snapshot does not fit this VM's memory or cap"
                                % int(gpas[-1 - done]))
        if done < gpas.size:
            vm.pmap.refill(vm.pmap.host_pool)
    for key, slot in (("promotions", EPT.S_PROMOTIONS), ("demotions", EPT.S_DEMOTIONS),
                      ("first_touch", EPT.S_FIRST_TOUCH), ("ad_faults", EPT.S_AD_FAULTS)):
        st[slot] = manifest["ept"]["counters"][key]
    _promote_full_regions(vm)
    for v, info in zip(vm.vcpus, manifest["vcpus"]):
        i = v.index
        ucstate.write(v.uc, arrays["cpu"][i])
        own = {f: v.vmcs[f] for f in HOST_VMCS_FIELDS}
        v.vmcs.store[:] = arrays["vmcs"][i]
        for f, value in own.items():
            v.vmcs[f] = value
        v.counters[:] = arrays["counters"][i]
        v.msrs[:] = arrays["msrs"][i].reshape(v.msrs.shape)
        tsc.set_value(v, info.get("tsc", 0))
        v.pin(info["hostcpu"] % len(vm.hypervisor.hostcpus))
        v.restored_state = info["state"]
        v.ctx[C.CYCLES] = info["cycles"]
        restore_lapic(v, arrays["lapic"][i], info)
        v.ctx[C.APICV] = controls.apicv(v.vmcs, v.vmxcaps)     # the local APIC follows the restored controls
        if info["boot"]:
            v.boot = (firmware.TARGETS[vm.image.mode][1], vm.image)
    for host, vpid, linear, gpa, perms, glob in arrays["tlb"].tolist():
        if host < len(vm.hypervisor.hostcpus):
            hpa = vm.pmap.lookup(gpa)
            if hpa is not None:
                TLB.insert(vm.hypervisor.hostcpus[host].tlb, vm.vcpus[vpid - 1].vpid, vm.pmap.eptp, _signed(linear),
                           gpa, hpa, perms, bool(glob))   # saved as vcpuid + 1 (_tlb_rows)
    load_device_state(vm, manifest["devices"])
    with vm.lock:
        vm.suspend_reason, vm.suspend_message = manifest["vm"]["suspend"]


def _signed(value):
    """A 64-bit value as the int64 the kernels take (a kernel's linear addresses, 0xffff8880..., are above 2^63):
    the same bits, which the kernel reads back as uint64."""
    return value - (1 << 64) if value >> 63 else value


def restore_lapic(vcpu, pages, info):
    mem = vcpu.vm.hypervisor.memory
    apic, pir = int(vcpu.ctx[C.APIC_PAGE]), int(vcpu.ctx[C.PIR_DESC])
    if apic:
        mem[apic:apic + 4096] = pages[:4096]
    if pir:
        mem[pir:pir + 64] = pages[4096:4160]
    for slot, value in info["lapic"].items():
        vcpu.ctx[int(slot)] = value
    for slot, offset in info["lapic_clocks"].items():
        vcpu.ctx[int(slot)] = _at(offset)
    vcpu.nmi_blocked, vcpu.waiting_sipi = info["nmi_blocked"], info["waiting_sipi"]
    vcpu.halt_interruptible = info["halt_interruptible"]
    vcpu.halt_for_input = info.get("halt_for_input", False)
    vcpu.paused_from = info["paused_from"]              # a vCPU paused in its HLT goes back into it at resume


def _promote_full_regions(vm):
    if not vm.pmap.st[EPT.S_FLAGS] & EPT.F_SUPERPAGES:
        return
    mem64 = vm.hypervisor.memory.view(np.uint64)
    for seg in vm.segments:
        for region in range(seg.gpa, seg.gpa + seg.size, EPT.SUPERPAGE):
            level, ea, e, rwx = EPT.walk(mem64, vm.pmap.st, region, False)
            if level in (1, -1):
                _promote_at(vm, region)


def _promote_at(vm, region):
    """Find the PDE of `region` and let the kernel decide whether its 512 leaves make a superpage."""
    mem64 = vm.hypervisor.memory.view(np.uint64)
    table = int(vm.pmap.st[EPT.S_ROOT])
    for level in (4, 3):
        e = int(mem64[(table + ((region >> (12 + 9 * (level - 1))) & 0x1FF) * 8) >> 3])
        if not e & EPT.EPT_RWX:
            return
        table = e & EPT.ADDR
    pde = table + ((region >> 21) & 0x1FF) * 8
    EPT.promote(mem64, vm.pmap.st, vm.pmap.host_pool, np.uint64(pde), np.uint64(region))


def load_device_state(vm, state):
    vm.vga._index = state["vga"]["index"]
    vm.vga._crtc = {int(k): v for k, v in state["vga"]["crtc"].items()}
    for name in ("master", "slave"):
        for f in PIC_FIELDS:
            setattr(getattr(vm.pic, name), f, state["pic"][name][f])
    vm.pic.output = state["pic"]["output"]
    vm.pit.load_state(state["pit"])
    vm.nmisc.bits = state["port61"]["bits"]
    vm.rtc.load_state(state["rtc"])
    vm.kbc.load_state(state["kbc"])
    try:
        vm.pci.load_state(state["pci"])
    except ConfigError as problem:
        raise SnapshotError(str(problem)) from None
    load_pci_devices(vm, state.get("pci_devices", {}))
    if "ioapic" in state:
        vm.ioapic.load_state(state["ioapic"])
    for name in ("com1", "com2"):
        uart = getattr(vm, name)
        with uart._lock:
            for f in UART_FIELDS:
                setattr(uart, f, state[name][f])
            uart._rx.clear()
            uart._rx.extend(state[name]["rx"])
    if "bios" in state and vm.image is not None and vm.image.mode == "real":
        from .devices import bios as bios_mod
        vm.bios = bios_mod.Bios(vm.vga, vm.console, vm.image.disk, drive=vm.image.regs.get("rdx", 0x80) & 0xFF)
        vm.bios._start = vm.bios.clock() - state["bios"]["elapsed"]
        vm.bios._disk_last, vm.bios._peeked = state["bios"]["disk_last"], state["bios"]["peeked"]
    if "acpi" in state:
        vm.acpi_pm.load_state(state["acpi"]["pm"])
        vm.reset_control.load_state(state["acpi"]["reset_control"])


def load_pci_devices(vm, saved):
    """Each -s device's own state (MSI-X, the virtio transport and queues, the disk's and NIC's), every one
    checked against the device the slot built before any is changed: I/O goes on from the saved ring positions."""
    devices = {bdf(d, f): config for (d, f), config in vm.pci.functions.items() if config in vm.pci_devices}
    for name in sorted(set(devices) | set(saved)):
        if name not in saved or name not in devices:
            raise SnapshotError("the snapshot %s PCI device %s, which its -s slots %s" % (
                "lacks the state of" if name not in saved else "has the state of",
                name, "give" if name in devices else "do not give"))
        if saved[name]["emulation"] != devices[name].emulation:
            raise SnapshotError("the snapshot's PCI device %s is a %s; its slot gives a %s"
                                % (name, saved[name]["emulation"], devices[name].emulation))
        try:
            devices[name].check_device_state(saved[name])
        except ConfigError as problem:
            raise SnapshotError("the snapshot's PCI device %s cannot be restored: %s" % (name, problem)) from None
    with vm.pci.lock:
        for name, device in devices.items():
            device.load_device_state(saved[name])
