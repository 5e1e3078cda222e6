"""One VM as front ends see it: its lifecycle, console, VGA screen, guest memory, EPT, and its vCPUs' views.

Lifecycle requests go to the VM, which turns them into messages to its vCPUs' threads; reads come back as
plain values. The console is a ring any thread may follow (devices/console.py); the lifecycle state and
events are read under the VM's lock; counters and EPT entries are single 64-bit words, each read whole.
"""
import threading
import time

from .. import migration
from .. import stats as S
from ..vmx import exits as E
from ..errors import ConfigError, StateError
from ..pci.host import bdf
from .vcpu_view import VcpuView

RUN_TIMEOUT = 5.0

# vm_exitcode (sys/amd64/include/vmm.h): what VM_RUN tells userspace
EXITCODE_INOUT, EXITCODE_VMX, EXITCODE_INOUT_STR, EXITCODE_VMINSN = 0, 1, 15, 22


class ExitWatch:
    """The one exit bhyvectl --run waits for: set by the vCPU's thread (vm/platform.py _watched_exit, or run_once
    from the exit log), read by the thread that asked once `done` is set."""

    def __init__(self):
        self.done = threading.Event()
        self.exit = self.exitcode = None
        self.rax = self.instruction_error = 0

    def seen(self, kind, record, rax, instruction_error):
        if record is None:
            return
        string = kind == "inout" and E.decode_io(record["qualification"])["string"]
        self.exitcode = {"inout": EXITCODE_INOUT_STR if string else EXITCODE_INOUT,
                         "vminsn": EXITCODE_VMINSN}.get(kind, EXITCODE_VMX)
        self.exit, self.rax, self.instruction_error = record, rax, instruction_error
        self.done.set()


class VmView:
    """Legend: holds one VM and asks it anew on every call; nothing it returns refers into the engine."""

    def __init__(self, vm):
        self._vm = vm

    # -- what it is -------------------------------------------------------------------------------------
    @property
    def name(self):
        return self._vm.name

    @property
    def cpus(self):
        return len(self._vm.vcpus)

    @property
    def mem_mb(self):
        return self._vm.mem_size >> 20

    @property
    def profile(self):
        return self._vm.profile.name

    @property
    def image_kind(self):
        return self._vm.image.kind if self._vm.image else None

    @property
    def load_args(self):
        """(image bytes, filename, kind, cmdline, load address) of the loaded image, or None."""
        return self._vm.load_args

    @property
    def state(self):
        return self._vm.state

    @property
    def suspend_reason(self):
        return self._vm.suspend_reason

    @property
    def suspend_message(self):
        return self._vm.suspend_message

    def events(self, last=50):
        with self._vm.lock:
            return list(self._vm.events[-last:])

    def vcpu(self, index):
        if not isinstance(index, int) or not 0 <= index < self.cpus:
            raise ConfigError("VM %r has vCPUs 0 to %d, not %r" % (self.name, self.cpus - 1, index))
        return VcpuView(self._vm.vcpus[index])

    def vcpus(self):
        return [VcpuView(v) for v in self._vm.vcpus]

    # -- lifecycle --------------------------------------------------------------------------------------
    def load(self, data, filename, kind=None, cmdline="", load_addr=None, initrd=None):
        """Load an image (and a Linux kernel's initrd); returns its kind, notes and entry point."""
        image = self._vm.load(data, filename, kind=kind, cmdline=cmdline, load_addr=load_addr, initrd=initrd)
        return {"kind": image.kind, "entry": image.entry, "notes": list(image.notes)}

    def start(self, all_vcpus=False):
        self._vm.start(all_vcpus=all_vcpus)

    def pause(self):
        self._vm.pause()

    def resume(self):
        self._vm.resume()

    def reset(self):
        self._vm.reset()

    def poweroff(self):
        self._vm.poweroff()

    def migrate(self, sock, key, peer="the target", extra=None, on_progress=None, **options):
        """Live-migrate to the target on the connected socket `sock` (engine/migration): the figures once the
        target has confirmed; MigrationError (and the VM runs on here) when it fails before the handover. The
        caller destroys this copy afterwards. `options`: send_vm's limits, auto_converge and before_commit."""
        return migration.send_vm(self._vm, migration.Channel(sock, key, peer), extra, on_progress, **options)

    def snapshot(self, path):
        """bhyvectl --checkpoint to `path`; {"pages": pages written, ...}."""
        return dict(self._vm.snapshot(path))

    def wait(self, states=("suspended", "halted", "idle"), timeout=None):
        return self._vm.wait(states=states, timeout=timeout)

    def run_once(self, vcpu, timeout=RUN_TIMEOUT):
        """bhyvectl --run on a paused VM: one VM_RUN of `vcpu` alone. It runs (the others stay paused) through every
        exit bhyve's kernel handles itself, halts included, until the first exit the kernel hands to userspace:
        an I/O port of a userspace device (VM_EXITCODE_INOUT, or INOUT_STR for INS/OUTS), a VMCALL
        (VM_EXITCODE_VMINSN), a guest-physical address outside memory. There it pauses again, and the exit is
        returned with the vm_exitcode and RAX as the exit saw them. StateError when the VM is not paused, or
        when `timeout` passes without such an exit (the vCPU is paused again; bhyvectl's VM_RUN would still wait)."""
        view = self.vcpu(vcpu)
        if self.state != "paused":
            raise StateError("VM %r is %s: --run steps a paused VM to its next exit (pause it first)"
                             % (self.name, self.state))
        target, watch = self._vm.vcpus[vcpu], ExitWatch()
        if target.thread is None or target.state != "paused":
            raise StateError("vcpu%d of %r is %s: only a started vCPU the pause stopped can run"
                             % (vcpu, self.name, target.state))
        userspace = lambda: int(target.counters[S.VMEXIT_USERSPACE])
        before = userspace()
        self._vm.userspace_watch[vcpu] = watch
        try:
            target.post(("resume",))
            deadline = time.monotonic() + timeout
            while not watch.done.wait(0.002):
                if userspace() != before or target.state not in ("running", "halted") or time.monotonic() > deadline:
                    break                                # a userspace exit the port hook does not see, or none
        finally:
            self._vm.userspace_watch.pop(vcpu, None)
            if target.state in ("running", "halted"):
                target.post(("pause",))
            self._vm.wait(states=("paused", "suspended", "idle"), timeout=10)
        if watch.exit is None and userspace() != before:
            got = view.read("exit_log", "registers", "vmcs")
            last = got["exit_log"][-1] if got["exit_log"] else None
            if last is not None:
                watch.seen("vminsn" if last["reason"] == E.VMCALL else "vmx", last, got["registers"]["rax"],
                           got["vmcs"]["INSTRUCTION_ERROR"])
        if watch.exit is None:
            raise StateError("vcpu%d of %r made no exit to userspace in %gs (VM now %s); bhyve's VM_RUN would "
                             "still be waiting" % (vcpu, self.name, timeout, self.state))
        return {"exit": watch.exit, "exitcode": watch.exitcode, "state": self.state, "rax": watch.rax,
                "instruction_error": watch.instruction_error}

    # -- counters ---------------------------------------------------------------------------------------
    def counter_totals(self):
        """{stat ID: sum over the vCPUs} of the single-slot stats, read without stopping anyone: each counter
        is one 64-bit word only its vCPU's thread adds to, so each is exact, though not all from one moment
        (for one moment, read a vCPU's "counters" in a visit)."""
        totals = {ident: sum(int(v.counters[S.SLOTS[ident]]) for v in self._vm.vcpus)
                  for ident, _, n in S.TABLE if n == 1}
        totals["VMM_MEM_RESIDENT"] = S.resident_bytes(self._vm.pmap.stats()["resident_pages"])   # computed when read
        totals["VMM_MEM_WIRED"] = 0
        return totals

    # -- PCI devices ------------------------------------------------------------------------------------
    def devices(self):
        """Every function on PCI bus 0, slot by slot, as its model holds it now (engine/pci, engine/virtio
        `describe()`): IDs and class, BARs as the guest programmed them, MSI-X vectors, a virtio device's queues and
        its counts. Read under the bus's lock, the lock the vCPU threads take for configuration cycles and BAR
        accesses, so each function is seen between two accesses, not in the middle of one."""
        bus = self._vm.pci
        with bus.lock:
            return [{"slot": d, "function": f, "bdf": bdf(d, f), **function.describe()}
                    for (d, f), function in sorted(bus.functions.items())]

    # -- console and screen -----------------------------------------------------------------------------
    def console_reader(self, position=None):
        """A follower of COM1's output: from the oldest byte held, or from absolute `position`."""
        console = self._vm.console
        return console.reader() if position is None else console.reader_at(position)

    def console_contents(self):
        return self._vm.console.contents()

    def send_input(self, data):
        """Type bytes into COM1 (or the BIOS keyboard of a boot sector)."""
        return self._vm.console.send_input(bytes(data))

    def vga(self):
        """The 80x25 text screen: lines, cells [[char, attr]...], cursor (row, col) and whether it is hidden."""
        return self._vm.vga.screen()

    # -- guest memory and the EPT ----------------------------------------------------------------------
    def read_memory(self, gpa, size):
        return self._vm.memory_access.read(gpa, size)

    def write_memory(self, gpa, data):
        """Write guest-physical bytes as a device would; the vCPUs drop translated code for them."""
        self._vm.memory_access.write(gpa, data)

    def memmap(self):
        return self._vm.memmap()

    def gpa_pmap(self, gpa):
        return self._vm.gpa_pmap(gpa)

    def ept_stats(self):
        return self._vm.pmap.stats()

    def replace_page(self, gpa, data):
        """Move one guest page to a new host page holding `data` (the EPT is invalidated); its new address."""
        return self._vm.replace_page(gpa, data)

    def invalidate_ept(self, why):
        """pmap_invalidate_ept: a new EPT generation, every running vCPU kicked to INVEPT before re-entry."""
        self._vm.pmap_invalidate_ept(why)

    def lapic_intr(self, vcpu, vector):
        """Raise `vector` at a vCPU's local APIC, as a device model does (vm_lapic_irq)."""
        return self._vm.lapic_intr(vcpu, vector)

    # -- the GDB stub -----------------------------------------------------------------------------------
    def gdb_listen(self, port, wait=False):
        """Serve gdb's remote protocol on 127.0.0.1:port (bhyve's -G); the port. Closed when the VM is destroyed."""
        return self._vm.gdb_listen(port, wait=wait)
