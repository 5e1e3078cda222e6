"""The host bridge at 00:00.0, as bhyve's pci_hostbridge.c presents it: vendor and device 0x1275 (NetApp),
class 06/00/00 (bridge, host), header type 0, no BARs, no interrupt.

bhyve also gives its host bridge a PCI Express capability; this bus is conventional PCI behind configuration
mechanism #1, with no extended configuration space for the capability's registers to live in, so the bridge
has none (status bit 4 clear, capabilities pointer 0). bhyve's `amd_hostbridge` variant (0x1022:0x7432) differs
only in its IDs.
"""
from .config import PciFunction

VENDOR_NETAPP, DEVICE_HOSTBRIDGE = 0x1275, 0x1275
CLASS_BRIDGE, SUBCLASS_HOST = 0x06, 0x00


class HostBridge(PciFunction):
    def __init__(self, vendor=VENDOR_NETAPP, device=DEVICE_HOSTBRIDGE):
        super().__init__(vendor, device, CLASS_BRIDGE, SUBCLASS_HOST)

    def describe(self):
        return {**super().describe(), "backend": {"emulation": "hostbridge"}}
