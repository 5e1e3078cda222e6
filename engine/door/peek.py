"""Guest memory as front ends look at it: reads at guest-linear addresses through the registers of one visit,
and the next instructions decoded by the door's own capstone decoders.

A walk here is mmu/explain.py's: it reads the guest's and the EPT's paging structures word by word (each
entry is one aligned 64-bit word, so every entry read is whole) and never changes memory: no A/D bits, no
page backed on first touch, no use of the vCPU's scratch buffer or decoders. A page that is not mapped ends
the read there.
"""
import threading

import capstone
import numpy as np

from ..mmu import explain
from ..mmu import walk as W

CODE_BYTES = 64
_BITS = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}
_decoders = threading.local()                   # capstone handles are not to be shared between threads


def paging(regs):
    """(CR0, CR3, CR4, EFER, CPL) from a visit's registers."""
    cpl = regs["cs"] & 3 if regs["cr0"] & W.CR0_PE else 0
    return regs["cr0"], regs["cr3"], regs["cr4"], regs["efer"], cpl


def code_bits(regs):
    """16, 32 or 64: the mode the next instruction decodes in (EFER.LMA and CR0.PE; CS.D/L are not modeled)."""
    if regs["efer"] & W.EFER_LMA:
        return 64
    return 32 if regs["cr0"] & W.CR0_PE else 16


def pc(regs):
    """The linear address of the next instruction: RIP, or CS << 4 + IP in real mode."""
    return regs["rip"] if regs["cr0"] & W.CR0_PE else (regs["cs"] << 4) + (regs["rip"] & 0xFFFF)


def translate(vm, regs, linear, access=W.ACCESS_READ):
    """mmu/explain.py's walk of `linear` under the visit's paging registers."""
    return explain.translate(vm.hypervisor.memory.view(np.uint64), vm.pmap.st, *paging(regs), linear, access)


def read_linear(vm, regs, linear, size):
    """Up to `size` bytes at guest-linear `linear`, stopping at the first page that is not mapped."""
    memory, out = vm.hypervisor.memory, []
    while size > 0:
        n = min(size, 0x1000 - (linear & 0xFFF))
        hpa = translate(vm, regs, linear)["hpa"]
        if hpa is None:
            break
        out.append(memory[hpa:hpa + n].tobytes())
        linear, size = linear + n, size - n
    return b"".join(out)


def next_instructions(vm, regs, count):
    """{bits, instructions: [{address, bytes, text}]} of the next `count` instructions at CS:RIP."""
    address, bits = pc(regs), code_bits(regs)
    code = read_linear(vm, regs, address, CODE_BYTES)
    if not code:
        return {"bits": bits, "instructions": [{"address": address, "bytes": "",
                                                "text": "(no code mapped at this address)"}]}
    return {"bits": bits, "instructions": [
        {"address": insn.address, "bytes": insn.bytes.hex(), "text": ("%s %s" % (insn.mnemonic, insn.op_str)).strip()}
        for insn in _decoder(bits).disasm(code, address, count)]}


def _decoder(bits):
    """A capstone decoder per mode and thread."""
    made = _decoders.__dict__
    if bits not in made:
        made[bits] = capstone.Cs(capstone.CS_ARCH_X86, _BITS[bits])
    return made[bits]
