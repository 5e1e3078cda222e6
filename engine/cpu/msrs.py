"""Model-specific registers as a vCPU has them: a table of kinds and write rules, and RDMSR/WRMSR on it.

Each vCPU owns a copy of its profile's table (profiles.py builds it), one row per MSR that exists:
[index, kind, value, mask, check]. The kind says where the register lives and which directions exist;
`check` with `mask` is the SDM's rule for a write, which raises #GP(0) when broken (reserved bits set, a
memory type the SDM reserves, a non-canonical address, a bit that may not change). An index with no row is
an MSR the modeled CPU does not have: #GP(0), as on hardware (SDM vol. 2B RDMSR/WRMSR), and counted.

The rules follow the SDM (vol. 3A chapter 11 for the MTRRs and PAT, chapter 15 for machine check, vol. 4
for the rest) and bhyve where it decides (vmx_msr.c, x86.c vm_rdmtrr/vm_wrmtrr, vlapic_set_apicbase).
`access` below is the decision as a kernel; vmx/hooks.py msr_exit carries it out on the guest's registers.
"""
import numpy as np
from numba import njit

from ..native import NUMBA

# columns of a row
COL_INDEX, COL_KIND, COL_VALUE, COL_MASK, COL_CHECK = range(5)
COLUMNS = 5

# kinds: where the register lives
MSR_NATIVE = 0        # Unicorn keeps it (EFER, STAR, FS/GS base, PAT...): a write that passes the check runs natively
MSR_VALUE = 1         # the table holds it; a write that passes the check stores it
MSR_READONLY = 2      # reads give the value; any write is #GP(0)
MSR_WRITEONLY = 3     # command MSRs (IA32_PRED_CMD, IA32_FLUSH_CMD): reads are #GP(0), writes act
MSR_TSC = 4           # IA32_TIME_STAMP_COUNTER: the guest's TSC (tsc.py)
MSR_TSC_ADJUST = 5    # IA32_TSC_ADJUST: the value column holds it (tsc.py)
MSR_TSC_DEADLINE = 6  # IA32_TSC_DEADLINE: the value column holds the armed deadline (the LAPIC's TSC-deadline mode)

# checks: the rule a write must pass (with the row's mask)
CHECK_RESERVED = 0    # mask = reserved bits: any of them set is #GP (all-ones: only 0 may be written)
CHECK_CANONICAL = 1   # a linear address: bits 63:47 all equal (48-bit linear addresses, SDM 3.3.7.1)
CHECK_MEMTYPE = 2     # reserved bits, and bits 7:0 a memory type an MTRR may hold (SDM 11.11.2.2, 11.11.2.3)
CHECK_MEMTYPES8 = 3   # a fixed-range MTRR: each of its 8 bytes a memory type (SDM 11.11.2.2)
CHECK_PAT = 4         # IA32_PAT: each of its 8 bytes a PAT memory type (SDM 11.12.2, Table 11-10)
CHECK_ZERO_OR_ONES = 5  # IA32_MCG_CTL: all 0s or all 1s (SDM 15.3.1.3)
CHECK_UNCHANGED = 6   # mask = the bits a write may not change (#GP if it does); the value stays as it is

# memory types (SDM Table 11-2): UC, WC, WT, WP, WB; PAT adds UC- (7). 2 and 3 are reserved
MTRR_TYPES = 1 << 0 | 1 << 1 | 1 << 4 | 1 << 5 | 1 << 6
PAT_TYPES = MTRR_TYPES | 1 << 7

# access() results
OK, NATIVE, GP, UNKNOWN, SPECIAL = range(5)


@njit(**NUMBA)
def find(table, n, index):
    """The row of MSR `index`, or -1."""
    for i in range(np.int64(n)):
        if table[COLUMNS * i] == index:
            return i
    return np.int64(-1)


@njit(**NUMBA)
def types_ok(value, nbytes, allowed):
    """Each of the low `nbytes` bytes of `value` is a memory type in the `allowed` bit set."""
    for b in range(nbytes):
        t = (np.uint64(value) >> np.uint64(8 * b)) & np.uint64(0xFF)
        if t > np.uint64(7) or not (np.uint64(allowed) >> t) & np.uint64(1):
            return False
    return True


@njit(**NUMBA)
def write_ok(check, mask, old, value):
    """Whether a WRMSR of `value` passes the row's rule (else #GP(0))."""
    u = np.uint64
    value, mask = u(value), u(mask)
    if check == CHECK_CANONICAL:
        top = value >> u(47)
        return top == u(0) or top == u(0x1FFFF)
    if check == CHECK_MEMTYPES8:
        return types_ok(value, 8, MTRR_TYPES)
    if check == CHECK_PAT:
        return types_ok(value, 8, PAT_TYPES)
    if check == CHECK_ZERO_OR_ONES:
        return value == u(0) or value == ~u(0)
    if check == CHECK_UNCHANGED:
        return (value ^ u(old)) & mask == u(0)
    if value & mask:
        return False
    return check != CHECK_MEMTYPE or types_ok(value, 1, MTRR_TYPES)


@njit(**NUMBA)
def access(table, n, index, is_write, value):
    """RDMSR or WRMSR of MSR `index` on a vCPU's table: (result, row, value read). Stores a VALUE write.

    OK: done (a read's value is the third item); NATIVE: let the instruction run in Unicorn; GP: #GP(0);
    UNKNOWN: #GP(0) for an MSR the CPU does not have; SPECIAL: the TSC family, for the caller (tsc.py)."""
    row = find(table, n, index)
    if row < 0:
        return UNKNOWN, row, np.uint64(0)
    base = COLUMNS * row
    kind, held, mask, check = table[base + COL_KIND], table[base + COL_VALUE], table[base + COL_MASK], \
        table[base + COL_CHECK]
    if not is_write:
        if kind == MSR_NATIVE:
            return NATIVE, row, np.uint64(0)
        if kind == MSR_VALUE or kind == MSR_READONLY:
            return OK, row, held
        if kind == MSR_WRITEONLY:
            return GP, row, np.uint64(0)
        return SPECIAL, row, np.uint64(0)
    if kind == MSR_READONLY:
        return GP, row, np.uint64(0)
    if not write_ok(check, mask, held, value):
        return GP, row, np.uint64(0)
    if kind == MSR_NATIVE:
        return NATIVE, row, np.uint64(0)
    if kind == MSR_VALUE:
        if check != CHECK_UNCHANGED:
            table[base + COL_VALUE] = value
        return OK, row, np.uint64(0)
    if kind == MSR_WRITEONLY:
        return OK, row, np.uint64(0)
    return SPECIAL, row, np.uint64(0)


# -- the Python side ----------------------------------------------------------------------------------------
def rows(table):
    return table.reshape(-1, COLUMNS)


def get(table, index):
    """The value column of MSR `index` in a vCPU's table (KeyError if the CPU has no such MSR)."""
    hit = rows(table)[:, COL_INDEX] == index
    if not hit.any():
        raise KeyError("the CPU has no MSR %#x" % index)
    return int(rows(table)[hit, COL_VALUE][0])


def put(table, index, value):
    """Set MSR `index`'s value column, as firmware or a RESET leaves it (no write rule applies)."""
    hit = rows(table)[:, COL_INDEX] == index
    if not hit.any():
        raise KeyError("the CPU has no MSR %#x" % index)
    rows(table)[hit, COL_VALUE] = np.uint64(value)
