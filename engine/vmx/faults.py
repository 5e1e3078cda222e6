"""Exception exits in the kernel: which event it is, the VM exit the exception bitmap asks for, and its
delivery through the guest's IDT (vmx/deliver.py), as VT-x and bhyve's vmx_exit_process see an exception.

Where exceptions come from: the TLB fill (a guest #PF with its error code and CR2, #GP(0) for a non-canonical
address); Unicorn's own exceptions through the interrupt hook, whose error code and whether an INT n, INT3 or
INTO raised them are in the CPU context (vmx/cpuctx.py; reference/unicorn.md says the error code is not
exposed, and through the API it is not); #UD for an instruction Unicorn does not know; #GP and #UD our hooks
raise (RDMSR/WRMSR, LOCK, SYSCALL, SYSRET).

The exception bitmap (SDM 25.2): a hardware exception whose bit is set is a VM exit, reason 0, with its
interruption information and error code, and for #PF the faulting address as the exit qualification (27.2.1);
#PF's bit is read through PF_ERROR_MASK/MATCH. As before this kernel existed, software interrupts and
exceptions (INT n, INT3, INTO) are not checked against it. Without an exit the CPU delivers the exception
itself; with one, bhyve reflects it into the guest: either way it is delivered here. What the kernel cannot
deliver goes to userspace (vmx/inject.py) with the event classified in the context block (EV_*), as does a
#PF that opens an L1TF transient window (cpu/l1tf.py), which runs only when the L1D is simulated.
"""
import numpy as np
from numba import carray, njit
from unicorn import x86_const as X

from .. import stats as S
from .. import tunables as T
from ..core import ctx as C
from ..core import vmcs as V
from ..core.regs import rd
from ..cpu.l1d import CPUF_L1TF
from ..mmu import walk as W
from ..mmu.access import fetch_code, pc_linear
from ..native import NUMBA, u64_ptr
from . import cpuctx as K
from . import deliver as D
from . import exits as E
from .hooks import record_exit

U = np.uint64


@njit(**NUMBA)
def software_event(c, vector):
    """(interruption type, length) of the INT n, INT3 or INTO that raised `vector`, RIP being past it: INT3 (CC)
    and INTO (CE) are software exceptions of one byte, INT n (CD ib, CD 03 included) a software interrupt of two
    (SDM 24.8.3)."""
    code = np.zeros(1, np.uint8)
    if fetch_code(c, pc_linear(c)[1] - U(1), code) == 1 and \
            ((vector == 3 and code[0] == 0xCC) or (vector == 4 and code[0] == 0xCE)):
        return E.TYPE_SWEXC, 1
    return E.TYPE_SWINTR, 2


@njit(**NUMBA)
def classify(c):
    """Fill EV_* with the event behind an exception exit; returns (vector, kind, flags, error code, CR2, length).
    Only Unicorn's own exceptions need the saved CPU context."""
    why, vector = c[C.EXIT], np.int64(c[C.VECTOR])
    kind, flags, err, cr2, length = E.TYPE_HWEXC, U(0), U(0), U(0), 0
    if why == C.X_GUEST_PF:
        vector, flags, err, cr2 = D.PF, U(C.EV_HAS_ERROR | C.EV_HAS_CR2), c[C.ERRCODE], K.fill_failed_at(c)
        if cr2 & ~U(0xFFF) != c[C.FAULT_GLA] & ~U(0xFFF):
            cr2 = c[C.FAULT_GLA]                                # (not this fill's: the page, at least)
    elif why == C.X_GP:
        vector, flags, err = D.GP, U(C.EV_HAS_ERROR), c[C.ERRCODE]
    elif c[C.EV_FROM_CPU]:
        raw = K.save(c)
        if K.lo32(raw, K.EXCEPTION_IS_INT):
            kind, length = software_event(c, vector)
        elif D.has_error_code(vector):
            flags, err = U(C.EV_HAS_ERROR), K.lo32(raw, K.ERROR_CODE)
    elif D.has_error_code(vector):
        flags = U(C.EV_HAS_ERROR)
    c[C.EV_FROM_CPU] = 0
    c[C.EV_VECTOR], c[C.EV_KIND], c[C.EV_FLAGS], c[C.EV_ERROR], c[C.EV_CR2], c[C.EV_LENGTH] = \
        vector, kind, flags, err, cr2, length
    return vector, kind, flags, err, cr2, length


@njit(**NUMBA)
def bitmap_exit(c, vector, flags, err, cr2):
    """A hardware exception whose exception-bitmap bit is set: exit 0 with its interruption information."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    exits = (vmcs[V.EXCEPTION_BITMAP] >> U(vector)) & U(1) != 0
    if vector == D.PF and err & vmcs[V.PF_ERROR_MASK] != vmcs[V.PF_ERROR_MATCH]:
        exits = not exits
    if not exits:
        return
    has_err = flags & U(C.EV_HAS_ERROR) != 0
    vmcs[V.EXIT_INTR_INFO] = U(E.INTR_VALID) | U(E.TYPE_HWEXC << 8) | (U(E.INTR_ERRCODE) if has_err else U(0)) | \
        U(vector)
    vmcs[V.EXIT_INTR_ERRCODE] = err if has_err else U(0)
    record_exit(c, E.EXCEPTION_NMI, cr2 if vector == D.PF else U(0), 0, rd(c, X.UC_X86_REG_RIP),
                S.VMEXIT_EXCEPTION)


@njit(**NUMBA)
def l1tf_window(c, err):
    """A guest read through a not-present entry on a CPU without RDCL_NO, with the L1D simulated: userspace runs
    the transient window (cpu/l1tf.py) before the #PF is delivered."""
    params = carray(u64_ptr(c[C.PARAMS]), T.COUNT)
    return c[C.CPU_FLAGS] & U(CPUF_L1TF) != 0 and params[T.L1D_SIM] != 0 and \
        err & U(W.PF_P | W.PF_W | W.PF_I) == 0


@njit(**NUMBA)
def exception_exit(c):
    """EXITCODE_EXCEPTION from exit processing: True when the event went through the guest's IDT here, False
    when userspace must deliver it (EV_* say what it is)."""
    vector, kind, flags, err, cr2, length = classify(c)
    if kind == E.TYPE_HWEXC:
        bitmap_exit(c, vector, flags, err, cr2)
    if c[C.EXIT] == C.X_GUEST_PF and l1tf_window(c, err):
        return False
    return D.deliver_event(c, vector, kind, flags & U(C.EV_HAS_ERROR) != 0, err, flags & U(C.EV_HAS_CR2) != 0,
                           cr2, length) == D.OK
