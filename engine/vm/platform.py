"""A VM's platform as bhyve wires it: the userspace devices on the port bus (the UARTs, port 0xE9, the VGA
CRTC, the POST latch), the BIOS of a boot sector, the 8259 pair and the 8254, and the interrupt paths from
devices and the vLAPIC kernels into the vCPUs.

The devices know only their registers; this is where they are placed (Firecracker's builder). The ACPI tables
(acpi_tables.py) describe this platform: the ACPI fixed hardware and the reset register sit where they say.
Platform is mixed into VM (machine.py).
"""
import threading

from ..core import ctx as C
from ..core import kick
from ..core.sync import full_fence
from ..devices import bios as bios_mod
from ..devices.acpi_pm import AcpiPm, ResetControl
from ..devices.console import Console
from ..devices.debugcon import DebugCon
from ..devices.uart_ns16550 import Uart16550
from ..devices.vga_text import CRTC_INDEX, VgaText
from ..errors import ConfigError, EngineError
from ..io import vlapic
from ..io.hosttimer import HostTimer
from ..io.portbus import OWNER_POST, PortBus
from ..io.vpic import Vpic
from ..io.vpit import Vpit
from ..loaders import acpi_tables as ACPI
from ..native import HOST_CALLBACK
from ..vcpu import HALTED, RUNNING

COM1, COM2, DEBUGCON, POST = 0x3F8, 0x2F8, 0xE9, 0x80
GUEST_POWER = {"poweroff": ("poweroff", "powered off"), "reset": ("reset", "reset by the guest")}


class Platform:
    """Legend: the devices and the port bus are made at creation; a reset makes the VGA, the BIOS, the 8259
    pair, the 8254 and the host timer afresh and keeps the UARTs (the consoles' listeners)."""

    # -- devices on the port bus --------------------------------------------------------------------
    def _attach_devices(self):
        self.com1 = Uart16550(self.console, "com1")
        self.com2 = Uart16550(Console(), "com2")
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
        self._attach_acpi()
        self.port_callback = HOST_CALLBACK(self._port_exit)
        self.intr_callback = HOST_CALLBACK(self._intr_request)

    def _power_on_devices(self):
        """A reset: the UARTs and the ACPI registers back to their power-on state, a blank VGA, no BIOS until the
        image loads."""
        for device in (self.com1, self.com2, self.acpi_pm, self.reset_control):
            device.reset()                                 # the same objects: they stay on the port bus
        self.vga = VgaText(self.memory_access)
        self.bios = None

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
        self.io.attach("reset control", ACPI.RESET_REG_PORT, 1, self.reset_control.read, self.reset_control.write)

    def _install_acpi_tables(self):
        """acpi_build: the tables for these vCPUs' local APIC IDs, into the BIOS area (acpi_tables.py)."""
        base, tables = ACPI.build([vcpu.lapic.register(vlapic.ID) >> 24 for vcpu in self.vcpus])
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

    # -- interrupts ---------------------------------------------------------------------------------
    def _wire_interrupts(self):
        """The vCPUs' local APICs to each other, the host timer, the 8259 pair and the 8254 at power-on state."""
        self.vcpu_table = vlapic.connect(self.vcpus)
        self.host_timer = HostTimer(self)
        for uart in (self.com1, self.com2):
            uart.clear_irq_listeners()
        self._attach_interrupt_controllers()

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

    # -- input for a BIOS keyboard wait ---------------------------------------------------------------
    def wait_for_input(self, vcpu):
        if self.console.has_input():
            vcpu.state = RUNNING

    def _input_arrived(self):
        for vcpu in self.vcpus:
            if vcpu.state == HALTED and vcpu.thread is not None:
                vcpu.mailbox.put(("wake",))
