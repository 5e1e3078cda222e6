"""VM_EXITCODE_PAGING in userspace: the execute-permission scan, the page-table pool's refill, and the EPT
violations a guest cannot continue from, reported to the byte.

The scan is how RDMSR/WRMSR, MOV CR, INVLPG, PAUSE, LOCK and CLFLUSH become exits (docs/engine.md): the TLB fill
withholds execute permission from a page until every candidate instruction on it is hooked; a store into a
scanned page takes execute away again (a new generation), so changed code is scanned again.
"""
import threading

import capstone
import numpy as np
from unicorn import UC_CTL_IO_WRITE, UC_CTL_TLB_FLUSH, UC_HOOK_CODE
from unicorn import x86_const as X

from .. import stats as S
from ..core import ctx as C
from ..cpu import cachesim
from ..io import buslock
from ..mmu import access
from ..mmu import ept as EPT
from ..mmu import walk as W
from ..native import hook_add
from ..vmx import exits as E
from ..vmx import hooks, inject
from .build import XTAB_PAIRS

_decoders = threading.local()                   # capstone handles are not to be shared between threads
PREFIXES = np.zeros(256, bool)       # legacy prefixes (SDM 2.1.1) and REX (2.2.1): an instruction may start at any
PREFIXES[[0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3] + list(range(0x40, 0x50))] = True


def exit_paging(vcpu):
    why = int(vcpu.ctx[C.EXIT])
    gla, gpa = int(vcpu.ctx[C.FAULT_GLA]), int(vcpu.ctx[C.FAULT_GPA])
    if why == C.X_EXEC:
        scan_page(vcpu, gla & ~0xFFF, gpa & ~0xFFF)
        return
    if why == C.X_POOL:                          # vm_fault needed page-table pages: give the kernel more
        vcpu.vm.pmap.refill(vcpu.pool)
        return
    vcpu.counters[S.VMEXIT_USERSPACE] += 1
    gla, gpa = exact_fault_address(vcpu, gla, gpa)
    vcpu.vmcs["GUEST_LINEAR_ADDRESS"], vcpu.vmcs["GUEST_PHYSICAL_ADDRESS"] = gla, gpa
    stop_at_fault(vcpu, gla, gpa)


def stop_at_fault(vcpu, gla, gpa):
    """An EPT violation the host will not resolve suspends the VM, saying why and where."""
    q = E.decode_ept_violation(int(vcpu.ctx[C.FAULT_QUAL]))
    where = "guest-physical %#x, guest-linear %#x, rip %#x" % (gpa, gla, int(vcpu.ctx[C.RIP]))
    status = int(vcpu.ctx[C.FAULT_STATUS])
    if status == EPT.OVER_CAP:
        cap = int(vcpu.vm.pmap.st[EPT.S_CAP]) * EPT.PAGE >> 20
        vcpu.suspend("ept_violation", "guest memory cap of %d MiB reached backing a new page: %s" % (cap, where))
    elif status == EPT.MISCONFIG:
        chain = "; ".join("L%d %#x: %s" % (s["level"], s["entry"], s["flags"]) for s in vcpu.vm.gpa_pmap(gpa))
        vcpu.suspend("error", "EPT misconfiguration (exit 49) translating guest-physical %#x (rip %#x): %s"
                     % (gpa, int(vcpu.ctx[C.RIP]), chain))
    elif status == EPT.DENIED:
        allowed = "".join(c for c, k in (("r", "readable"), ("w", "writable"), ("x", "executable")) if q[k])
        vcpu.suspend("ept_violation", "guest %s access denied by EPT (entry allows %r): %s"
                     % (q["access"], allowed or "nothing", where))
    else:
        vcpu.suspend("ept_violation", "guest %s access outside guest memory%s: %s"
                     % (q["access"], "" if q["translation"] else " (a paging-structure access)", where))


def scan_page(vcpu, linear_page, gpa_page):
    """EPT execute violation: hook every RDMSR/WRMSR/MOV CR/INVLPG/PAUSE candidate on the page and, with more
    than one vCPU, map its LOCK prefixes for the bus lock (io/buslock.py: one vCPU needs none); then grant
    execute."""
    hpa = vcpu.vm.gpa_to_hpa(gpa_page)
    code = vcpu.vm.hypervisor.memory[hpa:hpa + 0x1000]
    for where in (linear_page + offset for offset in candidates(code)):
        if (hooks.code_hook, where) not in vcpu.hooked:
            hook_add(vcpu.uc, UC_HOOK_CODE, hooks.code_hook.address, vcpu.ctx.ctypes.data, where, where)
            vcpu.hooked.add((hooks.code_hook, where))
    locks = buslock.lock_chunks(code) if int(vcpu.ctx[C.LOCKBITS]) else np.zeros(buslock.WORDS, np.uint64)
    cachesim.scan_clflush(vcpu, linear_page, hpa, bool(vcpu.efer() & W.EFER_LMA))
    grant_execute(vcpu, linear_page, gpa_page, locks)


def candidates(code):
    """Offsets in a code page where an instruction the code hook handles may start: RDMSR/WRMSR (0F 32/30),
    INVLPG m and LMSW (0F 01 /7 with a memory operand, /6), MOV to CR (0F 22), SYSRET and SYSEXIT (0F 07/35,
    vmx/syscall.py), PAUSE (F3 90), and every
    prefix byte before one of them. Not HLT (Unicorn runs it and leaves emu_start: vmx/vmx.py ran_hlt), nor
    the rest of group 7 (SWAPGS, STAC/CLAC, RDTSCP...: nothing to model). Each hook costs every instruction
    Unicorn translates a walk of the hook list, so fewer is faster (docs/engine.md). The next page's bytes are
    not known here (it may map anywhere): an opcode's first bytes, or prefixes, at the end of the page are
    candidates whatever follows; the hook reads the real bytes."""
    nxt = np.append(code[1:], 0)
    modrm = np.append(code[2:], [0, 0])
    offsets = np.arange(code.size)
    last, last2 = offsets == code.size - 1, offsets >= code.size - 2
    reg, mod = (modrm >> 3) & 7, modrm >> 6
    group7 = (nxt == 0x01) & (last2 | ((reg == 7) & (mod != 3)) | (reg == 6))
    second = last | (nxt == 0x30) | (nxt == 0x32) | (nxt == 0x22) | (nxt == 0x07) | (nxt == 0x35) | group7
    starts = ((code == 0x0F) & second) | ((code == 0xF3) & (last | (nxt == 0x90)))
    starts[-1] |= PREFIXES[code[-1]]
    found = set(np.flatnonzero(starts).tolist())
    for start in sorted(found):
        at = start - 1
        while at >= 0 and start - at < 15 and PREFIXES[code[at]]:
            found.add(at)
            at -= 1
    return sorted(found)


def grant_execute(vcpu, linear_page, gpa_page, locks):
    """Mark the page scanned in this generation, in the VM's code state and this vCPU's exec-scan table, with
    its LOCK map beside the slot (io/buslock.py)."""
    page = gpa_page >> 12
    vcpu.vm.code_state[page] |= 1
    slot = access.xtab_find(vcpu.xtab, XTAB_PAIRS - 1, access.u64(linear_page))
    if slot < 0:                                 # the table is full: start over, pages rescan on demand
        vcpu.xtab[:] = 0
        vcpu.lockbits[:] = 0
        vcpu.uc.ctl_flush_tb()                   # no block may run from a page the table no longer maps
        vcpu.uc.ctl(UC_CTL_TLB_FLUSH, UC_CTL_IO_WRITE)
        slot = access.xtab_find(vcpu.xtab, XTAB_PAIRS - 1, access.u64(linear_page))
    vcpu.xtab[2 * slot] = linear_page | 1
    vcpu.xtab[2 * slot + 1] = gpa_page | ((int(vcpu.vm.code_state[page]) >> 1) & 0xFFF)
    vcpu.lockbits[buslock.WORDS * slot:buslock.WORDS * (slot + 1)] = locks
    vcpu.uc.ctl_remove_cache(linear_page, linear_page + 0x1000)


def exact_fault_address(vcpu, gla, gpa):
    """Unicorn fills its TLB a page at a time, so the fill knows only the page. The exit the user sees
    gets the byte: the faulting instruction's memory operand, decoded, when it falls on that page."""
    if gla & 0xFFF or gpa & 0xFFF:
        return gla, gpa
    try:
        code = vcpu.read_linear(vcpu.linear_pc(), 15)
    except inject.DeliveryFault:
        return gla, gpa
    long_mode = bool(vcpu.efer() & W.EFER_LMA)
    for insn in _decoder(long_mode).disasm(code, vcpu.linear_pc(), 1):
        for op in insn.operands:
            if op.type != capstone.x86.X86_OP_MEM:
                continue
            m = op.mem
            ea = m.disp + (insn.address + insn.size if m.base == capstone.x86.X86_REG_RIP else
                           _register(vcpu, insn, m.base)) + _register(vcpu, insn, m.index) * m.scale
            ea &= (1 << 64) - 1 if long_mode else 0xFFFFFFFF
            if ea & ~0xFFF == gla:
                return ea, gpa | (ea & 0xFFF)
    return gla, gpa


def _register(vcpu, insn, reg):
    if reg == 0:
        return 0
    name = insn.reg_name(reg)                    # eax, rax, r8d, ax: Unicorn has each of them
    return vcpu.uc.reg_read(getattr(X, "UC_X86_REG_" + name.upper()))


def _decoder(long_mode):
    """A capstone decoder with operand details, one per mode and vCPU thread (reusable, not cheap to make)."""
    made = _decoders.__dict__
    if long_mode not in made:
        made[long_mode] = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if long_mode else capstone.CS_MODE_32)
        made[long_mode].detail = True
    return made[long_mode]
