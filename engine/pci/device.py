"""A PCI device function with Base Address Registers, a capability list and MSI-X (PCI Local Bus Specification 3.0
§6.2.5 "Base Addresses", §6.7 "Capabilities List", §6.8.2 "MSI-X Capability and Table Structure"), modeled on
bhyve's pci_emul.c (pci_emul_alloc_bar, pci_emul_add_msixcap, pci_generate_msix) and QEMU's hw/pci/msix.c.

BARs: each is a power-of-two region of 32-bit memory space or I/O space. Software sizes a BAR by writing all ones
and reading back the address bits that stuck (the low bits below the size read 0, the type bits are read-only) and
places it by writing an address; the region answers only while the command register's memory (or I/O) space bit
is set. The platform's "firmware" places every BAR at power-on (bhyve's pci_emul_alloc_bar does the same at VM
creation), and a guest may move it. Memory regions are reached through the bus's `mmio_read` / `mmio_write`, which
the platform calls for the MMIO exits of the PCI window's pages (vmx/mmio.py); I/O BARs exist in the model (sizing
and placement) but no bundled device asks for one, and the port bus does not decode them yet.

MSI-X: the capability's Message Control (table size, function mask bit 14, enable bit 15), the table of 16-byte
entries (message address, upper address, data, vector control with its mask bit) and the Pending Bit Array, both in
a memory BAR. `msix_notify(n)` sends entry n's message, or, while the entry or the function is masked, sets its
pending bit; unmasking sends what is pending (§6.8.3.5). A message is a dword memory write: to 0xFEExxxxx it is an
interrupt message for the local APICs (Intel SDM vol. 3 §11.11, "Message Signalled Interrupts"), elsewhere a DMA
write to guest memory, which the platform performs (`msi` callback).

INTx: `set_intx(level)` drives the function's interrupt pin, gated by the command register's interrupt disable bit
and mirrored in the status register's interrupt status bit (§6.2.2, §6.2.3); the platform wires the pin to an I/O
APIC input (`intx` callback) and the DSDT's _PRT says which.
"""
from ..errors import ConfigError
from .config import (BAR0, CAPABILITIES, CMD_INTX_DISABLE, CMD_IO, CMD_MEMORY, COMMAND, STATUS, PciFunction)

BAR_IO, BAR_MEM32 = "io", "mem32"
STATUS_INTERRUPT, STATUS_CAP_LIST = 0x0008, 0x0010
CAP_MSIX, CAP_VENDOR = 0x11, 0x09
FIRST_CAP = 0x40
MSIX_ENABLE, MSIX_FUNCTION_MASK = 0x8000, 0x4000
MSIX_ENTRY = 16
MSIX_VECTOR_MASKED = 1
MSI_WINDOW = 0xFEE00000                   # interrupt messages: address bits 31:20 are 0xFEE (SDM §11.11.1)


class Region:
    """What a BAR decodes: `read(offset, size)` and `write(offset, value, size)` for offsets inside it."""

    def read(self, offset, size):
        return 0

    def write(self, offset, value, size):
        pass


class Bar:
    __slots__ = ("index", "kind", "size", "region", "initial")

    def __init__(self, index, kind, size, region, initial):
        self.index, self.kind, self.size, self.region, self.initial = index, kind, size, region, initial


class PciDevice(PciFunction):
    """A function with BARs, capabilities and MSI-X. `msi(address, data)` and `intx(level)` are set by the
    platform when it plugs the device in. Legend: BARs and capabilities are added at creation (before `seal`);
    the configuration space and the MSI-X table change on the vCPU threads under the bus's lock."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bars = {}
        self.cap_end = FIRST_CAP
        self.last_cap = None
        self.msix_cap = None
        self.msix_table = bytearray()
        self.msix_pba = bytearray()
        self.msi = lambda address, data: None
        self.intx = lambda level: None
        self.intx_level = False

    # -- building ----------------------------------------------------------------------------------------------
    def add_bar(self, index, kind, size, region, address=0):
        """BAR `index` (0-5): `size` a power of two (memory at least 16 bytes, I/O at least 4), placed at `address`."""
        minimum = 4 if kind == BAR_IO else 16
        if not 0 <= index <= 5 or index in self.bars or size < minimum or size & (size - 1):
            raise ValueError("BAR %d: %s of %#x bytes" % (index, kind, size))
        self.bars[index] = Bar(index, kind, size, region, address)
        at = BAR0 + 4 * index
        low_bits = 0x1 if kind == BAR_IO else 0x0               # I/O space indicator; memory: 32-bit, not prefetchable
        self._set(at, address & ~(size - 1) | low_bits, 4)
        self._set(at, ~(size - 1) & (0xFFFFFFFC if kind == BAR_IO else 0xFFFFFFF0), 4, self.wmask)

    def add_capability(self, cap_id, body):
        """Append a capability (its ID, then `body` after the next pointer) to the list; returns its offset."""
        at = self.cap_end
        length = 2 + len(body)
        if at + length > 0x100:
            raise ValueError("no room for capability %#x" % cap_id)
        self.config[at] = cap_id
        self.config[at + 1] = 0
        self.config[at + 2:at + length] = body
        if self.last_cap is None:
            self.config[CAPABILITIES] = at
        else:
            self.config[self.last_cap + 1] = at
        self._set(STATUS, int.from_bytes(self.config[STATUS:STATUS + 2], "little") | STATUS_CAP_LIST, 2)
        self.last_cap = at
        self.cap_end = (at + length + 3) & ~3
        return at

    def add_msix(self, vectors, bar, table_offset, pba_offset):
        """The MSI-X capability with `vectors` entries; table and PBA at those offsets of memory BAR `bar`, which
        the caller adds with `msix_region()` covering both."""
        control = vectors - 1
        body = control.to_bytes(2, "little") + (table_offset | bar).to_bytes(4, "little") + \
            (pba_offset | bar).to_bytes(4, "little")
        self.msix_cap = self.add_capability(CAP_MSIX, body)
        self.wmask[self.msix_cap + 3] = (MSIX_ENABLE | MSIX_FUNCTION_MASK) >> 8
        self.msix_vectors, self.msix_table_offset, self.msix_pba_offset = vectors, table_offset, pba_offset
        self.msix_table = bytearray(MSIX_ENTRY * vectors)
        self._msix_power_on()
        self.msix_pba = bytearray((vectors + 63) // 64 * 8)

    def _msix_power_on(self):
        for n in range(len(self.msix_table) // MSIX_ENTRY):     # every entry masked at reset (§6.8.2.9)
            self.msix_table[n * MSIX_ENTRY:(n + 1) * MSIX_ENTRY] = bytes(12) + MSIX_VECTOR_MASKED.to_bytes(4, "little")

    def seal(self):
        """The power-on image: call once every BAR and capability is in place."""
        self._power_on = bytes(self.config)

    def reset(self):
        super().reset()
        if self.msix_cap is not None:
            self._msix_power_on()
            self.msix_pba[:] = bytes(len(self.msix_pba))
        self.intx_level = False
        self.intx(False)

    # -- BARs --------------------------------------------------------------------------------------------------
    def bar_address(self, index):
        bar = self.bars[index]
        raw = int.from_bytes(self.config[BAR0 + 4 * index:BAR0 + 4 * index + 4], "little")
        return raw & ~(bar.size - 1) & (0xFFFFFFFC if bar.kind == BAR_IO else 0xFFFFFFF0)

    def decoding(self, kind):
        command = self.cfg_read(COMMAND, 2)
        return bool(command & (CMD_IO if kind == BAR_IO else CMD_MEMORY))

    def bar_at(self, kind, address, size):
        """(bar, offset) of the enabled BAR of `kind` holding address..address+size-1, else (None, 0)."""
        if not self.decoding(kind):
            return None, 0
        for bar in self.bars.values():
            if bar.kind != kind:
                continue
            base = self.bar_address(bar.index)
            if base != 0 and base <= address and address + size <= base + bar.size:
                return bar, address - base
        return None, 0

    # -- configuration writes with side effects ------------------------------------------------------------------
    def cfg_write(self, offset, value, size):
        before = self.msix_state() if self.msix_cap is not None else None
        super().cfg_write(offset, value, size)
        if before is not None and self.msix_state() != before:
            self._msix_flush()
        if offset <= COMMAND + 1 < offset + size or offset <= COMMAND < offset + size:
            self._drive_intx()

    # -- MSI-X -------------------------------------------------------------------------------------------------
    def msix_state(self):
        """(enabled, function masked) from Message Control."""
        control = self.cfg_read(self.msix_cap + 2, 2)
        return bool(control & MSIX_ENABLE), bool(control & MSIX_FUNCTION_MASK)

    def msix_enabled(self):
        return self.msix_cap is not None and self.msix_state()[0]

    def _entry(self, n):
        raw = self.msix_table[n * MSIX_ENTRY:(n + 1) * MSIX_ENTRY]
        address = int.from_bytes(raw[0:8], "little")
        return address, int.from_bytes(raw[8:12], "little"), int.from_bytes(raw[12:16], "little")

    def msix_notify(self, n):
        """Signal MSI-X vector `n`: its message, or its pending bit while masked. Vectors beyond the table are
        nothing (virtio's VIRTIO_MSI_NO_VECTOR included)."""
        if self.msix_cap is None or not 0 <= n < self.msix_vectors:
            return False
        enabled, function_masked = self.msix_state()
        if not enabled:
            return False
        address, data, control = self._entry(n)
        if function_masked or control & MSIX_VECTOR_MASKED:
            self.msix_pba[n // 8] |= 1 << n % 8
            return False
        self.msi(address, data)
        return True

    def _msix_flush(self):
        """Send what is pending for entries no longer masked (§6.8.3.5)."""
        enabled, function_masked = self.msix_state()
        if not enabled or function_masked:
            return
        for n in range(self.msix_vectors):
            if self.msix_pba[n // 8] >> n % 8 & 1 and not self._entry(n)[2] & MSIX_VECTOR_MASKED:
                self.msix_pba[n // 8] &= ~(1 << n % 8)
                self.msi(*self._entry(n)[:2])

    def msix_table_read(self, offset, size):
        if offset + size <= len(self.msix_table):
            return int.from_bytes(self.msix_table[offset:offset + size], "little")
        return 0

    def msix_table_write(self, offset, value, size):
        """Dword or qword writes of an entry's fields (§6.8.2: software uses aligned dword or qword accesses); the
        vector control's reserved bits 31:1 stay 0."""
        if offset + size > len(self.msix_table) or size not in (4, 8) or offset & (size - 1):
            return
        self.msix_table[offset:offset + size] = value.to_bytes(size, "little")
        n = offset // MSIX_ENTRY
        control_at = n * MSIX_ENTRY + 12
        if offset <= control_at < offset + size:
            self.msix_table[control_at:control_at + 4] = (self._entry(n)[2] & MSIX_VECTOR_MASKED).to_bytes(4, "little")
            self._msix_flush()

    def msix_pba_read(self, offset, size):
        if offset + size <= len(self.msix_pba):
            return int.from_bytes(self.msix_pba[offset:offset + size], "little")
        return 0

    # -- INTx --------------------------------------------------------------------------------------------------
    def set_intx(self, level):
        self.intx_level = bool(level)
        self._drive_intx()

    def _drive_intx(self):
        status = self.cfg_read(STATUS, 2)
        self._set(STATUS, status | STATUS_INTERRUPT if self.intx_level else status & ~STATUS_INTERRUPT, 2)
        self.intx(self.intx_level and not self.cfg_read(COMMAND, 2) & CMD_INTX_DISABLE)

    # -- what a panel shows -------------------------------------------------------------------------------------
    def describe(self):
        """The header, each BAR as the guest programmed it (address, size, kind, decoded now: the command
        register's space bit on and an address placed), the MSI-X table entry by entry with its pending bit, and
        the INTx level. Read under the bus's lock by the caller, so one moment's."""
        out = super().describe()
        out["bars"] = [{"index": bar.index, "kind": bar.kind, "size": bar.size, "address": self.bar_address(bar.index),
                        "enabled": self.decoding(bar.kind) and self.bar_address(bar.index) != 0}
                       for bar in sorted(self.bars.values(), key=lambda b: b.index)]
        out["intx"] = self.intx_level
        if self.msix_cap is not None:
            enabled, function_masked = self.msix_state()
            entries = []
            for n in range(self.msix_vectors):
                address, data, control = self._entry(n)
                entries.append({"index": n, "address": address, "data": data,
                                "masked": bool(control & MSIX_VECTOR_MASKED),
                                "pending": bool(self.msix_pba[n // 8] >> n % 8 & 1)})
            out["msix"] = {"enabled": enabled, "function_masked": function_masked, "vectors": entries}
        return out

    # -- snapshots ---------------------------------------------------------------------------------------------
    def device_state(self):
        """What the device keeps outside its configuration space (PciHost.state saves that): the MSI-X table and
        PBA, and the level it drives its INTx pin at."""
        return {"msix_table": list(self.msix_table), "msix_pba": list(self.msix_pba), "intx": self.intx_level}

    def check_device_state(self, saved):
        """ConfigError unless `saved` is what this device could have written: a table and PBA of its sizes, vector
        control bits 31:1 zero (msix_table_write keeps them so), pending bits for its vectors only."""
        if len(saved["msix_table"]) != len(self.msix_table) or len(saved["msix_pba"]) != len(self.msix_pba):
            raise ConfigError("msix_table/msix_pba are %d/%d bytes; this device's are %d/%d"
                              % (len(saved["msix_table"]), len(saved["msix_pba"]), len(self.msix_table),
                                 len(self.msix_pba)))
        for n in range(len(self.msix_table) // MSIX_ENTRY):
            control = int.from_bytes(bytes(saved["msix_table"][n * MSIX_ENTRY + 12:(n + 1) * MSIX_ENTRY]), "little")
            if control & ~MSIX_VECTOR_MASKED:
                raise ConfigError("msix_table entry %d has vector control %#x: bits 31:1 are reserved" % (n, control))
        pending = int.from_bytes(bytes(saved["msix_pba"]), "little")
        if pending >> getattr(self, "msix_vectors", 0):
            raise ConfigError("msix_pba has pending bits beyond the device's %d vectors"
                              % getattr(self, "msix_vectors", 0))

    def load_device_state(self, saved):
        """After the configuration space (PciHost.load_state): the table and PBA as saved (nothing is sent: what
        was pending stays pending) and the INTx pin driven again."""
        self.msix_table[:] = bytes(saved["msix_table"])
        self.msix_pba[:] = bytes(saved["msix_pba"])
        self.set_intx(saved["intx"])


class MsixRegion(Region):
    """A memory BAR holding the MSI-X table and the PBA (and nothing else)."""

    def __init__(self, device):
        self.device = device

    def read(self, offset, size):
        d = self.device
        if d.msix_table_offset <= offset < d.msix_table_offset + len(d.msix_table):
            return d.msix_table_read(offset - d.msix_table_offset, size)
        if d.msix_pba_offset <= offset < d.msix_pba_offset + len(d.msix_pba):
            return d.msix_pba_read(offset - d.msix_pba_offset, size)
        return 0

    def write(self, offset, value, size):
        d = self.device
        if d.msix_table_offset <= offset < d.msix_table_offset + len(d.msix_table):
            d.msix_table_write(offset - d.msix_table_offset, value, size)
        # the PBA is read-only (§6.8.2.10)
