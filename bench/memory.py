"""What one guest load or store costs under webhyve, against bare Unicorn with and without a memory hook, and
what one access to the local APIC's page costs under webhyve.

Unicorn 2.1.4 compiles every guest load and store to its slow path (load_helper/store_helper, which look the
address up in the memory map for each access) as soon as any UC_HOOK_MEM_READ or UC_HOOK_MEM_WRITE hook
exists, whatever range the hook covers (tcg/i386/tcg-target.inc.c, `tcg_uc_has_hookmem`). webhyve's vCPU
instances therefore have none: the device pages' hooks are on each vCPU's stepper, which runs only the
instructions that touch those pages (vmx/emulate.py). This prints, per loop body (a load, a store, ALU only, a
load of the APIC's version register), the marginal nanoseconds per iteration: under webhyve (a flat64 guest,
wall time of the run, two loop counts), on a bare Unicorn in UC_TLB_VIRTUAL mode whose fill grants data pages
read/write and code pages all (as webhyve's does), and the same bare Unicorn with one memory hook on a page the
loop never touches. Usage: python bench/memory.py
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from unicorn import (UC_ARCH_X86, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_HOOK_TLB_FILL, UC_MEM_FETCH,  # noqa: E402
                     UC_MODE_64, UC_PROT_ALL, UC_PROT_READ, UC_PROT_WRITE, UC_TLB_VIRTUAL, Uc)

from bench.run import BASE64, assemble  # noqa: E402
from engine import Hypervisor  # noqa: E402

DATA = 0x400000
BODIES = {"load": "mov rax, [rdi+rdx]", "store": "mov [rdi+rdx], rax", "alu": "add rax, rdx",
          "apic": "mov eax, [r15+0x30]"}
COUNTS = {"apic": (20_000, 120_000)}
MANY = (2_000_000, 12_000_000)
# The flat64 loader maps the first GiB; this maps the 1 GiB page at 3 GiB too, which holds 0xFEE00000.
MAP_APIC = "mov rax, cr3\nmov rbx, [rax]\nand rbx, -4096\nmov rcx, 0xC0000083\nmov [rbx+24], rcx\nmov cr3, rax\n" \
    "mov r15, 0xFEE00000\n"


def guest(body, n):
    return assemble(MAP_APIC + "mov rdi, %d\nxor edx, edx\nmov rcx, %d\n1: %s\nadd rdx, 8\nand rdx, 0xff8\ndec rcx\n"
                    "jnz 1b\ncli\nhlt" % (DATA, n, body))


def webhyve(code):
    hv = Hypervisor(host_mem_mb=256)
    vm = hv.create_vm("mem", mem_mb=64)
    vm.load(code, "mem.bin", kind="flat64")
    started = time.perf_counter()
    vm.start()
    vm.wait(states=("suspended",), timeout=600)
    spent = time.perf_counter() - started
    vm.destroy()
    return spent


def bare(code, hooked):
    def fill(uc, vaddr, access, entry, data):
        entry.paddr = vaddr & ~0xFFF
        entry.perms = UC_PROT_ALL if access == UC_MEM_FETCH else UC_PROT_READ | UC_PROT_WRITE
        return True
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0, 16 << 20)
    uc.mem_write(BASE64, code)
    uc.ctl_set_tlb_mode(UC_TLB_VIRTUAL)
    uc.hook_add(UC_HOOK_TLB_FILL, fill)
    if hooked:
        for kind in (UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE):
            uc.hook_add(kind, lambda *args: None, None, 0xF00000, 0xF00FFF)
    started = time.perf_counter()
    uc.emu_start(BASE64, BASE64 + len(code) - 1)
    return time.perf_counter() - started


def per_iteration(run, name):
    """Marginal ns per iteration (best of 3 at each count), free of start-up costs."""
    counts = COUNTS.get(name, MANY)
    low, high = (min(run(guest(BODIES[name], n)) for _ in range(3)) for n in counts)
    return (high - low) / (counts[1] - counts[0]) * 1e9


def main():
    print("%-6s %10s %12s %18s %8s" % ("body", "webhyve", "bare Unicorn", "bare + a mem hook", "ratio"))
    for name in BODIES:
        w = per_iteration(webhyve, name)
        if name == "apic":                  # no APIC on a bare Unicorn: one step on the stepper per load
            print("%-6s %8.1f ns %12s %18s %8s" % (name, w, "-", "-", "-"))
            continue
        b = per_iteration(lambda code: bare(code, False), name)
        h = per_iteration(lambda code: bare(code, True), name)
        print("%-6s %8.1f ns %9.1f ns %15.1f ns %7.1fx" % (name, w, b, h, w / b))


if __name__ == "__main__":
    main()
