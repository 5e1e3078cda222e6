"""The hw.vmm.* tunables: name, type, default, description, and whether bhyve reads them at boot only.

Values live in one int64 array that kernels receive as an argument (numba freezes globals, so a kernel
never reads a tunable any other way). Two flags say when a value is read:
- `boot_only`: webhyve reads it when a VM is created; otherwise at every VM entry, so a change applies from
  the next entry. Changing a tunable live is webhyve's, beyond bhyve.
- `bhyve_boot`: bhyve reads it only when vmm.ko loads (a loader tunable, TUNABLE_INT_FETCH, or a sysctl
  declared CTLFLAG_RDTUN or CTLFLAG_RD): on FreeBSD a change needs a reboot (or a reload of vmm.ko). False
  for webhyve's own tunables, which bhyve does not have.

Read-only sysctls (`SYSCTLS`) show what bhyve computed from the tunables and the CPU: hw.vmm.vmx.l1d_flush and
hw.vmm.vmx.l1d_flush_sw, vmx_modinit's guest_l1d_flush and guest_l1d_flush_sw (`effective_l1d`).
"""
import numpy as np

from .errors import TunableError


class Tunable:
    __slots__ = ("name", "type", "default", "description", "boot_only", "minimum", "maximum", "aliases", "owner", "slot",
                 "bhyve_boot")

    def __init__(self, name, type, default, description, boot_only, minimum=0, maximum=1, aliases=(), owner="",
                 bhyve_boot=True):
        self.name, self.type, self.default, self.description = name, type, default, description
        self.boot_only, self.minimum, self.maximum, self.aliases, self.owner = boot_only, minimum, maximum, aliases, owner
        self.bhyve_boot = bhyve_boot
        self.slot = None

    def parse(self, text):
        """A value from user text ('1', '0x10', 'true'...), or TunableError naming the accepted range."""
        if isinstance(text, bool):
            value = int(text)
        elif isinstance(text, int):
            value = text
        else:
            word = str(text).strip().lower()
            if self.type == "bool" and word in ("true", "yes", "on", "false", "no", "off"):
                value = int(word in ("true", "yes", "on"))
            elif word in ("auto", "unset") and self.minimum == AUTO:
                value = AUTO
            else:
                try:
                    value = int(word, 0)
                except ValueError:
                    raise TunableError("%s: %r is not a%s" % (self.name, text, "n integer" if self.type == "int" else " boolean (0 or 1)")) from None
        if not self.minimum <= value <= self.maximum:
            raise TunableError("%s: %d is outside %d..%d" % (self.name, value, self.minimum, self.maximum))
        return value


AUTO = -1                 # not set: bhyve's default, computed from the CPU at boot, applies ("auto" or "unset")
# The most vCPUs a VM can have, whatever hw.vmm.maxcpu says (bhyve's VM_MAXCPU; hw.vmm.maxcpu is clamped to
# it). The modeled local APIC is an xAPIC: its ID is 8 bits (APIC ID register bits 31:24, CPUID.1:EBX[31:24],
# an ICR's physical destination) and 0xFF is the broadcast destination, so IDs 0-254 name 255 vCPUs; a 256th
# could not be sent an IPI or told apart at all. Going further needs x2APIC (32-bit IDs), not modeled.
VM_MAXCPU = 255


def _bool(name, default, description, boot_only, owner, aliases=(), bhyve_boot=True):
    return Tunable(name, "bool", default, description, boot_only, 0, 1, aliases, owner, bhyve_boot)


TABLE = (
    _bool("hw.vmm.halt_detection", 1, "Halt VM if all vcpus execute HLT with interrupts disabled", True, "vm/machine.py"),
    _bool("hw.vmm.trace_guest_exceptions", 0, "Map all guest exceptions into the exception bitmap", True, "vmx/vmx.py"),
    _bool("hw.vmm.topology.cpuid_leaf_b", 1, "Provide topology information via CPUID leaf 0xB", True, "cpu/cpuid.py"),
    Tunable("hw.vmm.maxcpu", "int", 16, "Maximum number of vCPUs (at most %d: the xAPIC's 8-bit IDs)" % VM_MAXCPU,
            True, 1, VM_MAXCPU, owner="vm/machine.py"),
    _bool("hw.vmm.ept.use_superpages", 1, "Use superpages with EPT", True, "mmu/ept.py"),
    _bool("hw.vmm.ept.use_hw_ad_bits", 1, "Use hardware access/dirty bits with EPT", True, "mmu/ept.py"),
    _bool("hw.vmm.ept.use_exec_only", 1, "Use execute-only mappings with EPT", True, "mmu/ept.py"),
    _bool("hw.vmm.ept.skip_invalidation", 0, "webhyve debug: mapping changes skip pmap_invalidate_ept, "
          "so vCPUs keep stale translations", False, "vm/memory.py", bhyve_boot=False),
    # vmx_modinit's loader tunables (the hw.vmm.vmx.* forms are fetched last and win in bhyve; here both names set
    # one value). The effective values are the read-only sysctls below. Here they apply from the next VM entry.
    Tunable("hw.vmm.l1d_flush", "int", AUTO, "Loader tunable: flush the L1D on VM entry (CVE-2018-3646); "
            "-1: not set, bhyve's default applies: on unless IA32_ARCH_CAPABILITIES.SKIP_L1DFL_VMENTRY",
            False, AUTO, 1, ("hw.vmm.vmx.l1d_flush",), "cpu/l1d.py"),
    Tunable("hw.vmm.l1d_flush_sw", "bool", AUTO, "Loader tunable: flush by software (reading 64 KiB), read only "
            "when the flush is on and the CPU lacks IA32_FLUSH_CMD (CPUID.(7,0):EDX[28]); -1: not set, 1 applies",
            False, AUTO, 1, ("hw.vmm.vmx.l1d_flush_sw",), "cpu/l1d.py"),
    _bool("hw.vmm.l1d_sim", 0, "Simulate the L1D for guest loads and stores; RDTSC returns modeled cycles "
          "(webhyve)", False, "cpu/cachesim.py", bhyve_boot=False),
    _bool("hw.vmm.vmx.cap.posted_interrupts", 1, "APICv posted interrupts, where the CPU has them (the "
          "cascadelake profile); a change reaches each running vCPU's VMCS at its next entry", False,
          "vmx/controls.py", aliases=("hw.vmm.vmx.use_apic_pir",)),
    Tunable("hw.vmm.vmx.posted_interrupt_vector", "int", 0xF2, "Posted interrupts notification vector",
            True, 32, 255, owner="io/lapic/deliver.py"),
    Tunable("hw.vmm.ipinum", "int", 0xF3, "IPI vector used for vcpu notifications", True, 32, 255,
            owner="io/lapic/deliver.py"),
    Tunable("hw.vmm.hlt_kernel_wait_us", "int", 5000, "A HLT with interrupts enabled waits this many "
            "microseconds in the kernel loop for an interrupt before halting in userspace (webhyve; 0: never)",
            False, 0, 1000000, owner="vmx/halt.py", bhyve_boot=False),
    # vmx_modinit's APICv loader tunables, fetched only where the CPU has the feature (vmx/controls.py modinit);
    # they choose the VMCS controls of the VMs made after a change
    _bool("hw.vmm.vmx.cap.tpr_shadowing", 1, "TPR shadowing support (where the CPU has the TPR shadow)", True,
          "vmx/controls.py", aliases=("hw.vmm.vmx.use_tpr_shadowing",)),
    _bool("hw.vmm.vmx.cap.virtual_interrupt_delivery", 1, "APICv virtual interrupt delivery support (where the CPU "
          "has it and the TPR shadow is used)", True, "vmx/controls.py", aliases=("hw.vmm.vmx.use_apic_vid",)),
    _bool("hw.vmm.vmx.check_guest_state", 0, "webhyve test mode: check the guest-state area as VM entry does (SDM "
          "26.3.1) before every entry from userspace; a failure suspends the VM with exit reason 33", False,
          "vmx/entrycheck.py", bhyve_boot=False),
)
# Read-only sysctls (CTLFLAG_RDTUN in vmx.c): name, description, what they show
SYSCTLS = (
    ("hw.vmm.vmx.l1d_flush", "L1D flush on VM entry in effect: vmx_modinit's guest_l1d_flush", "flush"),
    ("hw.vmm.vmx.l1d_flush_sw", "Software L1D flush in effect: vmx_modinit's guest_l1d_flush_sw", "software"),
)


def effective_l1d(flush, software, has_flush_cmd, skip_l1dfl_vmentry):
    """vmx_modinit (sys/amd64/vmm/intel/vmx.c): (guest_l1d_flush, guest_l1d_flush_sw) from the loader tunables'
    settings (AUTO: not set) and the CPU. guest_l1d_flush defaults to "IA32_ARCH_CAPABILITIES lacks
    SKIP_L1DFL_VMENTRY". guest_l1d_flush_sw stays 0 unless the flush is on and CPUID.(7,0):EDX[28] (IA32_FLUSH_CMD)
    is clear; then it defaults to 1 and only then is hw.vmm.l1d_flush_sw read. Otherwise the VM-entry MSR-load
    list writes IA32_FLUSH_CMD."""
    flush = (0 if skip_l1dfl_vmentry else 1) if flush == AUTO else flush
    sw = 0
    if flush and not has_flush_cmd:
        sw = 1 if software == AUTO else software
    return int(flush != 0), int(sw != 0)
BY_NAME = {}
for _slot, _t in enumerate(TABLE):
    _t.slot = _slot
    BY_NAME[_t.name] = _t
    for _alias in _t.aliases:
        BY_NAME[_alias] = _t
COUNT = len(TABLE)
SLOT = {t.name: t.slot for t in TABLE}
HALT_DETECTION = SLOT["hw.vmm.halt_detection"]
TRACE_GUEST_EXCEPTIONS = SLOT["hw.vmm.trace_guest_exceptions"]
CPUID_LEAF_B = SLOT["hw.vmm.topology.cpuid_leaf_b"]
MAXCPU = SLOT["hw.vmm.maxcpu"]
L1D_FLUSH = SLOT["hw.vmm.l1d_flush"]
L1D_FLUSH_SW = SLOT["hw.vmm.l1d_flush_sw"]
L1D_SIM = SLOT["hw.vmm.l1d_sim"]
POSTED_INTERRUPTS = SLOT["hw.vmm.vmx.cap.posted_interrupts"]
POSTED_INTERRUPT_VECTOR = SLOT["hw.vmm.vmx.posted_interrupt_vector"]
IPINUM = SLOT["hw.vmm.ipinum"]
HLT_KERNEL_WAIT_US = SLOT["hw.vmm.hlt_kernel_wait_us"]
TPR_SHADOWING = SLOT["hw.vmm.vmx.cap.tpr_shadowing"]
VIRTUAL_INTERRUPT_DELIVERY = SLOT["hw.vmm.vmx.cap.virtual_interrupt_delivery"]
CHECK_GUEST_STATE = SLOT["hw.vmm.vmx.check_guest_state"]


def lookup(name):
    try:
        return BY_NAME[name]
    except KeyError:
        raise TunableError("unknown tunable %r (known: %s)" % (name, ", ".join(t.name for t in TABLE))) from None


class Tunables:
    """The live values, shared by every VM of a hypervisor; `changes` keeps who changed what, in order.
    `host_cpu` is (CPUID.(7,0):EDX[28], SKIP_L1DFL_VMENTRY) of the CPU the read-only sysctls are computed for:
    the modeled host's (the default profile); each VM's flush follows its own profile the same way."""

    def __init__(self, overrides=None, host_cpu=(False, False)):
        self.values = np.array([t.default for t in TABLE], np.int64)
        self.listeners = []
        self.host_cpu = host_cpu
        for name, value in (overrides or {}).items():
            self.set(name, value)

    def effective_l1d(self, has_flush_cmd=None, skip_l1dfl_vmentry=None):
        """(hw.vmm.vmx.l1d_flush, hw.vmm.vmx.l1d_flush_sw) for a CPU (the host's by default)."""
        cmd, skip = self.host_cpu
        return effective_l1d(int(self.values[L1D_FLUSH]), int(self.values[L1D_FLUSH_SW]),
                             cmd if has_flush_cmd is None else has_flush_cmd,
                             skip if skip_l1dfl_vmentry is None else skip_l1dfl_vmentry)

    def sysctl(self, name):
        """A read-only sysctl's value, or None for a name that is not one."""
        flush, software = self.effective_l1d()
        shown = {"flush": flush, "software": software}
        for sysctl, _, what in SYSCTLS:
            if sysctl == name:
                return shown[what]
        return None

    def get(self, name):
        return int(self.values[lookup(name).slot])

    def set(self, name, text):
        """Validate and store; returns (tunable, old, new). Listeners hear of every change."""
        t = lookup(name)
        value = t.parse(text)
        old = int(self.values[t.slot])
        self.values[t.slot] = value
        for listener in self.listeners:
            listener(t, old, value)
        return t, old, value

    def describe(self):
        """Every tunable, then every read-only sysctl ("read_only": True, changed through the tunable it names
        in "set_by"). "bhyve_boot": bhyve reads it only at boot; "minimum"/"maximum": its range."""
        rows = [{"name": t.name, "type": t.type, "value": int(self.values[t.slot]), "default": t.default,
                 "description": t.description, "boot_only": t.boot_only, "aliases": list(t.aliases),
                 "bhyve_boot": t.bhyve_boot, "read_only": False, "minimum": t.minimum, "maximum": t.maximum}
                for t in TABLE]
        cmd, skip = self.host_cpu
        defaults = dict(zip(("flush", "software"), effective_l1d(AUTO, AUTO, cmd, skip)))
        for name, description, what in SYSCTLS:
            rows.append({"name": name, "type": "bool", "value": self.sysctl(name), "default": defaults[what],
                         "description": description, "boot_only": False, "aliases": [], "bhyve_boot": True,
                         "read_only": True, "set_by": BY_NAME[name].name})
        return rows
