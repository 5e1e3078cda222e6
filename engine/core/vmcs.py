"""The VMCS as a field table: name, SDM encoding, width and group, and a per-vCPU store read by either.

The width and the group of a field follow from its encoding (Intel SDM Vol. 3 Appendix B): bits 14:13 give
the width (16-bit, 64-bit, 32-bit, natural), bits 11:10 the type (control, VM-exit information, guest
state, host state). Controls are further split the way the VMCS panel and bhyvectl group them.
Kernels address fields by slot (the field's index in FIELDS) in a uint64 array.
"""
import numpy as np

WIDTHS = {0: 16, 1: 64, 2: 32, 3: 64}          # natural width is 64 bits on a 64-bit host
TYPES = {0: "control", 1: "exit information", 2: "guest state", 3: "host state"}

# (name, encoding, group for controls). Names are bhyve's vmcs.h names without the VMCS_ prefix.
_CONTROLS = [
    ("VPID", 0x0000, "execution controls"), ("PIR_VECTOR", 0x0002, "execution controls"),
    ("IO_BITMAP_A", 0x2000, "execution controls"), ("IO_BITMAP_B", 0x2002, "execution controls"),
    ("MSR_BITMAP", 0x2004, "execution controls"), ("EXIT_MSR_STORE", 0x2006, "exit controls"),
    ("EXIT_MSR_LOAD", 0x2008, "exit controls"), ("ENTRY_MSR_LOAD", 0x200A, "entry controls"),
    ("TSC_OFFSET", 0x2010, "execution controls"), ("VIRTUAL_APIC", 0x2012, "execution controls"),
    ("APIC_ACCESS", 0x2014, "execution controls"), ("PIR_DESC", 0x2016, "execution controls"),
    ("EPTP", 0x201A, "execution controls"),
    ("EOI_EXIT0", 0x201C, "execution controls"), ("EOI_EXIT1", 0x201E, "execution controls"),
    ("EOI_EXIT2", 0x2020, "execution controls"), ("EOI_EXIT3", 0x2022, "execution controls"),
    ("PIN_BASED_CTLS", 0x4000, "execution controls"), ("PRI_PROC_BASED_CTLS", 0x4002, "execution controls"),
    ("EXCEPTION_BITMAP", 0x4004, "execution controls"), ("PF_ERROR_MASK", 0x4006, "execution controls"),
    ("PF_ERROR_MATCH", 0x4008, "execution controls"), ("CR3_TARGET_COUNT", 0x400A, "execution controls"),
    ("EXIT_CTLS", 0x400C, "exit controls"), ("EXIT_MSR_STORE_COUNT", 0x400E, "exit controls"),
    ("EXIT_MSR_LOAD_COUNT", 0x4010, "exit controls"), ("ENTRY_CTLS", 0x4012, "entry controls"),
    ("ENTRY_MSR_LOAD_COUNT", 0x4014, "entry controls"), ("ENTRY_INTR_INFO", 0x4016, "entry controls"),
    ("ENTRY_EXCEPTION_ERROR", 0x4018, "entry controls"), ("ENTRY_INST_LENGTH", 0x401A, "entry controls"),
    ("TPR_THRESHOLD", 0x401C, "execution controls"), ("SEC_PROC_BASED_CTLS", 0x401E, "execution controls"),
    ("CR0_MASK", 0x6000, "execution controls"), ("CR4_MASK", 0x6002, "execution controls"),
    ("CR0_SHADOW", 0x6004, "execution controls"), ("CR4_SHADOW", 0x6006, "execution controls"),
    ("CR3_TARGET0", 0x6008, "execution controls"), ("CR3_TARGET1", 0x600A, "execution controls"),
    ("CR3_TARGET2", 0x600C, "execution controls"), ("CR3_TARGET3", 0x600E, "execution controls"),
]
_SEGS = ("ES", "CS", "SS", "DS", "FS", "GS", "LDTR", "TR")
_GUEST = (
    [("GUEST_%s_SELECTOR" % s, 0x0800 + 2 * i) for i, s in enumerate(_SEGS)]
    + [("GUEST_INTR_STATUS", 0x0810), ("LINK_POINTER", 0x2800), ("GUEST_IA32_DEBUGCTL", 0x2802),
       ("GUEST_IA32_PAT", 0x2804), ("GUEST_IA32_EFER", 0x2806)]
    + [("GUEST_PDPTE%d" % i, 0x280A + 2 * i) for i in range(4)]
    + [("GUEST_%s_LIMIT" % s, 0x4800 + 2 * i) for i, s in enumerate(_SEGS)]
    + [("GUEST_GDTR_LIMIT", 0x4810), ("GUEST_IDTR_LIMIT", 0x4812)]
    + [("GUEST_%s_ACCESS_RIGHTS" % s, 0x4814 + 2 * i) for i, s in enumerate(_SEGS)]
    + [("GUEST_INTERRUPTIBILITY", 0x4824), ("GUEST_ACTIVITY", 0x4826), ("GUEST_SMBASE", 0x4828),
       ("GUEST_IA32_SYSENTER_CS", 0x482A), ("GUEST_CR0", 0x6800), ("GUEST_CR3", 0x6802),
       ("GUEST_CR4", 0x6804)]
    + [("GUEST_%s_BASE" % s, 0x6806 + 2 * i) for i, s in enumerate(_SEGS)]
    + [("GUEST_GDTR_BASE", 0x6816), ("GUEST_IDTR_BASE", 0x6818), ("GUEST_DR7", 0x681A),
       ("GUEST_RSP", 0x681C), ("GUEST_RIP", 0x681E), ("GUEST_RFLAGS", 0x6820),
       ("GUEST_PENDING_DBG_EXCEPTIONS", 0x6822), ("GUEST_IA32_SYSENTER_ESP", 0x6824),
       ("GUEST_IA32_SYSENTER_EIP", 0x6826)]
)
_HOST = (
    [("HOST_%s_SELECTOR" % s, 0x0C00 + 2 * i) for i, s in enumerate(("ES", "CS", "SS", "DS", "FS", "GS", "TR"))]
    + [("HOST_IA32_PAT", 0x2C00), ("HOST_IA32_EFER", 0x2C02), ("HOST_IA32_SYSENTER_CS", 0x4C00),
       ("HOST_CR0", 0x6C00), ("HOST_CR3", 0x6C02), ("HOST_CR4", 0x6C04), ("HOST_FS_BASE", 0x6C06),
       ("HOST_GS_BASE", 0x6C08), ("HOST_TR_BASE", 0x6C0A), ("HOST_GDTR_BASE", 0x6C0C),
       ("HOST_IDTR_BASE", 0x6C0E), ("HOST_IA32_SYSENTER_ESP", 0x6C10), ("HOST_IA32_SYSENTER_EIP", 0x6C12),
       ("HOST_RSP", 0x6C14), ("HOST_RIP", 0x6C16)]
)
_EXIT_INFO = [
    ("GUEST_PHYSICAL_ADDRESS", 0x2400), ("INSTRUCTION_ERROR", 0x4400), ("EXIT_REASON", 0x4402),
    ("EXIT_INTR_INFO", 0x4404), ("EXIT_INTR_ERRCODE", 0x4406), ("IDT_VECTORING_INFO", 0x4408),
    ("IDT_VECTORING_ERROR", 0x440A), ("EXIT_INSTRUCTION_LENGTH", 0x440C),
    ("EXIT_INSTRUCTION_INFO", 0x440E), ("EXIT_QUALIFICATION", 0x6400), ("IO_RCX", 0x6402),
    ("IO_RSI", 0x6404), ("IO_RDI", 0x6406), ("IO_RIP", 0x6408), ("GUEST_LINEAR_ADDRESS", 0x640A),
]


class Field:
    """One VMCS field: name, SDM encoding, width in bits, group, slot in the store."""
    __slots__ = ("name", "encoding", "width", "group", "slot")

    def __init__(self, name, encoding, group, slot):
        self.name, self.encoding, self.group, self.slot = name, encoding, group, slot
        self.width = WIDTHS[(encoding >> 13) & 3]

    @property
    def mask(self):
        return (1 << self.width) - 1

    def __repr__(self):
        return "<VMCS %s %#06x %d-bit %s>" % (self.name, self.encoding, self.width, self.group)


def _build():
    rows = [(n, e, g) for n, e, g in _CONTROLS]
    rows += [(n, e, TYPES[(e >> 10) & 3]) for n, e in _GUEST + _HOST + _EXIT_INFO]
    for name, enc, group in rows:
        kind = TYPES[(enc >> 10) & 3]
        assert (kind == "control") == (group.endswith("controls")), name      # encoding and group agree
    return [Field(n, e, g, i) for i, (n, e, g) in enumerate(rows)]


FIELDS = _build()
NFIELDS = len(FIELDS)
BY_NAME = {f.name: f for f in FIELDS}
BY_ENCODING = {f.encoding: f for f in FIELDS}
GROUPS = ("guest state", "host state", "execution controls", "exit controls", "entry controls",
          "exit information")

# Slots the kernels use (module constants are compile-time constants for numba, never tunables).
EXIT_REASON = BY_NAME["EXIT_REASON"].slot
EXIT_QUALIFICATION = BY_NAME["EXIT_QUALIFICATION"].slot
EXIT_INSTRUCTION_LENGTH = BY_NAME["EXIT_INSTRUCTION_LENGTH"].slot
EXIT_INTR_INFO = BY_NAME["EXIT_INTR_INFO"].slot
EXIT_INTR_ERRCODE = BY_NAME["EXIT_INTR_ERRCODE"].slot
GUEST_PHYSICAL_ADDRESS = BY_NAME["GUEST_PHYSICAL_ADDRESS"].slot
GUEST_LINEAR_ADDRESS = BY_NAME["GUEST_LINEAR_ADDRESS"].slot
GUEST_RIP = BY_NAME["GUEST_RIP"].slot
IO_RCX = BY_NAME["IO_RCX"].slot
IO_RSI = BY_NAME["IO_RSI"].slot
IO_RDI = BY_NAME["IO_RDI"].slot
IO_RIP = BY_NAME["IO_RIP"].slot
INSTRUCTION_ERROR = BY_NAME["INSTRUCTION_ERROR"].slot
ENTRY_INTR_INFO = BY_NAME["ENTRY_INTR_INFO"].slot
ENTRY_EXCEPTION_ERROR = BY_NAME["ENTRY_EXCEPTION_ERROR"].slot
TSC_OFFSET = BY_NAME["TSC_OFFSET"].slot
IDT_VECTORING_INFO = BY_NAME["IDT_VECTORING_INFO"].slot
IDT_VECTORING_ERROR = BY_NAME["IDT_VECTORING_ERROR"].slot
EXCEPTION_BITMAP = BY_NAME["EXCEPTION_BITMAP"].slot
CR0_MASK, CR4_MASK = BY_NAME["CR0_MASK"].slot, BY_NAME["CR4_MASK"].slot
CR0_SHADOW, CR4_SHADOW = BY_NAME["CR0_SHADOW"].slot, BY_NAME["CR4_SHADOW"].slot
PF_ERROR_MASK = BY_NAME["PF_ERROR_MASK"].slot
PF_ERROR_MATCH = BY_NAME["PF_ERROR_MATCH"].slot
PRI_PROC_BASED_CTLS = BY_NAME["PRI_PROC_BASED_CTLS"].slot
MSR_BITMAP = BY_NAME["MSR_BITMAP"].slot
GUEST_INTR_STATUS = BY_NAME["GUEST_INTR_STATUS"].slot          # RVI in bits 7:0, SVI in bits 15:8 (SDM 24.4.2)
EOI_EXIT0 = BY_NAME["EOI_EXIT0"].slot                          # EOI_EXIT0-3: four consecutive slots
assert [BY_NAME["EOI_EXIT%d" % i].slot for i in range(4)] == list(range(EOI_EXIT0, EOI_EXIT0 + 4))


def field(key):
    """A field by name (with or without the VMCS_ prefix, any case) or by encoding."""
    if isinstance(key, int):
        try:
            return BY_ENCODING[key & 0x7FFFFFFF]      # bhyve's VMCS_IDENT sets bit 31
        except KeyError:
            raise KeyError("no VMCS field has encoding %#x" % key) from None
    name = key.upper().removeprefix("VMCS_")
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError("no VMCS field is named %r" % key) from None


class Vmcs:
    """One vCPU's VMCS: a uint64 store the kernels write, read here by name or encoding."""

    def __init__(self):
        self.store = np.zeros(len(FIELDS), np.uint64)

    def read(self, key):
        f = field(key)
        return int(self.store[f.slot]) & f.mask

    def write(self, key, value):
        f = field(key)
        self.store[f.slot] = value & f.mask

    __getitem__ = read
    __setitem__ = write

    def snapshot(self):
        """{name: value} for every field, in table order."""
        return {f.name: int(self.store[f.slot]) & f.mask for f in FIELDS}
