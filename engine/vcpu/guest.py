"""A vCPU's guest state from its own thread: the registers, the VMCS guest-state area, guest-linear memory,
and the reads another thread gets through a visit.

GuestState is mixed into Vcpu (thread.py). Its `read_*` methods and `write_register` run on the vCPU's own
thread; the methods without the prefix (`registers`, `translate`, `exit_log`, `tlb_info`, ...) are what
any thread may call: each is a visit (Vcpu.visit), so the vCPU's thread does the reading.
"""
import numpy as np
from unicorn import x86_const as X

from .. import stats as S
from ..core import ctx as C
from ..errors import EngineError, StateError
from ..mmu import access
from ..mmu import ept as EPT
from ..mmu import explain
from ..mmu import tlb as TLB
from ..mmu import walk as W
from ..native import load_real_mode_segment
from ..vmx import controls, segcache
from ..vmx import exits as E
from ..vmx import inject
from .states import HALTED, RUNNING

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13",
        "r14", "r15", "rip", "rflags", "cr0", "cr2", "cr3", "cr4", "dr0", "dr1", "dr2", "dr3", "dr6", "dr7")
SEGMENTS = ("cs", "ds", "es", "fs", "gs", "ss")
REG_IDS = {name: getattr(X, "UC_X86_REG_" + name.upper()) for name in GPRS + SEGMENTS}
REG_IDS["rflags"] = X.UC_X86_REG_EFLAGS
MSR_EFER = 0xC0000080


class GuestState:
    """Legend: everything here reads or writes the Unicorn instance, the VMCS or the exit log, which only the
    vCPU's own thread touches; other threads come in through the visiting methods at the end."""

    # -- registers ----------------------------------------------------------------------------------
    def efer(self):
        return self.uc.reg_read(X.UC_X86_REG_MSR, MSR_EFER)

    def cpl(self):
        return self.uc.reg_read(X.UC_X86_REG_CS) & 3 if self.uc.reg_read(X.UC_X86_REG_CR0) & W.CR0_PE else 0

    def in_real_mode(self):
        return not self.uc.reg_read(X.UC_X86_REG_CR0) & W.CR0_PE

    def linear_pc(self):
        rip = self.uc.reg_read(X.UC_X86_REG_RIP)
        if self.uc.reg_read(X.UC_X86_REG_CR0) & W.CR0_PE:
            return rip
        return (self.uc.reg_read(X.UC_X86_REG_CS) << 4) + (rip & 0xFFFF)

    def apply_regs(self, regs, segments):
        """Load a boot protocol's registers; segments (in real mode) only with `segments`."""
        for name, value in regs.items():
            if name in SEGMENTS:
                if segments:
                    load_real_mode_segment(self.uc, REG_IDS[name], value)
            elif name in REG_IDS:
                self.uc.reg_write(REG_IDS[name], value)

    def read_registers(self):
        regs = {name: self.uc.reg_read(rid) for name, rid in REG_IDS.items()}
        regs["efer"] = self.efer()
        return regs

    def paging_registers(self):
        """(CR0, CR3, CR4, EFER, CPL): what a guest-linear walk needs, read together."""
        uc = self.uc
        return (uc.reg_read(X.UC_X86_REG_CR0), uc.reg_read(X.UC_X86_REG_CR3), uc.reg_read(X.UC_X86_REG_CR4),
                self.efer(), self.cpl())

    def write_register(self, name, value):
        if self.state == RUNNING:
            raise StateError("vcpu%d of %s is running: pause it before setting %s" % (self.index, self.vm.name, name))
        if name == "efer":
            self.uc.reg_write(X.UC_X86_REG_MSR, (MSR_EFER, value))
        else:
            self.uc.reg_write(REG_IDS[name], value)
        if name == "cr3":
            self.lastcpu = None                  # vmx_invvpid on a vCPU not running: INVVPID at next entry

    def sync_vmcs(self):
        """Copy the live guest state into the VMCS guest-state area (what VM exit saves)."""
        uc, v = self.uc, self.vmcs
        for field, rid in (("GUEST_RIP", X.UC_X86_REG_RIP), ("GUEST_RSP", X.UC_X86_REG_RSP),
                           ("GUEST_RFLAGS", X.UC_X86_REG_EFLAGS), ("GUEST_CR0", X.UC_X86_REG_CR0),
                           ("GUEST_CR3", X.UC_X86_REG_CR3), ("GUEST_CR4", X.UC_X86_REG_CR4),
                           ("GUEST_DR7", X.UC_X86_REG_DR7), ("GUEST_FS_BASE", X.UC_X86_REG_FS_BASE),
                           ("GUEST_GS_BASE", X.UC_X86_REG_GS_BASE)):
            v[field] = uc.reg_read(rid)
        for seg, (selector, base, limit, flags) in zip(("ES", "CS", "SS", "DS", "FS", "GS"), segcache.caches(uc)):
            v["GUEST_%s_SELECTOR" % seg], v["GUEST_%s_BASE" % seg] = selector, base
            v["GUEST_%s_LIMIT" % seg] = limit
            v["GUEST_%s_ACCESS_RIGHTS" % seg] = segcache.access_rights(flags)
        for table in ("GDTR", "IDTR", "LDTR", "TR"):
            sel, base, limit, flags = uc.reg_read(getattr(X, "UC_X86_REG_" + table))
            v["GUEST_%s_BASE" % table], v["GUEST_%s_LIMIT" % table] = base, limit
            if table in ("LDTR", "TR"):
                v["GUEST_%s_SELECTOR" % table] = sel
                v["GUEST_%s_ACCESS_RIGHTS" % table] = segcache.access_rights(flags)
        # LTR marks the TSS busy, in the descriptor and in TR's cache (SDM 7.2.4); QEMU's helper_ltr fills the
        # cache before it sets the bit, so an "available" TSS type (1 or 9) in the cache is a busy one (3, 11)
        if v["GUEST_TR_ACCESS_RIGHTS"] & 0x15 == 0x1:
            v["GUEST_TR_ACCESS_RIGHTS"] = v["GUEST_TR_ACCESS_RIGHTS"] | 0x2
        # CR0 and CR4 as the CPU holds them, with VMX's fixed bits (vmx_fix_cr0/cr4); the guest reads the
        # shadows (CR0_SHADOW, CR4_SHADOW) for the bits the guest/host masks own
        caps = self.vmxcaps
        v["GUEST_CR0"] = (v["GUEST_CR0"] | caps.cr0_ones) & ~caps.cr0_zeros
        v["GUEST_CR4"] = (v["GUEST_CR4"] | caps.cr4_ones) & ~caps.cr4_zeros
        efer = v["GUEST_IA32_EFER"] = self.efer()
        # a VM exit saves IA32_EFER.LMA into the "IA-32e mode guest" entry control (SDM 28.2 / 27.2)
        lma = controls.VM_ENTRY_GUEST_LMA if efer & W.EFER_LMA else 0
        v["ENTRY_CTLS"] = v["ENTRY_CTLS"] & ~controls.VM_ENTRY_GUEST_LMA | lma
        v["GUEST_ACTIVITY"] = 1 if self.state == HALTED else 0

    def read_vmcs(self, sync=False):
        """{field: value} of the VMCS; with `sync`, the guest-state area first saved as a VM exit saves it."""
        if sync:
            self.sync_vmcs()
        return self.vmcs.snapshot()

    # -- guest-linear memory, as the CPU's own accesses reach it -------------------------------------
    def read_linear(self, linear, size):
        mem = self.vm.hypervisor.memory
        return b"".join(mem[hpa:hpa + n].tobytes() for hpa, n in self._linear_pages(linear, size))

    def _linear_pages(self, linear, size):
        while size > 0:
            chunk = min(size, 0x1000 - (linear & 0xFFF))
            hpa = access.linear_to_hpa(self.ctx, access.u64(linear))
            if hpa < 0:
                hpa = self._back_linear(linear)
            yield hpa, chunk
            linear, size = linear + chunk, size - chunk

    def _back_linear(self, linear):
        """A page the CPU's own access (event delivery, a debugger) reaches through the guest's tables but the
        EPT has not backed yet: back it on first touch, as the guest's access would. A guest #PF otherwise."""
        walk = self.translate(linear)
        if walk["gpa"] is None or walk["fault"] and walk["fault"].startswith("guest #PF"):
            raise inject.DeliveryFault(inject.PF, 0, cr2=linear)
        try:
            return self.vm.pmap.hold(walk["gpa"])
        except EngineError:
            raise inject.DeliveryFault(inject.PF, 0, cr2=linear) from None

    # -- the exit log, the counters and the host CPU's models ----------------------------------------
    def read_exit_log(self):
        head = int(self.ctx[C.RING_HEAD])
        rows = self.ring.reshape(-1, 4)
        order = [i % C.RING_ROWS for i in range(max(0, head - C.RING_ROWS), head)]
        return [{"reason": int(rows[i][0]), "name": E.reason_name(int(rows[i][0])), "qualification": int(rows[i][1]),
                 "length": int(rows[i][2]), "rip": int(rows[i][3])} for i in order]

    def read_counters(self):
        """This vCPU's statistics as plain ints, in stats.py's slot order. vCPU 0's memory figures are set
        when they are read, as vmm.c's vm_get_rescnt/vm_get_wiredcnt set them (vmm_stat_set) on every copy:
        stored, so that a reader of the raw counters (the VM's totals) sees them too."""
        if self.index == 0:
            self.counters[S.VMM_MEM_RESIDENT] = S.resident_bytes(int(self.vm.pmap.st[EPT.S_RESIDENT]))
            self.counters[S.VMM_MEM_WIRED] = 0
        return [int(v) for v in self.counters]

    def read_tlb(self):
        """tlb_info on the vCPU's thread, between two turns on its host CPU: no vCPU fills that TLB meanwhile."""
        c, host = self.counters, self.hostcpu
        with host.turn():
            mine = [e for e in host.tlb_entries() if e["vpid"] == self.vpid]
            capacity, generation = int(host.tlb[TLB.H_SETS] * host.tlb[TLB.H_WAYS]), int(host.tlb[TLB.H_GEN])
        return {"hostcpu": host.index, "vpid": self.vpid, "eptp": self.vm.pmap.eptp,
                "hits": int(c[S.TLB_HITS]), "misses": int(c[S.TLB_MISSES]), "walks": int(c[S.TLB_WALKS]),
                "guest_flushes": int(c[S.TLB_GUEST_FLUSHES]), "invept": int(c[S.VCPU_INVEPT]),
                "invept_saved": int(c[S.VCPU_INVEPT_SAVED]),
                "invvpid_done": int(c[S.VCPU_INVVPID_DONE]), "invvpid_saved": int(c[S.VCPU_INVVPID_SAVED]),
                "entries": len(mine), "capacity": capacity, "flush_generation": generation, "contents": mine[:64]}

    def read_l1d(self):
        """l1d_info on the vCPU's thread, during a turn on its host CPU."""
        c, l1d = self.counters, self.vm.hypervisor.l1d
        with self.hostcpu.turn():
            owners, free = l1d.occupancy(self.hostcpu.index)
        return {"hostcpu": self.hostcpu.index, "occupancy": owners, "free_lines": free,
                "guest_hits": int(c[S.L1D_GUEST_HITS]), "guest_misses": int(c[S.L1D_GUEST_MISSES]),
                "flushes_msr": int(c[S.L1D_FLUSH_MSR]), "flushes_sw": int(c[S.L1D_FLUSH_SW]),
                "flush_cycles": int(c[S.L1D_FLUSH_CYCLES]), "l1tf_windows": int(c[S.L1D_L1TF_WINDOWS])}

    # -- for any thread: each is a visit ------------------------------------------------------------
    def registers(self):
        """{name: value} of every register in REG_IDS and EFER, read by the vCPU's thread at one moment."""
        return self.visit(GuestState.read_registers)

    def set_register(self, name, value):
        """bhyvectl --set-REG, done by the vCPU's thread; refused while the vCPU runs."""
        self.visit(lambda vcpu: vcpu.write_register(name, value))

    def translate(self, linear, access=W.ACCESS_READ):
        """guest-linear → guest-physical → host-physical with each entry on the way (a view: no side effects),
        through the paging registers of one visit."""
        cr0, cr3, cr4, efer, cpl = self.visit(GuestState.paging_registers)
        return explain.translate(self.vm.hypervisor.memory.view(np.uint64), self.vm.pmap.st,
                                 cr0, cr3, cr4, efer, cpl, linear, access)

    def exit_log(self):
        """The last exits, oldest first: dicts of reason (number and name), qualification, length, rip."""
        return self.visit(GuestState.read_exit_log)

    def tlb_info(self):
        """The TLB model of this vCPU's host CPU: counters, and the entries tagged with this vCPU's VPID."""
        return self.visit(GuestState.read_tlb)

    def l1d_info(self):
        """The L1D model of this vCPU's host CPU: who holds its lines, the guest's hits and misses, the flushes."""
        return self.visit(GuestState.read_l1d)


class RealModeRegs:
    """The BIOS's view of the registers: 16-bit and 8-bit names over a UC_MODE_64 instance."""
    _WIDE = {"ax": X.UC_X86_REG_AX, "bx": X.UC_X86_REG_BX, "cx": X.UC_X86_REG_CX, "dx": X.UC_X86_REG_DX,
             "si": X.UC_X86_REG_SI, "di": X.UC_X86_REG_DI, "bp": X.UC_X86_REG_BP, "sp": X.UC_X86_REG_SP,
             "es": X.UC_X86_REG_ES, "ds": X.UC_X86_REG_DS, "ss": X.UC_X86_REG_SS, "cs": X.UC_X86_REG_CS,
             "flags": X.UC_X86_REG_FLAGS}
    _SEGS = {"es", "ds", "ss", "cs"}

    def __init__(self, uc):
        self.uc = uc

    def __getitem__(self, name):
        if name in self._WIDE:
            return self.uc.reg_read(self._WIDE[name]) & 0xFFFF
        value = self[name[0] + "x"]
        return value >> 8 if name[1] == "h" else value & 0xFF

    def __setitem__(self, name, value):
        if name in self._SEGS:
            load_real_mode_segment(self.uc, self._WIDE[name], value)
        elif name in self._WIDE:
            self.uc.reg_write(self._WIDE[name], value & 0xFFFF)
        else:
            wide = self[name[0] + "x"]
            wide = (wide & 0x00FF) | (value & 0xFF) << 8 if name[1] == "h" else (wide & 0xFF00) | (value & 0xFF)
            self.uc.reg_write(self._WIDE[name[0] + "x"], wide)
