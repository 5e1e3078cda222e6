"""PCI configuration mechanism #1 and bus 0 behind it: CONFIG_ADDRESS at 0xCF8 and CONFIG_DATA at 0xCFC-0xCFF
(PCI Local Bus Specification 3.0, §3.2.2.3.2), modeled on bhyve's pci_emul.c (pci_emul_cfgaddr, pci_emul_cfgdata).

CONFIG_ADDRESS is a 32-bit register that only a dword access at 0xCF8 reaches: bit 31 enables configuration
cycles, bits 23-16 select the bus, 15-11 the device, 10-8 the function, 7-2 the dword; bits 30-24 and 1-0 are
reserved and read 0. "Byte or word accesses to CONFIG_ADDRESS pass through as normal I/O": here they go to
`passthrough` (what else the chipset decodes there, such as the PIIX's reset control register at 0xCF9), or,
with nothing there, read all ones. An access to CONFIG_DATA with the enable bit set is a configuration cycle
whose byte enables are the port offset and width: 1, 2 or 4 bytes of the addressed dword. Bus 0 is the only
bus (no PCI-to-PCI bridges): a cycle for another bus, or for a device and function nobody answers, ends in a
master abort and reads all ones (§6.1: a read of a function that does not exist returns 0xFFFF as vendor ID).
Devices plug in with `attach(device, function, PciFunction)`. The two registers know their ports by offset.
"""
import threading

from ..errors import ConfigError

ENABLE = 0x80000000
ADDRESS_BITS = ENABLE | 0x00FFFFFC                 # bits 30-24 and 1-0 are reserved: read 0
DEVICES, FUNCTIONS = 32, 8


def ones(size):
    return (1 << 8 * size) - 1


def bdf(device, function, bus=0):
    """The usual name of a function's place: 00:1f.3."""
    return "%02x:%02x.%d" % (bus, device, function)


class PciHost:
    """The host bridge's configuration mechanism and bus 0. Legend: `functions` is filled by the platform
    before the vCPUs run; `address` and the functions' spaces change under `lock`, from vCPU threads."""

    def __init__(self, passthrough=None):
        self.functions = {}                         # (device, function) -> PciFunction
        self.address = 0
        self.lock = threading.RLock()               # a device's handler may read its own space
        self.passthrough = passthrough              # (offset, size, is_in, value) for 0xCF8-0xCFB below a dword

    def attach(self, device, function, config):
        if not (0 <= device < DEVICES and 0 <= function < FUNCTIONS):
            raise ConfigError("PCI %d:%d: device 0-31 and function 0-7 only" % (device, function))
        if (device, function) in self.functions:
            raise ConfigError("PCI %s is already taken" % bdf(device, function))
        self.functions[device, function] = config

    def reset(self):
        with self.lock:
            self.address = 0
            for config in self.functions.values():
                config.reset()

    # -- CONFIG_ADDRESS: 0xCF8-0xCFB ------------------------------------------------------------------------------
    def address_read(self, offset, size=1):
        if offset == 0 and size == 4:
            with self.lock:
                return self.address
        return self._pass(offset, size, True, 0)

    def address_write(self, offset, value, size=1):
        if offset == 0 and size == 4:
            with self.lock:
                self.address = value & ADDRESS_BITS
            return
        self._pass(offset, size, False, value)

    def _pass(self, offset, size, is_in, value):
        if self.passthrough is None:
            return ones(size) if is_in else 0
        return self.passthrough(offset, size, is_in, value)

    # -- CONFIG_DATA: 0xCFC-0xCFF --------------------------------------------------------------------------------
    def data_read(self, offset, size=1):
        with self.lock:
            config, register = self._target(offset, size)
            return ones(size) if config is None else config.cfg_read(register, size)

    def data_write(self, offset, value, size=1):
        with self.lock:
            config, register = self._target(offset, size)
            if config is not None:
                config.cfg_write(register, value & ones(size), size)

    def _target(self, offset, size):
        """The function and byte offset a CONFIG_DATA access reaches, or (None, _) for no configuration cycle
        (enable bit clear) or a master abort. The port bus never hands a piece that leaves 0xCFC-0xCFF."""
        address = self.address
        if not address & ENABLE or not (0 <= offset and offset + size <= 4):
            return None, 0
        bus, device, function = address >> 16 & 0xFF, address >> 11 & 0x1F, address >> 8 & 7
        if bus != 0:
            return None, 0
        return self.functions.get((device, function)), (address & 0xFC) + offset

    # -- memory BARs: the MMIO exits of the PCI window (engine/pci/device.py) ----------------------------------------
    def _region(self, address, size):
        for config in self.functions.values():
            bar_at = getattr(config, "bar_at", None)
            if bar_at is not None:
                bar, offset = bar_at("mem32", address, size)
                if bar is not None:
                    return bar.region, offset
        return None, 0

    def mmio_read(self, address, size):
        """A load from guest-physical `address`: the enabled memory BAR holding it answers; nobody's reads all ones
        (a master abort)."""
        with self.lock:
            region, offset = self._region(address, size)
            return ones(size) if region is None else region.read(offset, size) & ones(size)

    def mmio_write(self, address, value, size):
        with self.lock:
            region, offset = self._region(address, size)
            if region is not None:
                region.write(offset, value & ones(size), size)

    # -- snapshots ------------------------------------------------------------------------------------------------
    def state(self):
        with self.lock:
            return {"address": self.address,
                    "functions": {bdf(d, f): config.state() for (d, f), config in sorted(self.functions.items())}}

    def load_state(self, state):
        """The saved configuration spaces, for the functions this bus has (a file naming another is refused)."""
        names = {bdf(d, f): config for (d, f), config in self.functions.items()}
        unknown = sorted(set(state["functions"]) - set(names))
        if unknown:
            raise ConfigError("the snapshot has PCI function %s, which this VM's bus does not" % unknown[0])
        with self.lock:
            self.address = state["address"] & ADDRESS_BITS
            for name, saved in state["functions"].items():
                names[name].load_state(saved)
