"""A vCPU's registers from numba, through its context block: rd, wr, rd_msr, rd_efer, and stop (uc_emu_stop).

Each goes through libunicorn's function table (native.py) and the vCPU's own 8-word scratch buffer, so
only the vCPU's own thread may call them: another thread's call would share that buffer (docs/engine.md,
"Thread rules").
"""
from numba import carray, njit
from unicorn import x86_const as X

from ..native import FN_EMU_STOP, FN_REG_READ, FN_REG_WRITE, INLINE, NFN, call_reg, call_uc, u64_ptr
from . import ctx as C

MSR_EFER = 0xC0000080


@njit(**INLINE)
def rd(c, reg):
    scratch = carray(u64_ptr(c[C.SCRATCH]), 8)
    call_reg(carray(u64_ptr(c[C.FN]), NFN)[FN_REG_READ], c[C.UC], reg, c[C.SCRATCH])
    return scratch[0]


@njit(**INLINE)
def wr(c, reg, value):
    scratch = carray(u64_ptr(c[C.SCRATCH]), 8)
    scratch[0] = value
    call_reg(carray(u64_ptr(c[C.FN]), NFN)[FN_REG_WRITE], c[C.UC], reg, c[C.SCRATCH])


@njit(**INLINE)
def rd_msr(c, index):
    """An MSR Unicorn keeps (EFER, TSC_AUX...), as its register accessor reads it."""
    scratch = carray(u64_ptr(c[C.SCRATCH]), 8)
    scratch[0] = index                     # struct uc_x86_msr {u32 rid; u64 value;}
    call_reg(carray(u64_ptr(c[C.FN]), NFN)[FN_REG_READ], c[C.UC], X.UC_X86_REG_MSR, c[C.SCRATCH])
    return scratch[1]


@njit(**INLINE)
def rd_efer(c):
    return rd_msr(c, MSR_EFER)


@njit(**INLINE)
def stop(c):
    call_uc(carray(u64_ptr(c[C.FN]), NFN)[FN_EMU_STOP], c[C.UC])
