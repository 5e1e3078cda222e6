"""virtio 1.x devices: split virtqueues (vring.py), the modern PCI transport (pci.py), virtio-blk (blk.py)."""
