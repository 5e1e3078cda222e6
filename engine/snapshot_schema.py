"""What a snapshot (format version 3) may hold: every manifest field's type and range, declared as data, the
array members the manifest implies, and what their contents may be; all checked before anything is built
from the file, so that a crafted one is refused naming the field.

Bounds are what the engine itself can produce: a guest-controlled register may hold any value of its width,
but a slot the host writes from a bounded source (an APIC register offset, a vector, a FIFO size) must be
within that bound, because the kernels that read it do not check array bounds. What depends on the host a
file is restored into (its memory, its CPUs) is checked by snapshot.py against that host.
"""
import math
import re

import numpy as np

from . import loaders, tunables
from . import stats as S
from . import vcpu as V
from .devices import kbc_i8042 as KBC
from .devices import rtc_mc146818 as RTC
from .core import ctx as C
from .core import vmcs as VMCS
from .cpu import msrs as MSRS
from .cpu import profiles, ucstate
from .io import nmisc
from .devices import acpi_pm as ACPI_PM
from .io import vioapic as IOAPIC
from .io.lapic import regs as L
from .mmu import ept as EPT
from .mmu import walk as W
from .pci import config as PCI_CONFIG
from .pci import host as PCI_HOST
from .net import switch as SWITCH
from .virtio import blk as BLK
from .virtio import net as NET
from .virtio import pci as VIRTIO
from .virtio import vring as VRING
from .vmx import intr

MAX_MEM_MB = 1 << 20             # 1 TiB: more than any modeled host; snapshot.py checks the actual host
MAX_CPUS = 64                    # hw.vmm.maxcpu's upper bound
MAX_IMAGE = 1 << 30              # bytes of the saved boot image (a kernel, or a raw disk image)
MAX_TLB_ROWS = 1 << 20
MAX_NS = 1 << 62                 # CLOCK_MONOTONIC offsets and periods in ns (146 years)
U64 = (1 << 64) - 1
LAPIC_BYTES = 4096 + 64          # the virtual-APIC page, then the posted-interrupt descriptor
LEAF_BITS = EPT.EPT_RWX | 7 << 3 | EPT.EPT_IPAT | EPT.EPT_A | EPT.EPT_D | EPT.EMUL_V | EPT.EMUL_RW
TLB_COLUMNS = ("hostcpu", "vpid", "linear", "gpa", "perms", "global")


class Invalid(Exception):
    """A manifest field that is not what webhyve writes: `field` is its path, `problem` what is wrong."""

    def __init__(self, field, problem):
        super().__init__("%s %s" % (field, problem))
        self.field, self.problem = field, problem


def _show(value):
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# -- checks: each is a function (value, field) that raises Invalid --------------------------------------
def integer(lo, hi):
    def check(value, field):
        if type(value) is not int:
            raise Invalid(field, "is %s, not an integer" % _show(value))
        if not lo <= value <= hi:
            raise Invalid(field, "= %d is outside %d..%d" % (value, lo, hi))
    return check


def bits(mask):
    def check(value, field):
        integer(0, U64)(value, field)
        if value & ~mask:
            raise Invalid(field, "= %#x has bits outside %#x" % (value, mask))
    return check


def number(lo, hi):
    def check(value, field):
        finite = type(value) is int or type(value) is float and math.isfinite(value)
        if not finite or not lo <= value <= hi:
            raise Invalid(field, "is %s, not a number in %g..%g" % (_show(value), lo, hi))
    return check


def boolean(value, field):
    if type(value) is not bool:
        raise Invalid(field, "is %s, not true or false" % _show(value))


def text(max_len):
    def check(value, field):
        if type(value) is not str or len(value) > max_len or "\0" in value:
            raise Invalid(field, "is %s, not a text of at most %d characters" % (_show(value), max_len))
    return check


def one_of(*allowed):
    def check(value, field):
        if not any(type(value) is type(a) and value == a for a in allowed):
            raise Invalid(field, "is %s, not one of %s" % (_show(value), ", ".join(map(repr, allowed))))
    return check


def optional(inner):
    def check(value, field):
        if value is not None:
            inner(value, field)
    return check


def record(fields, optional_fields=None):
    """A JSON object with exactly these keys (those in `optional_fields` may be absent)."""
    optional_fields = optional_fields or {}

    def check(value, field):
        if type(value) is not dict:
            raise Invalid(field, "is %s, not an object" % _show(value))
        for key in value:
            if key not in fields and key not in optional_fields:
                raise Invalid(field, "has a field %s that webhyve does not write" % _show(key))
        for key, inner in fields.items():
            if key not in value:
                raise Invalid(field, "lacks its field %r" % key)
            inner(value[key], "%s.%s" % (field, key))
        for key, inner in optional_fields.items():
            if key in value:
                inner(value[key], "%s.%s" % (field, key))
    return check


def items(inner, max_len, length=None):
    def check(value, field):
        if type(value) is not list or len(value) > max_len or length is not None and len(value) != length:
            raise Invalid(field, "is %s, not a list of %s items" % (_show(value), length if length else
                                                                   "at most %d" % max_len))
        for i, item in enumerate(value):
            inner(item, "%s[%d]" % (field, i))
    return check


def mapping(key_check, value_check, max_len):
    def check(value, field):
        if type(value) is not dict or len(value) > max_len:
            raise Invalid(field, "is %s, not an object of at most %d fields" % (_show(value), max_len))
        for key, item in value.items():
            key_check(key, "%s key" % field)
            value_check(item, "%s[%s]" % (field, key))
    return check


def vm_name(value, field):
    """The rule Hypervisor.create_vm applies: letters, digits, '-' and '_'."""
    text(255)(value, field)
    if not value or not value.replace("-", "").replace("_", "").isalnum():
        raise Invalid(field, "= %s breaks the VM name rule (letters, digits, '-' and '_')" % _show(value))


def decimal(lo, hi):
    """A JSON object key that spells an integer (VGA CRTC register numbers)."""
    def check(value, field):
        spelled = type(value) is str and 0 < len(value) <= 3 and value.isascii() and value.isdigit()
        if not spelled or not lo <= int(value) <= hi:
            raise Invalid(field, "%s is not a number in %d..%d" % (_show(value), lo, hi))
    return check


def fixed(*checks):
    """A JSON list of exactly these items, each with its own check."""
    def check(value, field):
        if type(value) is not list or len(value) != len(checks):
            raise Invalid(field, "is %s, not a list of %d items" % (_show(value), len(checks)))
        for i, (item, inner) in enumerate(zip(value, checks)):
            inner(item, "%s[%d]" % (field, i))
    return check


def pci_function_name(value, field):
    """bus:device.function as host.bdf spells it (00:1f.3)."""
    if type(value) is not str or not re.fullmatch(r"[0-9a-f]{2}:[01][0-9a-f]\.[0-7]", value):    # device 0-31
        raise Invalid(field, "%s is not a PCI function's place bb:dd.f" % _show(value))


def tunable_values(value, field):
    """Saved tunables: names this webhyve has, each value within the tunable's range."""
    if type(value) is not dict:
        raise Invalid(field, "is %s, not an object of tunables" % _show(value))
    for name, item in value.items():
        known = tunables.BY_NAME.get(name)
        if known is None or known.name != name:
            raise Invalid("%s[%s]" % (field, name), "is not a tunable of this webhyve")
        integer(known.minimum, known.maximum)(item, "%s[%s]" % (field, name))


def lapic_step(value, field):
    """ctx.LAPIC_STEP (io/lapic/access.py): 0, 1 (an APIC-write exit after the store), 3 (an evaluation after it) or
    2 | vector << 8 (a virtualized-EOI exit for the vector)."""
    integer(0, 0xFFFF)(value, field)
    if not (value in (0, 1, 3) or (value & 0xFF == 2)):
        raise Invalid(field, "= %#x is not 0, 1, 3 or 2 | vector << 8" % value)


# -- the manifest -----------------------------------------------------------------------------------------
STATES = one_of(V.IDLE, V.RUNNING, V.HALTED, V.PAUSED, V.SUSPENDED)
BYTE, COUNT, CLOCK = integer(0, 0xFF), integer(0, (1 << 63) - 1), optional(integer(-MAX_NS, MAX_NS))
PIC_CHIP = record({"irr": BYTE, "isr": BYTE, "imr": BYTE, "vector_base": bits(0xF8), "icw_step": integer(0, 4),
                   "icw4_wanted": boolean, "aeoi": boolean, "read_isr": boolean, "lines": BYTE})
PIT_COUNTER = record({"gate": boolean, "mode": integer(0, 5), "access": integer(1, 3), "bcd": one_of(0, 1),
                      "reload": integer(1, 0x10000), "low_written": optional(BYTE),
                      "latched": optional(integer(0, 0xFFFF)), "status": optional(BYTE), "read_high": boolean,
                      "null_count": boolean, "frozen": optional(integer(0, MAX_NS)), "out_before": boolean,
                      "start": CLOCK})
PIT = record({"counters": items(PIT_COUNTER, 3, length=3)})
RTC_STATE = record({"ram": items(BYTE, RTC.CMOS_BYTES, length=RTC.CMOS_BYTES), "index": integer(0, RTC.INDEX_MASK),
                    "nmi_masked": boolean, "held": boolean, "dow_offset": integer(0, 6),
                    "flags": bits(RTC.C_PF | RTC.C_AF | RTC.C_UF), "line": boolean,
                    "secs": integer(-(1 << 38), 1 << 38), "origin": integer(-MAX_NS, MAX_NS)})
KBC_STATE = record({"ram": items(BYTE, 32, length=32), "output_port": BYTE,
                    "queue": items(fixed(BYTE, boolean, boolean), KBC.QUEUE_MAX), "last": BYTE,
                    "pending": optional(one_of(*range(0x60, 0x80), KBC.WRITE_OUTPUT, KBC.WRITE_KBD_OBF,
                                               KBC.WRITE_AUX_OBF, KBC.WRITE_AUX)),
                    "last_was_command": boolean, "sys_flag": boolean, "irq1": boolean, "irq12": boolean})
PCI_STATE = record({"address": bits(PCI_HOST.ADDRESS_BITS),
                    "functions": mapping(pci_function_name, items(BYTE, PCI_CONFIG.CONFIG_SIZE,
                                                                  length=PCI_CONFIG.CONFIG_SIZE), 256)})
UART = record({"ier": bits(0x0F), "lcr": BYTE, "mcr": bits(0x1F), "lsr": BYTE, "fcr": BYTE, "scr": BYTE,
               "dll": BYTE, "dlm": BYTE, "msr": BYTE, "thre_int_pending": boolean, "_irq_level": boolean,
               "_claimed": boolean, "_rx_size": one_of(1, 16), "rx": items(BYTE, 16)})


def pm1_control(value, field):
    """PM1_CNT as the device leaves it: SCI_EN set, otherwise only the bits a write can change."""
    bits(ACPI_PM.SCI_EN | ACPI_PM.CONTROL_BITS)(value, field)
    if not value & ACPI_PM.SCI_EN:
        raise Invalid(field, "= %#x has SCI_EN clear; the platform is always in ACPI mode" % value)


ACPI = record({"pm": record({"elapsed": integer(0, MAX_NS), "status": bits(ACPI_PM.STATUS_BITS),
                             "enable": bits(ACPI_PM.ENABLE_BITS), "control": pm1_control,
                             "carries_seen": integer(0, MAX_NS)}),
               "reset_control": record({"value": BYTE})})
# optional: a snapshot from before the ACPI blocks existed restores them at power-on


def ioapic_entry(value, field):
    """A redirection entry as the I/O APIC leaves it: delivery status never set (delivery is immediate), remote
    IRR only with the level trigger mode (writing edge clears it)."""
    bits(U64 & ~IOAPIC.DELIVERY_STATUS)(value, field)
    if value & IOAPIC.REMOTE_IRR and not value & IOAPIC.TRIGGER_LEVEL:
        raise Invalid(field, "= %#x has remote IRR set in an edge-triggered entry" % value)


IOAPIC_STATE = record({"id": integer(0, 0xF), "ioregsel": BYTE, "lines": bits((1 << IOAPIC.PINS) - 1),
                       "entries": items(ioapic_entry, IOAPIC.PINS, length=IOAPIC.PINS)})
# optional: a snapshot from before the I/O APIC existed restores it at power-on, as its guest last saw it


def mac_address(value, field):
    """A unicast MAC as switch.mac_text spells it (a switch learns no group address; mac= refuses one)."""
    if type(value) is not str or not re.fullmatch(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}", value) or int(value[:2], 16) & 1:
        raise Invalid(field, "%s is not a unicast MAC address xx:xx:xx:xx:xx:xx" % _show(value))


def switch_name(value, field):
    if type(value) is not str or not SWITCH.NAME.match(value):
        raise Invalid(field, "%s is not a switch name (switch0-switch9999)" % _show(value))


# a -s device's own state (virtio/pci.py, blk.py, net.py); what must agree with the device the slot builds (its
# features, vectors, queues, the image's size) is checked against that device by snapshot.load_pci_devices
U16, U32 = integer(0, 0xFFFF), integer(0, 0xFFFFFFFF)
MSIX_MAX = 2048                                   # PCI 3.0 §6.8.2.3: Table Size is 11 bits
VIRTQUEUE = record({"size": U16, "vector": U16, "enabled": boolean, "desc": integer(0, U64),
                    "driver": integer(0, U64), "device": integer(0, U64), "last_avail": U16, "used_idx": U16,
                    "flags": bits(VRING.F_INDIRECT | VRING.F_EVENT_IDX)})
VIRTIO_STATE = record({"status": BYTE, "device_feature_select": U32, "driver_feature_select": U32,
                       "driver_features": integer(0, U64), "msix_config": U16, "queue_select": U16,
                       "isr": bits(VIRTIO.ISR_QUEUE | VIRTIO.ISR_CONFIG), "broken": optional(text(1024)),
                       "queues": items(VIRTQUEUE, 64)})
BLK_STATE = record({"capacity": integer(0, 1 << 55), "readonly": boolean,
                    "counts": record({name: COUNT for name in BLK.COUNTS})})
NET_STATE = record({"mac": mac_address, "switch": optional(switch_name), "port": text(300),
                    "learned": items(mac_address, 4096), "counts": record({name: COUNT for name in NET.COUNTS}),
                    "port_counts": record({name: COUNT for name in SWITCH.COUNTERS})})
EMULATION_STATE = {BLK.VirtioBlk.emulation: "blk", NET.VirtioNet.emulation: "net"}
PCI_DEVICE = record({"emulation": one_of(*EMULATION_STATE), "msix_table": items(BYTE, MSIX_MAX * 16),
                     "msix_pba": items(BYTE, MSIX_MAX // 8), "intx": boolean, "virtio": VIRTIO_STATE},
                    {"blk": BLK_STATE, "net": NET_STATE})
DEVICES = record({"vga": record({"index": BYTE, "crtc": mapping(decimal(0, 255), BYTE, 256)}),
                  "pic": record({"master": PIC_CHIP, "slave": PIC_CHIP, "output": boolean}),
                  "pit": PIT, "port61": record({"bits": bits(nmisc.WRITABLE)}), "com1": UART, "com2": UART,
                  "rtc": RTC_STATE, "kbc": KBC_STATE, "pci": PCI_STATE},
                 {"bios": record({"elapsed": number(0, MAX_NS), "disk_last": BYTE,
                                  "peeked": optional(integer(0, 0xFFFF))}),
                  "acpi": ACPI,
                  "ioapic": IOAPIC_STATE,
                  "pci_devices": mapping(pci_function_name, PCI_DEVICE, 256)})
# vLAPIC context slots (core/ctx.py): LAPIC_FIX indexes the virtual-APIC page, so it stays within the page;
# INJECT is a vector or EXTINT (the 8259 gives the vector)
LAPIC = record({str(C.TIMER_PERIOD): integer(0, MAX_NS), str(C.INTR_WINDOW): one_of(0, 1, 2),
                str(C.INJECT): integer(0, intr.EXTINT), str(C.PENDING): bits(L.PEND_NMI | L.PEND_INIT | L.PEND_SIPI),
                str(C.LAPIC_FIX): integer(0, 4096), str(C.LAPIC_FIXVAL): integer(0, 0xFFFFFFFF),
                str(C.NMI_WINDOW): one_of(0, 1), str(C.LAPIC_STEP): lapic_step})
VCPU = record({"index": integer(0, MAX_CPUS - 1), "state": STATES, "started": boolean, "hostcpu": integer(0, 63),
               "boot": boolean, "cycles": integer(0, U64),
               "lapic": LAPIC, "lapic_clocks": record({str(C.TIMER_DEADLINE): CLOCK, str(C.TIMER_START): CLOCK}),
               "nmi_blocked": boolean, "waiting_sipi": boolean, "halt_interruptible": boolean,
               "halt_for_input": boolean, "paused_from": one_of(V.RUNNING, V.HALTED)},
              {"tsc": integer(0, U64)})
MANIFEST = record({
    "format": text(64), "version": integer(0, U64), "unicorn": text(64), "saved_at": number(0, 1 << 35),
    "vm": record({"name": vm_name, "mem_mb": integer(1, MAX_MEM_MB), "cpus": integer(1, MAX_CPUS),
                  "profile": one_of(*profiles.PROFILES), "mem_cap_mb": integer(1, MAX_MEM_MB),
                  "state": STATES,
                  "suspend": items(optional(text(1 << 16)), 2, length=2)},
                 {"slots": items(text(4096), 256)}),       # bhyve's -s arguments; slots.py parses them
    "image": record({"filename": optional(text(255)), "kind": optional(one_of(*loaders.KINDS)),
                     "cmdline": text(1 << 16), "load_addr": optional(integer(0, (1 << 48) - 1)),
                     "bytes": integer(0, MAX_IMAGE)},
                    {"initrd_bytes": integer(0, MAX_IMAGE)}),   # a Linux kernel's initrd, array "initrd"
    "memory": record({"pages": integer(0, MAX_MEM_MB << 8)}),
    "tlb_entries": integer(0, MAX_TLB_ROWS),
    "ept": record({"flags": bits(EPT.F_HW_AD | EPT.F_SUPERPAGES | EPT.F_EXEC_ONLY | EPT.F_XO_OK | EPT.F_EPT_1G
                           | EPT.F_PAGE1GB), "eptp": integer(0, U64),
                   "counters": record({"promotions": COUNT, "demotions": COUNT, "first_touch": COUNT,
                                       "ad_faults": COUNT})}),
    "tunables": tunable_values,
    "devices": DEVICES,
    "vcpus": items(VCPU, MAX_CPUS),
})


def check(manifest):
    """Raise Invalid for the first field of `manifest` that is not what webhyve writes, then for what the
    fields must agree on between themselves."""
    MANIFEST(manifest, "manifest")
    vm = manifest["vm"]
    if len(manifest["vcpus"]) != vm["cpus"]:
        raise Invalid("manifest.vcpus", "lists %d vCPUs; vm.cpus says %d" % (len(manifest["vcpus"]), vm["cpus"]))
    for i, info in enumerate(manifest["vcpus"]):
        if info["index"] != i:
            raise Invalid("manifest.vcpus[%d].index" % i, "= %d, not its position %d" % (info["index"], i))
    if vm["mem_cap_mb"] > vm["mem_mb"]:
        raise Invalid("manifest.vm.mem_cap_mb", "= %d exceeds vm.mem_mb %d" % (vm["mem_cap_mb"], vm["mem_mb"]))
    if manifest["memory"]["pages"] > vm["mem_cap_mb"] << 8:
        raise Invalid("manifest.memory.pages", "= %d is more than the VM's %d MiB (cap) can hold"
                      % (manifest["memory"]["pages"], vm["mem_cap_mb"]))
    for name, device in manifest["devices"].get("pci_devices", {}).items():
        for emulation, key in EMULATION_STATE.items():
            if (device["emulation"] == emulation) != (key in device):
                raise Invalid("manifest.devices.pci_devices[%s]" % name, "is a %s %s its %r state"
                              % (device["emulation"], "without" if key not in device else "with", key))
    for name in ("com1", "com2"):
        uart = manifest["devices"][name]
        if len(uart["rx"]) > uart["_rx_size"]:
            raise Invalid("manifest.devices.%s.rx" % name, "holds %d bytes; its FIFO holds %d"
                          % (len(uart["rx"]), uart["_rx_size"]))


# -- the arrays -------------------------------------------------------------------------------------------
def members(manifest):
    """The array members a checked manifest implies: {name: (dtype, shape)}."""
    vm, n = manifest["vm"], manifest["vm"]["cpus"]
    pages, msrs = manifest["memory"]["pages"], len(profiles.get(vm["profile"]).msrs)
    msr_columns = MSRS.COLUMNS
    u8, u64 = np.dtype(np.uint8), np.dtype(np.uint64)
    arrays = {"cpu": (ucstate.RECORD, (n,)), "vmcs": (u64, (n, VMCS.NFIELDS)), "counters": (u64, (n, S.NSLOTS)),
              "msrs": (u64, (n, msrs, msr_columns)), "lapic": (u8, (n, LAPIC_BYTES)), "pages_gpa": (u64, (pages,)),
              "pages_bits": (u64, (pages,)), "pages_data": (u8, (pages, EPT.PAGE)),
              "tlb": (u64, (manifest["tlb_entries"], len(TLB_COLUMNS))), "image": (u8, (manifest["image"]["bytes"],))}
    if "initrd_bytes" in manifest["image"]:
        arrays["initrd"] = (u8, (manifest["image"]["initrd_bytes"],))
    return arrays


def check_arrays(manifest, arrays):
    """Raise Invalid for the first array element a webhyve snapshot of this manifest cannot hold."""
    for i, record in enumerate(arrays["cpu"]):
        bad = ucstate.problems(record)
        if bad:
            raise Invalid("cpu[%d]" % i, bad[0])
    masks = np.array([f.mask for f in VMCS.FIELDS], np.uint64)
    for i, slot in np.argwhere(arrays["vmcs"] & ~masks)[:1]:
        f = VMCS.FIELDS[slot]
        raise Invalid("vmcs[%d]" % i, "field %s = %#x is wider than %d bits"
                      % (f.name, arrays["vmcs"][i, slot], f.width))
    _check_msrs(manifest["vm"]["profile"], arrays["msrs"])
    _check_pages(manifest["vm"]["mem_mb"] << 20, arrays["pages_gpa"], arrays["pages_bits"])
    _check_tlb(manifest["vm"]["cpus"], arrays["tlb"])


def _first(bad):
    return int(np.flatnonzero(bad)[0]) if bad.any() else None


def _check_msrs(profile, msrs):
    """Each vCPU's copy has the profile's MSRs, kinds and write rules, and its read-only values (the guest
    cannot change them)."""
    expected = profiles.get(profile).msr_table()
    readonly = expected[:, MSRS.COL_KIND] == MSRS.MSR_READONLY
    rules = [MSRS.COL_INDEX, MSRS.COL_KIND, MSRS.COL_MASK, MSRS.COL_CHECK]
    for i, table in enumerate(msrs):
        if not np.array_equal(table[:, rules], expected[:, rules]) or \
                not np.array_equal(table[readonly], expected[readonly]):
            raise Invalid("msrs[%d]" % i, "is not the %s profile's MSR table (indices, kinds, rules and read-only "
                          "values)" % profile)


def _check_pages(mem_size, gpas, leaf_bits):
    """Guest pages in increasing order inside guest memory, and leaf bits without address or unknown bits."""
    i = _first(gpas & np.uint64(EPT.PAGE - 1))
    if i is not None:
        raise Invalid("pages_gpa[%d]" % i, "= %#x is not page-aligned" % gpas[i])
    i = _first(gpas >= np.uint64(mem_size))
    if i is not None:
        raise Invalid("pages_gpa[%d]" % i, "= %#x is beyond the VM's %d MiB" % (gpas[i], mem_size >> 20))
    i = _first(gpas[1:] <= gpas[:-1])
    if i is not None:
        raise Invalid("pages_gpa[%d]" % (i + 1), "= %#x is not above the page before it" % gpas[i + 1])
    i = _first(leaf_bits & ~np.uint64(LEAF_BITS))
    if i is not None:
        raise Invalid("pages_bits[%d]" % i, "= %#x has bits outside an EPT leaf's %#x" % (leaf_bits[i], LEAF_BITS))


def _check_tlb(cpus, rows):
    """TLB model rows [hostcpu, vpid, linear, gpa, perms, global] for this VM's VPIDs. A gpa need not be guest
    memory (the APIC page is not): the restore keeps only the rows whose gpa its EPT maps."""
    limits = {"hostcpu": 64, "vpid": cpus + 1, "gpa": 1 << 52, "perms": W.PROT_R | W.PROT_W | W.PROT_X |
              W.PROT_GLOBAL | W.PROT_USER, "global": 1}
    for column, name in enumerate(TLB_COLUMNS):
        if name not in limits:
            continue
        values = rows[:, column]
        bad = values > np.uint64(limits[name]) if name in ("perms", "global") else values >= np.uint64(limits[name])
        if name == "vpid":
            bad |= values == 0
        i = _first(bad)
        if i is not None:
            raise Invalid("tlb[%d].%s" % (i, name), "= %#x is outside what this VM's TLB entries hold" % values[i])
