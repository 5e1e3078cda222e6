"""The local APIC (xAPIC) of one vCPU, modeled on bhyve's io/vlapic.c, its page virtualized the VT-x way.

Layered, each module importing only those above it:
  regs.py     the page's registers and fields (SDM Table 10-1), the interrupt block, IRR/ISR/PPR arithmetic
  apicv.py    virtual-interrupt delivery: RVI, SVI, EOI virtualization, the EOI-exit bitmap, posted interrupts
  deliver.py  a vector's way through the APIC: into the IRR, notify the vCPU, accept, EOI; LVTs and ExtINT
  timer.py    the APIC timer: one-shot, periodic, TSC-deadline
  ipi.py      IPIs: an ICR write's destinations and their delivery
  access.py   the page's memory hooks (APIC-register virtualization): a guest access acts on the registers
  vlapic.py   the userspace side: class Vlapic (pages, interrupt block, reset, readers) and connect
"""
