"""SYSCALL/SYSRET and SYSENTER/SYSEXIT as the Intel SDM (vol. 2B) gives them, in the kernel.

Unicorn 2.1.4 runs only the UC_HOOK_INSN hooks for SYSCALL and SYSENTER and then adds the instruction's
length to RIP (reference/unicorn.md §2): the hooks here are the whole instruction — the checks that raise
#UD or #GP(0), RCX/R11, RFLAGS masked by IA32_FMASK, CS and SS loaded with the fixed descriptor caches the
SDM lists, CPL 0, RIP from IA32_LSTAR or IA32_SYSENTER_EIP — and they write RIP as the target minus the
length, which Unicorn adds back. SYSRET and SYSEXIT Unicorn does execute, but as QEMU models them (an AMD
SYSRET that loads RF and VM from R11 and returns to a non-canonical RCX in ring 3; a SYSEXIT to a code
segment with both L and D set, and no canonical checks): the exec scan hooks them like RDMSR (vcpu/paging.py)
and the code hook performs Intel's instead and skips the native one — except for the common SYSRETQ, whose
checks pass, whose R11 has RF and VM clear and VIF/VIP as they are (and RFLAGS no reserved bit, STAR no
selector that wraps): there QEMU's result is Intel's to the bit (the same caches, RFLAGS from R11 under the
same mask) and the native instruction runs, which spares leaving the translated block. SWAPGS Unicorn executes natively
(QEMU's translation swaps GS.base with its KERNEL_GS_BASE, #GP at CPL > 0 and #UD outside 64-bit mode),
which is the register the guest's WRMSR/RDMSR of 0xC0000102 reach: nothing to do here.

The modeled CPUs are Intel's: SYSCALL and SYSRET are #UD outside 64-bit mode, compatibility mode included
(AMD's CSTAR entry does not exist on Intel), and SYSRET to a non-canonical RCX is #GP(0) in ring 0.
Segment caches and the CPL go through the saved CPU context (vmx/cpuctx.py); the flags are QEMU's layout
of a descriptor's high dword.
"""
import numpy as np
from numba import carray, njit, types
from unicorn import x86_const as X

from ..core import ctx as C
from ..core.regs import rd, stop, wr
from ..mmu.access import canonical, fetch_code
from ..native import NUMBA, hook
from . import cpuctx as K

U = np.uint64
U64P = types.CPointer(types.uint64)
EFER_SCE, EFER_LMA = 1, 1 << 10
RFLAGS_IF, RFLAGS_RF, RFLAGS_VM, RFLAGS_VIF, RFLAGS_VIP = 1 << 9, 1 << 16, 1 << 17, 1 << 19, 1 << 20
SYSRET_RFLAGS = 0x3C7FD7           # the RFLAGS bits SYSRET takes from R11; RF and VM come back clear
RESERVED_FLAGS = (1 << 3) | (1 << 5) | (1 << 15)   # SYSRET clears them; QEMU's keeps what RFLAGS had
RCX, RDX, R11 = (K.REGS + 8 * 1) // 8, (K.REGS + 8 * 2) // 8, (K.REGS + 8 * 11) // 8
# The descriptor caches the SDM gives these instructions: base 0, limit FFFFFH with G (4 GiB), present, S,
# code type 11 (execute/read, accessed) with L (64-bit) or D (32-bit), data type 3 (read/write, accessed), B
FLAT = K.DESC_G | K.DESC_P | K.DESC_S | K.DESC_A
CODE64, CODE32 = FLAT | K.DESC_CS | K.DESC_W_R | K.DESC_L, FLAT | K.DESC_CS | K.DESC_W_R | K.DESC_B
DATA = FLAT | K.DESC_W_R | K.DESC_B
DPL3 = 3 << K.DPL_SHIFT
LIMIT = 0xFFFFFFFF


@njit(**NUMBA)
def length_at(c, rip):
    """The length of the 0F xx instruction at RIP with its prefixes (Unicorn adds it after the hook)."""
    code = np.zeros(15, np.uint8)
    n = fetch_code(c, rip, code)
    i = 0
    while i < n and code[i] != 0x0F:
        i += 1
    return np.int64(i + 2)


@njit(**NUMBA)
def fault(c, vector, rip_after):
    """#UD or #GP(0): the loop delivers it with RIP on the instruction; `rip_after` is what makes RIP end there."""
    if vector == 13:
        c[C.EXIT], c[C.VECTOR], c[C.ERRCODE] = C.X_GP, 13, 0
    else:
        c[C.EXIT], c[C.VECTOR] = C.X_EXCEPTION, vector
    wr(c, X.UC_X86_REG_RIP, rip_after)
    stop(c)


@njit(**NUMBA)
def enter_kernel(c, raw, selector, long_mode, rsp, rflags, target):
    """CS and SS for CPL 0 (SYSCALL, SYSENTER), then RFLAGS and RIP. RIP goes in with the context, not through
    uc_reg_write (which would also leave the translation loop): the instruction ends its block anyway."""
    K.load_segment(raw, K.CS, selector & U(0xFFFC), 0, LIMIT, CODE64 if long_mode else CODE32)
    K.load_segment(raw, K.SS, (selector + U(8)) & U(0xFFFF), 0, LIMIT, DATA)
    raw[K.RSP // 8] = rsp
    raw[K.EIP // 8] = target
    K.restore(c)
    wr(c, X.UC_X86_REG_EFLAGS, rflags)
    c[C.SYSCALLS] += 1


@njit(**NUMBA)
def leave_kernel(c, raw, cs, ss, long_mode, rsp, rflags, target):
    """CS and SS for CPL 3 (SYSRET, SYSEXIT), then RFLAGS and RIP; writing RIP through uc_reg_write from the code
    hook ends the block before the native instruction runs."""
    K.load_segment(raw, K.CS, cs | U(3), 0, LIMIT, (CODE64 if long_mode else CODE32) | DPL3)
    K.load_segment(raw, K.SS, ss | U(3), 0, LIMIT, DATA | DPL3)
    raw[K.RSP // 8] = rsp
    raw[K.EIP // 8] = target
    K.restore(c)
    wr(c, X.UC_X86_REG_EFLAGS, rflags)
    wr(c, X.UC_X86_REG_RIP, target)
    c[C.SYSRETS] += 1


@njit(**NUMBA)
def syscall(c):
    """SYSCALL: #UD unless 64-bit mode (IA32_EFER.LMA, CS.L) with IA32_EFER.SCE; RCX = the next RIP, R11 = RFLAGS,
    RFLAGS &= ~IA32_FMASK, CS = STAR[47:32] & FFFCH, SS = STAR[47:32] + 8, CPL 0, RIP = IA32_LSTAR."""
    raw = K.save(c)
    rip = raw[K.EIP // 8]
    length = U(length_at(c, rip))
    efer = raw[K.EFER // 8]
    if not K.hflags(raw) & U(K.HF_CS64) or not efer & U(EFER_LMA) or not efer & U(EFER_SCE):
        fault(c, 6, rip - length)
        return
    rflags = rd(c, X.UC_X86_REG_EFLAGS)
    raw[RCX], raw[R11] = rip + length, rflags
    selector = (raw[K.STAR // 8] >> U(32)) & U(0xFFFF)
    enter_kernel(c, raw, selector, True, raw[K.RSP // 8], rflags & ~(raw[K.FMASK // 8] & U(0xFFFFFFFF)),
                 raw[K.LSTAR // 8] - length)


@njit(**NUMBA)
def sysenter(c):
    """SYSENTER: #GP(0) if IA32_SYSENTER_CS[15:2] is 0 (Unicorn raises it in real mode); VM, IF and RF cleared;
    RSP and RIP from IA32_SYSENTER_ESP/EIP (their low halves outside IA-32e mode); CS = SYSENTER_CS & FFFCH, 64-bit
    in IA-32e mode, SS = CS + 8, CPL 0."""
    raw = K.save(c)
    rip = raw[K.EIP // 8]
    length = U(length_at(c, rip))
    selector = K.lo32(raw, K.SYSENTER_CS) & U(0xFFFF)
    if selector & U(0xFFFC) == 0:
        fault(c, 13, rip - length)
        return
    ia32e = raw[K.EFER // 8] & U(EFER_LMA) != 0
    mask = ~U(0) if ia32e else U(0xFFFFFFFF)
    rflags = rd(c, X.UC_X86_REG_EFLAGS) & ~U(RFLAGS_VM | RFLAGS_IF | RFLAGS_RF)
    enter_kernel(c, raw, selector, ia32e, raw[K.SYSENTER_ESP // 8] & mask, rflags,
                 (raw[K.SYSENTER_EIP // 8] & mask) - length)


@njit(**NUMBA)
def sysret(c, rex_w):
    """SYSRET from the code hook (RIP on it): #UD unless 64-bit mode with SCE, #GP(0) at CPL > 0 or, returning to
    64-bit mode, for a non-canonical RCX; RIP = RCX (ECX for compatibility mode), RFLAGS = (R11 & 3C7FD7H) | 2,
    CS = STAR[63:48] (+ 16 for 64-bit) | 3, SS = STAR[63:48] + 8 | 3, CPL 3."""
    raw = K.save(c)
    rip = raw[K.EIP // 8]
    hf, efer = K.hflags(raw), raw[K.EFER // 8]
    if not hf & U(K.HF_CS64) or not efer & U(EFER_LMA) or not efer & U(EFER_SCE):
        fault(c, 6, rip)
        return
    rcx = raw[RCX]
    if hf & U(K.HF_CPL_MASK) or (rex_w and not canonical(rcx)):
        fault(c, 13, rip)
        return
    r11, selector, flags = raw[R11], raw[K.STAR // 8] >> U(48), raw[K.EFLAGS // 8]
    if rex_w and not r11 & U(RFLAGS_RF | RFLAGS_VM) and selector < U(0xFFF0) and not flags & U(RESERVED_FLAGS) and \
            r11 & U(RFLAGS_VIF | RFLAGS_VIP) == flags & U(RFLAGS_VIF | RFLAGS_VIP):
        c[C.SYSRETS] += 1                       # QEMU's SYSRETQ gives Intel's result here: let it run
        return
    cs = (selector + U(16 if rex_w else 0)) & U(0xFFFF)
    leave_kernel(c, raw, cs, (selector + U(8)) & U(0xFFFF), rex_w, raw[K.RSP // 8],
                 (r11 & U(SYSRET_RFLAGS)) | U(2), rcx if rex_w else rcx & U(0xFFFFFFFF))


@njit(**NUMBA)
def sysexit(c, rex_w):
    """SYSEXIT from the code hook: #GP(0) if IA32_SYSENTER_CS[15:2] is 0, in real mode or at CPL > 0, and returning
    to 64-bit mode for a non-canonical RCX or RDX; RSP = RCX, RIP = RDX (ECX, EDX otherwise), CS = SYSENTER_CS + 32
    (64-bit) or + 16, SS = + 40 or + 24, RPL 3, CPL 3; RFLAGS unchanged."""
    raw = K.save(c)
    rip = raw[K.EIP // 8]
    rex_w = rex_w and K.hflags(raw) & U(K.HF_CS64) != 0
    selector = K.lo32(raw, K.SYSENTER_CS) & U(0xFFFF)
    rcx, rdx = raw[RCX], raw[RDX]
    if selector & U(0xFFFC) == 0 or not raw[K.CR // 8] & U(1) or K.hflags(raw) & U(K.HF_CPL_MASK) or \
            (rex_w and (not canonical(rcx) or not canonical(rdx))):
        fault(c, 13, rip)
        return
    mask = ~U(0) if rex_w else U(0xFFFFFFFF)
    leave_kernel(c, raw, (selector + U(32 if rex_w else 16)) & U(0xFFFF), (selector + U(40 if rex_w else 24)) & U(0xFFFF),
                 rex_w, rcx & mask, rd(c, X.UC_X86_REG_EFLAGS), rdx & mask)


@hook(types.void(types.voidptr, U64P))
def syscall_hook(uc, ud):
    syscall(carray(ud, C.SIZE))


@hook(types.void(types.voidptr, U64P))
def sysenter_hook(uc, ud):
    sysenter(carray(ud, C.SIZE))
