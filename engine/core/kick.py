"""The host IPI: how another thread, a timer or a hook makes a vCPU leave the guest between two instructions.

Unicorn's own way out, `uc_emu_stop` from another thread (and its `timeout`, which is a thread calling it),
is not an instruction boundary: Unicorn 2.1.4 checks for a stop after every guest load and store as well
as at each translated block's start, and a stop seen after a store restarts the instruction from its
beginning with the store already done (`helper_check_exit_request` → `cpu_loop_exit_restore`). An
`inc [m]` then increments twice, an `xchg` loses a register, an APIC write hook acts twice — measured: an
`inc dword [m]` loop kicked 4,042 times counted 3,857 increments too many. So nothing calls `uc_emu_stop`
asynchronously. A kicker makes its reason visible (REQ, NOTIFY, RESCHED, an IRR bit), then sets KICK; a
UC_HOOK_BLOCK hook (io/buslock.py's: the same hook takes the bus lock), which Unicorn runs at every block's
start right before its exit check, turns KICK into
a stop there: the guest leaves with RIP on the block's first instruction and nothing of it done. KICK stays
set until that hook takes it, so a kick that lands before the entry has begun is not lost (Unicorn forgets
such a `uc_emu_stop`); the loop clears it before it reads the reasons, so a stale one costs no exit.
The block hook costs about 2 ns a block (a 5-instruction ALU loop runs at 0.55x; code with memory
accesses at 0.85-0.97x).

The same hook is interrupt-window exiting (KICK_WINDOW, set by the loop when it enters with an interrupt
the guest cannot take yet): QEMU ends a translated block after every instruction that can set RFLAGS.IF
(STI, POPF, IRET, and the one instruction of an STI shadow gets a block of its own), so the first block
start with IF set is exactly the instruction boundary where the hardware's window opens. Nothing is
stepped and no translated block is flushed (docs/interrupts.md).
"""
import numpy as np
from numba import carray, njit
from unicorn import x86_const as X

from ..native import FN_EMU_STOP, FN_REG_READ, NFN, NUMBA, call_reg, call_uc, u64_ptr
from . import ctx as C
from .sync import atomic_cas, fence

KICK_STOP = 1           # ctx[KICK]: another thread (or a hook) wants the vCPU out
KICK_WINDOW = 2         # ctx[KICK]: the loop armed interrupt-window exiting
RFLAGS_IF = 1 << 9


@njit(inline="always")
def kick(c):
    """Leave the guest at the next block boundary; the caller has already made its reason visible."""
    fence()
    c[C.KICK] = KICK_STOP


@njit(inline="always")
def clear(c):
    """Before the loop reads what is pending: a kick set after this is seen at the first block."""
    c[C.KICK] = 0
    fence()


@njit(inline="always")
def arm_window(c):
    """Entering with interrupt-window exiting: KICK 0 becomes KICK_WINDOW; a kick already there stays a kick."""
    atomic_cas(c.ctypes.data + 8 * C.KICK, 0, KICK_WINDOW)


@njit(**NUMBA)
def _window_check(ud, address):
    """KICK_WINDOW at a block start: stop if RFLAGS.IF is set, unless this block is the STI/MOV-SS shadow the
    loop entered in (WINDOW_SKIP), which runs first. Returns whether it stopped."""
    if ud[C.WINDOW_SKIP] == address + np.uint64(1):            # uint64 + int would be a float64 in numba
        ud[C.WINDOW_SKIP] = 0
        return False
    fns = carray(u64_ptr(ud[C.FN]), NFN)
    call_reg(fns[FN_REG_READ], ud[C.UC], X.UC_X86_REG_EFLAGS, ud[C.SCRATCH])
    if carray(u64_ptr(ud[C.SCRATCH]), 1)[0] & RFLAGS_IF:
        ud[C.KICK] = 0
        ud[C.BLOCK_STOP] = 1
        call_uc(fns[FN_EMU_STOP], ud[C.UC])
        return True
    return False


@njit(**NUMBA)
def at_block(ud, address):
    """The block hook's first duty (io/buslock.py block_hook), when KICK is set: True if it stopped the entry."""
    k = ud[C.KICK]
    if k == KICK_WINDOW:
        return _window_check(ud, address)
    ud[C.KICK] = 0
    ud[C.BLOCK_STOP] = 1                        # not a HLT: the loop tells the two apart by this
    call_uc(carray(u64_ptr(ud[C.FN]), NFN)[FN_EMU_STOP], ud[C.UC])
    return True


def host_interrupt(c, vector):
    """A host interrupt (a timer tick, a notification) for a vCPU in the guest: an external-interrupt exit,
    handled in the kernel loop (vmx/intr.py host_interrupt). Not for a halted one: it needs a wake-up."""
    if int(c[C.RUNSTATE]) == C.RUN_GUEST:
        if not int(c[C.NOTIFY]):
            c[C.NOTIFY] = vector
        kick(c)
