"""Guests on the I/O port bus: every port at every width and string form, byte devices split, unclaimed ports all ones."""
import numpy as np

from engine import stats
from tests.engine.conftest import assemble
from tests.engine.io.test_vpic_vpit import PIC_INIT
from tests.engine.test_inject import LONG_DATA, LONG_PROLOGUE

# Ports whose write could stop or restart the machine: the sweep never writes them (at any width that touches
# them). 0x64 (the 8042: command 0xFE pulses reset) and 0xCF9 (inside CONFIG_ADDRESS, the reset control register
# of a PIIX) are decoded today; the others are skipped so the sweep stays safe once someone models them: 0x92
# (fast A20 / INIT), 0xF4 and 0x501 (QEMU's isa-debug-exit), 0x604 and 0xB004 (ACPI / QEMU power-off).
NEVER_WRITTEN = (0x64, 0xCF9, 0x92, 0xF4, 0x501, 0x604, 0xB004)
# Where the bundled devices sit (datasheet addresses): the sweep asserts nothing about what they read.
DEVICES = {"8259 master": (0x20, 2), "8259 slave": (0xA0, 2), "8254": (0x40, 4), "POST": (0x80, 1),
           "debugcon": (0xE9, 1), "VGA CRTC": (0x3D4, 2), "COM2": (0x2F8, 8), "COM1": (0x3F8, 8),
           "8042": (0x60, 1), "port 0x61": (0x61, 1), "8042 command": (0x64, 1), "RTC": (0x70, 2),
           "PCI configuration": (0xCF8, 8)}
WIDTHS = {1: ("al", "b", "byte"), 2: ("ax", "w", "word"), 4: ("eax", "d", "dword")}
# Guest-physical tables the sweep fills (16 MiB guest)
IN_AT = {1: 0x400000, 2: 0x410000, 4: 0x430000}          # IN acc, dx
INS_AT = {1: 0x480000, 2: 0x490000, 4: 0x4B0000}         # INSB/INSW/INSD
REP_INS_AT = {1: 0x500000, 2: 0x520000, 4: 0x560000}     # REP INS with RCX = 2
SKIP_AT = {1: 0x600000, 2: 0x610000, 4: 0x620000}        # 1: an OUT of this width here touches NEVER_WRITTEN
ZEROS = 0x630000

IGNORE_ALL_INTERRUPTS = LONG_PROLOGUE + """
    lea rdi, [rip + idt]
    lea rax, [rip + ignore]
    mov ecx, 256
1:  mov word ptr [rdi], ax
    mov dword ptr [rdi + 2], 0x8E000008         # selector 0x08, interrupt gate
    mov rbx, rax
    shr rbx, 16
    mov word ptr [rdi + 6], bx
    shr rbx, 16
    mov qword ptr [rdi + 8], rbx
    add rdi, 16
    loop 1b
    sti
"""


def sweep(body):
    """A loop over every port: EDX from 0 to 0xFFFF around `body`."""
    return """
    xor edx, edx
2:  {body}
3:  inc edx
    cmp edx, 0x10000
    jb 2b
""".format(body=body)


def sweep_source():
    """Every IN, INS and REP INS form at every port, then every OUT, OUTS and REP OUTS form (writing zeros).

    The OUT sweep programs the 8259 and 8254 with zeros and may raise an IRQ: the guest runs with
    interrupts enabled and an IDT whose every gate returns at once, so nothing waits in a window."""
    src = IGNORE_ALL_INTERRUPTS
    for w, (acc, suffix, _) in WIDTHS.items():
        src += "    mov rdi, %#x\n" % IN_AT[w] + sweep("in %s, dx\n    mov [rdi], %s\n    add rdi, %d" % (acc, acc, w))
        src += "    mov rdi, %#x\n" % INS_AT[w] + sweep("ins%s" % suffix)
        src += "    mov rdi, %#x\n" % REP_INS_AT[w] + sweep("mov ecx, 2\n    rep ins%s" % suffix)
    for w, (acc, suffix, _) in WIDTHS.items():
        skip = "mov rbx, %#x\n    cmp byte ptr [rbx + rdx], 0\n    jne 3f\n    " % SKIP_AT[w]
        src += "    xor eax, eax\n" + sweep(skip + "out dx, %s" % acc)
        src += sweep(skip + "mov rsi, %#x\n    outs%s" % (ZEROS, suffix))
        src += sweep(skip + "mov rsi, %#x\n    mov ecx, 2\n    rep outs%s" % (ZEROS, suffix))
    return src + """
    cli
    hlt
ignore:
    iretq
""" + LONG_DATA


def boot(hv, tmp_path, src, name, before=None):
    vm = hv.create_vm(name, mem_mb=16)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    if before:
        before(vm)
    vm.start()
    assert vm.wait(states=("suspended",), timeout=120) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    return vm


def touches(port, width, ports):
    return any((port + i) & 0xFFFF in ports for i in range(width))


def test_every_port_every_width_and_string_form(hv, tmp_path):
    """65,536 ports x IN/INS/REP INS/OUT/OUTS/REP OUTS x 1/2/4 bytes: the VM runs through; unclaimed ports read ones."""
    def mark_skipped(vm):
        for w in WIDTHS:
            vm.memory_access.write(SKIP_AT[w], bytes(touches(p, w, NEVER_WRITTEN) for p in range(65536)))

    vm = boot(hv, tmp_path, sweep_source(), "sweep", before=mark_skipped)
    claimed = {p for p in range(65536) if vm.io.claimed(p)}
    for name, (base, count) in DEVICES.items():
        assert set(range(base, base + count)) <= claimed, name
    assert claimed & set(NEVER_WRITTEN) == {0x64, 0xCF9}
    for w, (_, _, kind) in WIDTHS.items():
        ones = (1 << 8 * w) - 1
        reads = {form: np.frombuffer(vm.memory_access.read(at[w], count * 65536 * w), "<u%d" % w).reshape(65536, count)
                 for form, at, count in (("IN", IN_AT, 1), ("INS", INS_AT, 1), ("REP INS", REP_INS_AT, 2))}
        for form, values in reads.items():
            wrong = [hex(p) for p in range(65536) if not touches(p, w, claimed) and (values[p] != ones).any()]
            assert not wrong, "%s %s from unclaimed ports did not read all ones: %s" % (form, kind, wrong[:8])
    written = sum(65536 - sum(touches(p, w, NEVER_WRITTEN) for p in range(65536)) for w in WIDTHS)
    assert vm.vcpus[0].counters[stats.VMEXIT_INOUT] == 3 * 3 * 65536 + 3 * written     # a REP instruction is one exit


def test_wide_accesses_reach_byte_devices_as_consecutive_byte_accesses(hv, tmp_path):
    """What two or four byte accesses would give: the 8259 pair, COM1, debugcon, POST, VGA CRTC, across devices."""
    src = PIC_INIT.format(mask=0xA5) + """
    in ax, 0x20                 # IRR (OCW3 default), then IMR
    mov r8, rax
    mov ax, 0x5A0B              # AL = OCW3 (read ISR) to 0x20, AH = 0x5A to 0x21 (IMR)
    out 0x20, ax
    in al, 0x21
    mov r9, rax
    mov dx, 0x3F9
    mov al, 0x05
    out dx, al                  # IER
    mov dx, 0x3FF
    mov al, 0x77
    out dx, al                  # SCR
    mov dx, 0x3FC
    mov al, 0x10
    out dx, al                  # MCR: loopback
    mov dx, 0x3F8
    mov al, 'Z'
    out dx, al                  # THR -> RBR through the loopback
    in ax, dx                   # RBR ('Z'), IER
    mov r10, rax
    in ax, dx                   # RBR now empty (0xFF), IER
    mov r11, rax
    mov dx, 0x3FE
    in eax, dx                  # MSR (deltas of entering loopback), SCR, then 0x400-0x401: unclaimed
    mov r12, rax
    in al, dx                   # MSR again: the deltas were cleared by the first read, once
    mov r13, rax
    mov dx, 0x3F8
    mov al, 'Y'
    out dx, al                  # THR 'Y'
    mov dx, 0x3F7
    in ax, dx                   # 0x3F7 unclaimed, then RBR 'Y'
    mov r14, rax
    mov eax, 0x44434241
    out 0xE9, eax               # 'A' to the debug console, 'BCD' to unclaimed 0xEA-0xEC
    in ax, 0xE9                 # 0xE9 detection byte, then 0xEA unclaimed
    mov r15, rax
    mov eax, 0x12345678
    out 0x80, eax               # POST latches 0x78; 0x81-0x83 unclaimed
    in ax, 0x7F
    mov rbx, rax
    mov dx, 0x3D4
    mov ax, 0x3C0E
    out dx, ax                  # CRTC index 0x0E, data 0x3C: cursor high
    mov ax, 0x200F
    out dx, ax                  # index 0x0F, data 0x20: cursor low
    in ax, dx
    mov rcx, rax
    mov dx, 0xFFFE
    in eax, dx                  # wraps to ports 0 and 1: all unclaimed
    mov rsi, rax
    cli
    hlt
"""
    vm = boot(hv, tmp_path, src, "wide")
    r = vm.registers()
    assert r["r8"] & 0xFFFF == 0xA500                      # IRR 0, IMR 0xA5
    assert r["r9"] & 0xFF == 0x5A
    assert r["r10"] & 0xFFFF == 0x055A and r["r11"] & 0xFFFF == 0x05FF
    assert r["r12"] & 0xFFFFFFFF == 0xFFFF770B            # MSR: DCTS|DDSR|DDCD, no status in loopback
    assert r["r13"] & 0xFF == 0x00
    assert r["r14"] & 0xFFFF == 0x59FF
    assert vm.debug_console.contents() == b"A"
    assert r["r15"] & 0xFFFF == 0xFFE9
    assert r["rbx"] & 0xFFFF == 0x78FF
    assert r["rcx"] & 0xFFFF == 0x200F and vm.vga.cursor == divmod(0x3C20, 80)
    assert r["rsi"] & 0xFFFFFFFF == 0xFFFFFFFF


def test_string_forms_split_like_their_single_forms(hv, tmp_path):
    """REP INSB drains the loopback FIFO; INSW from the 8259 is IRR then IMR; INSD past COM1 ends in ones;
    REP OUTSW programs the CRTC in pairs and gives debugcon the low bytes."""
    src = PIC_INIT.format(mask=0x3C) + """
    mov dx, 0x3FA
    mov al, 0x01
    out dx, al                  # FCR: 16-byte FIFO
    mov dx, 0x3FC
    mov al, 0x10
    out dx, al                  # loopback
    mov dx, 0x3F8
    lea rsi, [rip + text]
    mov ecx, 3
    rep outsb
    lea rdi, [rip + got]
    mov ecx, 4
    rep insb                    # 'abc', then the empty FIFO's 0xFF
    mov dx, 0x20
    insw                        # IRR, IMR
    mov dx, 0x3FE
    insd                        # MSR (the deltas of entering loopback), SCR, 0x400-0x401 unclaimed
    mov dx, 0x3D4
    lea rsi, [rip + crtc]
    mov ecx, 2
    rep outsw
    mov dx, 0xE9
    lea rsi, [rip + dbg]
    mov ecx, 3
    rep outsw                   # 0xE9 gets each low byte, unclaimed 0xEA the high one
    cli
    hlt
text: .ascii "abc"
crtc: .word 0x120E, 0x340F
dbg: .ascii "HxIxJx"
got: .fill 16, 1, 0
"""
    vm = boot(hv, tmp_path, src, "strings")
    image = assemble(src, tmp_path)
    got = vm.memory_access.read(0x200000 + image.index(b"HxIxJx") + 6, 10)
    assert got == b"abc\xff\x00\x3c\x0b\x00\xff\xff"
    assert vm.vga.cursor == divmod(0x1234, 80)
    assert vm.debug_console.contents() == b"HIJ"


class Wide:
    """A device that takes 1, 2 and 4 bytes (a PCI configuration-address latch, say): it records the accesses."""

    def __init__(self):
        self.seen, self.value = [], 0

    def read(self, offset, size=1):
        self.seen.append(("in", offset, size))
        return (self.value >> 8 * offset) & ((1 << 8 * size) - 1)

    def write(self, offset, value, size=1):
        self.seen.append(("out", offset, size, value))
        mask = ((1 << 8 * size) - 1) << 8 * offset
        self.value = (self.value & ~mask) | (value << 8 * offset)


def test_devices_taking_wider_accesses_get_them_whole(hv, tmp_path):
    """A device declaring 1, 2 and 4 bytes gets each access whole, cut only where the device ends (at 0xCE8: the
    ports below PCI's 0xCF8, which takes its own wide accesses the same way)."""
    device = Wide()
    src = """
    mov dx, 0xCE8
    mov eax, 0x80001234
    out dx, eax
    mov dx, 0xCEA
    in ax, dx
    mov r8, rax
    in eax, dx                  # 0xCEA-0xCEB from the device (one word), 0xCEC-0xCED unclaimed
    mov r9, rax
    mov dx, 0xCE7
    in eax, dx                  # 0xCE7 unclaimed; 0xCE8-0xCEA: a word, then a byte
    mov r10, rax
    cli
    hlt
"""
    vm = boot(hv, tmp_path, src, "widedev", before=lambda vm: vm.io.attach("latch", 0xCE8, 4, device.read,
                                                                           device.write, widths=(1, 2, 4)))
    r = vm.registers()
    assert r["r8"] & 0xFFFF == 0x8000 and r["r9"] & 0xFFFFFFFF == 0xFFFF8000
    assert r["r10"] & 0xFFFFFFFF == 0x001234FF
    assert device.seen == [("out", 0, 4, 0x80001234), ("in", 2, 2), ("in", 2, 2), ("in", 0, 2), ("in", 2, 1)]
