"""bhyvectl's options and output formats, generated from the engine's register, VMCS and stat tables.

GETTERS is the ordered table `--get-all` walks: (option, what it needs, print function). Each print
function takes the vCPU state the server returned (GET /api/v1/ctl/vms/NAME/vcpus/I) and returns lines.
"""
from engine.door.tables import GPRS, SEGMENTS
from engine.door.tables import exits as E
from engine.door.tables import vmcs as V

REGISTERS = GPRS + ("efer",)                     # printed 0x%016lx
SELECTORS = SEGMENTS + ("ldtr", "tr")            # printed 0x%04lx; ldtr and tr are read-only here
SETTABLE = GPRS + SEGMENTS + ("efer",)
DESCRIPTORS = ("ds", "es", "fs", "gs", "cs", "ss", "tr", "ldtr", "gdtr", "idtr")
CAPABILITIES = ("hlt_exit", "mtrap_exit", "pause_exit", "unrestricted_guest", "enable_invpcid", "bpt_exit",
                "rdpid", "rdtscp", "ipi_exit", "mask_hwintr", "rflags_tf")

# bhyvectl's own option names for VMCS fields (get_misc_vmcs and the common VMCS/VMCB getters):
# option (without --get-), the label it prints, the fields. Every field also has --get-vmcs-FIELD.
BHYVECTL_VMCS = (
    ("vmcs-pinbased-ctls", "pinbased_ctls", ("PIN_BASED_CTLS",)),
    ("vmcs-procbased-ctls", "procbased_ctls", ("PRI_PROC_BASED_CTLS",)),
    ("vmcs-procbased-ctls2", "procbased_ctls2", ("SEC_PROC_BASED_CTLS",)),
    ("vmcs-exit-ctls", "exit_ctls", ("EXIT_CTLS",)),
    ("vmcs-entry-ctls", "entry_ctls", ("ENTRY_CTLS",)),
    ("vmcs-entry-interruption-info", "entry_interruption_info", ("ENTRY_INTR_INFO",)),
    ("vmcs-cr3-targets", "cr3_target", ("CR3_TARGET0", "CR3_TARGET1", "CR3_TARGET2", "CR3_TARGET3")),
    ("vmcs-link", "vmcs_link_pointer", ("LINK_POINTER",)),
    ("vmcs-exit-interruption-info", "vmcs_exit_interruption_info", ("EXIT_INTR_INFO",)),
    ("vmcs-exit-interruption-error", "vmcs_exit_interruption_error", ("EXIT_INTR_ERRCODE",)),
    ("vmcs-exit-inst-length", "vmcs_exit_inst_length", ("EXIT_INSTRUCTION_LENGTH",)),
    ("vmcs-interruptibility", "vmcs_guest_interruptibility", ("GUEST_INTERRUPTIBILITY",)),
    ("vmcs-host-pat", "host_pat", ("HOST_IA32_PAT",)),
    ("apic-access-address", "apic_access_addr", ("APIC_ACCESS",)),
    ("virtual-apic-address", "virtual_apic_addr", ("VIRTUAL_APIC",)),
    ("eptp", "eptp", ("EPTP",)),
    ("exception-bitmap", "exception_bitmap", ("EXCEPTION_BITMAP",)),
    ("io-bitmap-address", "io_bitmap_address", ("IO_BITMAP_A",)),
    ("tsc-offset", "tsc_offset", ("TSC_OFFSET",)),
    ("guest-pat", "guest_pat", ("GUEST_IA32_PAT",)),
    ("guest-sysenter", "guest_sysenter", ("GUEST_IA32_SYSENTER_CS", "GUEST_IA32_SYSENTER_ESP",
                                          "GUEST_IA32_SYSENTER_EIP")),
    ("exit-reason", "exit_reason", ("EXIT_REASON",)),
    ("msr-bitmap-address", "msr_bitmap", ("MSR_BITMAP",)),
)
INTINFO_TYPES = {0: "extint", 2: "nmi", 4: "swint"}      # anything else prints "exception"


def line(label, vcpu, value, digits=16):
    return "%s[%d]\t\t0x%0*x" % (label, vcpu, digits, value)


def register_getter(name):
    def get(state):
        return [line(name, state["vcpu"], state["registers"][name])]
    return get


def selector_getter(name):
    def get(state):
        if name in state["registers"]:
            return [line(name, state["vcpu"], state["registers"][name], 4)]
        return [line(name, state["vcpu"], state["vmcs"]["GUEST_%s_SELECTOR" % name.upper()], 4)]
    return get


def descriptor_getter(name):
    def get(state):
        d = state["descriptors"][name]
        if name in ("gdtr", "idtr"):
            return ["%s desc[%d]\t0x%016x/0x%08x" % (name, state["vcpu"], d["base"], d["limit"])]
        return ["%s desc[%d]\t0x%016x/0x%08x/0x%08x" % (name, state["vcpu"], d["base"], d["limit"], d["access"])]
    return get


def vmcs_getter(label, fields):
    def get(state):
        if len(fields) == 1:
            return [line(label, state["vcpu"], state["vmcs"][fields[0]])]
        return [line("%s%d" % (label, i) if label == "cr3_target" else field.lower().replace("ia32_", ""),
                     state["vcpu"], state["vmcs"][field]) for i, field in enumerate(fields)]
    return get


def intinfo_text(info):
    """print_intinfo: `extint|nmi|swint|exception vector N [errcode 0x..]`, or n/a."""
    if not info & E.INTR_VALID:
        return "n/a"
    text = "%s vector %d" % (INTINFO_TYPES.get((info >> 8) & 7, "exception"), info & 0xFF)
    if info & E.INTR_ERRCODE:
        text += " errcode %#x" % (info >> 32)
    return text


def get_intinfo(state):
    return ["pending:\t" + intinfo_text(state["intinfo"]["pending"]),
            "current:\t" + intinfo_text(state["intinfo"]["current"])]


def vmcs_option(field):
    return "vmcs-" + field.name.lower().replace("_", "-")


def _getters():
    table = [("get-" + r, register_getter(r)) for r in REGISTERS]
    table += [("get-" + s, selector_getter(s)) for s in SELECTORS]
    table += [("get-desc-" + d, descriptor_getter(d)) for d in DESCRIPTORS]
    aliases = {"get-" + option: vmcs_getter(label, fields) for option, label, fields in BHYVECTL_VMCS}
    generated = [("get-" + vmcs_option(f), vmcs_getter(f.name.lower(), (f.name,))) for f in V.FIELDS]
    table += [(option, aliases.pop(option, get)) for option, get in generated]
    table += list(aliases.items())
    table.append(("get-intinfo", get_intinfo))
    return table


GETTERS = _getters()


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


def run_dump(vcpu, answer):
    """dump_vm_run_exitcode: `vm exit[N]`, rip, inst_length, then INOUT or VMX details."""
    ex = answer["exit"]
    lines = ["vm exit[%d]" % vcpu, "\trip\t\t0x%016x" % ex["rip"], "\tinst_length\t%d" % ex["length"]]
    if ex["reason"] & 0xFFFF == E.INOUT:
        io = E.decode_io(ex["qualification"])
        lines += ["\treason\t\tINOUT", "\tdirection\t%s" % ("IN" if io["in"] else "OUT"),
                  "\tbytes\t\t%d" % io["size"],
                  "\tflags\t\t%s%s" % ("STRING " if io["string"] else "", "REP " if io["rep"] else ""),
                  "\tport\t\t0x%04x" % io["port"], "\teax\t\t0x%08x" % (answer["rax"] & 0xFFFFFFFF)]
    else:
        lines += ["\treason\t\tVMX", "\tstatus\t\t0",
                  "\texit_reason\t%u (%s)" % (ex["reason"], ex["name"]),
                  "\tqualification\t0x%016x" % ex["qualification"], "\tinst_type\t\t0",
                  "\tinst_error\t\t%d" % answer["instruction_error"]]
    return lines


def humanize(size):
    """humanize_number(…, "B", HN_AUTOSCALE, HN_NOSPACE) as show_memmap uses it: 64MB, 512KB, 4095B."""
    for prefix in ("", "K", "M", "G", "T"):
        if size < 1024 or size % 1024:
            return "%d%sB" % (size, prefix)
        size //= 1024
    return "%dPB" % size


def memmap_lines(segments):
    """show_memmap: Address Length Segment Offset Prot Flags."""
    out = ["Address     Length      Segment     Offset      Prot  Flags"]
    for s in segments:
        prot = "".join(c if c.lower() in s.get("prot", "rwx") else "-" for c in "RWX")
        out.append("%-12X%-12s%-12s%-12X%s   " % (s["gpa"], humanize(s["size"]), s.get("name") or "sysmem", 0, prot))
    return out


def gpa_pmap_line(gpa, chain):
    """`gpa 0x…: pte…`, the EPT entries PML4 first, as vm_get_gpa_pmap returns them."""
    return "gpa %#x:%s" % (gpa, "".join(" %#x" % row["entry"] if row["entry"] else " 0" for row in chain))
