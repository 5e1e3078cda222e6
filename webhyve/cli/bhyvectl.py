"""bhyvectl's options and output formats (usr.sbin/bhyvectl/bhyvectl.c, freebsd-src 01f2ed7d52ef), over what the
webhyve server returns.

GET_ALL is bhyvectl's main() getter sequence, in its order, each entry (option, printer): `--get-all` walks it once,
a single `--get-X` prints its one entry. A printer takes a source (vmmctl's Sources: the vCPU's state, the VM, its
memory map and stats, fetched when first needed) and returns lines, formatted with bhyvectl's printf formats (C's
`%#lx` prints a bare 0 for zero: `alt`). EXTRA are webhyve's own getters beyond bhyvectl (--get-vmcs-FIELD for every
modeled VMCS field). REFUSED names each bhyvectl option webhyve cannot carry out, and why.
tests/webhyve/data/bhyvectl_options.json holds the names and formats as extracted from bhyvectl.c.
"""
import time

from engine.door.tables import GPRS, SEGMENTS
from engine.door.tables import exits as E
from engine.door.tables import vmcs as V

SETTABLE = GPRS + SEGMENTS + ("efer",)           # --set-REG=V: bhyvectl's and webhyve's (every register the engine sets)
BHYVECTL_SETTERS = ("efer", "cr0", "cr2", "cr3", "cr4", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7", "rsp", "rip", "rax",
                    "rflags", "cs", "ds", "es", "fs", "gs", "ss")
CAPABILITIES = ("hlt_exit", "mtrap_exit", "pause_exit", "unrestricted_guest", "enable_invpcid", "bpt_exit",
                "rdpid", "rdtscp", "ipi_exit", "mask_hwintr", "rflags_tf")
INTINFO_TYPES = {0: "extint", 2: "nmi", 4: "swint"}      # anything else prints "exception"
X2APIC_DISABLED = 0                                       # enum x2apic_state: webhyve's LAPIC is xAPIC only

# bhyvectl.c msr_name(): the MSRs --get-msr-bitmap names (specialreg.h's names); any other prints "MSR       %#08x"
MSR_NAMES = {0x10: "MSR_TSC", 0xC0000080: "MSR_EFER", 0xC0000081: "MSR_STAR", 0xC0000082: "MSR_LSTAR",
             0xC0000083: "MSR_CSTAR", 0xC0000084: "MSR_SF_MASK", 0xC0000100: "MSR_FSBASE", 0xC0000101: "MSR_GSBASE",
             0xC0000102: "MSR_KGSBASE", 0x174: "MSR_SYSENTER_CS_MSR", 0x175: "MSR_SYSENTER_ESP_MSR",
             0x176: "MSR_SYSENTER_EIP_MSR", 0x277: "MSR_PAT"}

# vm_exitcode (sys/amd64/include/vmm.h) of what vm_run hands to userspace here
EXITCODE_INOUT, EXITCODE_VMX, EXITCODE_INST_EMUL, EXITCODE_INOUT_STR, EXITCODE_VMINSN = 0, 1, 9, 15, 22

# Options bhyvectl has that webhyve refuses, by name, with the reason (vmmctl exits 1 naming it).
_DESC = ("the engine loads segment descriptor caches only from the guest's own descriptor tables (Unicorn takes "
         "selectors); bhyvectl's --desc-base/--desc-limit/--desc-access writes are not modeled")
_RTC = "the MC146818 RTC's CMOS and time are not reachable through webhyve's server API yet"
REFUSED = {
    **{"set-desc-" + d: _DESC for d in ("ds", "es", "ss", "cs", "fs", "gs", "tr", "ldtr", "gdtr", "idtr")},
    "desc-base": _DESC, "desc-limit": _DESC, "desc-access": _DESC,
    "set-tr": "TR is loaded by the guest's LTR only (the engine writes the six data/code selectors)",
    "set-ldtr": "LDTR is loaded by the guest's LLDT only (the engine writes the six data/code selectors)",
    "set-x2apic-state": "webhyve's local APIC is an xAPIC only: x2APIC mode is not modeled (state stays 0, disabled)",
    "unassign-pptdev": "webhyve has no PCI passthrough (ppt) devices",
    "assert-lapic-lvt": "the local APIC's LINT pins are not reachable through webhyve's server API",
    "get-rtc-time": _RTC, "set-rtc-time": _RTC, "get-rtc-nvram": _RTC, "set-rtc-nvram": _RTC,
    "rtc-nvram-offset": _RTC,
}
# bhyvectl accepts these on Intel and prints nothing (only get_misc_vmcb, AMD's, prints them).
SILENT_ON_INTEL = ("get-apic-access-address", "get-virtual-apic-address")


def alt(value):
    """C's %#lx: 0 for zero, else 0x and hex digits."""
    return "%#x" % value if value else "0"


def _q(label, value, vcpu, tabs="\t\t"):
    return "%s[%d]%s0x%016x" % (label, vcpu, tabs, value & (1 << 64) - 1)


def reg(name, tabs="\t\t"):
    return lambda s: [_q(name, s.state["registers"][name], s.cpu, tabs)]


def selector(name):
    def get(s):
        regs = s.state["registers"]
        value = regs[name] if name in regs else s.state["vmcs"]["GUEST_%s_SELECTOR" % name.upper()]
        return ["%s[%d]\t\t0x%04x" % (name, s.cpu, value)]
    return get


def descriptor(name):
    def get(s):
        d = s.state["descriptors"][name]
        if name in ("gdtr", "idtr"):
            return ["%s[%d]\t\t0x%016x/0x%08x" % (name, s.cpu, d["base"], d["limit"])]
        return ["%s desc[%d]\t0x%016x/0x%08x/0x%08x" % (name, s.cpu, d["base"], d["limit"], d["access"])]
    return get


def vmcs(label, field, tabs="\t\t"):
    return lambda s: [_q(label, s.state["vmcs"][field], s.cpu, tabs)]


def vmcs_alt(label, field, tabs="\t"):
    return lambda s: ["%s[%d]%s%s" % (label, s.cpu, tabs, alt(s.state["vmcs"][field]))]


def msr_bitmap_lines(perms, vcpu):
    """dump_intel_msr_pm's print_msr_pm lines, "%-20s[%d]\t\t%c%c", for [msr, readable, writable] rows."""
    return ["%-20s[%d]\t\t%s%s" % (MSR_NAMES.get(msr, "MSR       %#08x" % msr), vcpu, "R" if r else "-", "W" if w else "-")
            for msr, r, w in perms]


def cr3_targets(s):
    v = s.state["vmcs"]
    return ([_q("cr3_target_count", v["CR3_TARGET_COUNT"], s.cpu, "\t")]
            + [_q("cr3_target%d" % i, v["CR3_TARGET%d" % i], s.cpu) for i in range(4)])


def humanize(size):
    """humanize_number(…, "B", HN_AUTOSCALE, HN_NOSPACE) as show_memmap uses it: 64MB, 512KB, 4095B."""
    for prefix in ("", "K", "M", "G", "T"):
        if size < 1024 or size % 1024:
            return "%d%sB" % (size, prefix)
        size //= 1024
    return "%dPB" % size


def memseg_lines(segments):
    """show_memseg: ID Length Name, one row per memory segment."""
    return ["ID  Length      Name"] + ["%-4d%-12s%s" % (i, humanize(seg["size"]), seg.get("name") or "sysmem")
                                       for i, seg in enumerate(segments)]


def memmap_lines(segments):
    """show_memmap: Address Length Segment Offset Prot Flags."""
    out = ["Address     Length      Segment     Offset      Prot  Flags"]
    for seg in segments:
        prot = "".join(c if c.lower() in seg.get("prot", "rwx") else "-" for c in "RWX")
        out.append("%-12X%-12s%-12s%-12X%s   " % (seg["gpa"], humanize(seg["size"]), seg.get("name") or "sysmem", 0, prot))
    return out


def getcap_lines(state, only=None):
    out = []
    for name in CAPABILITIES:
        if only is not None and name != only:
            continue
        value = state["capabilities"].get(name)
        if value is None:
            out.append('Capability "%s" is not available' % name)
        else:
            out.append('Capability "%s" is %s on vcpu %d' % (name, "set" if value else "not set", state["vcpu"]))
    return out


def cpus_line(banner, cpus):
    """print_cpus: `banner:\t 0, 1`, or ` (none)`."""
    return "%s:\t%s" % (banner, ", ".join(" %d" % c if i == 0 else "%d" % c for i, c in enumerate(cpus))
                        if cpus else " (none)")


def intinfo_text(info):
    """print_intinfo: `extint|nmi|swint|exception vector N [errcode 0x..]`, or n/a."""
    if not info & E.INTR_VALID:
        return "n/a"
    text = "%s vector %d" % (INTINFO_TYPES.get((info >> 8) & 7, "exception"), info & 0xFF)
    if info & E.INTR_ERRCODE:
        text += " errcode %#x" % (info >> 32)
    return text


def topology_line(cpus):
    """vm_get_topology as bhyve(8) sets it without -c's topology: one socket per vCPU, one core, one thread."""
    return "cpu_topology:\tsockets=%d, cores=1, threads=1, maxcpus=%d" % (cpus, cpus)


GET_ALL = (
    [("get-memseg", lambda s: memseg_lines(s.memmap)), ("get-memmap", lambda s: memmap_lines(s.memmap))]
    + [("get-" + r, reg(r)) for r in ("efer", "cr0", "cr2", "cr3", "cr4", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7",
                                      "rsp", "rip", "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9",
                                      "r10", "r11", "r12", "r13", "r14", "r15")]
    + [("get-rflags", reg("rflags", "\t"))]
    + [("get-desc-" + d, descriptor(d)) for d in ("ds", "es", "fs", "gs", "ss", "cs", "tr", "ldtr", "gdtr", "idtr")]
    + [("get-" + r, selector(r)) for r in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldtr")]
    + [("get-vmcs-cr0-mask", vmcs("cr0_mask", "CR0_MASK")), ("get-vmcs-cr0-shadow", vmcs("cr0_shadow", "CR0_SHADOW")),
       ("get-vmcs-cr4-mask", vmcs("cr4_mask", "CR4_MASK")), ("get-vmcs-cr4-shadow", vmcs("cr4_shadow", "CR4_SHADOW")),
       ("get-vmcs-cr3-targets", cr3_targets),
       ("get-vmcs-pinbased-ctls", vmcs("pinbased_ctls", "PIN_BASED_CTLS", "\t")),
       ("get-vmcs-procbased-ctls", vmcs("procbased_ctls", "PRI_PROC_BASED_CTLS", "\t")),
       ("get-vmcs-procbased-ctls2", vmcs("procbased_ctls2", "SEC_PROC_BASED_CTLS", "\t")),
       ("get-vmcs-guest-linear-address", vmcs("gla", "GUEST_LINEAR_ADDRESS")),
       ("get-vmcs-guest-physical-address", vmcs("gpa", "GUEST_PHYSICAL_ADDRESS")),
       ("get-vmcs-entry-interruption-info", vmcs("entry_interruption_info", "ENTRY_INTR_INFO", "\t")),
       ("get-vmcs-tpr-threshold", vmcs("tpr_threshold", "TPR_THRESHOLD", "\t")),
       ("get-vmcs-instruction-error", vmcs("instruction_error", "INSTRUCTION_ERROR", "\t")),
       ("get-vmcs-exit-ctls", vmcs("exit_ctls", "EXIT_CTLS")), ("get-vmcs-entry-ctls", vmcs("entry_ctls", "ENTRY_CTLS")),
       ("get-vmcs-host-pat", vmcs("host_pat", "HOST_IA32_PAT")), ("get-vmcs-host-cr0", vmcs("host_cr0", "HOST_CR0")),
       ("get-vmcs-host-cr3", vmcs("host_cr3", "HOST_CR3")), ("get-vmcs-host-cr4", vmcs("host_cr4", "HOST_CR4")),
       ("get-vmcs-host-rip", vmcs("host_rip", "HOST_RIP")), ("get-vmcs-host-rsp", vmcs("host_rsp", "HOST_RSP")),
       ("get-vmcs-link", vmcs("vmcs_pointer", "LINK_POINTER", "\t")),
       ("get-vmcs-exit-interruption-info", vmcs("vmcs_exit_interruption_info", "EXIT_INTR_INFO", "\t")),
       ("get-vmcs-exit-interruption-error", vmcs("vmcs_exit_interruption_error", "EXIT_INTR_ERRCODE", "\t")),
       ("get-vmcs-interruptibility", vmcs("vmcs_guest_interruptibility", "GUEST_INTERRUPTIBILITY", "\t")),
       ("get-vmcs-exit-inst-length", lambda s: ["vmcs_exit_inst_length[%d]\t0x%08x" % (
           s.cpu, s.state["vmcs"]["EXIT_INSTRUCTION_LENGTH"] & 0xFFFFFFFF)]),
       ("get-vmcs-exit-qualification", vmcs("vmcs_exit_qualification", "EXIT_QUALIFICATION", "\t")),
       ("get-x2apic-state", lambda s: ["x2apic_state[%d]\t%d" % (s.cpu, X2APIC_DISABLED)]),
       ("get-eptp", vmcs("eptp", "EPTP")),
       ("get-exception-bitmap", vmcs_alt("exception_bitmap", "EXCEPTION_BITMAP")),
       ("get-io-bitmap-address", lambda s: vmcs_alt("io_bitmap_a", "IO_BITMAP_A")(s)
        + vmcs_alt("io_bitmap_b", "IO_BITMAP_B")(s)),
       ("get-tsc-offset", vmcs("tsc_offset", "TSC_OFFSET", "\t")),
       ("get-msr-bitmap-address", vmcs_alt("msr_bitmap", "MSR_BITMAP", "\t\t")),
       ("get-msr-bitmap", lambda s: msr_bitmap_lines(s.state["msr_bitmap"], s.cpu)),
       ("get-vmcs-vpid", lambda s: ["vpid[%d]\t\t0x%04x" % (s.cpu, s.state["vmcs"]["VPID"])]),
       ("get-guest-pat", vmcs("guest_pat", "GUEST_IA32_PAT")),
       ("get-guest-sysenter", lambda s: vmcs_alt("guest_sysenter_cs", "GUEST_IA32_SYSENTER_CS")(s)
        + vmcs_alt("guest_sysenter_sp", "GUEST_IA32_SYSENTER_ESP")(s)
        + vmcs_alt("guest_sysenter_ip", "GUEST_IA32_SYSENTER_EIP")(s)),
       ("get-exit-reason", vmcs_alt("exit_reason", "EXIT_REASON"))]
)
# After the getters, in main()'s order; --get-all includes each ("getcap" prints every capability).
TAIL = (("getcap", lambda s: getcap_lines(s.state, s.capname)),
        ("get-active-cpus", lambda s: [cpus_line("active cpus", s.cpus_in(lambda st: st != "idle"))]),
        ("get-suspended-cpus", lambda s: [cpus_line("suspended cpus", s.cpus_in(lambda st: st == "paused"))]),
        ("get-intinfo", lambda s: ["pending:\t" + intinfo_text(s.state["intinfo"]["pending"]),
                                   "current:\t" + intinfo_text(s.state["intinfo"]["current"])]),
        ("get-stats", lambda s: s.stats_text.rstrip("\n").split("\n")),
        ("get-cpu-topology", lambda s: [topology_line(s.vm["cpus"])]))


def vmcs_option(field):
    return "get-vmcs-" + field.name.lower().replace("_", "-")


def _extra():
    """webhyve's --get-vmcs-FIELD for each modeled VMCS field bhyvectl has no getter of its own for."""
    named = {option for option, _ in GET_ALL}
    return [(vmcs_option(f), vmcs(f.name.lower(), f.name)) for f in V.FIELDS if vmcs_option(f) not in named]


EXTRA = _extra()
GETTERS = GET_ALL + EXTRA


def run_dump(vcpu, answer):
    """dump_vm_run_exitcode for the exit vm_run handed to userspace: INOUT and VMX in detail, any other
    exitcode as bhyvectl's `*** unknown vm run exitcode N`."""
    ex = answer["exit"]
    lines = ["vm exit[%d]" % vcpu, "\trip\t\t0x%016x" % ex["rip"], "\tinst_length\t%d" % ex["length"]]
    code = answer["exitcode"]
    if code == EXITCODE_INOUT:
        io = E.decode_io(ex["qualification"])
        lines += ["\treason\t\tINOUT", "\tdirection\t%s" % ("IN" if io["in"] else "OUT"),
                  "\tbytes\t\t%d" % io["size"],
                  "\tflags\t\t%s%s" % ("STRING " if io["string"] else "", "REP " if io["rep"] else ""),
                  "\tport\t\t0x%04x" % io["port"], "\teax\t\t0x%08x" % (answer["rax"] & 0xFFFFFFFF)]
    elif code == EXITCODE_VMX:
        lines += ["\treason\t\tVMX", "\tstatus\t\t0", "\texit_reason\t0x%08x (%u)" % (ex["reason"], ex["reason"]),
                  "\tqualification\t0x%016x" % ex["qualification"], "\tinst_type\t\t0",
                  "\tinst_error\t\t%d" % answer["instruction_error"]]
    else:
        lines.append("*** unknown vm run exitcode %d" % code)
    return lines


def gpa_pmap_line(gpa, chain):
    """`gpa 0x…: pte…`, the EPT entries PML4 first, as vm_get_gpa_pmap returns them (%#lx: 0 prints 0)."""
    return "gpa %s:%s" % (alt(gpa), "".join(" " + alt(row["entry"]) for row in chain))
