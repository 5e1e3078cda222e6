"""One VM as front ends see it: its lifecycle, console, VGA screen, guest memory, EPT, and its vCPUs' views.

Lifecycle requests go to the VM, which turns them into messages to its vCPUs' threads; reads come back as
plain values. The console is a ring any thread may follow (devices/console.py); the lifecycle state and
events are read under the VM's lock; counters and EPT entries are single 64-bit words, each read whole.
"""
import time

from .. import stats as S
from ..errors import ConfigError, StateError
from .vcpu_view import VcpuView

RUN_TIMEOUT = 5.0


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

    def snapshot(self, path):
        """bhyvectl --checkpoint to `path`; {"pages": pages written, ...}."""
        return dict(self._vm.snapshot(path))

    def wait(self, states=("suspended", "halted", "idle"), timeout=None):
        return self._vm.wait(states=states, timeout=timeout)

    def run_once(self, vcpu, timeout=RUN_TIMEOUT):
        """bhyvectl --run on a paused VM: resume until `vcpu` records its next VM exit, pause again, and return
        that exit with the registers an INOUT dump needs. StateError when paused no longer or no exit came."""
        view, counted = self.vcpu(vcpu), lambda: int(self._vm.vcpus[vcpu].counters[S.VMEXIT_COUNT])
        if self.state != "paused":
            raise StateError("VM %r is %s: --run steps a paused VM to its next exit (pause it first)"
                             % (self.name, self.state))
        before = counted()
        self.resume()
        deadline = time.monotonic() + timeout
        while counted() == before and time.monotonic() < deadline and self.state == "running":
            time.sleep(0.001)
        if self.state in ("running", "halted"):
            self.pause()
        new = counted() - before
        got = view.read("exit_log", "registers", "vmcs")
        if new <= 0 or not got["exit_log"]:
            raise StateError("vcpu%d of %r made no VM exit in %gs (VM now %s)" % (vcpu, self.name, timeout, self.state))
        return {"exit": got["exit_log"][-min(new, len(got["exit_log"]))], "exits": new, "state": self.state,
                "rax": got["registers"]["rax"], "instruction_error": got["vmcs"]["INSTRUCTION_ERROR"]}

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
