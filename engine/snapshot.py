"""VM snapshots: a paused VM's whole state in one file, and a VM rebuilt from it (bhyvectl --checkpoint).

The file is a zip (numpy's npz): `header` is JSON (format, version, Unicorn version, the configuration a
fresh server needs, the tunables, device and vCPU state), the arrays hold each vCPU's CPU context,
VMCS, counters and MSRs, the populated guest pages with their EPT bits, and the TLB model's entries.
Only pages the guest (or the host for it) touched are written, so a large mostly-empty guest is small.
Zip CRCs catch damage; a missing member or a wrong format/version is refused with a message naming it.
"""
import io
import json
import pickle
import time
import zipfile

import numpy as np
import unicorn

from . import firmware, loaders
from .errors import EngineError
from .mmu import ept as EPT
from .mmu import tlb as TLB
from .vmx import ctx as C

FORMAT = "webhyve-snapshot"
VERSION = 1
PIC_FIELDS = ("irr", "isr", "imr", "vector_base", "icw_step", "icw4_wanted", "aeoi", "read_isr", "lines")
PIT_FIELDS = ("mode", "access", "reload", "low_written", "latched", "read_high")
# vLAPIC context slots that are state, not addresses; the two clock readings are saved relative to now
LAPIC_SLOTS = (C.TIMER_PERIOD, C.INTR_WINDOW, C.INJECT, C.PENDING, C.LAPIC_FIX, C.LAPIC_FIXVAL,
               C.NMI_WINDOW, C.LAPIC_STEP)
LAPIC_CLOCKS = (C.TIMER_DEADLINE, C.TIMER_START)
UART_FIELDS = ("ier", "lcr", "mcr", "lsr", "fcr", "scr", "dll", "dlm", "msr", "thre_int_pending", "_irq_level",
               "_claimed", "_rx_size")


class SnapshotError(EngineError):
    """A snapshot file that cannot be restored; the message says why."""


# -- saving -------------------------------------------------------------------------------------------
def save(vm, path):
    """Write the VM (which must be paused, halted, suspended or idle: not running) to `path`."""
    if any(v.thread is not None and v.thread.is_alive() and not v.parked.is_set() for v in vm.vcpus):
        raise SnapshotError("VM %r is running: pause it before taking a snapshot" % vm.name)
    arrays, vcpus = {}, []
    for v in vm.vcpus:
        ctx = v.uc.context_save()
        arrays["vcpu%d_uc" % v.index] = np.frombuffer(pickle.dumps(ctx), np.uint8)
        arrays["vcpu%d_vmcs" % v.index] = v.vmcs.store.copy()
        arrays["vcpu%d_counters" % v.index] = v.counters.copy()
        arrays["vcpu%d_msrs" % v.index] = v.msrs.copy()
        arrays["vcpu%d_lapic" % v.index] = lapic_pages(v)
        vcpus.append({"index": v.index, "state": v.state, "started": v.thread is not None,
                      "hostcpu": v.hostcpu.index, "boot": v.boot is not None,
                      "cycles": int(v.ctx[C.CYCLES]),                   # the modeled TSC (cpu/cachesim.py)
                      "lapic": {str(slot): int(v.ctx[slot]) for slot in LAPIC_SLOTS},
                      "lapic_clocks": {str(slot): _since(int(v.ctx[slot])) for slot in LAPIC_CLOCKS},
                      "nmi_blocked": v.nmi_blocked, "waiting_sipi": v.waiting_sipi,
                      "halt_interruptible": v.halt_interruptible, "halt_for_input": v.halt_for_input})
    gpas, bits, data = _pages(vm)
    arrays["pages_gpa"], arrays["pages_bits"], arrays["pages_data"] = gpas, bits, data
    arrays["tlb"] = _tlb_rows(vm)
    image_bytes, filename, kind, cmdline, load_addr = vm._load_args or (b"", None, None, "", None)
    arrays["image"] = np.frombuffer(image_bytes, np.uint8)
    st = vm.pmap.st
    header = {
        "format": FORMAT, "version": VERSION, "unicorn": unicorn.__version__, "saved_at": time.time(),
        "vm": {"name": vm.name, "mem_mb": vm.mem_size >> 20, "cpus": len(vm.vcpus), "profile": vm.profile.name,
               "mem_cap_mb": int(st[EPT.S_CAP]) * EPT.PAGE >> 20, "state": vm.state,
               "suspend": [vm.suspend_reason, vm.suspend_message]},
        "image": {"filename": filename, "kind": kind, "cmdline": cmdline, "load_addr": load_addr},
        "ept": {"flags": int(st[EPT.S_FLAGS]), "eptp": vm.pmap.eptp,
                "counters": {k: int(st[s]) for k, s in (("promotions", EPT.S_PROMOTIONS), ("demotions", EPT.S_DEMOTIONS),
                                                       ("first_touch", EPT.S_FIRST_TOUCH), ("ad_faults", EPT.S_AD_FAULTS))}},
        "tunables": {t["name"]: t["value"] for t in vm.hypervisor.tunables.describe()},
        "devices": device_state(vm),
        "vcpus": vcpus,
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return {"path": str(path), "pages": len(gpas), "bytes": data.size}


def _pages(vm):
    """(gpa pages, leaf bits, data) of every populated guest page, read through the EPT."""
    mem64, mem8 = vm.hypervisor.memory.view(np.uint64), vm.hypervisor.memory
    gpas, bits, chunks = [], [], []
    st = vm.pmap.st
    for seg in vm.segments:
        gpa = seg.gpa
        while gpa < seg.gpa + seg.size:
            level, ea, e, rwx = EPT.walk(mem64, st, gpa, False)
            if level == 2:
                for i in range(512):
                    gpas.append(gpa + i * EPT.PAGE)
                    bits.append(int(e) & ~EPT.ADDR & ~EPT.EPT_PS)
                hpa = int(e) & EPT.ADDR
                chunks.append(mem8[hpa:hpa + EPT.SUPERPAGE])
                gpa += EPT.SUPERPAGE
                continue
            if level < -2:                           # no page table for this 2 MiB region
                gpa = (gpa | (EPT.SUPERPAGE - 1)) + 1
                continue
            if level == 1 or (level == -1 and e & EPT.EMUL_V):
                hpa = int(e) & EPT.ADDR
                gpas.append(gpa)
                bits.append(int(e) & ~EPT.ADDR)
                chunks.append(mem8[hpa:hpa + EPT.PAGE])
            gpa += EPT.PAGE
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return np.array(gpas, np.uint64), np.array(bits, np.uint64), data


def _tlb_rows(vm):
    """The TLB model's entries for this VM's vCPUs: rows [hostcpu, vpid, linear, gpa, perms, global]."""
    rows = []
    vpids = {v.index + 1 for v in vm.vcpus}
    for host in vm.hypervisor.hostcpus:
        for e in host.tlb_entries():
            if e["eptp"] == vm.pmap.eptp and e["vpid"] in vpids:
                rows.append((host.index, e["vpid"], e["linear"], e["gpa"], e["perms"], int(e["global"])))
    return np.array(rows, np.uint64).reshape(-1, 6)


def _since(ns):
    """A CLOCK_MONOTONIC reading as an offset from now (0 stays 0: not counting)."""
    return ns - time.monotonic_ns() if ns else None


def _at(offset):
    return time.monotonic_ns() + offset if offset is not None else 0


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
    state["pit"] = {f: getattr(vm.pit, f) for f in PIT_FIELDS}
    state["pit"].update(start=_since(vm.pit.start), deadline=_since(vm.pit.deadline), period=vm.pit.period)
    for name in ("com1", "com2"):
        uart = getattr(vm, name)
        state[name] = {f: getattr(uart, f) for f in UART_FIELDS}
        state[name]["rx"] = list(uart._rx)
    if vm.bios is not None:
        state["bios"] = {"elapsed": vm.bios.clock() - vm.bios._start if vm.bios._start else 0.0,
                         "disk_last": vm.bios._disk_last, "peeked": vm.bios._peeked}
    return state


# -- reading --------------------------------------------------------------------------------------------
def _load(path, members):
    """{name: array} for `members` of the file (None: all of them); SnapshotError if it cannot be read."""
    try:                                   # reading a member to its end checks its CRC (zipfile)
        with np.load(path, allow_pickle=False) as archive:
            names = archive.files if members is None else [m for m in members if m in archive.files]
            return {name: archive[name] for name in names}
    except FileNotFoundError:
        raise SnapshotError("no snapshot at %s" % path) from None
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as problem:
        raise SnapshotError("%s is not a readable snapshot (truncated or damaged): %s" % (path, problem)) from None


def _header(path, arrays):
    if "header" not in arrays:
        raise SnapshotError("%s has no header: not a webhyve snapshot" % path)
    try:
        header = json.loads(arrays.pop("header").tobytes())
    except ValueError:
        raise SnapshotError("%s: the header is not valid JSON (damaged)" % path) from None
    if header.get("format") != FORMAT:
        raise SnapshotError("%s is not a webhyve snapshot (format %r)" % (path, header.get("format")))
    if header.get("version") != VERSION:
        raise SnapshotError("%s is snapshot format version %s; this webhyve reads version %d"
                            % (path, header.get("version"), VERSION))
    if header.get("unicorn") != unicorn.__version__:
        raise SnapshotError("%s was saved with Unicorn %s; CPU contexts need Unicorn %s"
                            % (path, header.get("unicorn"), unicorn.__version__))
    return header


def read_header(path):
    """The header alone (for listings): the page data is not read."""
    return _header(path, _load(path, ["header"]))


def read(path):
    """(header, arrays) from a snapshot file, or SnapshotError saying what is wrong with it."""
    arrays = _load(path, None)
    header = _header(path, arrays)
    needed = ["pages_gpa", "pages_bits", "pages_data", "tlb", "image"]
    for i in range(header["vm"]["cpus"]):
        needed += ["vcpu%d_%s" % (i, part) for part in ("uc", "vmcs", "counters", "msrs", "lapic")]
    missing = [name for name in needed if name not in arrays]
    if missing:
        raise SnapshotError("%s is incomplete: %s missing" % (path, ", ".join(missing)))
    if arrays["pages_data"].size != arrays["pages_gpa"].size * EPT.PAGE:
        raise SnapshotError("%s is damaged: %d pages listed, %d bytes of data"
                            % (path, arrays["pages_gpa"].size, arrays["pages_data"].size))
    return header, arrays


# -- restoring ------------------------------------------------------------------------------------------
def restore(hypervisor, path, name=None, start=True):
    """A new VM from a snapshot: same configuration, memory, CPU and device state. It runs again when
    the snapshot was taken of a started VM and `start` is set; otherwise it stays paused."""
    header, arrays = read(path)
    changed = apply_tunables(hypervisor, header["tunables"])
    cfg = header["vm"]
    vm = hypervisor.create_vm(name or cfg["name"], mem_mb=cfg["mem_mb"], cpus=cfg["cpus"], profile=cfg["profile"],
                              mem_cap_mb=cfg["mem_cap_mb"])
    try:
        _restore_into(vm, header, arrays)
    except Exception:
        hypervisor.destroy_vm(vm.name)
        raise
    vm.log("restored from %s (saved %s)%s" % (path, time.strftime("%Y-%m-%d %H:%M:%S",
                                                                   time.localtime(header["saved_at"])),
                                             "; tunables set as saved: " + ", ".join(changed) if changed else ""))
    started = [v for v, info in zip(vm.vcpus, header["vcpus"]) if info["started"]]
    for vcpu in started:
        vcpu.start_paused(vcpu.restored_state)
    if start and started and cfg["suspend"][0] is None:
        vm.resume()
    return vm


def apply_tunables(hypervisor, saved):
    """The snapshot's tunables, on the host it is restored into (they are host-wide): the changes made."""
    changed = []
    current = {t["name"]: t["value"] for t in hypervisor.tunables.describe()}
    for name, value in saved.items():
        if name in current and current[name] != value:
            hypervisor.tunables.set(name, value)
            changed.append("%s=%d" % (name, value))
    return changed


def _restore_into(vm, header, arrays):
    image = header["image"]
    if image["filename"]:
        data = arrays["image"].tobytes()
        vm._load_args = (data, image["filename"], image["kind"], image["cmdline"], image["load_addr"])
        vm.image = loaders.load_image(data, image["filename"], vm.mem_size, kind=image["kind"],
                                      cmdline=image["cmdline"], load_addr=image["load_addr"])
    st = vm.pmap.st
    if int(st[EPT.S_FLAGS]) != header["ept"]["flags"]:
        vm.log("snapshot EPT flags %#x differ from this server's %#x (tunables or CPU profile)"
               % (header["ept"]["flags"], int(st[EPT.S_FLAGS])))
    mem = vm.hypervisor.memory
    mem64 = mem.view(np.uint64)
    gpas, bits, data = arrays["pages_gpa"], arrays["pages_bits"], arrays["pages_data"]
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
        st[slot] = header["ept"]["counters"][key]
    _promote_full_regions(vm)
    for v, info in zip(vm.vcpus, header["vcpus"]):
        i = v.index
        ctx = pickle.loads(arrays["vcpu%d_uc" % i].tobytes())
        v.uc.context_restore(ctx)
        v.vmcs.store[:] = arrays["vcpu%d_vmcs" % i]
        v.vmcs["EPTP"] = vm.pmap.eptp
        v.counters[:] = arrays["vcpu%d_counters" % i]
        v.msrs[:] = arrays["vcpu%d_msrs" % i]
        v.pin(info["hostcpu"] % len(vm.hypervisor.hostcpus))
        v.restored_state = info["state"]
        v.ctx[C.CYCLES] = info["cycles"]
        restore_lapic(v, arrays["vcpu%d_lapic" % i], info)
        if info["boot"] and vm.image is not None:
            v.boot = (firmware.TARGETS[vm.image.mode][1], vm.image)
    for host, vpid, linear, gpa, perms, glob in arrays["tlb"].tolist():
        if host < len(vm.hypervisor.hostcpus):
            hpa = vm.pmap.lookup(gpa)
            if hpa is not None:
                TLB.insert(vm.hypervisor.hostcpus[host].tlb, vpid, vm.pmap.eptp, linear, gpa, hpa, perms, bool(glob))
    load_device_state(vm, header["devices"])
    with vm.lock:
        vm.suspend_reason, vm.suspend_message = header["vm"]["suspend"]


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
    for f in PIT_FIELDS:
        setattr(vm.pit, f, state["pit"][f])
    vm.pit.start, vm.pit.deadline, vm.pit.period = (_at(state["pit"]["start"]), _at(state["pit"]["deadline"]),
                                                    state["pit"]["period"])
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
