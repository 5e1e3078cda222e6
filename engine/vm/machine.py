"""A virtual machine and its lifecycle: built from its parts, loaded, started, paused and resumed, reset,
powered off, saved; and what its vCPUs report (halts, suspends) under its lock.

The composition root for one guest (Firecracker's builder): memory (memory.py), the platform and its
devices (platform.py), the vCPUs. Lifecycle requests that are not valid in the current state get an
explicit StateError.
"""
import threading
import time

from .. import debug, firmware, loaders, snapshot
from ..cpu import msrs, profiles, tsc
from ..devices.console import Console
from ..errors import ConfigError, ImageError, StateError
from ..tunables import VM_MAXCPU
from ..vcpu import HALTED, IDLE, PAUSED, RUNNING, SUSPENDED, Vcpu
from ..vmx import msr_bitmap
from .memory import MiB, VmMemory
from .platform import Platform
from ..slots import parse_all as parse_slots


class VM(VmMemory, Platform):
    """Legend: set at creation and read-only after: name, mem_size, profile, segments, devices.
    `events` (the console-visible log) and `suspend_*` are written under `lock`."""

    def __init__(self, hypervisor, name, mem_mb=64, cpus=1, profile=profiles.DEFAULT, mem_cap_mb=None, slots=()):
        self.hypervisor, self.name = hypervisor, name
        slots = parse_slots(slots)               # bhyve's -s: a bad one is an error before anything is built
        self.profile = profiles.get(profile)
        self._check_cpus(name, cpus, hypervisor.tunables.get("hw.vmm.maxcpu"))
        if mem_mb < 1:
            raise ConfigError("VM %r: memory must be at least 1 MiB, not %s MiB" % (name, mem_mb))
        self.mem_size = mem_mb * MiB
        self.lock = threading.RLock()
        self._lifecycle = threading.Lock()       # one poweroff or reset at a time (the guest's own run on threads)
        self.changed = threading.Condition(self.lock)
        self.suspend_reason = self.suspend_message = None
        self.events = []
        self.image = None
        self._build_memory(mem_mb, mem_cap_mb)
        self.cpuid = self.profile.cpuid_table().reshape(-1)
        self.console, self.debug_console = Console(), Console()    # outlive resets: history stays
        self._load_args = None
        self.initrd = None                       # the Linux initrd (bytes) loaded with the image, for reset
        self._attach_devices()
        try:
            self._attach_slots(slots)
        except Exception:
            self._free_memory()
            raise
        self.msr_bitmap = msr_bitmap.allocate(hypervisor, "VM %r" % name)     # vmx_init: one page its vCPUs share
        self.vcpus = [Vcpu(self, i) for i in range(cpus)]
        self._power_on_cpus()
        self.debugger = self.gdb = None          # debug.Debugger and its GdbStub, once asked for
        self._wire_interrupts()

    def _power_on_cpus(self):
        """RESET of every vCPU at once: the TSCs start from 0 together (cpu/tsc.py); an application processor's
        IA32_APIC_BASE lacks the BSP flag (bit 8); then the firmware's MTRR setup, the same on each."""
        tsc.power_on(self.vcpus)
        mtrrs = firmware.mtrr_settings(self.mem_size, self.profile.maxphyaddr)
        for vcpu in self.vcpus:
            if vcpu.index > 0:
                msrs.put(vcpu.msrs, 0x1B, msrs.get(vcpu.msrs, 0x1B) & ~(1 << 8))
            for index, value in mtrrs.items():
                msrs.put(vcpu.msrs, index, value)

    @staticmethod
    def _check_cpus(name, cpus, maxcpu):
        """vm_create's vCPU count check: at least one, at most hw.vmm.maxcpu, never beyond VM_MAXCPU."""
        if cpus < 1:
            raise ConfigError("VM %r: %d vCPUs requested; a VM needs at least 1" % (name, cpus))
        if cpus > VM_MAXCPU:
            raise ConfigError("VM %r: %d vCPUs requested; webhyve models at most %d (xAPIC IDs are 8 bits and 0xFF "
                              "is the broadcast address)" % (name, cpus, VM_MAXCPU))
        if cpus > maxcpu:
            raise ConfigError("VM %r: %d vCPUs requested; hw.vmm.maxcpu allows 1 to %d (it can be raised to %d)"
                              % (name, cpus, maxcpu, VM_MAXCPU))

    # -- loading ------------------------------------------------------------------------------------
    def load(self, data, filename, kind=None, cmdline="", load_addr=None, initrd=None):
        """Load a guest image (bytes) into memory and prepare vCPU 0 to boot it; ImageError if it is bad.
        `initrd` (bytes) goes with a Linux kernel."""
        if self.state != IDLE:
            raise StateError("VM %r is %s: load an image before starting it" % (self.name, self.state))
        initrd = None if initrd is None else bytes(initrd)
        image = loaders.load_image(bytes(data), filename, self.mem_size, kind=kind, cmdline=cmdline,
                                   load_addr=load_addr, initrd=initrd)
        if image.mode == "real":
            if self.mem_size < MiB:
                raise ImageError("%s: a boot sector needs at least 1 MiB of guest memory" % filename)
            self._attach_bios(image)
        if image.mode != "long64" or len(self.vcpus) > 1:   # the BSP's way to its boot mode, the APs' to real mode
            self.memory_access.write(firmware.GDT_BASE, firmware.GDT)
            self.memory_access.write(firmware.STUB_BASE, firmware.STUB)
            for gpa, entry in firmware.PAGE_TABLES.items():
                self.memory_access.write(gpa, entry)
        self._install_acpi_tables()
        for seg in image.segments:
            self.memory_access.write(seg.gpa, seg.data + bytes(seg.size - len(seg.data)))
        self.vcpus[0].prepare(image)
        self.image, self._load_args, self.initrd = image, (bytes(data), filename, kind, cmdline, load_addr), initrd
        self.log("loaded %s (%s): %s" % (filename, image.kind, "; ".join(image.notes) or "entry %#x" % image.entry))
        return image

    @property
    def load_args(self):
        """(image bytes, filename, kind, cmdline, load address) of the loaded image, or None."""
        return self._load_args

    # -- lifecycle ----------------------------------------------------------------------------------
    @property
    def state(self):
        """running, paused, halted, suspended or idle (not started / powered off)."""
        with self.lock:
            if self.suspend_reason is not None:
                return SUSPENDED
        states = {v.state for v in self.vcpus}
        for state in (RUNNING, PAUSED, HALTED, SUSPENDED):
            if state in states:
                return state
        return IDLE

    def start(self, all_vcpus=False):
        """Start the bootstrap processor; the others wait for INIT-SIPI. With `all_vcpus` (a flat64 image,
        which has no firmware to wake them) every vCPU starts at the image's entry with its registers.

        A VM that was powered off or stopped (suspended, with its reason) boots afresh, as `qm start` after
        `qm stop` does in Proxmox and a new bhyve process after the old one exited: the same cold boot as
        reset(). A VM that is running, halted or paused is refused."""
        if self.image is None:
            raise StateError("VM %r has no image loaded" % self.name)
        if any(v.thread is not None for v in self.vcpus):
            if self.state != SUSPENDED:
                raise StateError("VM %r is %s: it was already started (reset reboots it)" % (self.name, self.state))
            with self._lifecycle:
                self._reset(why="start after %s" % (self.suspend_message or "stop"), all_vcpus=all_vcpus)
            return
        if all_vcpus and self.image.mode != "long64":
            raise StateError("VM %r: only flat64 images can start every vCPU at their entry" % self.name)
        self.log("started" + (" on all %d vCPUs" % len(self.vcpus) if all_vcpus else ""))
        for ap in self.vcpus[1:]:
            if all_vcpus:
                ap.prepare(self.image)
                ap.waiting_sipi = False
            else:
                ap.reset_to_real_mode()  # application processors wait for INIT-SIPI in real mode
        self.host_timer.start()
        for vcpu in self.vcpus:
            vcpu.start()

    def pause(self):
        self._require(RUNNING, HALTED, action="pause")
        for vcpu in self._started():
            vcpu.post(("pause",))
        self.wait(states=(PAUSED, SUSPENDED), timeout=10)
        self.log("paused")

    def resume(self):
        self._require(PAUSED, action="resume")
        if any(v.debug is not None and v.debug.stop_reason is not None for v in self.vcpus):
            raise StateError("VM %r is stopped by its debugger: continue it from gdb (or detach gdb)" % self.name)
        for vcpu in self._started():
            vcpu.post(("resume",))
        self.wait(states=(RUNNING, HALTED, SUSPENDED), timeout=10)
        self.log("resumed")

    def poweroff(self):
        """Stop every vCPU; the VM keeps its memory until destroyed."""
        with self._lifecycle:
            self._poweroff()

    def _poweroff(self):
        for vcpu in self._started():
            vcpu.post(("exit",))
            vcpu.thread.join(5)
        with self.lock:
            if self.suspend_reason is None:
                self.suspend_reason, self.suspend_message = "poweroff", "powered off"
            self.changed.notify_all()
        self.host_timer.stop()
        self.log("powered off")

    def snapshot(self, path):
        """bhyvectl --checkpoint: pause if running, write the whole state to `path`, run on as before."""
        running = self.state in (RUNNING, HALTED) and bool(self._started())
        if running:
            self.pause()
        try:
            result = snapshot.save(self, path)
        finally:
            if running:
                self.resume()
        self.log("snapshot saved to %s (%d pages)" % (path, result["pages"]))
        return result

    def reset(self, marker=True):
        """bhyvectl --force-reset, then boot again: the vCPUs stop and are created afresh (new Unicorn
        instances), guest memory is released (zero-filled on next touch), the devices return to their
        power-on state, the image is loaded again and the VM runs. The consoles keep their history; with
        `marker` (a reset asked for from outside, not the guest's own reboot) COM1's gets a line saying so."""
        with self._lifecycle:
            self._reset(marker=marker)

    def _reset(self, why="reset", all_vcpus=False, marker=True):
        if self._load_args is None:
            raise StateError("VM %r has no image loaded: nothing to reset to" % self.name)
        if not self.segments:
            raise StateError("VM %r was destroyed" % self.name)
        for vcpu in self._started():
            vcpu.post(("exit",))
            vcpu.thread.join(5)
            if vcpu.thread.is_alive():
                raise StateError("VM %r: vcpu%d did not stop; try again" % (self.name, vcpu.index))
        for vcpu in self.vcpus:
            vcpu.hostcpu.unassign(vcpu)
            vcpu.release_vpid()                        # vm_reinit: vcpu_cleanup, then vcpu_init allocates again
            vcpu.free()
        self._forget_memory()
        # One line of our own in COM1's history, so the new boot's banner is not glued to the old prompt in
        # a console, a replay or a recording (consoles keep their history over a reset).
        if marker:
            self.console.output(b"\r\n\x1b[7m-- webhyve: %s at %s UTC, booting afresh --\x1b[0m\r\n"
                                % (why.encode("ascii", "replace"), time.strftime("%H:%M:%S", time.gmtime()).encode()))
        with self.lock:
            self.suspend_reason = self.suspend_message = None
        self._power_on_devices()
        self.host_timer.stop()
        self.vcpus = [Vcpu(self, i) for i in range(len(self.vcpus))]
        self._power_on_cpus()
        self._wire_interrupts()                        # a new PIC pair and PIT at power-on state
        self.log("reset" if why == "reset" else why)
        self.load(*self._load_args, initrd=self.initrd)
        self.start(all_vcpus=all_vcpus)

    def destroy(self):
        self.gdb_close()
        self.poweroff()
        self._close_slots()                            # before memory goes: a switch may still deliver into it
        for vcpu in self.vcpus:
            vcpu.hostcpu.unassign(vcpu)
            vcpu.release_vpid()                        # vmx_vcpu_cleanup: vpid_free
        self._free_memory()
        self.hypervisor.allocator.free(self.msr_bitmap)
        self.hypervisor.l1d.release_vm(self)
        for vcpu in self.vcpus:
            vcpu.free()

    def _started(self):
        return [v for v in self.vcpus if v.thread is not None and v.thread.is_alive()]

    def _require(self, *states, action):
        if self.state not in states:
            raise StateError("cannot %s VM %r: it is %s" % (action, self.name, self.state))

    # -- the GDB stub (bhyve's -G [w]port) ----------------------------------------------------------
    def gdb_listen(self, port, wait=False):
        """Serve gdb's remote protocol on 127.0.0.1:port (0: any free port); returns the port.

        With `wait`, vCPU 0 stops at the image's entry point and the guest waits there for gdb.
        """
        if self.gdb is not None:
            raise StateError("VM %r already has a GDB stub on port %d" % (self.name, self.gdb.port))
        if not 0 <= port <= 65535:
            raise ConfigError("VM %r: gdb port %d is not a TCP port (0-65535; 0 picks a free one)" % (self.name, port))
        if self.debugger is None:
            self.debugger = debug.Debugger(self)
        try:
            self.gdb = debug.GdbStub(self, port, wait=wait)
        except OSError as problem:
            raise ConfigError("VM %r: cannot listen for gdb on 127.0.0.1:%d: %s" % (self.name, port, problem.strerror))
        self.log("GDB stub listening on 127.0.0.1:%d" % self.gdb.port)
        return self.gdb.port

    def gdb_close(self):
        if self.gdb is not None:
            self.gdb.close()
            self.gdb = None

    # -- what vCPUs report, and who waits for it ------------------------------------------------------
    def vcpu_suspended(self, vcpu, reason, message):
        """A vCPU stops for `reason`: its state and the VM's reason change under one lock, so no reader sees
        a suspended VM without its reason."""
        self._set_suspended(reason, "vcpu%d: %s" % (vcpu.index, message), vcpu)
        for other in self.vcpus:
            if other is not vcpu and other.thread is not None:
                other.request(("pause",))

    def vcpu_halted(self, vcpu, interrupts_on):
        """bhyve's halt detection: every vCPU halted with interrupts off suspends the VM."""
        if self.hypervisor.tunables.get("hw.vmm.halt_detection") and not interrupts_on and \
                all(v.state in (HALTED, IDLE) for v in self.vcpus):
            self._set_suspended("halt", "all vCPUs halted with interrupts disabled")
        self.notify()

    def _set_suspended(self, reason, message, vcpu=None):
        with self.lock:
            if vcpu is not None:
                vcpu.state, vcpu.suspend_reason = SUSPENDED, reason
            if self.suspend_reason is None:
                self.suspend_reason, self.suspend_message = reason, message
                self.events.append("suspended (%s): %s" % (reason, message))
            self.changed.notify_all()

    def notify(self):
        with self.lock:
            self.changed.notify_all()

    def log(self, text):
        with self.lock:
            self.events.append(text)
            self.changed.notify_all()

    def wait(self, states=(SUSPENDED, HALTED, IDLE), timeout=None):
        """Block until the VM is in one of `states`; returns the state (or the current one on timeout)."""
        with self.lock:
            self.changed.wait_for(lambda: self.state in states, timeout)
            return self.state

    def registers(self, vcpu=0):
        return self.vcpus[vcpu].registers()

    def stats(self, vcpu=0):
        """A vCPU's counters in stats.py's slot order, read by its thread at one moment."""
        return self.vcpus[vcpu].visit(Vcpu.read_counters)
