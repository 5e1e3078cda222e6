"""gdb's target descriptions for the guest's modes, declared as register tables (i386 and x86-64).

gdb learns the register layout from the XML the stub sends with qXfer:features:read (gdb manual,
"Target Descriptions"); the `g` packet is every register of the table in this order, little-endian.
gdb's i386 code requires the org.gnu.gdb.i386.core feature with the general registers and the x87
state in its own order; fs_base/gs_base go in org.gnu.gdb.i386.segments, and the control registers
and EFER in our own feature (gdb shows them with `info registers system`). A 32-bit guest (Multiboot's
protected mode, real mode) gets the i386 table; a guest in IA-32e mode gets x86-64.
"""
import struct
from dataclasses import dataclass

from unicorn import x86_const as X

from ..errors import StateError

MSR_EFER = 0xC0000080
EFER_LMA = 1 << 10


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    group: str
    feature: str
    uc_id: int              # Unicorn register; x87 registers are read as (mantissa, exponent)
    writable: bool = True


def _table(gprs, pc, bits, extra):
    core = "org.gnu.gdb.i386.core"
    regs = [Register(name, bits, "data_ptr" if name[1:] in ("sp", "bp") else "int%d" % bits, "general", core,
                     getattr(X, "UC_X86_REG_" + name.upper())) for name in gprs]
    regs.append(Register(pc, bits, "code_ptr", "general", core, getattr(X, "UC_X86_REG_" + pc.upper())))
    regs.append(Register("eflags", 32, "i386_eflags", "general", core, X.UC_X86_REG_EFLAGS))
    regs += [Register(s, 32, "int32", "general", core, getattr(X, "UC_X86_REG_" + s.upper()), writable=False)
             for s in ("cs", "ss", "ds", "es", "fs", "gs")]
    regs += [Register("st%d" % i, 80, "i387_ext", "float", core, getattr(X, "UC_X86_REG_FP%d" % i), writable=False)
             for i in range(8)]
    regs += [Register(name, 32, "int", "float", core, uc_id, writable=False) for name, uc_id in (
        ("fctrl", X.UC_X86_REG_FPCW), ("fstat", X.UC_X86_REG_FPSW), ("ftag", X.UC_X86_REG_FPTAG),
        ("fiseg", X.UC_X86_REG_FCS), ("fioff", X.UC_X86_REG_FIP), ("foseg", X.UC_X86_REG_FDS),
        ("fooff", X.UC_X86_REG_FDP), ("fop", X.UC_X86_REG_FOP))]
    return tuple(regs + extra)


SYS = "org.webhyve.x86.sys"
I386 = _table(("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi"), "eip", 32, [
    Register("cr0", 32, "int32", "system", SYS, X.UC_X86_REG_CR0),
    Register("cr2", 32, "int32", "system", SYS, X.UC_X86_REG_CR2),
    Register("cr3", 32, "int32", "system", SYS, X.UC_X86_REG_CR3),
    Register("cr4", 32, "int32", "system", SYS, X.UC_X86_REG_CR4),
    Register("efer", 64, "int64", "system", SYS, X.UC_X86_REG_MSR)])
AMD64 = _table(("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
                "r14", "r15"), "rip", 64, [
    Register("fs_base", 64, "int64", "system", "org.gnu.gdb.i386.segments", X.UC_X86_REG_FS_BASE),
    Register("gs_base", 64, "int64", "system", "org.gnu.gdb.i386.segments", X.UC_X86_REG_GS_BASE),
    Register("cr0", 64, "int64", "system", SYS, X.UC_X86_REG_CR0),
    Register("cr2", 64, "int64", "system", SYS, X.UC_X86_REG_CR2),
    Register("cr3", 64, "int64", "system", SYS, X.UC_X86_REG_CR3),
    Register("cr4", 64, "int64", "system", SYS, X.UC_X86_REG_CR4),
    Register("cr8", 64, "int64", "system", SYS, X.UC_X86_REG_CR8),
    Register("efer", 64, "int64", "system", SYS, X.UC_X86_REG_MSR)])
ARCHITECTURES = {"i386": I386, "i386:x86-64": AMD64}

# RFLAGS bits as gdb's i386_eflags type names them (SDM vol. 1 §3.4.3).
EFLAGS = ((0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
          (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"), (20, "VIP"), (21, "ID"))


def architecture_of(uc):
    """The description a stopped vCPU needs now: x86-64 once EFER.LMA is set (IA-32e mode), else i386.

    A guest in compatibility mode (LMA with a 32-bit CS) is shown as x86-64 too: the register file is
    the 64-bit one either way.
    """
    return "i386:x86-64" if uc.reg_read(X.UC_X86_REG_MSR, MSR_EFER) & EFER_LMA else "i386"


def description(arch):
    """The target.xml gdb reads: one <feature> per feature name, registers in table order."""
    features = {}
    for reg in ARCHITECTURES[arch]:
        features.setdefault(reg.feature, []).append(reg)
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
           "<architecture>%s</architecture>" % arch]
    for name, regs in features.items():
        out.append('<feature name="%s">' % name)
        if name == "org.gnu.gdb.i386.core":
            out.append('<flags id="i386_eflags" size="4">')
            out += ['<field name="%s" start="%d" end="%d"/>' % (flag, bit, bit) for bit, flag in EFLAGS]
            out.append("</flags>")
        out += ['<reg name="%s" bitsize="%d" type="%s" group="%s"/>' % (r.name, r.bits, r.type, r.group) for r in regs]
        out.append("</feature>")
    out.append("</target>")
    return "\n".join(out)


def read_register(uc, reg):
    """The register's bytes as gdb expects them (little-endian, bitsize/8 bytes)."""
    if reg.bits == 80:
        mantissa, exponent = uc.reg_read(reg.uc_id)
        return struct.pack("<QH", mantissa, exponent)
    value = uc.reg_read(X.UC_X86_REG_MSR, MSR_EFER) if reg.name == "efer" else uc.reg_read(reg.uc_id)
    return (value & ((1 << reg.bits) - 1)).to_bytes(reg.bits // 8, "little")


def write_register(uc, reg, data):
    """Set a register from gdb's bytes; a register the model cannot load that way is refused if changed."""
    if data == read_register(uc, reg):
        return
    if not reg.writable:
        raise StateError("register %s cannot be changed from the debugger" % reg.name)
    value = int.from_bytes(data, "little")
    if reg.name == "efer":
        uc.reg_write(X.UC_X86_REG_MSR, (MSR_EFER, value))
    elif reg.bits == 32 and reg.group == "general" and reg.name != "eflags":
        full = uc.reg_read(reg.uc_id) & ~0xFFFFFFFF           # a 32-bit description keeps the upper half
        uc.reg_write(reg.uc_id, full | value)
    else:
        uc.reg_write(reg.uc_id, value)


def read_all(uc, arch):
    return b"".join(read_register(uc, reg) for reg in ARCHITECTURES[arch])


def write_all(uc, arch, data):
    at = 0
    for reg in ARCHITECTURES[arch]:
        size = reg.bits // 8
        if at + size > len(data):
            break                                    # gdb may send fewer registers than the description has
        write_register(uc, reg, data[at:at + size])
        at += size
