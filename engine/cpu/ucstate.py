"""A vCPU's CPU state as data: the fields of Unicorn 2.1.4's x86 context, read out as one numpy record and
written back only field by field, each value checked first (the snapshot's `cpu` member).

A uc_context is a 40-byte header and then the first offsetof(CPUX86State, end_reset_fields) bytes of QEMU's
CPUX86State (qemu/target/i386/cpu.h); uc_context_save and uc_context_restore copy them with memcpy, the
length taken from the header. Those bytes hold host pointers (the breakpoint/watchpoint pointers of DR0-3 and
`retaddr`) and values QEMU uses unchecked as indices (`fpstt` picks an x87 register, `cc_op` a flags
computation). So a context is never built from a file's bytes: the vCPU's own context is taken, the named
fields below are copied into it — the pointers are not among them and stay the vCPU's own — and it is
restored. Offsets are Unicorn 2.1.4's on an x86-64 host; `verify_layout()` checks them against reg_read on
a scratch instance once per process, as vmx/segcache.py does for the few it uses.
"""
import ctypes
import threading

import numpy as np
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from ..native import address

HEADER = 40                # struct uc_context {context_size, mode, arch, snapshot_level, ramblock_freed, ...}
SIZE = 5568                # offsetof(CPUX86State, end_reset_fields)
CC_OP_NB = 51              # enum CCOp's count: cc_op selects how EFLAGS are computed from cc_dst/cc_src
HF_KNOWN = (1 << 27) - 1   # HF_CPL ... HF_MPX_IU (bits 0-26): hflags summarise CR0/CR4/EFER/segments, CPL
HF2_KNOWN = 0xFF           # HF2_GIF ... HF2_IGNNE
EFER_KNOWN = 0xFD01        # SCE, LME, LMA, NXE, SVME, LMSLE, FFXSR, TCE
A20_ON, A20_OFF = -1, ~(1 << 20)


class Below:
    """Every element is below its limit (one limit, or one per element of a 1-D field)."""

    def __init__(self, *limits):
        self.limits = limits

    def bad(self, values):
        limits = self.limits * len(values) if len(self.limits) == 1 else self.limits
        return next((i for i, (v, lim) in enumerate(zip(values, limits)) if not 0 <= v < lim), None)

    def describe(self, i):
        return "below %#x" % self.limits[i if len(self.limits) > 1 else 0]


class OneOf:
    def __init__(self, *allowed):
        self.allowed = allowed

    def bad(self, values):
        return next((i for i, v in enumerate(values) if v not in self.allowed), None)

    def describe(self, i):
        return "one of %s" % ", ".join(map(str, self.allowed))


class Bits:
    def __init__(self, mask):
        self.mask = mask

    def bad(self, values):
        return next((i for i, v in enumerate(values) if v & ~self.mask), None)

    def describe(self, i):
        return "only bits %#x" % self.mask


class Struct:
    """A C struct inside CPUX86State: rows of (field, offset, type, check)."""

    def __init__(self, *rows):
        self.rows = rows


BYTE_FLAG = OneOf(0, 1)
# SegmentCache {uint32 selector; target_ulong base; uint32 limit; uint32 flags}: flags are the descriptor's
# high word as loaded, so any 32-bit value; the selector is 16 bits.
SEGMENT = Struct(("selector", 0, "<u4", Below(1 << 16)), ("base", 8, "<u8", None), ("limit", 16, "<u4", None),
                 ("flags", 20, "<u4", None))
# float_status (fpu/softfloat-types.h): derived from FPUC/MXCSR plus the sticky exception flags
FLOAT_STATUS = Struct(("detect_tininess", 0, "i1", BYTE_FLAG), ("rounding_mode", 1, "i1", Below(6)),
                      ("exception_flags", 2, "u1", None), ("rounding_precision", 3, "i1", OneOf(0, 32, 64, 80)),
                      ("flush_to_zero", 4, "u1", BYTE_FLAG), ("flush_inputs_to_zero", 5, "u1", BYTE_FLAG),
                      ("default_nan_mode", 6, "u1", BYTE_FLAG), ("snan_bit_is_one", 7, "u1", BYTE_FLAG))

# (CPUX86State field, offset, type or (type, shape) or a struct table above, check; None: any value is one
# the guest itself can produce). Left out: start_init_save/end_init_save (markers), cpu_breakpoint[4]
# at 5464 and retaddr at 5560 (host pointers).
FIELDS = (
    ("regs", 0, ("<u8", 16), None),                   # RAX RCX RDX RBX RSP RBP RSI RDI R8-R15
    ("eip", 128, "<u8", None),
    ("eflags", 136, "<u8", Below(1 << 22)),
    ("cc_dst", 144, "<u8", None),
    ("cc_src", 152, "<u8", None),
    ("cc_src2", 160, "<u8", None),
    ("cc_op", 168, "<u4", Below(CC_OP_NB)),
    ("df", 172, "<i4", OneOf(1, -1)),
    ("hflags", 176, "<u4", Bits(HF_KNOWN)),
    ("hflags2", 180, "<u4", Bits(HF2_KNOWN)),
    ("segs", 184, (SEGMENT, 6), None),                 # ES CS SS DS FS GS
    ("ldt", 328, SEGMENT, None),
    ("tr", 352, SEGMENT, None),
    ("gdt", 376, SEGMENT, None),
    ("idt", 400, SEGMENT, None),
    # cr0 32 bits, cr1 unused, cr3 below MAXPHYADDR 52, cr4 bits 0-24, cr5-cr7 unused, cr8 the TPR
    ("cr", 424, ("<u8", 9), Below(1 << 32, 1, 1 << 64, 1 << 52, 1 << 25, 1, 1, 1, 16)),
    ("a20_mask", 496, "<i4", OneOf(A20_ON, A20_OFF)),
    ("bnd_regs", 504, ("<u8", (4, 2)), None),
    ("bndcs_regs", 568, ("<u8", 2), None),
    ("msr_bndcfgs", 584, "<u8", None),
    ("efer", 592, "<u8", Bits(EFER_KNOWN)),
    ("fpstt", 604, "<u4", Below(8)),                   # top of the x87 stack: indexes fpregs
    ("fpus", 608, "<u2", None),
    ("fpuc", 610, "<u2", None),
    ("fptags", 612, ("u1", 8), BYTE_FLAG),
    ("fpregs", 624, ("u1", (8, 16)), None),            # floatx80 in 16-byte slots
    ("fpop", 752, "<u2", None),
    ("fpcs", 754, "<u2", None),
    ("fpds", 756, "<u2", None),
    ("fpip", 760, "<u8", None),
    ("fpdp", 768, "<u8", None),
    ("fp_status", 776, FLOAT_STATUS, None),
    ("ft0", 784, ("u1", 16), None),
    ("mmx_status", 800, FLOAT_STATUS, None),
    ("sse_status", 808, FLOAT_STATUS, None),
    ("mxcsr", 816, "<u4", Below(1 << 16)),
    ("xmm_regs", 824, ("u1", (32, 64)), None),
    ("xmm_t0", 2872, ("u1", 64), None),
    ("mmx_t0", 2936, "<u8", None),
    ("ymmh_regs", 2944, ("u1", (16, 16)), None),
    ("opmask_regs", 3200, ("<u8", 8), None),
    ("zmmh_regs", 3264, ("u1", (16, 32)), None),
    ("hi16_zmm_regs", 3776, ("u1", (16, 64)), None),
    ("sysenter_cs", 4800, "<u4", None),
    ("sysenter_esp", 4808, "<u8", None),
    ("sysenter_eip", 4816, "<u8", None),
    ("star", 4824, "<u8", None),
    ("vm_hsave", 4832, "<u8", None),
    ("lstar", 4840, "<u8", None),
    ("cstar", 4848, "<u8", None),
    ("fmask", 4856, "<u8", None),
    ("kernelgsbase", 4864, "<u8", None),
    ("tsc", 4872, "<u8", None),
    ("tsc_adjust", 4880, "<u8", None),
    ("tsc_deadline", 4888, "<u8", None),
    ("tsc_aux", 4896, "<u8", None),
    ("xcr0", 4904, "<u8", None),
    ("mcg_status", 4912, "<u8", None),
    ("msr_ia32_misc_enable", 4920, "<u8", None),
    ("msr_ia32_feature_control", 4928, "<u8", None),
    ("msr_fixed_ctr_ctrl", 4936, "<u8", None),
    ("msr_global_ctrl", 4944, "<u8", None),
    ("msr_global_status", 4952, "<u8", None),
    ("msr_global_ovf_ctrl", 4960, "<u8", None),
    ("msr_fixed_counters", 4968, ("<u8", 3), None),
    ("msr_gp_counters", 4992, ("<u8", 18), None),
    ("msr_gp_evtsel", 5136, ("<u8", 18), None),
    ("pat", 5280, "<u8", None),
    ("smbase", 5288, "<u4", None),
    ("msr_smi_count", 5296, "<u8", None),
    ("pkru", 5304, "<u4", None),
    ("tsx_ctrl", 5308, "<u4", None),
    ("spec_ctrl", 5312, "<u8", None),
    ("virt_ssbd", 5320, "<u8", None),
    ("system_time_msr", 5336, "<u8", None),
    ("wall_clock_msr", 5344, "<u8", None),
    ("steal_time_msr", 5352, "<u8", None),
    ("async_pf_en_msr", 5360, "<u8", None),
    ("pv_eoi_en_msr", 5368, "<u8", None),
    ("poll_control_msr", 5376, "<u8", None),
    ("error_code", 5384, "<i4", None),
    ("exception_is_int", 5388, "<i4", None),
    ("exception_next_eip", 5392, "<u8", None),
    ("dr", 5400, ("<u8", 8), Below(*(1 << 64,) * 6, 1 << 32, 1 << 32)),
    ("old_exception", 5496, "<i4", None),
    ("vm_vmcb", 5504, "<u8", None),
    ("tsc_offset", 5512, "<u8", None),
    ("intercept", 5520, "<u8", None),
    ("intercept_cr_read", 5528, "<u2", None),
    ("intercept_cr_write", 5530, "<u2", None),
    ("intercept_dr_read", 5532, "<u2", None),
    ("intercept_dr_write", 5534, "<u2", None),
    ("intercept_exceptions", 5536, "<u4", None),
    ("nested_cr3", 5544, "<u8", None),
    ("nested_pg_mode", 5552, "<u4", None),
    ("v_tpr", 5556, "u1", None),
)


def _parts(fmt):
    """(element type, shape or None) of a FIELDS type."""
    return fmt if isinstance(fmt, tuple) else (fmt, None)


def _dtype(fmt, packed):
    """A FIELDS type as numpy's: structs packed (the file's record) or at their offsets (a view of the context)."""
    base, shape = _parts(fmt)
    if isinstance(base, Struct):
        names, formats = [r[0] for r in base.rows], [_dtype(r[2], packed) for r in base.rows]
        base = np.dtype(list(zip(names, formats))) if packed else np.dtype(
            {"names": names, "formats": formats, "offsets": [r[1] for r in base.rows]})
    return base if shape is None else (base, shape)


RECORD = np.dtype([(row[0], _dtype(row[2], True)) for row in FIELDS])      # what a snapshot stores per vCPU
CONTEXT = np.dtype({"names": RECORD.names, "formats": [_dtype(row[2], False) for row in FIELDS],
                    "offsets": [row[1] for row in FIELDS], "itemsize": SIZE})
_layout_lock = threading.Lock()
_layout_verified = False


def _view(ctx):
    """The CPUX86State bytes of a saved context as one CONTEXT record: the context's own buffer, valid while
    `ctx` lives (the caller holds it)."""
    base = address(ctx.context)
    if ctypes.c_size_t.from_address(base).value != SIZE:
        raise RuntimeError("unexpected Unicorn CPU context size: cpu/ucstate.py knows Unicorn 2.1.4's (%d bytes)"
                           % SIZE)
    return np.frombuffer((ctypes.c_uint8 * SIZE).from_address(base + HEADER), CONTEXT)


def read(uc):
    """The CPU state of `uc` (not running) as a RECORD array of one element."""
    verify_layout()
    ctx = uc.context_save()
    return _view(ctx).astype(RECORD)


def write(uc, record):
    """Put a checked RECORD into `uc` (not running); every field not in FIELDS keeps the vCPU's own value."""
    verify_layout()
    bad = problems(record)
    if bad:
        raise ValueError("CPU state refused: " + "; ".join(bad))
    ctx = uc.context_save()
    _view(ctx)[0] = record               # structured assignment: field by field, each to its offset
    uc.context_restore(ctx)


def problems(record):
    """What is wrong with a RECORD element: ["cr[4] = 0x... (allowed: ...)", ...]; empty when nothing is."""
    out = []
    for name, _, fmt, check in FIELDS:
        base, _ = _parts(fmt)
        if isinstance(base, Struct):                   # a struct's own fields carry the checks
            for field, _, _, inner in base.rows:
                if inner is not None:
                    out += _value_problems("%s.%s" % (name, field), record[name][field], inner)
        elif check is not None:
            out += _value_problems(name, record[name], check)
    return out


def _value_problems(name, value, check):
    values = np.asarray(value).reshape(-1).tolist()
    i = check.bad(values)
    if i is None:
        return []
    where = "%s[%d]" % (name, i) if np.ndim(value) else name
    return ["%s = %#x (allowed: %s)" % (where, values[i], check.describe(i))]


# Registers reg_write can set: (path in the record, register, value written), for the layout check
_PROBES = ((("regs", 0), X.UC_X86_REG_RAX, 0x1111222233334444), (("regs", 3), X.UC_X86_REG_RBX, 0x2468),
           (("regs", 15), X.UC_X86_REG_R15, 0x5555666677778888), (("eip",), X.UC_X86_REG_RIP, 0x123456789A),
           (("cr", 3), X.UC_X86_REG_CR3, 0x7654000), (("dr", 7), X.UC_X86_REG_DR7, 0x455),
           (("segs", 4, "base"), X.UC_X86_REG_FS_BASE, 0xF5BA5E000), (("mxcsr",), X.UC_X86_REG_MXCSR, 0x7F80),
           (("fpuc",), X.UC_X86_REG_FPCW, 0xF7F), (("sysenter_eip",), X.UC_X86_REG_MSR, (0x176, 0xABC0)),
           (("lstar",), X.UC_X86_REG_MSR, (0xC0000082, 0xFFFF800012345678)),
           (("efer",), X.UC_X86_REG_MSR, (0xC0000080, 0xD01)), (("pat",), X.UC_X86_REG_MSR, (0x277, 0x70106)))


def verify_layout():
    """Once per process: write known values with reg_write on a scratch instance and find each at its offset."""
    global _layout_verified
    with _layout_lock:
        if _layout_verified:
            return
        uc = Uc(UC_ARCH_X86, UC_MODE_64)
        for _, reg, value in _PROBES:
            uc.reg_write(reg, value)
        ctx = uc.context_save()
        view = _view(ctx)[0]
        for path, _, value in _PROBES:
            field = view
            for key in path:
                field = field[key]
            if int(field) != (value[1] if isinstance(value, tuple) else value):
                raise RuntimeError("unexpected Unicorn CPU context layout (%s): cpu/ucstate.py knows Unicorn 2.1.4's"
                                   % ".".join(map(str, path)))
        _layout_verified = True
