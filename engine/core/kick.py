"""The host IPI: how another thread, a timer or a hook makes a vCPU leave the guest between two instructions.

Unicorn's own way out, `uc_emu_stop` from another thread (and its `timeout`, which is a thread calling it),
is not an instruction boundary: Unicorn 2.1.4 checks for a stop after every guest load and store as well
as at each translated block's start, and a stop seen after a store restarts the instruction from its
beginning with the store already done (`helper_check_exit_request` → `cpu_loop_exit_restore`). An
`inc [m]` then increments twice, an `xchg` loses a register, an APIC write hook acts twice — measured: an
`inc dword [m]` loop kicked 4,042 times counted 3,857 increments too many. So nothing calls `uc_emu_stop`
asynchronously. A kicker makes its reason visible (REQ, NOTIFY, RESCHED, an IRR bit), then sets KICK; a
UC_HOOK_BLOCK hook, which Unicorn runs at every block's start right before its exit check, turns KICK into
a stop there: the guest leaves with RIP on the block's first instruction and nothing of it done. KICK stays
set until that hook takes it, so a kick that lands before the entry has begun is not lost (Unicorn forgets
such a `uc_emu_stop`); the loop clears it before it reads the reasons, so a stale one costs no exit.
The block hook costs about 2 ns a block (a 5-instruction ALU loop runs at 0.55x; code with memory
accesses at 0.85-0.97x).
"""
from numba import carray, cfunc, njit, types

from ..native import FN_EMU_STOP, NFN, NUMBA, call_uc, u64_ptr
from . import ctx as C
from .sync import fence


@njit(inline="always")
def kick(c):
    """Leave the guest at the next block boundary; the caller has already made its reason visible."""
    fence()
    c[C.KICK] = 1


@njit(inline="always")
def clear(c):
    """Before the loop reads what is pending: a kick set after this is seen at the first block."""
    c[C.KICK] = 0
    fence()


@cfunc(types.void(types.voidptr, types.uint64, types.uint32, types.CPointer(types.uint64)), **NUMBA)
def block_hook(uc, address, size, ud):
    if ud[C.KICK] != 0:                        # every block runs this: the pointer, not an array around it
        ud[C.KICK] = 0
        call_uc(carray(u64_ptr(ud[C.FN]), NFN)[FN_EMU_STOP], ud[C.UC])


def host_interrupt(c, vector):
    """A host interrupt (a timer tick, a notification) for a vCPU in the guest: an external-interrupt exit,
    handled in the kernel loop (vmx/intr.py host_interrupt). Not for a halted one: it needs a wake-up."""
    if int(c[C.RUNSTATE]) == C.RUN_GUEST:
        if not int(c[C.NOTIFY]):
            c[C.NOTIFY] = vector
        kick(c)
