"""PCI: configuration spaces (config.py), configuration mechanism #1 and bus 0 (host.py), the host bridge at
00:00.0 (hostbridge.py). The devices of later issues plug into the bus as PciFunction subclasses."""
