"""VM-exit reasons by SDM number and name, and the exit-qualification formats, encoded and decoded.

Pure functions over integers (Intel SDM Vol. 3 Appendix C and §28.2.1): the kernels encode with the
same bit layouts the decoders here read back, and the tests check one against the other.
"""
from numba import njit

from ..native import NUMBA

# Basic exit reasons (SDM Appendix C). bhyve prints them through exit_reason_to_str.
REASONS = {
    0: "EXCEPTION_NMI", 1: "EXTERNAL_INTERRUPT", 2: "TRIPLE_FAULT", 3: "INIT", 4: "SIPI",
    5: "IO_SMI", 6: "OTHER_SMI", 7: "INTERRUPT_WINDOW", 8: "NMI_WINDOW", 9: "TASK_SWITCH",
    10: "CPUID", 11: "GETSEC", 12: "HLT", 13: "INVD", 14: "INVLPG", 15: "RDPMC", 16: "RDTSC",
    17: "RSM", 18: "VMCALL", 19: "VMCLEAR", 20: "VMLAUNCH", 21: "VMPTRLD", 22: "VMPTRST",
    23: "VMREAD", 24: "VMRESUME", 25: "VMWRITE", 26: "VMXOFF", 27: "VMXON", 28: "CR_ACCESS",
    29: "DR_ACCESS", 30: "INOUT", 31: "RDMSR", 32: "WRMSR", 33: "INVAL_VMCS", 34: "INVAL_MSR",
    36: "MWAIT", 37: "MTF", 39: "MONITOR", 40: "PAUSE", 41: "MCE_DURING_ENTRY", 43: "TPR",
    44: "APIC_ACCESS", 45: "VIRTUALIZED_EOI", 46: "GDTR_IDTR", 47: "LDTR_TR", 48: "EPT_VIOLATION",
    49: "EPT_MISCONFIG", 50: "INVEPT", 51: "RDTSCP", 52: "VMX_PREEMPT", 53: "INVVPID",
    54: "WBINVD", 55: "XSETBV", 56: "APIC_WRITE", 57: "RDRAND", 58: "INVPCID",
}
BY_NAME = {name: number for number, name in REASONS.items()}

EXCEPTION_NMI, EXTERNAL_INTERRUPT, TRIPLE_FAULT = 0, 1, 2
INTERRUPT_WINDOW, NMI_WINDOW, APIC_WRITE = 7, 8, 56
CPUID, HLT, VMCALL, INOUT, RDMSR, WRMSR, PAUSE, EPT_VIOLATION, EPT_MISCONFIG = 10, 12, 18, 30, 31, 32, 40, 48, 49


def reason_name(number):
    return REASONS.get(number & 0xFFFF, "UNKNOWN_%d" % (number & 0xFFFF))


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
