"""A virtual machine: memory segments, devices on the I/O bus, vCPUs, and its lifecycle.

The composition root for one guest (Firecracker's builder): it decides where each device sits; the
devices know only their registers. Lifecycle requests that are not valid in the current state get an
explicit StateError.
"""
import threading

import numpy as np

from . import debug, firmware, loaders, snapshot
from .cpu import profiles
from .devices import bios as bios_mod
from .devices.console import Console
from .devices.debugcon import DebugCon
from .devices.uart_ns16550 import Uart16550
from .devices.vga_text import CRTC_INDEX, VgaText
from .errors import ConfigError, ImageError, StateError
from .tunables import VM_MAXCPU
from .mmu import ept as EPT
from .mmu.pmap import GuestPmap
from .io import vlapic
from .io.hosttimer import HostTimer
from .io.portbus import OWNER_POST, PortBus
from .io.vpic import Vpic
from .io.vpit import Vpit
from .io.sync import full_fence
from .native import HOST_CALLBACK
from .vcpu import HALTED, IDLE, PAUSED, RUNNING, SUSPENDED, Vcpu
from .vmx import ctx as C
from .vmx import kick

MiB = 1 << 20
COM1, COM2, DEBUGCON, POST = 0x3F8, 0x2F8, 0xE9, 0x80
SUSPEND_REASONS = ("reset", "poweroff", "halt", "triplefault", "ept_violation", "unsupported", "error")


class MemorySegment:
    """A guest-physical range backed by host-physical memory (bhyve's vm_mem_seg + its mapping)."""
    __slots__ = ("name", "gpa", "size", "hpa")

    def __init__(self, name, gpa, size, hpa):
        self.name, self.gpa, self.size, self.hpa = name, gpa, size, hpa


class GuestMemory:
    """Guest-physical byte access for devices and loaders (the vm_gpa_hold/release pair, held briefly):
    page by page through the EPT, backing pages on first touch."""

    def __init__(self, vm):
        self.vm = vm

    def __len__(self):
        return self.vm.mem_size

    def _pages(self, gpa, size):
        if gpa < 0 or size < 0 or gpa + size > self.vm.mem_size:
            raise ConfigError("guest-physical range %#x+%#x is outside VM %r's memory" % (gpa, size, self.vm.name))
        while size > 0:
            chunk = min(size, 0x1000 - (gpa & 0xFFF))
            yield self.vm.pmap.hold(gpa), chunk
            gpa, size = gpa + chunk, size - chunk

    def read(self, gpa, size):
        mem = self.vm.hypervisor.memory
        return b"".join(mem[hpa:hpa + n].tobytes() for hpa, n in self._pages(gpa, size))

    def write(self, gpa, data):
        data = bytes(data)
        mem, done = self.vm.hypervisor.memory, 0
        for hpa, n in self._pages(gpa, len(data)):
            mem[hpa:hpa + n] = np.frombuffer(data, np.uint8, n, done)
            done += n
        self.vm.code_written(gpa, len(data))


class VM:
    """Legend: set at creation and read-only after: name, mem_size, profile, segments, devices.
    `events` (the console-visible log) and `suspend_*` are written under `lock`."""

    def __init__(self, hypervisor, name, mem_mb=64, cpus=1, profile=profiles.DEFAULT, mem_cap_mb=None):
        self.hypervisor, self.name = hypervisor, name
        self.profile = profiles.get(profile)
        self._check_cpus(name, cpus, hypervisor.tunables.get("hw.vmm.maxcpu"))
        if mem_mb < 1:
            raise ConfigError("VM %r: memory must be at least 1 MiB, not %s MiB" % (name, mem_mb))
        self.mem_size = mem_mb * MiB
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.suspend_reason = self.suspend_message = None
        self.events = []
        self.image = None
        if mem_cap_mb is not None and not 1 <= mem_cap_mb <= mem_mb:
            raise ConfigError("VM %r: a memory cap must be 1 to %d MiB, not %s" % (name, mem_mb, mem_cap_mb))
        hpa = hypervisor.allocator.allocate(self.mem_size, "VM %r" % name, align=EPT.SUPERPAGE)
        self.segments = [MemorySegment("lowmem", 0, self.mem_size, hpa)]
        try:
            self.pmap = GuestPmap(hypervisor, "VM %r" % name, self.segments, self._ept_flags(),
                                  (mem_cap_mb or mem_mb) * MiB // EPT.PAGE, self.profile)
        except Exception:
            hypervisor.allocator.free(hpa)
            raise
        self.segtab = self.pmap.segtab
        self.eptgen = np.zeros(len(hypervisor.hostcpus), np.uint64)     # struct vmx eptgen[MAXCPU]
        self.code_state = np.zeros(self.mem_size >> 12, np.uint64)
        self.cpuid = self.profile.cpuid_table().reshape(-1)
        self.memory_access = GuestMemory(self)
        self.console, self.debug_console = Console(), Console()    # outlive resets: history stays
        self._load_args = None
        self._input_listening = False
        self._attach_devices()
        self.intr_callback = HOST_CALLBACK(self._intr_request)
        self.vcpus = [Vcpu(self, i) for i in range(cpus)]
        self.debugger = self.gdb = None          # debug.Debugger and its GdbStub, once asked for
        self.vcpu_table = vlapic.connect(self.vcpus)
        self.host_timer = HostTimer(self)
        self._attach_interrupt_controllers()

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

    def _ept_flags(self):
        """ept_init: what the CPU offers, as far as the hw.vmm.ept.* tunables allow."""
        cap, get = self.profile.facts.get("ept_vpid_cap", 0), self.hypervisor.tunables.get
        flags = 0
        if cap & EPT.CAP_AD and get("hw.vmm.ept.use_hw_ad_bits"):
            flags |= EPT.F_HW_AD
        if cap & EPT.CAP_PDE_2M and get("hw.vmm.ept.use_superpages"):
            flags |= EPT.F_SUPERPAGES
        if cap & EPT.CAP_EXEC_ONLY and get("hw.vmm.ept.use_exec_only"):
            flags |= EPT.F_EXEC_ONLY
        return flags

    # -- devices on the I/O bus -------------------------------------------------------------------
    def _attach_devices(self):
        self.com1 = Uart16550(self.console, "com1")
        self.com2 = Uart16550(Console(), "com2")
        self.debugcon = DebugCon(self.debug_console)
        self.vga = VgaText(self.memory_access)
        self.bios = None
        self.io = PortBus()
        self.portmap = self.io.portmap                     # the exit hooks' view of it (ctx slot PORTS)
        for name, base, device in (("com1", COM1, self.com1), ("com2", COM2, self.com2)):
            self.io.attach(name, base, 8, device.read, device.write)
        self.io.attach("debugcon", DEBUGCON, 1, self.debugcon.read, self.debugcon.write)
        self.io.attach("vga crtc", CRTC_INDEX, 2, lambda offset: self.vga.port_read(CRTC_INDEX + offset),
                       lambda offset, value: self.vga.port_write(CRTC_INDEX + offset, value))
        self.io.attach_kernel("post", POST, 1, OWNER_POST)
        self.port_callback = HOST_CALLBACK(self._port_exit)

    def _port_exit(self, vcpu_id, how, value, _):
        """VM_EXITCODE_INOUT handled in userspace: one piece of an access, as the port bus cut it."""
        port, size, is_in = how & 0xFFFF, (how >> 16) & 0xFF, bool(how >> 24 & 1)
        try:
            return self.io.dispatch(port, size, is_in, value)
        except Exception as problem:           # a device bug must not take the process down
            self._device_failed(vcpu_id, port, problem)
            return (1 << 8 * size) - 1 if is_in else 0

    def _device_failed(self, vcpu_id, port, problem):
        vcpu = self.vcpus[vcpu_id]
        vcpu.ctx[C.EXIT] = C.X_USER_STOP
        kick.kick(vcpu.ctx)                     # from inside the port hook: leave at the next block boundary
        self._set_suspended("error", "device %s at port %#x failed: %r" % (self.io.device_at(port), port, problem))

    # -- memory ---------------------------------------------------------------------------------------
    def gpa_to_hpa(self, gpa):
        """The host-physical address behind a guest-physical one, backing the page if needed."""
        return self.pmap.hold(gpa)

    def pmap_invalidate_ept(self, why):
        """A mapping changed: bump pm_eptgen and kick every running vCPU, so each host CPU does one
        single-context INVEPT before its next entry. The debug tunable forgets to, on purpose."""
        if self.hypervisor.tunables.get("hw.vmm.ept.skip_invalidation"):
            self.log("EPT changed (%s) and the invalidation was skipped (hw.vmm.ept.skip_invalidation=1)" % why)
            return
        self.pmap.st[EPT.S_GEN] += 1
        for vcpu in self.vcpus:
            vcpu.kick()

    def protect(self, gpa, size, prot):
        """Change EPT permissions ('r', 'rw', 'rx', 'x', 'rwx', '' or bits) of resident pages in a range."""
        rwx = prot if isinstance(prot, int) else sum(b for c, b in (("r", 1), ("w", 2), ("x", 4)) if c in prot)
        done = self.pmap.protect(gpa, size, rwx)
        self.pmap_invalidate_ept("protect %#x+%#x" % (gpa, size))
        return done

    def unmap(self, gpa, size):
        done = self.pmap.unmap(gpa, size)
        self.pmap_invalidate_ept("unmap %#x+%#x" % (gpa, size))
        return done

    def replace_page(self, gpa, data):
        """Move one guest page to a new host page holding `data`; returns the new host-physical address."""
        page = self.pmap.replace_page(gpa, data)
        self.pmap_invalidate_ept("page %#x moved" % (gpa & ~0xFFF))
        return page

    def dirty_log(self, clear=True):
        """Guest-physical page numbers dirtied since the last call; clearing invalidates the EPT."""
        pages = self.pmap.dirty_log(clear)
        if clear and pages:
            self.pmap_invalidate_ept("dirty log harvested")
        return pages

    def memmap(self):
        """bhyvectl --get-memmap: the segments, with what is resident."""
        return self.pmap.memmap()

    def gpa_pmap(self, gpa):
        """bhyvectl --get-gpa-pmap: the EPT entries from PML4 down for one guest-physical address."""
        if not 0 <= gpa < (1 << 48):
            raise ConfigError("guest-physical address %#x is beyond the 48-bit EPT" % gpa)
        return self.pmap.chain(gpa)

    def code_written(self, gpa, size):
        """The host wrote guest memory: withdraw execute from scanned pages and drop translated code."""
        first, last = gpa >> 12, (gpa + max(size, 1) - 1) >> 12
        scanned = self.code_state[first:last + 1] & 1
        self.code_state[first:last + 1] += scanned     # odd → even: a new generation, not executable
        for vcpu in self.vcpus:
            vcpu.tb_stale = True                       # its thread drops translated code before its next entry

    # -- loading ------------------------------------------------------------------------------------
    def load(self, data, filename, kind=None, cmdline="", load_addr=None):
        """Load a guest image (bytes) into memory and prepare vCPU 0 to boot it; ImageError if it is bad."""
        if self.state != IDLE:
            raise StateError("VM %r is %s: load an image before starting it" % (self.name, self.state))
        image = loaders.load_image(bytes(data), filename, self.mem_size, kind=kind, cmdline=cmdline, load_addr=load_addr)
        if image.mode == "real":
            if self.mem_size < MiB:
                raise ImageError("%s: a boot sector needs at least 1 MiB of guest memory" % filename)
            self.bios = bios_mod.Bios(self.vga, self.console, image.disk, drive=image.regs.get("rdx", 0x80) & 0xFF)
            self.bios.install(self.memory_access)
            if not self._input_listening:
                self.console.on_input(self._input_arrived)
                self._input_listening = True
        if image.mode != "long64":
            self.memory_access.write(firmware.GDT_BASE, firmware.GDT)
            self.memory_access.write(firmware.STUB_BASE, firmware.STUB)
            for gpa, entry in firmware.PAGE_TABLES.items():
                self.memory_access.write(gpa, entry)
        for seg in image.segments:
            self.memory_access.write(seg.gpa, seg.data + bytes(seg.size - len(seg.data)))
        self.vcpus[0].prepare(image)
        self.image, self._load_args = image, (bytes(data), filename, kind, cmdline, load_addr)
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
        which has no firmware to wake them) every vCPU starts at the image's entry with its registers."""
        if self.image is None:
            raise StateError("VM %r has no image loaded" % self.name)
        if any(v.thread is not None for v in self.vcpus):
            raise StateError("VM %r was already started" % self.name)
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

    def reset(self):
        """bhyvectl --force-reset, then boot again: the vCPUs stop and are created afresh (new Unicorn
        instances), guest memory is released (zero-filled on next touch), the devices return to their
        power-on state, the image is loaded again and the VM runs. The consoles keep their history."""
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
        self.pmap.unmap(0, self.mem_size)
        self.pmap.st[EPT.S_GEN] += 1                   # vm_reinit: every host CPU invalidates this EPTP
        self.code_state[:] = 0
        with self.lock:
            self.suspend_reason = self.suspend_message = None
        for uart in (self.com1, self.com2):
            uart.reset()                               # the same objects: they stay the consoles' listeners
        self.vga = VgaText(self.memory_access)
        self.bios = None
        self.host_timer.stop()
        self.vcpus = [Vcpu(self, i) for i in range(len(self.vcpus))]
        self.vcpu_table = vlapic.connect(self.vcpus)
        self.host_timer = HostTimer(self)
        for uart in (self.com1, self.com2):
            uart.clear_irq_listeners()
        self._attach_interrupt_controllers()            # a new PIC pair and PIT at power-on state
        self.log("reset")
        self.load(*self._load_args)
        self.start()

    def destroy(self):
        self.gdb_close()
        self.poweroff()
        for vcpu in self.vcpus:
            vcpu.hostcpu.unassign(vcpu)
        self.pmap.destroy()
        self.hypervisor.allocator.free(self.segments[0].hpa)
        self.hypervisor.l1d.release_vm(self)
        self.segments = []
        for vcpu in self.vcpus:
            vcpu.lapic.free()

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

    def _started(self):
        return [v for v in self.vcpus if v.thread is not None and v.thread.is_alive()]

    def _require(self, *states, action):
        if self.state not in states:
            raise StateError("cannot %s VM %r: it is %s" % (action, self.name, self.state))

    # -- interrupts ---------------------------------------------------------------------------------
    def _attach_interrupt_controllers(self):
        """The 8259 pair and the 8254 on the I/O bus; the UARTs on IRQ 4 (COM1) and IRQ 3 (COM2)."""
        self.pic = Vpic(self._extint_changed)
        self.pit = Vpit(lambda: self.pic.pulse(0))
        self.host_timer.devices.append(self.pit)
        for name, chip, base in (("8259 master", 0, 0x20), ("8259 slave", 1, 0xA0)):
            self.io.attach(name, base, 2, lambda offset, c=chip: self.pic.port_read(c, offset),
                           lambda offset, value, c=chip: self.pic.port_write(c, offset, value))
        self.io.attach("8254", 0x40, 4, self.pit.read, self._pit_write)
        self.com1.on_irq_change(lambda level: self.pic.set_irq(4, level))
        self.com2.on_irq_change(lambda level: self.pic.set_irq(3, level))

    def _pit_write(self, offset, value):
        self.pit.write(offset, value)
        self.host_timer.rearm()

    def _extint_changed(self, level):
        """The master 8259's INT output, wired to the bootstrap vCPU (bhyve's vatpic_notify_intr)."""
        bsp = self.vcpus[0]
        bsp.lapic.block[vlapic.IB_EXTINT] = int(level)
        if not level:
            return
        full_fence()
        if threading.current_thread() is bsp.thread:
            bsp.ctx[C.NOTIFY] = self.hypervisor.tunables.get("hw.vmm.ipinum")
            bsp.uc.emu_stop()                      # leaves after this instruction's block; no waiting on itself
        else:
            vlapic.notify(bsp.ctx, False)

    def lapic_intr(self, vcpu, vector):
        """lapic_intr_edge: raise `vector` at a vCPU's local APIC from any thread (bhyve's vm_lapic_irq)."""
        if not 0 <= vcpu < len(self.vcpus) or not 16 <= vector <= 255:
            raise ConfigError("VM %r: no vcpu%s or vector %s outside 16-255" % (self.name, vcpu, vector))
        posted = bool(self.hypervisor.tunables.get("hw.vmm.vmx.cap.posted_interrupts"))
        return vlapic.intr_edge(self.vcpus[vcpu].ctx, vector, posted)

    def _intr_request(self, vcpu_id, kind, vector, _):
        """The vLAPIC kernels' way to userspace: wake a halted vCPU, INIT/SIPI/NMI, a timer rearm."""
        target = self.vcpus[vcpu_id]
        if kind == vlapic.CB_WAKE:
            target.mailbox.put(("wake",))
        elif kind == vlapic.CB_TIMER:
            self.host_timer.rearm()
        else:
            message = {vlapic.CB_INIT: ("init",), vlapic.CB_SIPI: ("sipi", vector), vlapic.CB_NMI: ("nmi",)}[kind]
            if target.thread is None:
                target.mailbox.put(message)
            else:
                target.request(message)                  # (its own ICR write exits anyway: the APIC write)
        return 0

    # -- what vCPUs report --------------------------------------------------------------------------
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

    def wait_for_input(self, vcpu):
        if self.console.has_input():
            vcpu.state = RUNNING

    def _input_arrived(self):
        for vcpu in self.vcpus:
            if vcpu.state == HALTED and vcpu.thread is not None:
                vcpu.mailbox.put(("wake",))

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
