"""A VM's platform as bhyve wires it: the userspace devices on the port bus (the UARTs, port 0xE9, the VGA
CRTC, the POST latch, the RTC/CMOS, the 8042, PCI configuration mechanism #1 with the host bridge), the BIOS of a
boot sector, the 8259 pair, the 8254 and port 0x61, the I/O APIC, the interrupt paths from devices (ISA IRQs) and
the vLAPIC kernels into the vCPUs, and the reset line devices pull.

The devices know only their registers; this is where they are placed (Firecracker's builder). The ACPI tables
(acpi_tables.py) describe this platform: the ACPI fixed hardware and the reset register sit where they say.
Platform is mixed into VM (machine.py).
"""
import threading

from unicorn.x86_const import UC_X86_REG_RAX

from ..core import ctx as C
from ..core import kick
from ..core.sync import full_fence
from ..devices import bios as bios_mod
from ..devices.acpi_pm import AcpiPm, ResetControl
from ..devices.console import Console
from ..devices.debugcon import DebugCon
from ..devices.kbc_i8042 import COMMAND as KBC_COMMAND_OFFSET
from ..devices.kbc_i8042 import DATA as KBC_DATA_OFFSET
from ..devices.kbc_i8042 import I8042
from ..devices.rtc_mc146818 import Mc146818
from ..devices.uart_ns16550 import Uart16550
from ..devices.vga_text import CRTC_INDEX, VgaText
from ..errors import ConfigError, EngineError
from ..io import buslock
from ..io.lapic import deliver, regs as L, vlapic
from ..io.apicbus import ApicBus
from ..io.hosttimer import HostTimer
from ..io.nmisc import NmiStatusControl
from ..io.portbus import OWNER_POST, PortBus
from ..io.vioapic import Vioapic
from .panic import PanicWatch
from ..io.vpic import Vpic
from ..io.vpit import Vpit
from ..loaders import acpi_tables as ACPI
from ..native import HOST_CALLBACK
from ..pci.config import INTERRUPT_LINE, INTERRUPT_PIN
from ..pci.host import PciHost
from ..pci.hostbridge import HostBridge
from ..net.switch import host_switch
from ..virtio import blk, net
from ..virtio.pci import GuestRam
from ..vcpu import HALTED, RUNNING

COM1, COM2, DEBUGCON, POST = 0x3F8, 0x2F8, 0xE9, 0x80
RTC, KBC_DATA, PORT_B, KBC_COMMAND, PCI_ADDRESS, PCI_DATA = 0x70, 0x60, 0x61, 0x64, 0xCF8, 0xCFC
RTC_IRQ = 8                                            # the 8042 raises IRQ 1 and 12 itself
FOUR_GIB = 1 << 32
GUEST_POWER = {"poweroff": ("poweroff", "powered off"), "reset": ("reset", "reset by the guest")}
# Ports bhyve's kernel emulates itself (sys/amd64/vmm/vmm_ioport.c ioport_handler[]: the 8259 pair and its ELCR,
# the 8254, NMI status/control at 0x61, the RTC, the ACPI PM timer): their exits never reach userspace, so a
# watched --run goes on past them here too, though some are userspace devices in webhyve (the RTC).
BHYVE_KERNEL_PORTS = frozenset((0x20, 0x21, 0xA0, 0xA1, 0x4D0, 0x4D1, 0x40, 0x41, 0x42, 0x43, 0x61, 0x70, 0x71,
                                0x408, 0x409, 0x40A, 0x40B))
IOAPIC = 0xFEC00000                                    # the I/O APIC's page (the MP spec's and ACPI's default)
SLOT_SPAN = 0x8000                                     # the BAR space the firmware gives each PCI device (two BARs)
MSI_WINDOW = 0xFEE                                     # address bits 31:20 of an interrupt message (SDM §11.11.1)


class Platform:
    """Legend: the devices and the port bus are made at creation; a reset makes the VGA, the BIOS, the 8259
    pair, the 8254 (with port 0x61), the I/O APIC and the host timer afresh, and puts the UARTs (the consoles'
    listeners), the RTC (as its RESET pin does: the battery keeps its time and RAM), the 8042 and the PCI functions
    back to their power-on state. `reboot_on_reset`: whether a reset the guest asks for boots it again (otherwise
    the VM stops with reason "reset", as bhyve does)."""

    # -- devices on the port bus --------------------------------------------------------------------
    def _attach_devices(self):
        self.com1 = Uart16550(self.console, "com1")
        self.com2 = Uart16550(Console(), "com2")
        self.panic_watch = PanicWatch(self.guest_panic)    # Linux's panic, read from COM1 (vm/panic.py)
        self.console.on_output(self.panic_watch.feed)
        self.debugcon = DebugCon(self.debug_console)
        self.vga = VgaText(self.memory_access)
        self.bios = None
        self._input_listening = False
        self.io = PortBus()
        self.portmap = self.io.portmap                     # the exit hooks' view of it (ctx slot PORTS)
        for name, base, device in (("com1", COM1, self.com1), ("com2", COM2, self.com2)):
            self.io.attach(name, base, 8, device.read, device.write)
        self.io.attach("debugcon", DEBUGCON, 1, self.debugcon.read, self.debugcon.write)
        self.io.attach("vga crtc", CRTC_INDEX, 2, lambda offset: self.vga.port_read(CRTC_INDEX + offset),
                       lambda offset, value: self.vga.port_write(CRTC_INDEX + offset, value))
        self.io.attach_kernel("post", POST, 1, OWNER_POST)
        self._attach_chipset()
        self._attach_acpi()
        self.port_callback = HOST_CALLBACK(self._port_exit)
        self.intr_callback = HOST_CALLBACK(self._intr_request)
        self.mmio_callback = HOST_CALLBACK(self._mmio_exit)
        self.mmio_gpa = IOAPIC                             # the page each vCPU's MMIO window stands for (vmx/mmio.py)
        self.userspace_watch = {}                          # vCPU index -> ExitWatch: bhyvectl --run's one VM_RUN

    def _attach_chipset(self):
        """The RTC/CMOS (IRQ 8, the memory-size bytes as firmware fills them), the 8042 (IRQ 1 and 12, the reset
        line) and PCI configuration mechanism #1 with the host bridge at 00:00.0."""
        self.reboot_on_reset = False
        self.rtc = Mc146818(lambda level: self.isa_irq(RTC_IRQ, level))
        self.rtc.set_memory_size(*self._ram_below_above_4g())
        self.kbc = I8042(self.isa_irq, lambda: self.guest_reset("the 8042 keyboard controller (output port bit 0)"))
        self.pci = PciHost()
        self.pci.attach(0, 0, HostBridge())
        self.io.attach("rtc", RTC, 2, self._rtc_read, self._rtc_write)
        for name, base, offset in (("8042 data", KBC_DATA, KBC_DATA_OFFSET),
                                   ("8042 status/command", KBC_COMMAND, KBC_COMMAND_OFFSET)):
            self.io.attach(name, base, 1, lambda _, o=offset: self.kbc.read(o),
                           lambda _, value, o=offset: self.kbc.write(o, value))
        self.io.attach("pci config address", PCI_ADDRESS, 4, self.pci.address_read, self.pci.address_write,
                       widths=(1, 2, 4))
        self.io.attach("pci config data", PCI_DATA, 4, self.pci.data_read, self.pci.data_write, widths=(1, 2, 4))

    def _attach_slots(self, specs):
        """The PCI devices of bhyve's -s options (slots.py, parsed and checked already), each given SLOT_SPAN of
        the PCI window for its BARs, its INTx pin on the I/O APIC input the DSDT's _PRT names and its MSI-X messages
        to the local APICs. `pci_window` is what each vCPU's MMIO window covers (vmx/mmio.py): nothing without
        devices."""
        self.pci_devices, self.pci_window = [], (0, 0)
        self.slots = [spec.text for spec in specs]          # as given: a snapshot builds the same bus from them
        if not specs:
            return
        if len(specs) * SLOT_SPAN > ACPI.PCI_WINDOW_SIZE:
            raise ConfigError("VM %r: at most %d PCI devices" % (self.name, ACPI.PCI_WINDOW_SIZE // SLOT_SPAN))
        if self.mem_size > ACPI.PCI_WINDOW:
            raise ConfigError("VM %r: PCI devices need guest memory below the PCI window at %#x (%d MiB at most)"
                              % (self.name, ACPI.PCI_WINDOW, ACPI.PCI_WINDOW >> 20))
        ram = GuestRam(self)
        try:
            for n, spec in enumerate(specs):
                device = self._slot_device(spec, ram, ACPI.PCI_WINDOW + n * SLOT_SPAN)
                self.pci_devices.append(device)
                gsi = ACPI.pci_gsi(spec.slot, device.config[INTERRUPT_PIN])
                device.config[INTERRUPT_LINE] = gsi          # what firmware writes there: the I/O APIC input
                device.seal()
                device.msi = self._msi
                device.intx = lambda level, pin=gsi: self.ioapic.set_pin(pin, level)
                self.pci.attach(spec.slot, spec.function, device)
        except Exception:
            self._close_slots()
            raise
        self.pci_window = (ACPI.PCI_WINDOW, ACPI.PCI_WINDOW_SIZE // 4096)

    def _slot_device(self, spec, ram, bar_base):
        """The device model of one -s argument; a virtio-net port joins its switch (and the switch its sockets)."""
        if spec.emulation == "virtio-blk":
            return blk.VirtioBlk(ram, bar_base, *blk.parse_options(spec.options))
        options = net.parse_options(spec.options)
        device = net.VirtioNet(ram, bar_base, options["mac"] or net.genmac(spec.slot, spec.function, self.name),
                               "%s:%s" % (self.name, spec.name))
        net.attach(device, host_switch(self.hypervisor, options["switch"]), options)
        return device

    def _close_slots(self):
        for device in self.pci_devices:
            device.close()

    def _msi(self, address, data):
        """A PCI device's message write (MSI-X): to 0xFEExxxxx an interrupt message for the local APICs (SDM
        §11.11.1 and §11.11.2: destination ID in address bits 19:12, destination mode in bit 2; vector in data bits
        7:0, delivery mode in 10:8, trigger mode in 15), elsewhere a dword written to guest memory."""
        if address >> 20 == MSI_WINDOW:
            self.apic_bus.deliver(address >> 12 & 0xFF, not address & 4, data >> 8 & 7, data & 0xFF,
                                  bool(data & 0x8000))
        elif 0 <= address and address + 4 <= self.mem_size:
            self.memory_access.write(address, (data & 0xFFFFFFFF).to_bytes(4, "little"))

    def _ram_below_above_4g(self):
        below = sum(max(min(s.gpa + s.size, FOUR_GIB) - s.gpa, 0) for s in self.segments)
        return below, sum(s.size for s in self.segments) - below

    def _rtc_read(self, offset):
        deadline = self.rtc.deadline_ns()
        value = self.rtc.read(offset)
        if self.rtc.deadline_ns() != deadline:             # reading register C re-arms the next interrupt
            self.host_timer.rearm()
        return value

    def _rtc_write(self, offset, value):
        self.rtc.write(offset, value)
        self.host_timer.rearm()                            # an interrupt enabled or its rate changed

    def _power_on_devices(self):
        """A reset: the UARTs and the ACPI registers back to their power-on state, a blank VGA, no BIOS until the
        image loads; the RTC's RESET pin and the memory-size bytes firmware writes at every boot; the 8042 and PCI
        at power-on."""
        for device in (self.com1, self.com2, self.acpi_pm, self.reset_control):
            device.reset()                                 # the same objects: they stay on the port bus
        self.panic_watch.clear()
        self.vga = VgaText(self.memory_access)
        self.bios = None
        self.rtc.reset()
        self.rtc.set_memory_size(*self._ram_below_above_4g())
        self.kbc.reset()
        self.pci.reset()

    def _attach_acpi(self):
        """The ACPI fixed hardware and the reset register, at the ports the FADT names (bhyve's pm.c)."""
        self.acpi_pm = AcpiPm(lambda: self._guest_power("poweroff", "the guest entered S5 (soft-off) through PM1a_CNT"))
        self.reset_control = ResetControl(lambda: self._guest_power("reset", "the guest reset the platform "
                                                                               "through the reset register at 0xCF9"))
        pm = self.acpi_pm
        for name, base, length, read, write in (
                ("acpi pm1a_evt", ACPI.PM1A_EVT_BLK, ACPI.PM1_EVT_LEN, pm.event_read, pm.event_write),
                ("acpi pm1a_cnt", ACPI.PM1A_CNT_BLK, ACPI.PM1_CNT_LEN, pm.control_read, pm.control_write),
                ("acpi pm_tmr", ACPI.PM_TMR_BLK, ACPI.PM_TMR_LEN, pm.timer_read, pm.timer_write)):
            self.io.attach(name, base, length, read, write, widths=(1, 2, 4))
        # 0xCF9 lies inside CONFIG_ADDRESS (0xCF8-0xCFB): as on a PIIX, a byte access there is the reset control
        # register and only a doubleword at 0xCF8 is CONFIG_ADDRESS, so PCI hands it the other accesses
        self.pci.passthrough = self._reset_control_or_float

    def _reset_control_or_float(self, offset, size, is_in, value):
        if ACPI.RESET_REG_PORT == PCI_ADDRESS + offset and size == 1:
            return self.reset_control.read() if is_in else self.reset_control.write(0, value)
        return (1 << 8 * size) - 1 if is_in else 0

    def _install_acpi_tables(self):
        """acpi_build: the tables for these vCPUs' local APIC IDs, into the BIOS area (acpi_tables.py)."""
        base, tables = ACPI.build([vcpu.lapic.register(L.ID) >> 24 for vcpu in self.vcpus], bool(self.pci_devices))
        self.memory_access.write(base, tables)

    def _guest_power(self, action, why):
        """vm_suspend(VM_SUSPEND_POWEROFF or _RESET) from a device, on the vCPU thread that wrote the register:
        every vCPU stops running the guest at once (one that VM.start has yet to start ends when it starts), and
        the VM's own poweroff or reset runs on a thread of its own (both wait for the vCPU threads to end, this
        one included). The VM is suspended for `action` before this returns, as bhyve's VM is until it powers off or
        its wrapper restarts it, so nothing the vCPUs do meanwhile (a HLT with interrupts off) can replace the
        reason; a reset clears it when it boots the VM again."""
        self.log(why)
        with self.lock:
            if self.suspend_reason is None:
                self.suspend_reason, self.suspend_message = GUEST_POWER[action]
            self.changed.notify_all()
        for vcpu in self.vcpus:
            if vcpu.thread is None or not vcpu.thread.is_alive():
                vcpu.mailbox.put(("exit",))          # start() has yet to start it: it ends as soon as it starts
            else:
                vcpu.request(("pause",))
        threading.Thread(target=self._guest_lifecycle, args=(action, self.vcpus),
                         name="%s-%s" % (self.name, action), daemon=True).start()

    def _guest_lifecycle(self, action, asking):
        """The poweroff or reset the vCPUs `asking` asked for, once the lifecycle changes before it are done: if
        those vCPUs were stopped meanwhile (a power-off) or replaced (a reset), the guest that asked is gone and
        nothing is done. A lifecycle change that fails is logged."""
        with self._lifecycle:
            if self.vcpus is not asking or not any(v.thread is not None and v.thread.is_alive() for v in asking):
                self.log("the guest's %s was not done: the VM was %s first"
                         % (action, "reset" if self.vcpus is not asking else "powered off"))
                return
            try:
                getattr(self, "_" + action)()
            except EngineError as problem:
                self.log("the guest's %s failed: %s" % (action, problem))

    def _attach_bios(self, image):
        """A boot sector's BIOS (INT 10h/13h/16h/1Ah) over the VGA and the console; keys wake its waits."""
        self.bios = bios_mod.Bios(self.vga, self.console, image.disk, drive=image.regs.get("rdx", 0x80) & 0xFF)
        self.bios.install(self.memory_access)
        if not self._input_listening:
            self.console.on_input(self._input_arrived)
            self._input_listening = True

    def _port_exit(self, vcpu_id, how, value, _):
        """VM_EXITCODE_INOUT handled in userspace: one piece of an access, as the port bus cut it."""
        port, size, is_in = how & 0xFFFF, (how >> 16) & 0xFF, bool(how >> 24 & 1)
        if self.userspace_watch and port not in BHYVE_KERNEL_PORTS:
            self._watched_exit(vcpu_id, "inout")
        try:
            return self.io.dispatch(port, size, is_in, value)
        except Exception as problem:           # a device bug must not take the process down
            self._device_failed(vcpu_id, port, problem)
            return (1 << 8 * size) - 1 if is_in else 0

    def _watched_exit(self, vcpu_id, kind):
        """bhyvectl --run: the VM_RUN of a watched vCPU returns here, at its first exit to userspace. The exit and
        RAX as the exit saw them (vmx_exit_process copies guest RAX into vm_inout.eax before the device runs) are
        kept; the device still does the access, and the vCPU pauses at its next block boundary (core/kick.py)."""
        watch = self.userspace_watch.pop(vcpu_id, None)
        if watch is None:
            return
        vcpu = self.vcpus[vcpu_id]
        log = vcpu.read_exit_log()
        watch.seen(kind, log[-1] if log else None, vcpu.uc.reg_read(UC_X86_REG_RAX),
                   int(vcpu.vmcs["INSTRUCTION_ERROR"]))
        vcpu.request(("pause",))

    def _device_failed(self, vcpu_id, port, problem, where=None):
        vcpu = self.vcpus[vcpu_id]
        vcpu.ctx[C.EXIT] = C.X_USER_STOP
        kick.kick(vcpu.ctx)                     # from inside the port hook: leave at the next block boundary
        where = where or "%s at port %#x" % (self.io.device_at(port), port)
        self._set_suspended("error", "device %s failed: %r" % (where, problem))

    def _mmio_exit(self, vcpu_id, gpa, how, value):
        """An access to the I/O APIC's page or the PCI window (vmx/mmio.py): a load returns the bytes the device
        answers."""
        size, write = how & 0xFF, bool(how >> 8 & 1)
        if not IOAPIC <= gpa < IOAPIC + 0x1000:
            try:
                if write:
                    self.pci.mmio_write(gpa, value, size)
                    return 0
                return self.pci.mmio_read(gpa, size)
            except Exception as problem:       # a device bug must not take the process down
                self._device_failed(vcpu_id, None, problem, "PCI memory at %#x" % gpa)
                return 0
        try:
            if write:
                self.ioapic.mmio_write(gpa - IOAPIC, size, value)
                return 0
            return self.ioapic.mmio_read(gpa - IOAPIC, size) & (1 << 64) - 1
        except Exception as problem:           # a device bug must not take the process down
            self._device_failed(vcpu_id, None, problem, "I/O APIC at %#x" % gpa)
            return 0

    # -- interrupts ---------------------------------------------------------------------------------
    def _wire_interrupts(self):
        """The vCPUs' local APICs to each other, the host timer, the 8259 pair and the 8254 at power-on state."""
        self.vcpu_table = vlapic.connect(self.vcpus)
        buslock.attach(self.vcpus)
        self.host_timer = HostTimer(self)
        for uart in (self.com1, self.com2):
            uart.clear_irq_listeners()
        self._attach_interrupt_controllers()

    def _attach_interrupt_controllers(self):
        """The 8259 pair, the 8254 and its port 0x61 on the I/O bus, the I/O APIC at 0xFEC00000; ISA IRQs reach
        both interrupt controllers (isa_irq): the 8254 on IRQ 0 (I/O APIC pin 2), the UARTs on IRQ 4 (COM1) and
        IRQ 3 (COM2); the 8254 and the RTC on the host timer."""
        self.apic_bus = ApicBus(self, self._intr_request)
        self.ioapic = Vioapic(self.apic_bus.deliver, self.apic_bus.update_tmr)
        self.pic = Vpic(self._extint_changed)
        self.pit = Vpit(lambda: self.isa_pulse(0))
        self.nmisc = NmiStatusControl(self.pit)
        self.host_timer.devices += [self.pit, self.rtc]
        for name, chip, base in (("8259 master", 0, 0x20), ("8259 slave", 1, 0xA0)):
            self.io.attach(name, base, 2, lambda offset, c=chip: self.pic.port_read(c, offset),
                           lambda offset, value, c=chip: self.pic.port_write(c, offset, value))
        self.io.attach("8254", 0x40, 4, self.pit.read, self._pit_write)
        self.io.attach("port 0x61", PORT_B, 1, self.nmisc.read, self.nmisc.write)
        self.com1.on_irq_change(lambda level: self.isa_irq(4, level))
        self.com2.on_irq_change(lambda level: self.isa_irq(3, level))

    def _pit_write(self, offset, value):
        self.pit.write(offset, value)
        self.host_timer.rearm()

    def isa_irq(self, irq, level):
        """ISA IRQ `irq` (0-15) driven to `level` by a device: the 8259 pair's input and the I/O APIC pin it is
        wired to, IRQ 0 on pin 2 as the MADT's interrupt source override says, every other on the pin of its number
        (bhyve's vm_isa_assert_irq and vm_isa_deassert_irq, which drive the vatpic and the vioapic together). The
        RTC's IRQ 8, the 8042's 1 and 12 and the ACPI SCI's 9 come here."""
        self.pic.set_irq(irq, level)
        self.ioapic.set_pin(2 if irq == 0 else irq, level)

    def isa_pulse(self, irq):
        """An edge-triggered ISA source's pulse (the 8254's output): both controllers see a rising edge."""
        self.isa_irq(irq, True)
        self.isa_irq(irq, False)

    def guest_reset(self, source):
        """The CPU's RESET line pulled by a device (the 8042's output port; port 0xCF9 likewise): the VM stops with
        reason "reset", as bhyve's vm_suspend(VM_SUSPEND_RESET) stops bhyve, and with `reboot_on_reset` boots
        again through VM.reset, on a thread of its own (the caller may be the vCPU VM.reset waits for). A reset
        after a kernel panic (Linux's panic=N) says so."""
        message = "reset by %s" % source
        if self.panic_watch.seen:
            message += " after %s" % self.panic_watch.seen
        self._guest_stop("reset", message)
        if self.reboot_on_reset:
            threading.Thread(target=self._reboot, name="%s-reboot" % self.name, daemon=True).start()

    def guest_panic(self, text):
        """Linux panicked and will not reboot (vm/panic.py): the VM stops with reason "panic" and its line."""
        self._guest_stop("panic", text)

    def _guest_stop(self, reason, message):
        """Stop every vCPU with `reason`, from a device: the calling vCPU at its next block boundary."""
        vcpu = next((v for v in self.vcpus if v.thread is threading.current_thread()), None)
        if vcpu is not None:
            vcpu.ctx[C.EXIT] = C.X_USER_STOP
            kick.kick(vcpu.ctx)                            # from inside the port hook: leave at the block boundary
            vcpu.suspend(reason, message)
        else:
            self._set_suspended(reason, message)
            for other in self.vcpus:
                if other.thread is not None:
                    other.request(("pause",))

    def _reboot(self):
        try:
            self.reset(marker=False)                       # the guest's own reboot: its console as it wrote it
        except Exception as problem:                       # a VM powered off or destroyed meanwhile stays stopped
            self.log("reboot after a guest reset failed: %s" % problem)

    def _extint_changed(self, level):
        """The master 8259's INT output, wired to the bootstrap vCPU (bhyve's vatpic_notify_intr)."""
        bsp = self.vcpus[0]
        bsp.lapic.block[L.IB_EXTINT] = int(level)
        if not level:
            return
        self.ioapic.pulse_pin(0)                   # and to I/O APIC pin 0 (virtual wire through the I/O APIC)
        full_fence()
        if threading.current_thread() is bsp.thread:
            bsp.ctx[C.NOTIFY] = self.hypervisor.tunables.get("hw.vmm.ipinum")
            kick.kick(bsp.ctx)                     # leaves at the next block; no waiting on itself
        else:
            deliver.notify(bsp.ctx, False)

    def lapic_intr(self, vcpu, vector):
        """lapic_intr_edge: raise `vector` at a vCPU's local APIC from any thread (bhyve's vm_lapic_irq)."""
        if not 0 <= vcpu < len(self.vcpus) or not 16 <= vector <= 255:
            raise ConfigError("VM %r: no vcpu%s or vector %s outside 16-255" % (self.name, vcpu, vector))
        return deliver.intr_edge(self.vcpus[vcpu].ctx, vector)

    def _intr_request(self, vcpu_id, kind, vector, _):
        """The vLAPIC kernels' way to userspace: wake a halted vCPU, INIT/SIPI/NMI, a timer rearm."""
        target = self.vcpus[vcpu_id]
        if kind == L.CB_WAKE:
            target.mailbox.put(("wake",))
        elif kind == L.CB_TIMER:
            self.host_timer.rearm()
        elif kind == L.CB_EOI:
            self.ioapic.eoi(vector)                      # a level-triggered vector's EOI, broadcast
        else:
            message = {L.CB_INIT: ("init",), L.CB_SIPI: ("sipi", vector), L.CB_NMI: ("nmi",)}[kind]
            if target.thread is None:
                target.mailbox.put(message)
            else:
                target.request(message)                  # (its own ICR write exits anyway: the APIC write)
        return 0

    # -- input for a BIOS keyboard wait ---------------------------------------------------------------
    def wait_for_input(self, vcpu):
        if self.console.has_input():
            vcpu.state = RUNNING

    def _input_arrived(self):
        for vcpu in self.vcpus:
            if vcpu.state == HALTED and vcpu.thread is not None:
                vcpu.mailbox.put(("wake",))
