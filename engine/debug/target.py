"""gdb's target description of an x86 vCPU: one register file for every mode, declared as a register table.

gdb learns the register layout from the XML the stub sends with qXfer:features:read (gdb manual, "Target
Descriptions"); the `g` packet is every register of the table in this order, little-endian. As QEMU's x86-64
system emulation does (target/i386/gdbstub.c: "GDB can't deal with changes in registers or sizes in the middle
of a session"), the layout is the 64-bit one whatever the guest's mode: rax..r15, rip, eflags, the selectors and
the x87 state in org.gnu.gdb.i386.core, then fs_base, gs_base, k_gs_base, cr0, cr2, cr3, cr4, cr8 and efer in
org.gnu.gdb.i386.sys (our own description, written from the SDM's register list, not QEMU's file).

Unlike QEMU's, the description names no <architecture>: gdb 13 refuses a target that reports i386:x86-64 when
its ELF is 32-bit ("Selected architecture i386 is not compatible with reported target architecture
i386:x86-64") and refuses `set architecture i8086` or `i386` against it, so a 32-bit kernel could not be
debugged once its guest went to long mode, nor real-mode code decoded. Without it gdb takes the architecture of
the ELF, or `set architecture` (i8086, i386, i386:x86-64) at any time, and checks the core feature for that
architecture's register names; the core feature therefore also carries the i386 names eax..edi and eip (the
low halves of rax..rdi and rip). Pointer types would be sized by the chosen architecture, so every register is
a plain integer of its width.
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


CORE, SEGMENTS_FEATURE, SYS = "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.segments", "org.gnu.gdb.i386.sys"
GPRS64 = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# The i386 names of the same registers (their low 32 bits), for a gdb whose architecture is i386 or i8086
# (a 32-bit ELF, `set architecture i8086`): its i386 code finds eax..edi and eip in the core feature by name.
GPRS32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
MSR_KERNEL_GS_BASE = 0xC0000102


def _one_table():
    """QEMU's x86-64 register file (target/i386/gdbstub.c: 16 GPRs, rip, eflags, the six selectors, then the
    segment bases, the control registers and EFER, then x87), features as gdb names them, plus the i386 aliases."""
    # Plain integer types, never code_ptr/data_ptr: gdb sizes a pointer type by the architecture it picked
    # (4 bytes for i386), not by bitsize, and the `g` packet would no longer match.
    core = tuple(Register(r.name, r.bits, "int64", r.group, r.feature, r.uc_id, r.writable)
                 if r.type in ("code_ptr", "data_ptr") else r for r in _table(GPRS64, "rip", 64, []))
    aliases = [Register(name, 32, "int32", "general", CORE, getattr(X, "UC_X86_REG_" + name.upper()))
               for name in GPRS32]
    aliases.append(Register("eip", 32, "int32", "general", CORE, X.UC_X86_REG_EIP))
    segments = [Register("fs_base", 64, "int64", "system", SYS, X.UC_X86_REG_FS_BASE),
                Register("gs_base", 64, "int64", "system", SYS, X.UC_X86_REG_GS_BASE),
                Register("k_gs_base", 64, "int64", "system", SYS, X.UC_X86_REG_MSR)]
    system = [Register(name, 64, "int64", "system", SYS, getattr(X, "UC_X86_REG_" + name.upper()))
              for name in ("cr0", "cr2", "cr3", "cr4", "cr8")]
    system.append(Register("efer", 64, "int64", "system", SYS, X.UC_X86_REG_MSR))
    return core + tuple(aliases + segments + system)


X86_64 = _one_table()
ALIAS_OF = dict(zip(GPRS32 + ("eip",), ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "rip")))
ARCHITECTURES = {"i386:x86-64": X86_64}
MSR_OF = {"efer": MSR_EFER, "k_gs_base": MSR_KERNEL_GS_BASE}

# RFLAGS bits as gdb's i386_eflags type names them (SDM vol. 1 §3.4.3).
EFLAGS = ((0, "CF"), (1, ""), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
          (11, "OF"), (14, "NT"), (16, "RF"), (17, "VM"), (18, "AC"), (19, "VIF"), (20, "VIP"), (21, "ID"))


def architecture_of(uc):
    """One register file for every mode, as QEMU's x86-64 system emulation has: gdb cannot change its register
    layout during a session, and a reconnect finds the same one whatever the guest switched to."""
    return "i386:x86-64"


def mode_of(uc):
    """The gdb architecture that decodes the vCPU's code now: i8086 in real mode (CR0.PE clear), i386:x86-64 in
    IA-32e mode (EFER.LMA, SDM vol. 3 §9.8.5), else i386."""
    if not uc.reg_read(X.UC_X86_REG_CR0) & 1:
        return "i8086"
    return "i386:x86-64" if uc.reg_read(X.UC_X86_REG_MSR, MSR_EFER) & EFER_LMA else "i386"


def description(arch):
    """The target.xml gdb reads: one <feature> per feature name, registers in table order."""
    features = {}
    for reg in ARCHITECTURES[arch]:
        features.setdefault(reg.feature, []).append(reg)
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>"]
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
    value = uc.reg_read(X.UC_X86_REG_MSR, MSR_OF[reg.name]) if reg.name in MSR_OF else uc.reg_read(reg.uc_id)
    return (value & ((1 << reg.bits) - 1)).to_bytes(reg.bits // 8, "little")


def write_register(uc, reg, data):
    """Set a register from gdb's bytes; a register the model cannot load that way is refused if changed."""
    if data == read_register(uc, reg):
        return
    if not reg.writable:
        raise StateError("register %s cannot be changed from the debugger" % reg.name)
    value = int.from_bytes(data, "little")
    if reg.name in MSR_OF:
        uc.reg_write(X.UC_X86_REG_MSR, (MSR_OF[reg.name], value))
    elif reg.bits == 32 and reg.group == "general" and reg.name != "eflags":
        full = uc.reg_read(reg.uc_id) & ~0xFFFFFFFF           # a 32-bit description keeps the upper half
        uc.reg_write(reg.uc_id, full | value)
    else:
        uc.reg_write(reg.uc_id, value)


def read_all(uc, arch):
    return b"".join(read_register(uc, reg) for reg in ARCHITECTURES[arch])


def write_all(uc, arch, data):
    """A `G` packet. Each i386 name holds the low half of a 64-bit register, and gdb sends both, one of them as it
    last read it: the one gdb changed wins (a 64-bit register changed in this packet, else its i386 name)."""
    table = ARCHITECTURES[arch]
    at, pieces = 0, {}
    for reg in table:
        size = reg.bits // 8
        if at + size > len(data):
            break                                    # gdb may send fewer registers than the description has
        pieces[reg.name] = (reg, data[at:at + size])
        at += size
    changed = {name for name, (reg, piece) in pieces.items() if piece != read_register(uc, reg)}
    for name in changed:
        reg, piece = pieces[name]
        if ALIAS_OF.get(name) in changed:
            continue
        write_register(uc, reg, piece)
