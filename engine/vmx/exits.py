"""VM-exit reasons by SDM number and name, and the exit-qualification formats, encoded and decoded.

Pure functions over integers (Intel SDM Vol. 3 Appendix C and §28.2.1): the kernels encode with the
same bit layouts the decoders here read back, and the tests check one against the other.
"""
from numba import njit

from ..native import NUMBA

# Basic exit reasons: number, name, and the SDM's title for it (Intel SDM Vol. 3D Appendix C, "VMX Basic Exit
# Reasons", Table C-1; 35, 38 and 42 are unused). The names are the titles shortened where they are long
# (bhyve's vmcs.h spells a few otherwise: EXT_INTR, INTR_WINDOW, EPT_FAULT, INOUT, INVAL_VMCS ...).
TABLE = (
    (0, "EXCEPTION_NMI", "Exception or non-maskable interrupt (NMI)"),
    (1, "EXTERNAL_INTERRUPT", "External interrupt"),
    (2, "TRIPLE_FAULT", "Triple fault"),
    (3, "INIT", "INIT signal"),
    (4, "SIPI", "Start-up IPI (SIPI)"),
    (5, "IO_SMI", "I/O system-management interrupt (SMI)"),
    (6, "OTHER_SMI", "Other SMI"),
    (7, "INTERRUPT_WINDOW", "Interrupt window"),
    (8, "NMI_WINDOW", "NMI window"),
    (9, "TASK_SWITCH", "Task switch"),
    (10, "CPUID", "CPUID"),
    (11, "GETSEC", "GETSEC"),
    (12, "HLT", "HLT"),
    (13, "INVD", "INVD"),
    (14, "INVLPG", "INVLPG"),
    (15, "RDPMC", "RDPMC"),
    (16, "RDTSC", "RDTSC"),
    (17, "RSM", "RSM"),
    (18, "VMCALL", "VMCALL"),
    (19, "VMCLEAR", "VMCLEAR"),
    (20, "VMLAUNCH", "VMLAUNCH"),
    (21, "VMPTRLD", "VMPTRLD"),
    (22, "VMPTRST", "VMPTRST"),
    (23, "VMREAD", "VMREAD"),
    (24, "VMRESUME", "VMRESUME"),
    (25, "VMWRITE", "VMWRITE"),
    (26, "VMXOFF", "VMXOFF"),
    (27, "VMXON", "VMXON"),
    (28, "CR_ACCESS", "Control-register accesses"),
    (29, "MOV_DR", "MOV DR"),
    (30, "IO_INSTRUCTION", "I/O instruction"),
    (31, "RDMSR", "RDMSR"),
    (32, "WRMSR", "WRMSR"),
    (33, "ENTRY_FAILURE_GUEST_STATE", "VM-entry failure due to invalid guest state"),
    (34, "ENTRY_FAILURE_MSR_LOADING", "VM-entry failure due to MSR loading"),
    (36, "MWAIT", "MWAIT"),
    (37, "MTF", "Monitor trap flag"),
    (39, "MONITOR", "MONITOR"),
    (40, "PAUSE", "PAUSE"),
    (41, "MCE_DURING_ENTRY", "VM-entry failure due to machine-check event"),
    (43, "TPR_BELOW_THRESHOLD", "TPR below threshold"),
    (44, "APIC_ACCESS", "APIC access"),
    (45, "VIRTUALIZED_EOI", "Virtualized EOI"),
    (46, "GDTR_IDTR", "Access to GDTR or IDTR"),
    (47, "LDTR_TR", "Access to LDTR or TR"),
    (48, "EPT_VIOLATION", "EPT violation"),
    (49, "EPT_MISCONFIG", "EPT misconfiguration"),
    (50, "INVEPT", "INVEPT"),
    (51, "RDTSCP", "RDTSCP"),
    (52, "VMX_PREEMPT", "VMX-preemption timer expired"),
    (53, "INVVPID", "INVVPID"),
    (54, "WBINVD", "WBINVD or WBNOINVD"),
    (55, "XSETBV", "XSETBV"),
    (56, "APIC_WRITE", "APIC write"),
    (57, "RDRAND", "RDRAND"),
    (58, "INVPCID", "INVPCID"),
    (59, "VMFUNC", "VMFUNC"),
    (60, "ENCLS", "ENCLS"),
    (61, "RDSEED", "RDSEED"),
    (62, "PML_FULL", "Page-modification log full"),
    (63, "XSAVES", "XSAVES"),
    (64, "XRSTORS", "XRSTORS"),
    (65, "PCONFIG", "PCONFIG"),
    (66, "SPP_EVENT", "SPP-related event"),
    (67, "UMWAIT", "UMWAIT"),
    (68, "TPAUSE", "TPAUSE"),
    (69, "LOADIWKEY", "LOADIWKEY"),
)
REASONS = {number: name for number, name, _ in TABLE}
TITLES = {number: title for number, _, title in TABLE}
BY_NAME = {name: number for number, name in REASONS.items()}

EXCEPTION_NMI, EXTERNAL_INTERRUPT, TRIPLE_FAULT = 0, 1, 2
INTERRUPT_WINDOW, NMI_WINDOW, VIRTUALIZED_EOI, APIC_WRITE = 7, 8, 45, 56
CPUID, HLT, VMCALL, IO_INSTRUCTION, RDMSR, WRMSR, PAUSE, EPT_VIOLATION, EPT_MISCONFIG = 10, 12, 18, 30, 31, 32, 40, 48, 49
CR_ACCESS, MTF = 28, 37
INOUT = IO_INSTRUCTION      # bhyve's name (EXIT_REASON_INOUT), kept for the kernels


def reason_name(number):
    return REASONS.get(number & 0xFFFF, "UNKNOWN_%d" % (number & 0xFFFF))


def reason_title(number):
    """The SDM's title for a basic exit reason (Table C-1), or "" for a number it does not define."""
    return TITLES.get(number & 0xFFFF, "")


# -- I/O instruction (exit 30, SDM Table 28-5) -----------------------------------------------------
IO_IN, IO_STRING, IO_REP, IO_IMMEDIATE = 1 << 3, 1 << 4, 1 << 5, 1 << 6


@njit(**NUMBA)
def io_qualification(port, size, is_in, string, rep, immediate):
    """Bits 2:0 size-1, 3 direction (1 = IN), 4 string, 5 REP, 6 operand encoding (1 = immediate), 31:16 port."""
    q = (size - 1) | (port << 16)
    if is_in:
        q |= IO_IN
    if string:
        q |= IO_STRING
    if rep:
        q |= IO_REP
    if immediate:
        q |= IO_IMMEDIATE
    return q


def decode_io(q):
    """As bhyve's vmx_exit_process reads it: size = (q&7)+1, in = bit 3, string = bit 4, rep = bit 5."""
    return {"port": (q >> 16) & 0xFFFF, "size": (q & 7) + 1, "in": bool(q & IO_IN),
            "string": bool(q & IO_STRING), "rep": bool(q & IO_REP), "immediate": bool(q & IO_IMMEDIATE)}


# -- control-register access (exit 28, SDM Table 28-3) -------------------------------------------------
CR_MOV_TO, CR_MOV_FROM, CR_CLTS, CR_LMSW = 0, 1, 2, 3


@njit(**NUMBA)
def cr_qualification(cr, access, gpr):
    """Bits 3:0 the control register, 5:4 the access type (0 MOV to CR, 1 MOV from CR, 2 CLTS, 3 LMSW), 11:8
    the general-purpose register of a MOV (0 RAX ... 15 R15)."""
    return (cr & 0xF) | (access & 3) << 4 | (gpr & 0xF) << 8


def decode_cr(q):
    return {"cr": q & 0xF, "access": ("mov to cr", "mov from cr", "clts", "lmsw")[(q >> 4) & 3],
            "gpr": (q >> 8) & 0xF, "lmsw_memory": bool(q & 1 << 6), "lmsw_data": (q >> 16) & 0xFFFF}


# -- EPT violation (exit 48, SDM Table 28-7) --------------------------------------------------------
EPT_READ, EPT_WRITE, EPT_FETCH = 1 << 0, 1 << 1, 1 << 2
EPT_READABLE, EPT_WRITABLE, EPT_EXECUTABLE = 1 << 3, 1 << 4, 1 << 5
EPT_GLA_VALID, EPT_TRANSLATION = 1 << 7, 1 << 8


def decode_ept_violation(q):
    """Access type (bits 0-2), what the entry allowed (3-5), GLA valid (7), translation vs walk (8)."""
    access = "fetch" if q & EPT_FETCH else "write" if q & EPT_WRITE else "read"
    return {"access": access, "readable": bool(q & EPT_READABLE), "writable": bool(q & EPT_WRITABLE),
            "executable": bool(q & EPT_EXECUTABLE), "gla_valid": bool(q & EPT_GLA_VALID),
            "translation": bool(q & EPT_TRANSLATION),
            "paging_structure": bool(q & EPT_GLA_VALID) and not q & EPT_TRANSLATION}


# -- Interruption information (exit and entry, SDM §24.8.3 / §24.9.2) -------------------------------
INTR_VALID = 1 << 31
INTR_ERRCODE = 1 << 11
INTR_TYPES = {0: "external interrupt", 2: "NMI", 3: "hardware exception", 4: "software interrupt",
              5: "privileged software exception", 6: "software exception"}
TYPE_EXTINT, TYPE_NMI, TYPE_HWEXC, TYPE_SWINTR, TYPE_PRIV_SWEXC, TYPE_SWEXC = 0, 2, 3, 4, 5, 6


def interruption_info(vector, kind, has_error_code=False):
    return INTR_VALID | (kind << 8) | (INTR_ERRCODE if has_error_code else 0) | (vector & 0xFF)


def decode_interruption_info(info):
    if not info & INTR_VALID:
        return None
    return {"vector": info & 0xFF, "type": INTR_TYPES.get((info >> 8) & 7, "reserved"),
            "error_code": bool(info & INTR_ERRCODE)}


def decode(reason, qualification):
    """A human-readable decoding of an exit, for panels and `vmmctl --run`."""
    reason &= 0xFFFF
    if reason == INOUT:
        d = decode_io(qualification)
        return "%s port %#x size %d%s%s" % ("in" if d["in"] else "out", d["port"], d["size"],
                                           " string" if d["string"] else "", " rep" if d["rep"] else "")
    if reason == EPT_VIOLATION:
        d = decode_ept_violation(qualification)
        where = "paging-structure access" if d["paging_structure"] else "translation" if d["gla_valid"] else "no linear address"
        return "%s access, entry %s%s%s, %s" % (d["access"], "r" if d["readable"] else "-",
                                               "w" if d["writable"] else "-", "x" if d["executable"] else "-", where)
    return ""
