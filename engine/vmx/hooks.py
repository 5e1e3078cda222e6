"""The exits Unicorn reports from inside emulation, as numba cfuncs: TLB fill, CPUID, IN/OUT, MSR/HLT, traps.

These are the exits VT-x takes that vmm.ko handles without leaving the kernel. IN/OUT and CPUID are
handled synchronously inside the hook (an emu_stop there is not precise: the rest of the translation
block would still run). RDMSR/WRMSR, MOV CR, INVLPG and PAUSE are found by scanning a page the first time
it is executed and hooking each candidate address; the TLB fill withholds execute permission until that
scan is done. HLT needs no hook: Unicorn runs it and emu_start returns after it (vmx/vmx.py ran_hlt).
Each hook reaches its vCPU through the context block whose address is the hook's user data.
"""
import numpy as np
from numba import carray, njit, types
from unicorn import x86_const as X

from .. import stats as S
from .. import tunables as T
from ..core import ctx as C
from ..core import vmcs as V
from ..core.regs import MSR_EFER, rd, rd_efer, stop, wr
from ..cpu import l1d
from ..cpu import msrs as M
from ..cpu import tsc
from ..cpu.profiles import (ANY, CPUID1_ECX_OSXSAVE, CPUID1_ECX_XSAVE, CR4_OSXSAVE, EFER_LME, FLUSH_CMD_L1D,
                            MSR_FLUSH_CMD)
from ..io import portbus
from ..io.lapic import timer
from ..mmu import ept as EPT
from ..mmu import tlb as TLB
from ..mmu import walk as W
from ..mmu.access import APIC_GPA, canonical, code_to_hpa, ept_views, fetch_code, pc_linear, views, xtab_find
from ..native import INLINE, NUMBA, hook, u64_ptr, u8_ptr
from . import exits as E
from . import msr_bitmap as MB
from . import syscall
from .controls import PROCBASED_MSR_BITMAPS, PROCBASED_PAUSE_EXITING

U64P = types.CPointer(types.uint64)


@njit(**INLINE)
def record_exit(c, reason, qualification, length, rip, stat):
    """Write the exit into the VMCS and count it, as vmx_exit_process does first."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    vmcs[V.EXIT_REASON] = reason
    vmcs[V.EXIT_QUALIFICATION] = qualification
    vmcs[V.EXIT_INSTRUCTION_LENGTH] = length
    vmcs[V.GUEST_RIP] = rip
    counters[S.VMEXIT_COUNT] += 1
    counters[stat] += 1
    log_exit(c, reason, qualification, length, rip)
    l1d.exit_touch(c, reason)               # the host's exit path runs and fills this host CPU's L1D


@njit(**INLINE)
def log_exit(c, reason, qualification, length, rip):
    """Append to the vCPU's exit log (a ring of the last RING_ROWS exits)."""
    ring = carray(u64_ptr(c[C.RING]), 4 * C.RING_ROWS)
    row = 4 * np.int64(c[C.RING_HEAD] % np.uint64(C.RING_ROWS))
    ring[row], ring[row + 1], ring[row + 2], ring[row + 3] = reason, qualification, length, rip
    c[C.RING_HEAD] += np.uint64(1)


# -- TLB fill: the TLB model, else the two-stage walk; then execute permission -----------------------
@njit(**NUMBA)
def nested_fault(c, gpa, gla, qualification, counted):
    """An EPT violation: into the VMCS and the exit log; `counted` of them were handled in the kernel."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    for _ in range(counted):
        record_exit(c, E.EPT_VIOLATION, qualification, 0, rd(c, X.UC_X86_REG_RIP), S.VMEXIT_NESTED_FAULT)
    vmcs[V.GUEST_PHYSICAL_ADDRESS] = gpa
    vmcs[V.GUEST_LINEAR_ADDRESS] = gla


@njit(**NUMBA)
def ept_qualification(kind, rwx, translation):
    """Exit 48's qualification (SDM Table 28-7): bits 2:0 the access (read, write, fetch); bits 5:3 what the EPT
    allowed, the AND of bits 2:0 of the entries the walk used (0 when one was not present); bit 7 the
    guest-linear address is valid (every access here comes from one); bit 8 the access was to the linear
    address's translation (1) or to a guest paging-structure entry during its walk (0)."""
    q = E.EPT_FETCH if kind == W.ACCESS_FETCH else E.EPT_WRITE if kind == W.ACCESS_WRITE else E.EPT_READ
    q |= np.int64(rwx & np.uint64(7)) << 3
    q |= E.EPT_GLA_VALID
    if translation:
        q |= E.EPT_TRANSLATION
    return np.uint64(q)


@njit(**NUMBA)
def walk_qualification(st, rwx):
    """Exit 48 on a guest paging-structure entry: with EPT A/D enabled (EPTP bit 6) the CPU treats those
    accesses as writes (SDM 29.3.3.2); without, the entry is read first, so only an entry the EPT lets it read
    faults on the write that sets an accessed or dirty bit."""
    write = (st[EPT.S_FLAGS] & np.uint64(EPT.F_HW_AD)) != 0 or (rwx & np.uint64(EPT.EPT_R)) != 0
    return ept_qualification(W.ACCESS_WRITE if write else W.ACCESS_READ, rwx, False)


@njit(**NUMBA)
def ept_unhandled(c, status, gpa, qualification):
    """A violation the kernel cannot resolve: refill the pool, or hand it to userspace (device or suspend)."""
    c[C.EXIT] = C.X_POOL if status == EPT.NO_POOL else C.X_EPT
    c[C.FAULT_GPA], c[C.FAULT_QUAL], c[C.FAULT_STATUS] = gpa, qualification, status


@njit(**NUMBA)
def device_page(c, gpa):
    """The host page a guest-physical page without memory stands for: this vCPU's virtual-APIC page at
    0xFEE00000, its MMIO window's pages at the I/O APIC's page and the PCI memory window's (vmx/mmio.py), else 0.
    Only the stepper maps them (is_device, vmx/emulate.py)."""
    page = np.uint64(gpa) & ~np.uint64(0xFFF)
    if c[C.APIC_PAGE] != 0 and page == np.uint64(APIC_GPA):
        return c[C.APIC_PAGE]
    if c[C.MMIO_PAGE] != 0 and page == c[C.MMIO_GPA]:
        return c[C.MMIO_PAGE]
    if c[C.MMIO_PAGE] != 0 and c[C.MMIO_PAGES] > 1 and c[C.MMIO_RANGE] <= page and \
            page - c[C.MMIO_RANGE] < (c[C.MMIO_PAGES] - np.uint64(1)) * np.uint64(4096):
        return c[C.MMIO_PAGE] + np.uint64(4096) + (page - c[C.MMIO_RANGE])      # the PCI window's pages, one for one
    return np.uint64(0)


@njit(**INLINE)
def is_device(c, hpa):
    """A host page device_page gives: the virtual-APIC page or a page of the MMIO window."""
    page = np.uint64(hpa) & ~np.uint64(0xFFF)
    if c[C.APIC_PAGE] != 0 and page == c[C.APIC_PAGE]:
        return True
    return c[C.MMIO_PAGE] != 0 and c[C.MMIO_PAGE] <= page and \
        page - c[C.MMIO_PAGE] < c[C.MMIO_PAGES] * np.uint64(4096)


@njit(**NUMBA)
def tlb_fill(c, vaddr, access):
    """Returns (ok, hpa, perms); on failure the exit record in the context says why. A device page is refused
    (X_MMIO) except to the stepper, which runs the instruction that touched it (vmx/emulate.py); the stepper's
    fills are the emulation's, not the CPU's, and are not counted."""
    mem8, mem64, mem32, segs = views(c)
    st, pool = ept_views(c)
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    count = np.uint64(1) if c[C.MMIO_STEP] == 0 else np.uint64(0)
    tlb = carray(u64_ptr(c[C.TLB]), np.int64(c[C.TLB_LEN]))
    kind = W.ACCESS_WRITE if access == 17 else W.ACCESS_FETCH if access == 18 else W.ACCESS_READ
    need = W.PROT_X if kind == W.ACCESS_FETCH else W.PROT_W if kind == W.ACCESS_WRITE else W.PROT_R
    c[C.FAULT_GLA] = vaddr
    if not canonical(vaddr):                    # Unicorn does not check (reference/unicorn.md §3): #GP(0)
        c[C.EXIT], c[C.VECTOR], c[C.ERRCODE] = C.X_GP, 13, 0
        return False, 0, 0
    i = TLB.lookup(tlb, c[C.VPID], c[C.EPTP], vaddr)
    if i >= 0 and tlb[i + 5] & np.uint64(need) and \
            (tlb[i + 5] & np.uint64(W.PROT_USER) != 0 or rd(c, X.UC_X86_REG_CS) & np.uint64(3) != 3):   # CPL 3: U/S
        counters[S.TLB_HITS] += count
        gpa = tlb[i + 3] | (np.uint64(vaddr) & np.uint64(0xFFF))
        hpa = tlb[i + 4]
        perms = np.int64(tlb[i + 5] & np.uint64(7))
    else:
        counters[S.TLB_MISSES] += count
        counters[S.TLB_WALKS] += count
        cr0 = rd(c, X.UC_X86_REG_CR0)
        cpl = rd(c, X.UC_X86_REG_CS) & 3 if cr0 & W.CR0_PE else 0
        touched, emulated = st[EPT.S_FIRST_TOUCH], st[EPT.S_AD_FAULTS]
        code, gpa, gperms, err, fault_gpa, faults, status, walk_rwx = W.walk(
            mem64, mem32, st, pool, segs, c[C.NSEGS], cr0, rd(c, X.UC_X86_REG_CR3), rd(c, X.UC_X86_REG_CR4),
            rd_efer(c), cpl, vaddr, kind, True)
        if code == W.EPT_FAULT:
            faults -= 1                         # the last one is the exit the loop records (ept_unhandled below)
        if faults > 0:
            nested_fault(c, fault_gpa, vaddr, walk_qualification(st, walk_rwx), faults)
        if code == W.GUEST_PF:
            c[C.EXIT], c[C.ERRCODE] = C.X_GUEST_PF, err
            return False, 0, 0
        if code == W.EPT_FAULT:                # a guest paging structure the EPT does not let it reach
            ept_unhandled(c, status, fault_gpa, walk_qualification(st, walk_rwx))
            return False, 0, 0
        status, hpa, rwx, faults, q_rwx = EPT.translate(mem64, st, pool, segs, c[C.NSEGS], gpa,
                                                        EPT.FETCH if kind == W.ACCESS_FETCH else
                                                        EPT.WRITE if kind == W.ACCESS_WRITE else EPT.READ, 4)
        # Violations the kernel resolved (first touches, A/D): each one exit. The last one of a translation that
        # failed is the exit the loop records; on a device page it is the device's exit (vmx/mmio.py) or none
        # at all (the APIC page: APIC-access virtualization, no EPT violation).
        if status != EPT.HANDLED:
            faults -= 1
        if faults > 0:
            nested_fault(c, gpa, vaddr, ept_qualification(kind, q_rwx, True), faults)
        if status == EPT.NOT_MEMORY:
            device = device_page(c, gpa)        # the APIC page, or the MMIO page a userspace device serves
            if device != 0 and kind == W.ACCESS_FETCH:     # never code (an APIC-access exit, SDM 29.4.1; a fetch
                status, q_rwx = EPT.DENIED, np.uint64(3)   # from the I/O APIC's page: bhyve cannot emulate it)
            elif device != 0:
                status, hpa, rwx = EPT.HANDLED, device + (gpa & np.uint64(0xFFF)), np.uint64(3)
        counters[S.EPT_FIRST_TOUCH] += st[EPT.S_FIRST_TOUCH] - touched
        counters[S.EPT_AD_EMUL] += st[EPT.S_AD_FAULTS] - emulated
        if status != EPT.HANDLED:
            ept_unhandled(c, status, gpa, ept_qualification(kind, q_rwx, True))
            return False, 0, 0
        hpa &= ~np.uint64(0xFFF)
        perms = np.int64(gperms) & np.int64(rwx) & 7
        TLB.insert(tlb, c[C.VPID], c[C.EPTP], vaddr, gpa, hpa, perms | (np.int64(gperms) & W.PROT_USER),
                   (gperms & W.PROT_GLOBAL) != 0)
    if c[C.MMIO_STEP] == 0 and is_device(c, hpa):
        c[C.EXIT], c[C.FAULT_GPA] = C.X_MMIO, gpa       # the instruction runs on the stepper (vmx/emulate.py)
        return False, 0, 0
    page = gpa >> 12
    code_state = carray(u64_ptr(c[C.CODE]), c[C.NPAGES])
    if page < c[C.NPAGES]:
        state = code_state[page]
        if kind == W.ACCESS_WRITE and state & 1:
            code_state[page] = (state | np.uint64(1)) + np.uint64(1)   # written: generation moves on, X withdrawn
        xtab = carray(u64_ptr(c[C.XTAB]), 2 * (np.int64(c[C.XMASK]) + 1))
        slot = xtab_find(xtab, c[C.XMASK], np.uint64(vaddr) & ~np.uint64(0xFFF))
        state = code_state[page]
        scanned = (state & 1) != 0 and slot >= 0 and xtab[2 * slot] != 0 and \
            xtab[2 * slot + 1] == ((gpa & ~np.uint64(0xFFF)) | ((state >> np.uint64(1)) & np.uint64(0xFFF)))
        if code_state[page] & 1:
            perms &= ~W.PROT_W                          # scanned code stays read-only until written
        if not scanned:                                 # by this vCPU: its hooks are its own
            perms &= ~W.PROT_X
        if kind == W.ACCESS_FETCH:
            if not scanned:                             # EPT execute violation: scan this page first
                c[C.EXIT], c[C.FAULT_GPA] = C.X_EXEC, gpa
                # the page's entry as the model keeps it until the scan: its R/W, execute withheld
                level, ea, e, ept_rwx = EPT.walk(mem64, st, gpa, False)
                ept_rwx = ept_rwx & np.uint64(EPT.EPT_R | EPT.EPT_W) if level > 0 else np.uint64(0)
                c[C.FAULT_QUAL] = ept_qualification(W.ACCESS_FETCH, ept_rwx, True)
                return False, 0, 0
            perms |= W.PROT_X
    return True, hpa & ~np.uint64(0xFFF), perms


@hook(types.boolean(types.voidptr, types.uint64, types.int32, U64P, U64P))
def tlb_fill_hook(uc, vaddr, access, entry, ud):
    c = carray(ud, C.SIZE)
    ok, hpa, perms = tlb_fill(c, vaddr, access)
    if ok:
        entry[0] = hpa
        entry[1] = perms
    return ok


# -- CPUID (exit 10), handled in the kernel as x86_emulate_cpuid ------------------------------------
@njit(**NUMBA)
def cpuid_row(table, n, leaf, subleaf):
    """The profile's row for a leaf and subleaf (a subleaf of its own first, else its ANY row), or -1."""
    for i in range(np.int64(n)):
        if table[6 * i] == leaf and (table[6 * i + 1] == ANY or table[6 * i + 1] == subleaf):
            return i
    return np.int64(-1)


@njit(**NUMBA)
def cpuid_leaf(table, n, leaf):
    """The leaf CPUID answers for `leaf`. Above the highest basic (CPUID.0:EAX) or extended (CPUID.80000000H:
    EAX) leaf, the highest basic leaf's data (SDM vol. 2A, CPUID, "If a value entered for CPUID.EAX is higher
    than the maximum input value..."); bhyve's x86_emulate_cpuid clamps the same way except that it answers
    an extended leaf with the highest extended one. 40000000H-4FFFFFFFH belong to the hypervisor: above its
    highest (CPUID.40000000H:EAX), the highest, as x86_emulate_cpuid does with CPUID_VM_HIGH."""
    u = np.uint64
    leaf = u(leaf)
    top = u(0x40000000) if leaf >> u(28) == u(4) else u(0x80000000) if leaf >= u(0x80000000) else u(0)
    row = cpuid_row(table, n, top, u(0))
    high = table[6 * row + 2] if row >= 0 else u(0)
    if leaf <= high:
        return leaf
    if top == u(0x40000000) and row >= 0:
        return high
    row = cpuid_row(table, n, u(0), u(0))
    return table[6 * row + 2] if row >= 0 else u(0)


@njit(**NUMBA)
def emulate_cpuid(table, n, leaf, subleaf, vcpu_id, params_leaf_b, cr4):
    a = b = cc = d = np.uint64(0)
    leaf = cpuid_leaf(table, n, leaf)
    i = cpuid_row(table, n, leaf, subleaf)
    if i >= 0:
        a, b, cc, d = table[6 * i + 2], table[6 * i + 3], table[6 * i + 4], table[6 * i + 5]
    if leaf == 1:
        b = (b & np.uint64(0x00FFFFFF)) | (np.uint64(vcpu_id) << np.uint64(24))   # initial APIC ID
        if cc & np.uint64(CPUID1_ECX_XSAVE) and np.uint64(cr4) & np.uint64(CR4_OSXSAVE):
            cc |= np.uint64(CPUID1_ECX_OSXSAVE)          # OSXSAVE mirrors CR4.OSXSAVE (x86_emulate_cpuid)
    elif leaf == 0xB:
        # x86_emulate_cpuid's Intel topology under bhyve's default of one thread per core and one core per
        # socket: subleaf 0 the SMT level, 1 the core level, each 1 logical CPU wide (shift 0) with the vCPU's
        # x2APIC ID; 2 and up, or hw.vmm.topology.cpuid_leaf_b off, an invalid level (all zero but ECX[7:0]).
        sub = np.uint64(subleaf) & np.uint64(0xFFFFFFFF)
        level = np.uint64(0)
        if params_leaf_b and sub < np.uint64(2):
            level = np.uint64(1) + sub                  # CPUID_TYPE_SMT 1, CPUID_TYPE_CORE 2
        a = np.uint64(0)
        b = np.uint64(1) if level else np.uint64(0)
        cc = level << np.uint64(8) | (sub & np.uint64(0xFF))
        d = np.uint64(vcpu_id) if level else np.uint64(0)
    return a, b, cc, d


@hook(types.int32(types.voidptr, U64P))
def cpuid_hook(uc, ud):
    c = carray(ud, C.SIZE)
    rip = rd(c, X.UC_X86_REG_RIP)
    record_exit(c, E.CPUID, 0, 2, rip, S.VMEXIT_CPUID)
    table = carray(u64_ptr(c[C.CPUID]), 6 * np.int64(c[C.NCPUID]))
    params = carray(u64_ptr(c[C.PARAMS]), T.COUNT)
    a, b, cc, d = emulate_cpuid(table, c[C.NCPUID], rd(c, X.UC_X86_REG_RAX) & 0xFFFFFFFF,
                                rd(c, X.UC_X86_REG_RCX) & 0xFFFFFFFF, c[C.VCPUID], params[T.CPUID_LEAF_B],
                                rd(c, X.UC_X86_REG_CR4))
    wr(c, X.UC_X86_REG_RAX, a)
    wr(c, X.UC_X86_REG_RBX, b)
    wr(c, X.UC_X86_REG_RCX, cc)
    wr(c, X.UC_X86_REG_RDX, d)
    l1d.entry_flush(c)                      # handled in the kernel: the VM entry that resumes the guest
    return 1


# -- IN/OUT (exit 30) ---------------------------------------------------------------------------------
@njit(**INLINE)
def io_decode(code):
    """(length, string, REP, immediate) of an IN/OUT from its first bytes: prefixes, then the opcode (SDM
    Table 28-5; the instruction length, SDM 28.2.5)."""
    string = rep = imm = False
    i = 0
    while i < code.size:
        op = code[i]
        if op == 0xF3 or op == 0xF2:
            rep = True
        elif op != 0x66 and op != 0x67:
            string = 0x6C <= op <= 0x6F
            imm = 0xE4 <= op <= 0xE7
            break
        i += 1
    return i + (2 if imm else 1), string, rep, imm


@njit(**NUMBA)
def io_decode_across(c, linear):
    """io_decode of an instruction near a page's end, its bytes fetched page by page."""
    code = np.zeros(4, np.uint8)
    return io_decode(code[:fetch_code(c, linear, code)])


@njit(**INLINE)
def io_exit(c, port, size, is_in, value):
    """Record the exit with its qualification and dispatch it on the port bus; returns the value an IN reads."""
    rip, linear = pc_linear(c)
    hpa = code_to_hpa(c, linear)
    string = rep = imm = False
    length = 1
    if hpa >= 0 and linear & np.uint64(0xFFF) <= np.uint64(0x1000 - 4):
        length, string, rep, imm = io_decode(carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])[hpa:hpa + 4])
    elif hpa >= 0:                              # the instruction may go on into the next page
        length, string, rep, imm = io_decode_across(c, linear)
    rcx = rd(c, X.UC_X86_REG_RCX) if rep else np.uint64(0)
    one = np.uint64(1)
    continuing = rep and c[C.IO_RIP] == rip + one and c[C.IO_RCX] == rcx + one   # the next round of one REP
    c[C.IO_RIP], c[C.IO_RCX] = rip + one, rcx
    if not continuing:
        record_exit(c, E.INOUT, E.io_qualification(port, size, is_in, string, rep, imm), length, rip,
                    S.VMEXIT_INOUT)
    return portbus.access(c, port, size, is_in, value)


@hook(types.uint32(types.voidptr, types.uint32, types.int32, U64P))
def in_hook(uc, port, size, ud):
    c = carray(ud, C.SIZE)
    value = np.uint32(io_exit(c, np.uint64(port), np.uint64(size), True, np.uint64(0)))
    if c[C.EXIT] == C.X_NONE:
        l1d.entry_flush(c)
    return value


@hook(types.void(types.voidptr, types.uint32, types.int32, types.uint32, U64P))
def out_hook(uc, port, size, value, ud):
    c = carray(ud, C.SIZE)
    io_exit(c, np.uint64(port), np.uint64(size), False, np.uint64(value))
    if c[C.EXIT] == C.X_NONE:
        l1d.entry_flush(c)


# -- RDMSR/WRMSR (exits 31/32) and HLT, at the candidate addresses a page scan found ----------------
@njit(**NUMBA)
def cpl_nonzero(c):
    """CPL > 0: protected mode with CS.RPL > 0, or virtual-8086 mode (RFLAGS.VM), which runs at CPL 3."""
    if not rd(c, X.UC_X86_REG_CR0) & np.uint64(W.CR0_PE):
        return False
    return rd(c, X.UC_X86_REG_CS) & np.uint64(3) != 0 or rd(c, X.UC_X86_REG_EFLAGS) & np.uint64(1 << 17) != 0


@njit(**NUMBA)
def raise_fault(c, vector):
    """An exception for the loop to deliver, with RIP still on the instruction (precise from a code hook)."""
    if vector == 13:
        c[C.EXIT], c[C.VECTOR], c[C.ERRCODE] = C.X_GP, 13, 0
    else:
        c[C.EXIT], c[C.VECTOR] = C.X_EXCEPTION, vector
    stop(c)


@njit(**NUMBA)
def efer_write_ok(c, value):
    """Beyond EFER's reserved bits (the table's rule): changing LME while CR0.PG = 1 is #GP (SDM vol. 4,
    IA32_EFER; vol. 3A 9.8.5)."""
    if not rd(c, X.UC_X86_REG_CR0) & np.uint64(W.CR0_PG):
        return True
    return (np.uint64(value) ^ rd_efer(c)) & np.uint64(EFER_LME) == 0


@njit(**NUMBA)
def tsc_msr(c, table, row, is_write, value):
    """The TSC family (msrs.SPECIAL): IA32_TIME_STAMP_COUNTER, IA32_TSC_ADJUST, IA32_TSC_DEADLINE. Returns
    what a read gives. IA32_TSC_DEADLINE reads 0 and ignores writes unless the LAPIC timer is in TSC-deadline
    mode, and reads 0 once its deadline has fired (SDM 10.5.4.1)."""
    at = M.COLUMNS * row
    kind = table[at + M.COL_KIND]
    if kind == M.MSR_TSC:
        if not is_write:
            return tsc.read(c)
        tsc.write_tsc(c, table, M.find(table, c[C.NMSR], np.uint64(0x3B)), value)
    elif kind == M.MSR_TSC_ADJUST:
        if not is_write:
            return table[at + M.COL_VALUE]
        tsc.write_adjust(c, table, row, value)
    elif c[C.APIC_PAGE] != 0 and timer.tsc_deadline_mode(c):
        if not is_write:
            return table[at + M.COL_VALUE] if c[C.TIMER_DEADLINE] != 0 else np.uint64(0)
        table[at + M.COL_VALUE] = value
        timer.tsc_deadline_arm(c, tsc.deadline_ns(c, value) if value != 0 else np.uint64(0))
    return np.uint64(0)


@njit(**NUMBA)
def msr_exiting(c, index, is_write):
    """Whether this RDMSR/WRMSR is a VM exit (SDM 26.1.3): always with "use MSR bitmaps" clear, else as the page at
    the VMCS's MSR-bitmap address says (vmx/msr_bitmap.py). An address off the modeled host's memory (or 0,
    a page the allocator never gives) reads as all ones: every access exits."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    at = vmcs[V.MSR_BITMAP] & ~np.uint64(0xFFF)
    if vmcs[V.PRI_PROC_BASED_CTLS] & np.uint64(PROCBASED_MSR_BITMAPS) == 0 or at == 0 or \
            at + np.uint64(MB.PAGE) > c[C.MEMSIZE]:
        return True
    page = np.int64(at)
    return MB.exits(carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])[page:page + MB.PAGE], index, is_write)


@njit(**NUMBA)
def msr_exit(c, address, is_write, length):
    """RDMSR/WRMSR of `length` bytes (prefixes included), decided on the vCPU's MSR table (cpu/msrs.py); returns
    whether it was a VM exit. At CPL > 0 the #GP(0) comes before any VM exit (SDM vol. 2B RDMSR/WRMSR; faults
    based on privilege level have priority over VM exits, SDM 26.1.1). One the MSR bitmap lets through runs in
    the guest: the same access and the same #GP(0), no exit recorded or counted. An MSR the CPU does not have is
    #GP(0) and counted."""
    if cpl_nonzero(c):
        raise_fault(c, 13)
        return False
    rip = rd(c, X.UC_X86_REG_RIP)
    index = rd(c, X.UC_X86_REG_RCX) & 0xFFFFFFFF
    exiting = msr_exiting(c, index, is_write)
    if exiting:
        record_exit(c, E.WRMSR if is_write else E.RDMSR, 0, length, rip,
                    S.VMEXIT_WRMSR if is_write else S.VMEXIT_RDMSR)
    msr_access(c, index, is_write, rip, length)
    return exiting


@njit(**NUMBA)
def msr_access(c, index, is_write, rip, length):
    """The RDMSR/WRMSR itself on the vCPU's MSR table and registers: a read's EDX:EAX, a write kept, or #GP(0)."""
    table = carray(u64_ptr(c[C.MSR]), M.COLUMNS * np.int64(c[C.NMSR]))
    value = np.uint64(0)
    if is_write:
        value = (rd(c, X.UC_X86_REG_RDX) << np.uint64(32)) | (rd(c, X.UC_X86_REG_RAX) & np.uint64(0xFFFFFFFF))
    result, row, got = M.access(table, c[C.NMSR], index, is_write, value)
    if result == M.NATIVE:
        if not is_write or index != MSR_EFER or efer_write_ok(c, value):
            return                                  # Unicorn keeps this register: let the instruction run
        result = M.GP
    elif result == M.SPECIAL:
        got = tsc_msr(c, table, row, is_write, value)
        result = M.OK
    if result == M.UNKNOWN:
        counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
        counters[S.MSR_UNKNOWN] += 1
    if result != M.OK:
        raise_fault(c, 13)
        return
    if not is_write:
        wr(c, X.UC_X86_REG_RAX, got & 0xFFFFFFFF)
        wr(c, X.UC_X86_REG_RDX, got >> np.uint64(32))
    elif index == MSR_FLUSH_CMD and value & np.uint64(FLUSH_CMD_L1D):   # the guest flushes its host CPU's L1D
        l1d.invalidate(carray(u64_ptr(c[C.L1D]), l1d.STATE_SIZE))
    wr(c, X.UC_X86_REG_RIP, rip + np.uint64(length))


# -- guest TLB maintenance: INVLPG and MOV to CR0/CR3/CR4, found by the same page scan ---------------
REG64 = (X.UC_X86_REG_RAX, X.UC_X86_REG_RCX, X.UC_X86_REG_RDX, X.UC_X86_REG_RBX, X.UC_X86_REG_RSP,
         X.UC_X86_REG_RBP, X.UC_X86_REG_RSI, X.UC_X86_REG_RDI, X.UC_X86_REG_R8, X.UC_X86_REG_R9,
         X.UC_X86_REG_R10, X.UC_X86_REG_R11, X.UC_X86_REG_R12, X.UC_X86_REG_R13, X.UC_X86_REG_R14,
         X.UC_X86_REG_R15)


@njit(**NUMBA)
def guest_tlb_flush(c, kind, linear):
    """The guest's own invalidation, on this host CPU's TLB model (Unicorn's TLB follows natively)."""
    tlb = carray(u64_ptr(c[C.TLB]), np.int64(c[C.TLB_LEN]))
    TLB.invalidate(tlb, kind, c[C.VPID], 0, linear, False)
    c[C.TLB_SEEN] = tlb[TLB.H_GEN]
    counters = carray(u64_ptr(c[C.STATS]), S.NSLOTS)
    counters[S.TLB_GUEST_FLUSHES] += 1


@njit(**INLINE)
def disp32(code, at):
    return np.int64(np.int32(code[at] | (np.int64(code[at + 1]) << 8) | (np.int64(code[at + 2]) << 16) |
                             (np.int64(code[at + 3]) << 24)))


@njit(**NUMBA)
def mov_to_cr(c, code, address, prefixes, rex, long_mode):
    """MOV to CR0 or CR4 (0F 22 /r; the mod bits are ignored, the operand is always a register) exits when it
    would change a bit the CR0/CR4 guest/host mask owns from its read shadow (SDM 25.1.3): exit 28, counted as
    VMEXIT_CR_ACCESS, handled as vmx_emulate_cr0_access/cr4_access do: the value becomes the read shadow the
    guest reads back (Unicorn then runs the MOV itself). CR3 and CR8 moves do not exit (bhyve clears CR3-load/
    store exiting and, with the TPR shadow, CR8 exiting)."""
    if code.size < 3:
        return
    modrm = code[2]
    cr = ((modrm >> 3) & 7) + (8 if rex & np.uint64(4) else 0)
    gpr = (modrm & 7) + (8 if rex & np.uint64(1) else 0)
    if cr != 0 and cr != 4:
        return
    value = rd(c, REG64[gpr])
    if not long_mode:
        value &= np.uint64(0xFFFFFFFF)
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    mask_at, shadow_at = (V.CR0_MASK, V.CR0_SHADOW) if cr == 0 else (V.CR4_MASK, V.CR4_SHADOW)
    if (value ^ vmcs[shadow_at]) & vmcs[mask_at] == 0:
        return
    record_exit(c, E.CR_ACCESS, np.uint64(E.cr_qualification(cr, E.CR_MOV_TO, gpr)), prefixes + 3,
                np.uint64(address), S.VMEXIT_CR_ACCESS)
    vmcs[shadow_at] = value
    l1d.entry_flush(c)                              # handled in the kernel: the entry that resumes the guest


@njit(**NUMBA)
def tlb_insn(c, code, address, prefixes, rex, long_mode, addr32):
    """INVLPG m (0F 01 /7) drops that page; MOV CR3 drops non-global entries; MOV CR0/CR4 drop all of
    this VPID's. An INVLPG operand this decoder does not follow (SIB) drops all: allowed by the SDM.
    `code` starts at the 0F opcode, after `prefixes` prefix bytes."""
    if code.size < 3:
        return
    op1, modrm = code[1], code[2]
    mod, reg, rm = modrm >> 6, (modrm >> 3) & 7, modrm & 7
    if op1 == 0x22 and mod == 3:
        if reg == 3:
            guest_tlb_flush(c, TLB.INV_SINGLE_KEEP_GLOBAL, 0)
        elif reg == 0 or reg == 4:
            guest_tlb_flush(c, TLB.INV_SINGLE, 0)
        return
    if op1 != 0x01 or reg != 7 or mod == 3:
        return
    if rm == 4:
        guest_tlb_flush(c, TLB.INV_SINGLE, 0)
        return
    if (mod == 0 and rm == 5) or mod == 2:
        if code.size < 7:
            return                                             # its fetch faults: the instruction never runs
    elif mod == 1 and code.size < 4:
        return
    if mod == 0 and rm == 5:                                   # disp32: RIP-relative in long mode
        base = np.uint64(address) + np.uint64(prefixes + 7) if long_mode else np.uint64(0)
        ea = base + np.uint64(disp32(code, 3))
    else:
        ea = rd(c, REG64[rm + (8 if rex & 1 else 0)])
        if mod == 1:
            ea += np.uint64(np.int64(np.int8(code[3])))
        elif mod == 2:
            ea += np.uint64(disp32(code, 3))
    if not long_mode or addr32:
        ea &= np.uint64(0xFFFFFFFF)
    guest_tlb_flush(c, TLB.INV_ADDRESS, ea)


@njit(**NUMBA)
def pause_exit(c, address, length):
    """PAUSE exiting (exit 40): with the "PAUSE exiting" control set (bhyvectl --setcap pause_exit, bhyve -P)
    every PAUSE of `length` bytes (prefixes included) exits, at any CPL; PAUSE-loop exiting, which bhyve never
    sets, would then be ignored (SDM 25.1.3). Counted as VMEXIT_PAUSE as vmx_exit_process does. The exit is
    fault-like, RIP stays on the PAUSE; where bhyve's userspace resumes after it, the PAUSE runs when the vCPU
    re-enters (PAUSE_SKIP): a no-op either way. The stop is marked (BLOCK_STOP) as no HLT and no completed
    instruction, so the loop neither takes an F4 byte before the PAUSE for a HLT nor owes an MTF exit."""
    vmcs = carray(u64_ptr(c[C.VMCS]), V.NFIELDS)
    if vmcs[V.PRI_PROC_BASED_CTLS] & np.uint64(PROCBASED_PAUSE_EXITING) == 0:
        return
    here = np.uint64(address) + np.uint64(1)
    if c[C.PAUSE_SKIP] == here:
        c[C.PAUSE_SKIP] = 0
        return
    record_exit(c, E.PAUSE, 0, length, np.uint64(address), S.VMEXIT_PAUSE)
    c[C.PAUSE_SKIP] = here
    c[C.EXIT] = C.X_PAUSE
    c[C.BLOCK_STOP] = 1
    stop(c)                                         # precise from a code hook: RIP stays on the PAUSE


INSN_MAX = 15                       # SDM 2.3.11: an instruction is at most 15 bytes


@njit(**NUMBA)
def is_prefix(b, long_mode):
    """A legacy prefix (SDM 2.1.1) or, in 64-bit mode, a REX prefix (SDM 2.2.1)."""
    return b == 0xF0 or b == 0xF2 or b == 0xF3 or b == 0x2E or b == 0x36 or b == 0x3E or b == 0x26 or \
        b == 0x64 or b == 0x65 or b == 0x66 or b == 0x67 or (long_mode and 0x40 <= b <= 0x4F)


@njit(**NUMBA)
def hooked_insn(c, address, code):
    """The instruction at a scanned candidate address, from its bytes (`code`, fetched page by page):
    RDMSR/WRMSR, INVLPG/LMSW/MOV CR, PAUSE, each with any prefixes before it; LOCK with any of them is
    #UD (SDM vol. 2A, LOCK). Bytes that are something else (data the scan took for code) do nothing."""
    long_mode = (rd_efer(c) & np.uint64(W.EFER_LMA)) != 0
    i, rex, lock, rep, addr32 = 0, np.uint64(0), False, False, False
    while i < code.size - 1 and i < INSN_MAX - 1 and is_prefix(code[i], long_mode):
        b = code[i]
        rex = np.uint64(b) if 0x40 <= b <= 0x4F and long_mode else np.uint64(0)   # REX counts only last
        lock = lock or b == 0xF0
        rep = rep or b == 0xF3
        addr32 = addr32 or b == 0x67
        i += 1
    if i >= code.size:
        return
    op0 = code[i]
    op1 = code[i + 1] if i + 1 < code.size else np.uint8(0)
    known = op0 == 0xF4 or (op0 == 0x0F and (op1 == 0x30 or op1 == 0x32 or op1 == 0x01 or op1 == 0x22 or
                                             op1 == 0x07 or op1 == 0x35))
    if lock and known:
        raise_fault(c, 6)
    elif op0 == 0x0F and (op1 == 0x32 or op1 == 0x30) and i + 1 < code.size:
        if msr_exit(c, address, op1 == 0x30, i + 2) and c[C.EXIT] == C.X_NONE:
            l1d.entry_flush(c)                        # handled in the kernel: the entry that resumes the guest
    elif op0 == 0x0F and (op1 == 0x01 or op1 == 0x22):
        c[C.GUEST_PE] = 0                             # MOV CR0 or LMSW may be about to change CR0.PE
        if op1 == 0x22:
            mov_to_cr(c, code[i:], address, i, rex, long_mode)
        tlb_insn(c, code[i:], address, i, rex, long_mode, addr32)
    elif op0 == 0x90 and rep and not rex & np.uint64(1):
        pause_exit(c, address, i + 1)
    elif op0 == 0x0F and (op1 == 0x07 or op1 == 0x35) and i + 1 < code.size:     # Intel's SYSRET and SYSEXIT
        if op1 == 0x07:
            syscall.sysret(c, (rex & np.uint64(8)) != 0)
        else:
            syscall.sysexit(c, (rex & np.uint64(8)) != 0)


@hook(types.void(types.voidptr, types.uint64, types.uint32, U64P))
def code_hook(uc, address, size, ud):
    c = carray(ud, C.SIZE)
    hpa = code_to_hpa(c, address)
    if hpa < 0:
        return
    if np.uint64(address) & np.uint64(0xFFF) <= np.uint64(0x1000 - INSN_MAX):    # on one page: read in place
        hooked_insn(c, address, carray(u8_ptr(c[C.MEM]), c[C.MEMSIZE])[hpa:hpa + INSN_MAX])
    else:
        code = np.zeros(INSN_MAX, np.uint8)
        hooked_insn(c, address, code[:fetch_code(c, address, code)])


# -- exceptions and software interrupts (UC_HOOK_INTR): delivered through the guest's IDT by the loop -
@hook(types.void(types.voidptr, types.uint32, U64P))
def intr_hook(uc, intno, ud):
    c = carray(ud, C.SIZE)
    c[C.EXIT], c[C.VECTOR] = C.X_EXCEPTION, intno
    c[C.EV_FROM_CPU] = 1                    # its error code and INT-n-ness are in the CPU context (vmx/faults.py)
    stop(c)
