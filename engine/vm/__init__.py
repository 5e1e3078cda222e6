"""A virtual machine: machine.py (the VM and its lifecycle), memory.py (guest memory and the host's EPT
operations), platform.py (the devices, the port bus and the interrupt paths)."""
from .machine import VM
from .memory import GuestMemory, MemorySegment

__all__ = ["VM", "GuestMemory", "MemorySegment"]
