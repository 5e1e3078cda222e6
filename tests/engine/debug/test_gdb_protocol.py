"""The stub's remote protocol from a raw socket: what gdb sends, byte for byte, and what bad input gets."""
import socket
import time

import pytest

from engine import StateError
from engine.debug import gdbstub, rsp, target
from tests.engine.debug.conftest import symbol

RIP, CS = (next(i for i, r in enumerate(target.X86_64) if r.name == name) for name in ("rip", "cs"))
ADD_EDX_EAX = b"\x01\xd0"     # tick's `add %edx,%eax` (ticks += step), see objdump -d debugme.elf


class Client:
    """A minimal gdb: frames packets, acks replies, returns their payloads."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.parser = rsp.Parser()
        self.acks = []

    def send_raw(self, data):
        self.sock.sendall(data)

    def reply(self):
        while True:
            for event in self.parser.events():
                if event[0] == "packet":
                    self.sock.sendall(b"+")
                    return rsp.unescape(event[1])
                self.acks.append(event[0])
            data = self.sock.recv(65536)
            assert data, "the stub closed the connection"
            self.parser.feed(data)

    def ask(self, payload):
        self.sock.sendall(rsp.frame(payload))
        return self.reply()

    def pc(self):
        return int.from_bytes(bytes.fromhex(self.ask(b"p%x" % RIP).decode()), "little")

    def close(self):
        self.sock.close()


def test_status_registers_and_the_one_layout(debugme):
    """On connect the guest is stopped at its entry: `?` says SIGTRAP, `g` is the x86-64 register file (in
    32-bit protected mode too) with RIP there; the description names no architecture and carries the i386 names
    and the system registers."""
    vm, port = debugme()
    gdb = Client(port)
    assert gdb.ask(b"?") == b"T05thread:1;"
    regs = bytes.fromhex(gdb.ask(b"g").decode())
    assert len(regs) == sum(r.bits for r in target.X86_64) // 8
    assert int.from_bytes(regs[16 * 8:17 * 8], "little") == vm.image.entry     # rax..r15, then rip
    assert int.from_bytes(regs[0:8], "little") == 0x2BADB002                    # multiboot's magic in RAX
    eip = sum(r.bits for r in target.X86_64[:[r.name for r in target.X86_64].index("eip")]) // 8
    assert int.from_bytes(regs[eip:eip + 4], "little") == vm.image.entry       # the i386 name of its low half
    xml = gdb.ask(b"qXfer:features:read:target.xml:0,ffff")
    assert xml.startswith(b"l<?xml") and b"<architecture>" not in xml
    assert b'<feature name="org.gnu.gdb.i386.sys">' in xml
    for name in (b"rax", b"eax", b"eip", b"cr8", b"efer", b"k_gs_base"):
        assert b'<reg name="%s"' % name in xml
    gdb.close()


def test_breakpoint_leaves_memory_untouched_and_stops_on_the_instruction(debugme):
    """Z0 is a code hook: `m` shows the original bytes, the stop is swbreak with EIP on the breakpoint."""
    vm, port = debugme()
    gdb, tick = Client(port), symbol("tick")
    original = vm.debugger.read_memory(0, tick, 4)
    assert gdb.ask(b"Z0,%x,1" % tick) == b"OK"
    assert gdb.ask(b"m%x,4" % tick) == original.hex().encode() and original[0] != 0xCC
    assert gdb.ask(b"c") == b"T05swbreak:;thread:1;"
    assert gdb.pc() == tick
    assert gdb.ask(b"z0,%x,1" % tick) == b"OK"
    gdb.close()


def test_interrupt_byte_stops_the_guest(debugme):
    """\\x03 while the guest runs: a T02 (SIGINT) stop reply, and the vCPU is paused by the debugger."""
    vm, port = debugme()
    gdb = Client(port)
    assert gdb.ask(b"?") == b"T05thread:1;"
    gdb.send_raw(rsp.frame(b"vCont;c"))
    deadline = time.monotonic() + 30
    while vm.state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    gdb.send_raw(rsp.INTERRUPT)
    assert gdb.reply() == b"T02thread:1;"
    assert vm.state == "paused" and vm.vcpus[0].debug.stop_reason == ("interrupt", None)
    with pytest.raises(StateError, match="stopped by its debugger"):
        vm.resume()                               # the console's resume must not run a guest gdb holds
    gdb.close()


def test_memory_write_to_code_takes_effect(debugme):
    """M over tick's `add` with two NOPs: the next ticks are the step (1), not a sum: stale code is dropped."""
    vm, port = debugme()
    gdb, tick, ticks = Client(port), symbol("tick"), symbol("ticks")
    assert gdb.ask(b"Z0,%x,1" % tick) == b"OK"
    assert gdb.ask(b"c").startswith(b"T05")                # tick() has run through the translator now
    assert gdb.ask(b"M%x,4:05000000" % ticks) == b"OK"
    add = tick + vm.debugger.read_memory(0, tick, 32).index(ADD_EDX_EAX)
    assert gdb.ask(b"M%x,2:9090" % add) == b"OK"
    for _ in range(2):
        assert gdb.ask(b"c").startswith(b"T05")
    assert gdb.ask(b"m%x,4" % ticks) == b"01000000"
    gdb.close()


def test_register_write_through_g_and_p_packets(debugme):
    """G with RAX changed, then p reads it back; a segment register cannot be changed (an error, no crash)."""
    vm, port = debugme()
    gdb = Client(port)
    regs = bytearray(bytes.fromhex(gdb.ask(b"g").decode()))
    regs[0:8] = (0x1234).to_bytes(8, "little")
    assert gdb.ask(b"G" + regs.hex().encode()) == b"OK"
    assert gdb.ask(b"p0") == b"3412000000000000"
    assert gdb.ask(b"P%x=ffff0000" % CS).startswith(b"E")       # a selector cannot be loaded that way
    assert gdb.ask(b"p0") == b"3412000000000000"
    gdb.close()


def test_stepping_a_vcpu_that_never_started_answers_at_once(debugme):
    """vCont;s:2 on a 2-vCPU VM whose AP waits for INIT-SIPI: nothing can run, the stop reply comes back."""
    vm, port = debugme(cpus=2)
    gdb = Client(port)
    assert gdb.ask(b"vCont;s:2") == b"T05thread:1;"
    assert gdb.ask(b"Hg2") == b"OK" and gdb.ask(b"qC") == b"QC2"
    gdb.close()


def test_bad_input_gets_errors_and_the_stub_carries_on(debugme):
    """A bad checksum is NAKed, unknown packets get an empty reply, bad arguments and unmapped memory an error."""
    vm, port = debugme()
    gdb = Client(port)
    gdb.send_raw(b"$g#00")
    gdb.send_raw(rsp.frame(b"?"))
    assert gdb.reply() == b"T05thread:1;" and "nack" in gdb.acks
    assert gdb.ask(b"qNoSuchThing") == b""
    assert gdb.ask(b"mzz,4").startswith(b"E")
    assert gdb.ask(b"m%x,4" % (vm.mem_size + 0x1000)).startswith(b"E")        # beyond guest memory
    assert gdb.ask(b"Hg9") == b"E22"                                              # no such vCPU
    huge = gdb.ask(b"m100000,1000000")                                           # 16 MiB asked for
    assert 0 < len(huge) // 2 <= gdbstub.MAX_READ and len(huge) + 4 < gdbstub.PACKET_SIZE
    assert gdb.ask(b"?") == b"T05thread:1;"
    assert any("gdb: mzz,4" in line for line in vm.events)
    gdb.close()


def test_detach_packet_resumes_the_guest(debugme):
    """D: the stub answers OK, drops its breakpoints and the guest runs again."""
    vm, port = debugme()
    gdb = Client(port)
    assert gdb.ask(b"Z0,%x,1" % symbol("tick")) == b"OK"
    assert gdb.ask(b"D") == b"OK"
    deadline = time.monotonic() + 30
    while vm.state != "running" or vm.vcpus[0].debug.breakpoints:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    gdb.close()
