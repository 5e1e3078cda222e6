"""Loading a segment register's hidden part (the descriptor cache) the way event delivery does, from the host.

Event delivery through a gate to another code segment or privilege level loads CS and SS from
descriptors (SDM §6.12.1). Unicorn has no host API for that: a 64-bit instance's reg_write of a
selector runs the guest-visible load checks at the current CPL, which refuse exactly the inner-level
loads an interrupt performs. So the delivery code reads the descriptor itself, checks it as the CPU
does, and writes selector, base, limit and attributes into a saved CPU context, with the hidden flags
QEMU derives from them (cpu_x86_load_seg_cache: CPL from SS.DPL, CS32/SS32/CS64, ADDSEG), then
restores the context. Offsets are those of Unicorn 2.1.4's CPUX86State inside uc_context; `check()`
verifies them against reg_read at first use.
"""
import ctypes
import struct

from unicorn import x86_const as X

from ..native import address

ES, CS, SS, DS, FS, GS = range(6)
_REGS = (X.UC_X86_REG_ES, X.UC_X86_REG_CS, X.UC_X86_REG_SS, X.UC_X86_REG_DS, X.UC_X86_REG_FS, X.UC_X86_REG_GS)
_RAX = 40                 # uc_context header, then CPUX86State: regs[16], eip, eflags, cc_*, df
_HFLAGS = _RAX + 176      # hflags, hflags2, then segs[6] of {u32 selector; u64 base; u32 limit; u32 flags}
_SEGS = _HFLAGS + 8
_SEG_SIZE = 24
_OLD_EXCEPTION = 5536     # int old_exception (vmx/cpuctx.py OLD_EXCEPTION, checked there)
HF_CPL_MASK, HF_INHIBIT_IRQ = 3, 1 << 3
HF_CS32, HF_SS32, HF_ADDSEG, HF_LMA, HF_CS64 = 1 << 4, 1 << 5, 1 << 6, 1 << 14, 1 << 15
DESC_B, DESC_L, DESC_A = 1 << 22, 1 << 21, 1 << 8
_checked = False


class Descriptor:
    """A segment descriptor's fields as the CPU reads them (SDM §3.4.5)."""
    __slots__ = ("base", "limit", "flags", "dpl", "present", "code", "system", "conforming", "writable", "long")

    def __init__(self, raw):
        lo, hi = struct.unpack("<II", raw)
        self.base = (lo >> 16) | ((hi & 0xFF) << 16) | (hi & 0xFF000000)
        limit = (lo & 0xFFFF) | (hi & 0xF0000)
        self.limit = (limit << 12) | 0xFFF if hi & (1 << 23) else limit
        self.flags = hi & 0x00F0FF00
        self.dpl, self.present, self.system = (hi >> 13) & 3, bool(hi & 0x8000), not hi & 0x1000
        self.code, self.conforming, self.writable = bool(hi & 0x800), bool(hi & 0x400), bool(hi & 0x200)
        self.long = bool(hi & DESC_L)


def saved(uc, slot="_segcache_context"):
    """The CPU state in a context kept on the Uc object and refreshed (context_update reuses its buffer)."""
    ctx = getattr(uc, slot, None)
    if ctx is None:
        ctx = uc.context_save()
        setattr(uc, slot, ctx)
    else:
        uc.context_update(ctx)
    return ctx


def _view(ctx):
    base = address(ctx.context)
    size = ctypes.c_size_t.from_address(base).value
    return (ctypes.c_uint8 * size).from_address(base)


def check(uc):
    """Verify the context layout once: RAX and FS.base must sit where this module expects."""
    global _checked
    if _checked:
        return
    raw = bytes(_view(saved(uc)))
    rax = struct.unpack_from("<Q", raw, _RAX)[0]
    fs_base = struct.unpack_from("<Q", raw, _SEGS + FS * _SEG_SIZE + 8)[0]
    if rax != uc.reg_read(X.UC_X86_REG_RAX) or fs_base != uc.reg_read(X.UC_X86_REG_FS_BASE):
        raise RuntimeError("unexpected Unicorn CPU context layout: segcache.py knows Unicorn 2.1.4's")
    _checked = True


def hflags(uc):
    """QEMU's hidden flags: the CPL, the interrupt shadow (HF_INHIBIT_IRQ), the code-segment size."""
    check(uc)
    return struct.unpack_from("<I", _view(saved(uc)), _HFLAGS)[0]


def base(uc, seg):
    """A segment's cached base (Unicorn has no register for SS.base and friends)."""
    check(uc)
    return struct.unpack_from("<Q", _view(saved(uc)), _SEGS + seg * _SEG_SIZE + 8)[0]


def caches(uc):
    """[(selector, base, limit, flags)] of ES, CS, SS, DS, FS, GS: the descriptor caches, QEMU's flags being the
    descriptor's high word (type at bit 8 ... G at bit 23)."""
    check(uc)
    mem = _view(saved(uc))
    return [struct.unpack_from("<IxxxxQII", mem, _SEGS + seg * _SEG_SIZE) for seg in range(6)]


def access_rights(flags):
    """A cache's flags in the VMCS access-rights format (SDM 25.4.1 Table 25-2): type, S, DPL, P in bits 7:0,
    AVL, L, D/B, G in 15:12, bit 16 "unusable" for a segment not present (a null selector's load). A code or
    data segment's type has its accessed bit, which the CPU sets on every load (SDM 3.4.5.1) and QEMU's far
    jumps leave out of the cache."""
    if not flags & 0x8000:
        return (flags >> 8) & 0xF0FF | 0x10000
    return (flags >> 8) & 0xF0FF | (1 if flags & 0x1000 else 0)


def load(uc, loads):
    """Load several segment caches at once: `loads` is [(seg, selector, base, limit, flags)], in order."""
    check(uc)
    ctx = saved(uc)
    mem = _view(ctx)
    hf = struct.unpack_from("<I", mem, _HFLAGS)[0]
    for seg, selector, base, limit, flags in loads:
        struct.pack_into("<IIQII", mem, _SEGS + seg * _SEG_SIZE, selector, 0, base, limit, flags)
        if seg == CS:
            if hf & HF_LMA and flags & DESC_L:
                hf |= HF_CS32 | HF_SS32 | HF_CS64
            else:
                hf = (hf & ~(HF_CS32 | HF_CS64)) | (HF_CS32 if flags & DESC_B else 0)
        if seg == SS:
            hf = (hf & ~HF_CPL_MASK) | ((flags >> 13) & 3)
        hf = _addseg(mem, hf)
    struct.pack_into("<I", mem, _HFLAGS, hf)
    uc.context_restore(ctx)


def delivered(uc):
    """An event went through the guest's IDT: QEMU's old_exception back to -1, as its own delivery leaves it
    (vmx/cpuctx.py explains why)."""
    check(uc)
    ctx = saved(uc)
    struct.pack_into("<i", _view(ctx), _OLD_EXCEPTION, -1)
    uc.context_restore(ctx)


def _addseg(mem, hf):
    ss_flags = struct.unpack_from("<I", mem, _SEGS + SS * _SEG_SIZE + 20)[0]
    new = HF_SS32 if ss_flags & DESC_B else 0
    if not hf & HF_CS64:
        if not hf & HF_CS32:
            new |= HF_ADDSEG
        else:
            bases = [struct.unpack_from("<Q", mem, _SEGS + s * _SEG_SIZE + 8)[0] for s in (DS, ES, SS)]
            new |= HF_ADDSEG if any(bases) else 0
    return (hf & ~(HF_SS32 | HF_ADDSEG)) | new
