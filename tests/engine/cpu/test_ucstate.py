"""A vCPU's CPU state as checked data: every field sits where Unicorn 2.1.4 keeps it, a copy carries exactly
the bytes a context memcpy would except the host pointers, and a value out of range is refused untouched."""
import ctypes

import numpy as np
import pytest
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from engine.cpu import ucstate as U
from engine.native import address

CODE = 0x1000
# mov rax, 5; add rax, -7 (cc_op becomes ADDQ); fld1; fldpi (fpstt moves); movq xmm2, rax; sti; nop
PROGRAM = bytes.fromhex("48c7c005000000" "4883c0f9" "d9e8" "d9eb" "66480f6ed0" "fb" "90")
GPRS = ("RAX", "RCX", "RDX", "RBX", "RSP", "RBP", "RSI", "RDI", "R8", "R9", "R10", "R11", "R12", "R13", "R14", "R15")


def context_bytes(uc):
    ctx = uc.context_save()
    return ctypes.string_at(address(ctx.context) + U.HEADER, U.SIZE)


def covered():
    """Byte offsets in CPUX86State that FIELDS copy (the plain twin of the structured assignment)."""
    mask = np.zeros(U.SIZE, bool)

    def mark(dtype, base):
        if dtype.names is None:
            if dtype.subdtype is not None and dtype.subdtype[0].names is not None:
                inner, shape = dtype.subdtype
                for i in range(int(np.prod(shape))):
                    mark(inner, base + i * inner.itemsize)
            else:
                mask[base:base + dtype.itemsize] = True
            return
        for name in dtype.names:
            sub, offset = dtype.fields[name][:2]
            mark(sub, base + offset)
    mark(U.CONTEXT, 0)
    return mask


def running_cpu():
    """A Unicorn instance that ran a few instructions: lazy flags, an x87 stack, an XMM value, an STI shadow."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(CODE, PROGRAM)
    for i, name in enumerate(GPRS[1:], 1):
        uc.reg_write(getattr(X, "UC_X86_REG_" + name), 0x8000 if name == "RSP" else 0x1111 * i)
    uc.reg_write(X.UC_X86_REG_CR4, uc.reg_read(X.UC_X86_REG_CR4) | 0x600)      # OSFXSR, OSXMMEXCPT
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x12340, 0x3F, 0))
    uc.reg_write(X.UC_X86_REG_MSR, (0xC0000082, 0xFFFF800000001000))
    uc.emu_start(CODE, CODE + len(PROGRAM) - 1)
    return uc


def test_every_register_reg_write_reaches_is_at_the_offset_the_table_gives():
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    writes = [(getattr(X, "UC_X86_REG_" + n), 0x0101010101010101 * (i + 1), ("regs", i)) for i, n in enumerate(GPRS)]
    writes += [(X.UC_X86_REG_RIP, 0x400123, ("eip",)), (X.UC_X86_REG_CR2, 0xDEAD000, ("cr", 2)),
               (X.UC_X86_REG_CR3, 0x7000, ("cr", 3)), (X.UC_X86_REG_DR0, 0x1234, ("dr", 0)),
               (X.UC_X86_REG_DR7, 0x400, ("dr", 7)), (X.UC_X86_REG_FS_BASE, 0xF5000, ("segs", 4, "base")),
               (X.UC_X86_REG_GS_BASE, 0x65000, ("segs", 5, "base")), (X.UC_X86_REG_MXCSR, 0x7F80, ("mxcsr",)),
               (X.UC_X86_REG_FPCW, 0x27F, ("fpuc",))]
    msrs = {0x174: "sysenter_cs", 0x175: "sysenter_esp", 0x176: "sysenter_eip", 0xC0000081: "star",
            0xC0000082: "lstar", 0xC0000083: "cstar", 0xC0000084: "fmask", 0xC0000102: "kernelgsbase",
            0xC0000103: "tsc_aux", 0x277: "pat", 0xC0000080: "efer"}
    for i, (index, field) in enumerate(msrs.items()):
        value = 0xD01 if field == "efer" else 0x3000 + i
        writes.append((X.UC_X86_REG_MSR, (index, value), (field,)))
    for reg, value, path in writes:
        uc.reg_write(reg, value)
    for reg, field in ((X.UC_X86_REG_GDTR, "gdt"), (X.UC_X86_REG_IDTR, "idt"), (X.UC_X86_REG_LDTR, "ldt"),
                       (X.UC_X86_REG_TR, "tr")):
        uc.reg_write(reg, (0x28, 0x9000 + len(field), 0x77, 0x8200 if field in ("ldt", "tr") else 0))
    uc.reg_write(X.UC_X86_REG_XMM9, 0x0F0E0D0C0B0A09080706050403020100)
    uc.reg_write(X.UC_X86_REG_FPSW, 5 << 11)
    record = U.read(uc)[0]
    for reg, value, path in writes:
        got = record[path[0]]
        for key in path[1:]:
            got = got[key]
        assert int(got) == (value[1] if isinstance(value, tuple) else value), path
    assert bytes(record["xmm_regs"][9][:16]) == bytes(range(16))
    assert int(record["fpstt"]) == 5
    for reg, field in ((X.UC_X86_REG_GDTR, "gdt"), (X.UC_X86_REG_IDTR, "idt"), (X.UC_X86_REG_LDTR, "ldt"),
                       (X.UC_X86_REG_TR, "tr")):
        assert (int(record[field]["base"]), int(record[field]["limit"])) == (0x9000 + len(field), 0x77)


def test_a_copy_is_the_memcpy_of_every_field_and_keeps_the_targets_host_pointers():
    source, target = running_cpu(), Uc(UC_ARCH_X86, UC_MODE_64)
    before, saved = context_bytes(target), U.read(source)
    assert U.problems(saved[0]) == []
    U.write(target, saved[0])
    after, want, mask = context_bytes(target), context_bytes(source), covered()
    differ = [i for i in range(U.SIZE) if after[i] != (want[i] if mask[i] else before[i])]
    assert differ == []
    assert not mask[5464:5496].any() and not mask[5560:5568].any()       # cpu_breakpoint[4], retaddr
    for reg in [getattr(X, "UC_X86_REG_" + n) for n in GPRS] + [X.UC_X86_REG_RIP, X.UC_X86_REG_EFLAGS,
                                                                 X.UC_X86_REG_XMM2, X.UC_X86_REG_FPSW]:
        assert target.reg_read(reg) == source.reg_read(reg)


@pytest.mark.parametrize("path, value, named", [
    (("fpstt",), 8, "fpstt = 0x8"),
    (("cc_op",), U.CC_OP_NB, "cc_op"),
    (("df",), 0, "df = 0x0"),
    (("cr", 4), 1 << 40, "cr[4]"),
    (("cr", 8), 16, "cr[8]"),
    (("efer",), 1 << 20, "efer"),
    (("segs", 1, "selector"), 0x10000, "segs.selector[1]"),
    (("fp_status", "rounding_precision"), 81, "fp_status.rounding_precision"),
    (("fptags", 3), 2, "fptags[3]"),
    (("a20_mask",), 0, "a20_mask"),
])
def test_a_value_out_of_its_range_is_named_and_the_target_stays_untouched(path, value, named):
    record = U.read(running_cpu())
    where = record[0][path[0]]
    if len(path) == 1:
        record[0][path[0]] = value
    else:
        for key in path[1:-1]:
            where = where[key]
        where[path[-1]] = value
    problems = U.problems(record[0])
    assert len(problems) == 1 and problems[0].startswith(named)
    target = Uc(UC_ARCH_X86, UC_MODE_64)
    before = context_bytes(target)
    with pytest.raises(ValueError, match="CPU state refused"):
        U.write(target, record[0])
    assert context_bytes(target) == before
