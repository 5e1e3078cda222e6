"""A VM's platform as bhyve wires it: the userspace devices on the port bus (the UARTs, port 0xE9, the VGA
CRTC, the POST latch), the BIOS of a boot sector, the 8259 pair, the 8254 and the I/O APIC, and the interrupt
paths from devices and the vLAPIC kernels into the vCPUs.

The devices know only their registers; this is where they are placed (Firecracker's builder). Platform is
mixed into VM (machine.py).
"""
import threading

from ..core import ctx as C
from ..core import kick
from ..core.sync import full_fence
from ..devices import bios as bios_mod
from ..devices.console import Console
from ..devices.debugcon import DebugCon
from ..devices.uart_ns16550 import Uart16550
from ..devices.vga_text import CRTC_INDEX, VgaText
from ..errors import ConfigError
from ..io import vlapic
from ..io.apicbus import ApicBus
from ..io.hosttimer import HostTimer
from ..io.portbus import OWNER_POST, PortBus
from ..io.vioapic import Vioapic
from ..io.vpic import Vpic
from ..io.vpit import Vpit
from ..native import HOST_CALLBACK
from ..vcpu import HALTED, RUNNING

COM1, COM2, DEBUGCON, POST = 0x3F8, 0x2F8, 0xE9, 0x80
IOAPIC = 0xFEC00000                                  # the I/O APIC's page (the MP spec's and ACPI's default)


class Platform:
    """Legend: the devices and the port bus are made at creation; a reset makes the VGA, the BIOS, the 8259
    pair, the 8254, the I/O APIC and the host timer afresh and keeps the UARTs (the consoles' listeners)."""

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
        self.port_callback = HOST_CALLBACK(self._port_exit)
        self.intr_callback = HOST_CALLBACK(self._intr_request)
        self.mmio_callback = HOST_CALLBACK(self._mmio_exit)
        self.mmio_gpa = IOAPIC                             # the page each vCPU's MMIO window stands for (vmx/mmio.py)

    def _power_on_devices(self):
        """A reset: the UARTs back to their power-on registers, a blank VGA, no BIOS until the image loads."""
        for uart in (self.com1, self.com2):
            uart.reset()                                   # the same objects: they stay the consoles' listeners
        self.vga = VgaText(self.memory_access)
        self.bios = None

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

    def _device_failed(self, vcpu_id, port, problem, where=None):
        vcpu = self.vcpus[vcpu_id]
        vcpu.ctx[C.EXIT] = C.X_USER_STOP
        kick.kick(vcpu.ctx)                     # from inside the port hook: leave at the next block boundary
        where = where or "%s at port %#x" % (self.io.device_at(port), port)
        self._set_suspended("error", "device %s failed: %r" % (where, problem))

    def _mmio_exit(self, vcpu_id, gpa, how, value):
        """An access to the I/O APIC's page (vmx/mmio.py): a load returns the bytes the device answers."""
        size, write = how & 0xFF, bool(how >> 8 & 1)
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
        self.host_timer = HostTimer(self)
        for uart in (self.com1, self.com2):
            uart.clear_irq_listeners()
        self._attach_interrupt_controllers()

    def _attach_interrupt_controllers(self):
        """The 8259 pair and the 8254 on the I/O bus, the I/O APIC at 0xFEC00000; ISA IRQs reach both interrupt
        controllers (isa_irq): the 8254 on IRQ 0 (I/O APIC pin 2), the UARTs on IRQ 4 (COM1) and IRQ 3 (COM2)."""
        self.apic_bus = ApicBus(self, self._intr_request)
        self.ioapic = Vioapic(self.apic_bus.deliver)
        self.pic = Vpic(self._extint_changed)
        self.pit = Vpit(lambda: self.isa_pulse(0))
        self.host_timer.devices.append(self.pit)
        for name, chip, base in (("8259 master", 0, 0x20), ("8259 slave", 1, 0xA0)):
            self.io.attach(name, base, 2, lambda offset, c=chip: self.pic.port_read(c, offset),
                           lambda offset, value, c=chip: self.pic.port_write(c, offset, value))
        self.io.attach("8254", 0x40, 4, self.pit.read, self._pit_write)
        self.com1.on_irq_change(lambda level: self.isa_irq(4, level))
        self.com2.on_irq_change(lambda level: self.isa_irq(3, level))

    def isa_irq(self, irq, level):
        """An ISA device drives IRQ `irq` (0-15) to `level`: the 8259 input and the I/O APIC pin it is wired to,
        IRQ 0 on pin 2 as the MADT's interrupt source override says, every other on the pin of its number
        (bhyve's vm_isa_assert_irq / vm_isa_deassert_irq). The RTC's IRQ 8 and the ACPI SCI's IRQ 9 come here."""
        self.pic.set_irq(irq, level)
        self.ioapic.set_pin(2 if irq == 0 else irq, level)

    def isa_pulse(self, irq):
        """An edge-triggered ISA source's pulse (the 8254's output): both controllers see a rising edge."""
        self.isa_irq(irq, True)
        self.isa_irq(irq, False)

    def _pit_write(self, offset, value):
        self.pit.write(offset, value)
        self.host_timer.rearm()

    def _extint_changed(self, level):
        """The master 8259's INT output, wired to the bootstrap vCPU (bhyve's vatpic_notify_intr)."""
        bsp = self.vcpus[0]
        bsp.lapic.block[vlapic.IB_EXTINT] = int(level)
        if not level:
            return
        self.ioapic.pulse_pin(0)                   # and to I/O APIC pin 0 (virtual wire through the I/O APIC)
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
        elif kind == vlapic.CB_EOI:
            self.ioapic.eoi(vector)                      # a level-triggered vector's EOI, broadcast
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
