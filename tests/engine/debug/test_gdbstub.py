"""The real gdb debugs bundled guests through the VM's GDB stub: break, step, read, change, watch, interrupt."""
import os
import re
import time

import pytest

from engine import ConfigError, StateError
from engine import stats
from tests.engine.conftest import FLAT_BASE, GUESTS, assemble, guest, wait_for
from tests.engine.debug.conftest import run_gdb, run_gdb_interrupted, symbol

MAGIC = 0xC0FFEE


def values(out, name="\\$\\d+"):
    """The numbers gdb printed as `$N = value`, in order."""
    return [int(v, 0) for v in re.findall(r"^%s = (\S+)" % name, out, re.M)]


def test_break_at_symbol_continue_and_read_a_variable(debugme):
    """gdb breaks in tick() twice; `ticks` went up by one between the two stops; the frame is kmain's call."""
    vm, port = debugme()
    out = run_gdb(port, ["break tick", "continue", "print ticks", "continue", "print ticks", "bt"])
    assert out.count("Breakpoint 1, tick (step=1) at debugme.c:13") == 2, out
    first, second = values(out)
    assert second == first + 1
    assert re.search(r"#1 .* in kmain .* at debugme.c:\d+", out), out
    log = vm.vcpus[0].exit_log()
    bp_exits = [e for e in log if e["name"] == "EXCEPTION_NMI"]
    assert bp_exits and bp_exits[-1]["rip"] == int(re.search(r"Breakpoint 1 at (0x[0-9a-f]+)", out).group(1), 16)


def test_stepi_and_next_move_by_one_instruction_and_one_line(debugme):
    """stepi lands on the instruction after the breakpoint's; next moves to the following source line."""
    vm, port = debugme()
    out = run_gdb(port, ["break tick", "continue", "x/2i $pc", "stepi", "print/x $pc", "next", "info line *$pc"])
    listing = re.findall(r"^(?:=> )?\s*(0x[0-9a-f]+) <tick\+\d+>:", out, re.M)
    assert len(listing) == 2, out
    assert values(out) == [int(listing[1], 16)]
    assert re.search(r"^14\s+return ticks;", out, re.M), out
    assert vm.vcpus[0].counters[stats.VMEXIT_MTRAP] >= 2       # each step is a monitor-trap exit
    assert any(e["reason"] == 37 for e in vm.vcpus[0].exit_log())


def test_changed_register_changes_what_the_guest_does(debugme):
    """tick() returns MAGIC once gdb sets EAX after `finish`; the guest then takes its magic branch."""
    vm, port = debugme()
    out = run_gdb(port, ["break tick", "continue", "finish", "set $eax = %#x" % MAGIC, "print/x $eax",
                         "delete", "watch shadow", "continue", "print/x shadow"])
    assert values(out) == [MAGIC, MAGIC], out
    assert "New value = %d" % MAGIC in out
    wait_for(vm, b"debugme: magic", timeout=30)         # gdb detached: the guest runs on to its print


def test_write_watchpoint_stops_after_the_store_with_old_and_new_value(debugme):
    """watch ticks: each stop is after the store (gdb shows Old/New), at the instruction following it."""
    vm, port = debugme()
    out = run_gdb(port, ["watch ticks", "continue", "continue", "print/x $pc"])
    olds = [int(v) for v in re.findall(r"Old value = (\d+)", out)]
    news = [int(v) for v in re.findall(r"New value = (\d+)", out)]
    assert len(olds) == 2 and news == [olds[0] + 1, olds[1] + 1] and olds[1] == news[0], out
    tick, store = symbol("tick"), b"\xa3" + symbol("ticks").to_bytes(4, "little")      # mov %eax,ticks
    after_store = tick + vm.debugger.read_memory(0, tick, 32).index(store) + len(store)
    assert values(out) == [after_store]
    assert any(e["name"] == "EXCEPTION_NMI" and e["rip"] == after_store for e in vm.vcpus[0].exit_log())


def test_read_and_access_watchpoints(debugme):
    """rwatch stops at the read of ticks in tick(); awatch on shadow stops at the store the magic branch makes."""
    vm, port = debugme()
    out = run_gdb(port, ["rwatch ticks", "continue", "delete", "set var ticks = %#x" % (MAGIC - 1),
                         "awatch shadow", "continue", "print/x shadow"])
    assert "Hardware read watchpoint 1: ticks" in out and "Value = " in out, out
    assert "Hardware access (read/write) watchpoint 2: shadow" in out
    assert values(out) == [MAGIC], out


def test_ctrl_c_stops_the_running_guest(debugme):
    """gdb's Ctrl-C (SIGINT while `continue` waits) stops the guest with SIGINT; the counter is readable."""
    vm, port = debugme()
    out = run_gdb_interrupted(port, ["continue", "print ticks", "print/x $pc"],
                              lambda: vm.state == "running" and vm.debugger.read_memory(0, symbol("ticks"), 4) != bytes(4),
                              "the guest never ran after gdb's continue")
    assert "Program received signal SIGINT, Interrupt." in out, out
    ticks, pc = values(out)
    assert ticks > 0 and 0x100000 <= pc < 0x101000


def test_vcpus_are_threads(debugme):
    """A 2-vCPU VM shows two threads; the AP (never started: no INIT-SIPI yet) has its own registers."""
    vm, port = debugme(cpus=2)
    out = run_gdb(port, ["info threads", "thread 2", "print/x $eip", "thread 1", "print/x $eip"])
    assert re.search(r"^\* 1\s+Thread 1 \(vcpu0 paused \(breakpoint\)\)", out, re.M), out
    assert re.search(r"^  2\s+Thread 2 \(vcpu1 idle\)", out, re.M), out
    ap_eip, bsp_eip = values(out)
    assert bsp_eip == vm.image.entry and ap_eip != bsp_eip


def test_long_mode_guest_with_its_32_bit_elf_and_set_architecture(hv):
    """longmode.elf (a 32-bit ELF) halted in 64-bit mode: gdb with that ELF loaded connects (a description naming
    i386:x86-64 is refused by gdb 13 then), reads the 64-bit values it left, the control registers, EFER and the
    segment bases, and `set architecture i386:x86-64` decodes the 64-bit code without reconnecting."""
    vm = hv.create_vm("longmode", mem_mb=16)
    vm.load(guest("longmode.elf"), "longmode.elf")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=30) == "suspended"
    port = vm.gdb_listen(0)
    movabs = b"\x48\xb8" + (0x1122334455667788).to_bytes(8, "little")                  # mov rax, imm64
    MOVABS = vm.debugger.read_memory(0, symbol("long_entry", "longmode.elf"), 64).index(movabs)
    out = run_gdb(port, ["show architecture", "print/x $rax", "print/x $r15", "print/x $efer", "print/x $cr3",
                         "print/x $cr0", "print/x $k_gs_base", "x/i long_entry+%d" % MOVABS,
                         "set architecture i386:x86-64", "x/i long_entry+%d" % MOVABS, "print/x $pc", "continue"],
                  elf=os.path.join(GUESTS, "longmode.elf"))
    vm.destroy()
    assert "not compatible" not in out and "too long" not in out, out
    assert '(currently "i386")' in out, out
    rax, r15, efer, cr3, cr0, kgs, pc = values(out)
    assert (rax, r15) == (0x1122334455667788, 0x0123456789ABCDEF)
    assert efer & 0x500 == 0x500 and cr3 == vm.registers()["cr3"] and cr0 & 0x80000001 == 0x80000001
    assert kgs == 0 and pc == vm.registers()["rip"]
    assert re.search(r"<long_entry\+%d>:\s+dec\s+%%eax" % MOVABS, out), out         # i386: REX.W is DEC EAX
    assert "movabs $0x1122334455667788,%rax" in out, out                          # then 64-bit code
    assert "exited normally" in out                              # the VM had halted for good: W00


def test_control_and_system_registers(debugme):
    """cr0 cr2 cr3 cr4 cr8 efer fs_base gs_base k_gs_base are in the description (org.gnu.gdb.i386.sys) with the
    vCPU's values, in every mode. gdb 13's i386/amd64 code puts every register of a target description in its
    own groups (i386-tdep.c overrides the description's group attribute), so `info registers system` lists
    nothing for any x86 target, QEMU's included: `info registers cr0 …` and `info all-registers` show them."""
    vm, port = debugme()
    names = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "fs_base", "gs_base", "k_gs_base")
    out = run_gdb(port, ["info registers " + " ".join(names), "info all-registers"])
    regs = vm.registers()
    for name in names:
        shown = re.findall(r"^%s\s+(0x[0-9a-f]+)" % name, out, re.M)
        assert len(shown) == 2, (name, out)                       # both listings
        if name in regs:
            assert int(shown[0], 16) == regs[name], name
    assert int(re.search(r"^cr0\s+(0x[0-9a-f]+)", out, re.M)[1], 16) & 1      # protected mode


def test_real_mode_x_i_with_set_architecture_i8086(hv):
    """The boot sector at 0x7C00 in real mode: gdb connects without an ELF, `set architecture i8086` is accepted
    (a description naming i386:x86-64 makes gdb refuse it) and x/i decodes 16-bit code: `xor %ax,%ax`, where
    i386 decoding reads the same bytes as `xor %eax,%eax`."""
    vm = hv.create_vm("realmode", mem_mb=16)
    vm.load(guest("bootsec.img"), "bootsec.img")
    port = vm.gdb_listen(0, wait=True)
    vm.start()
    out = run_gdb(port, ["print/x $cr0", "x/2i $pc", "set architecture i8086", "x/3i $pc",
                         "info registers cs eip"], elf=None)
    vm.destroy()
    assert values(out)[0] & 1 == 0                                   # CR0.PE clear: real mode
    assert "xor    %eax,%eax" in out and "xor    %ax,%ax" in out, out
    assert "not compatible" not in out and 'Architecture `i8086\' not recognized' not in out, out
    assert re.search(r"^=> 0x7c00:\s+cli", out, re.M), out


def test_detach_lets_the_guest_run_on_without_breakpoints(debugme):
    """After gdb leaves, the guest runs: the counter keeps moving, no hooks are left; gdb can come back."""
    vm, port = debugme()
    run_gdb(port, ["break tick", "watch ticks", "continue"])
    assert vm.vcpus[0].debug.breakpoints == {} and vm.vcpus[0].debug.trace is None
    before = int.from_bytes(vm.debugger.read_memory(0, symbol("ticks"), 4), "little")
    deadline = time.monotonic() + 30
    while int.from_bytes(vm.debugger.read_memory(0, symbol("ticks"), 4), "little") < before + 1000:
        assert time.monotonic() < deadline, "the guest did not run on after gdb detached"
        time.sleep(0.05)
    assert vm.state == "running"
    again = run_gdb(port, ["break tick", "continue", "print ticks"])      # the stub takes the next gdb
    assert "Breakpoint 1, tick (step=1)" in again and values(again)[0] >= before + 1000


def test_second_stub_and_busy_port_are_refused(debugme, hv):
    """One stub per VM; a port already in use is a ConfigError naming it; the first stub keeps serving."""
    vm, port = debugme()
    with pytest.raises(StateError, match="already has a GDB stub on port %d" % port):
        vm.gdb_listen(0)
    other = hv.create_vm("other", mem_mb=16)
    other.load(guest("debugme.elf"), "debugme.elf")
    with pytest.raises(ConfigError, match="cannot listen for gdb on 127.0.0.1:%d" % port):
        other.gdb_listen(port)
    with pytest.raises(ConfigError, match="gdb port 70000 is not a TCP port"):
        other.gdb_listen(70000)
    other.destroy()
    assert "Breakpoint 1, tick" in run_gdb(port, ["break tick", "continue"])


def test_waiting_at_the_entry_is_asked_before_the_start(hv):
    """bhyve's -G w holds the first instruction: once the guest runs it is too late, and the error says so."""
    vm = hv.create_vm("late", mem_mb=16)
    vm.load(guest("debugme.elf"), "debugme.elf")
    vm.start()
    with pytest.raises(StateError, match="asked for before the start"):
        vm.gdb_listen(0, wait=True)
    assert vm.gdb is None and vm.state == "running"
    vm.destroy()



def flat64_with_gdb(hv, tmp_path, source):
    """A flat 64-bit guest from assembly, held at its entry for gdb; returns (vm, port)."""
    vm = hv.create_vm("flat", mem_mb=16)
    vm.load(assemble(source, tmp_path), "guest.bin", kind="flat64")
    port = vm.gdb_listen(0, wait=True)
    vm.start()
    return vm, port


def test_triple_fault_stops_with_sigsegv_and_state_to_inspect(hv, tmp_path):
    """ud2 with no IDT: #UD, #DF, triple fault; gdb's continue ends in SIGSEGV with RIP on the ud2."""
    vm, port = flat64_with_gdb(hv, tmp_path, "mov rax, 0x5a5a\nud2")
    out = run_gdb(port, ["set architecture i386:x86-64", "continue", "print/x $rax", "print/x $pc"], elf=None)
    assert "Program received signal SIGSEGV" in out, out
    rax, pc = values(out)
    assert rax == 0x5A5A and pc == FLAT_BASE + 7                 # mov rax, imm32 is 7 bytes
    assert vm.suspend_reason == "triplefault"
    vm.destroy()


def test_halted_vcpu_stops_and_goes_back_to_its_halt(hv, tmp_path):
    """sti; hlt: the idle vCPU stops for gdb, `continue` puts it back to sleep, Ctrl-C stops it again."""
    vm, port = flat64_with_gdb(hv, tmp_path, "sti\n1: hlt\njmp 1b")
    out = run_gdb_interrupted(port, ["continue", "print/x $pc"], lambda: vm.state == "halted",
                              "the vCPU never went back to its halt", elf=None)
    assert "Program received signal SIGINT" in out, out
    assert values(out) == [FLAT_BASE + 2]                        # after the hlt, as VT-x leaves RIP
    vm.destroy()


ALIAS_GUEST = """
    mov rax, cr3
    mov rbx, [rax]
    and rbx, -4096
    mov rcx, [rbx]
    and rcx, -4096
    mov rdx, 0x200083
    mov [rcx + 100 * 8], rdx      # PD[100]: linear 0xC800000 -> guest-physical 0x200000 (2 MiB page)
    mov cr3, rax
    mov rax, 0x1122334455667788
    mov rbx, 0xC801000
    mov [rbx], rax                # the data page, written through the alias
parked:
    jmp parked
    .org 0x1000
    .quad 0
"""


def test_memory_is_guest_linear_through_the_guests_page_tables(hv, tmp_path):
    """The guest maps 0xC800000 onto its own image: gdb reads and writes there, beyond guest-physical memory."""
    vm, port = flat64_with_gdb(hv, tmp_path, ALIAS_GUEST)
    parked = FLAT_BASE + assemble(ALIAS_GUEST, tmp_path).index(b"\xeb\xfe")     # jmp to itself
    out = run_gdb(port, ["set architecture i386:x86-64", "break *%#x" % parked, "continue", "x/gx 0xC801000",
                         "set {long}0xC801000 = 5",
                         "x/gx %#x" % (FLAT_BASE + 0x1000)], elf=None)
    assert re.search(r"^0xc801000:\s+0x1122334455667788$", out, re.M), out
    assert re.search(r"^0x201000:\s+0x0*5$", out, re.M), out
    assert vm.mem_size < 0xC800000
    vm.destroy()


def test_hbreak_tbreak_and_until(debugme):
    """hbreak (Z1) stops like break; a tbreak fires once and is gone; until runs to a later line of tick()."""
    vm, port = debugme()
    out = run_gdb(port, ["hbreak tick", "tbreak kmain", "continue", "continue", "until 15", "info breakpoints"])
    assert "Temporary breakpoint 2, kmain" in out and "Breakpoint 1, tick (step=1)" in out, out
    assert re.search(r"^15\s+}$", out, re.M), out
    assert re.search(r"^1\s+hw breakpoint\s+keep y", out, re.M) and not re.search(r"^2\s+breakpoint", out, re.M)


def test_reconnect_across_the_switch_to_long_mode_with_the_32_bit_elf(hv):
    """longmode.elf from its 32-bit entry with its (32-bit) ELF loaded: gdb breaks in the 64-bit code and is told
    the mode changed; after the guest went on, a new gdb with the same ELF connects to the same register layout
    and reads the 64-bit registers."""
    vm = hv.create_vm("longmode", mem_mb=16)
    vm.load(guest("longmode.elf"), "longmode.elf")
    port = vm.gdb_listen(0, wait=True)
    vm.start()
    elf = os.path.join(GUESTS, "longmode.elf")
    long_entry = symbol("long_entry", "longmode.elf")
    first = run_gdb(port, ["print/x $cr0", "break *%#x" % long_entry, "continue", "print/x $efer"], elf=elf)
    assert "webhyve: vcpu0 is now in 64-bit mode" in first and "set architecture i386:x86-64" in first, first
    cr0, efer = values(first)
    assert cr0 & 1 and efer & 0x400                                  # protected mode at the entry; then LMA
    assert vm.wait(states=("suspended",), timeout=30) == "suspended"     # gdb left: on to the final hlt
    again = run_gdb(port, ["print/x $rax", "print/x $efer", "info registers rip"], elf=elf)
    vm.destroy()
    assert "not compatible" not in again and "too long" not in again, again
    rax, efer = values(again)
    assert rax == 0x1122334455667788 and efer & 0x500 == 0x500, again
