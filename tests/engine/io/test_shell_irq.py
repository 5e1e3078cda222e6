"""The `shell` guest takes serial input by interrupt: COM1's IRQ 4 through the 8259 (vector 0x24, an ExtINT),
a ring buffer filled by the handler, and HLT while it waits for a key."""
import re
import time

import pytest

from engine import stats
from engine.vmx import exits
from tests.engine.conftest import guest, wait_for


@pytest.fixture
def shell(hv):
    vm = hv.create_vm("shell", mem_mb=32)
    vm.load(guest("shell.elf"), "shell.elf")
    vm.start()
    wait_for(vm, b"webhyve> ")
    yield vm
    hv.destroy_vm("shell")


def command(vm, line, until):
    """Type `line` and Enter; return what the console shows up to `until` (only output after the typing)."""
    reader = vm.console.reader(from_start=False)
    vm.console.send_input(line + b"\r")
    return wait_for(vm, until, reader=reader).decode()


def irqs(vm):
    """The guest's own count of UART interrupts and of bytes its handler took, from the `irqs` command."""
    reader = vm.console.reader(from_start=False)
    vm.console.send_input(b"irqs\r")
    text = b""
    deadline = time.monotonic() + 30
    while not re.search(rb"uart irqs=\d+ bytes=\d+[^\r]*\r\n", text):
        assert time.monotonic() < deadline, text
        text += reader.read(0.1)
    found = re.search(rb"uart irqs=(\d+) bytes=(\d+)", text)
    return int(found.group(1)), int(found.group(2))


def test_each_key_typed_while_the_shell_waits_is_one_uart_interrupt(shell):
    """Keys typed one at a time (each echoed before the next): the guest's count rises by at least one per key,
    each delivered through the 8259 as an ExtINT with the vector the guest programmed (IRQ 4 -> 0x24)."""
    before, received = irqs(shell)
    assert before >= 1 and received >= len(b"irqs\r")
    extints = int(shell.vcpus[0].counters[stats.VCPU_EXTINT_COUNT])
    for key in b"echo typed":
        reader = shell.console.reader(from_start=False)
        shell.console.send_input(bytes([key]))
        wait_for(shell, bytes([key]), reader=reader)
    assert "\r\ntyped\r\n" in command(shell, b"", b"webhyve> ")
    after, _ = irqs(shell)
    assert after - before >= len(b"echo typed")
    assert int(shell.vcpus[0].counters[stats.VCPU_EXTINT_COUNT]) - extints >= len(b"echo typed")
    assert shell.pic.master.vector_base == 0x20 and not shell.pic.master.imr & (1 << 4)
    last = exits.decode_interruption_info(shell.vcpus[0].vmcs["ENTRY_INTR_INFO"])
    assert last == {"vector": 0x24, "type": "external interrupt", "error_code": False}


def test_the_idle_shell_is_halted_not_polling(shell):
    """Between keys the vCPU sits in HLT with interrupts on: no port I/O exits while nobody types (the polling
    shell made thousands a second), and the VM shows as halted until a key wakes it."""
    v = shell.vcpus[0]
    deadline = time.monotonic() + 10
    while shell.state != "halted":
        assert time.monotonic() < deadline, shell.state
        time.sleep(0.01)
    assert v.halt_interruptible and v.counters[stats.VMEXIT_HLT] >= 1
    inout = int(v.counters[stats.VMEXIT_INOUT])
    time.sleep(0.5)
    assert int(v.counters[stats.VMEXIT_INOUT]) == inout
    assert shell.state == "halted"
    assert "\r\nawake\r\n" in command(shell, b"echo awake", b"webhyve> ")


def test_a_paste_longer_than_the_ring_buffer_arrives_whole(shell):
    """Six 100-character echo lines in one paste (over 600 bytes, the ring holds 256): the handler stops
    taking bytes when the ring is full and the reader lets them in again; every line comes back, in order."""
    lines = [bytes([ord("a") + i]) * 100 for i in range(6)]
    reader = shell.console.reader(from_start=False)
    shell.console.send_input(b"".join(b"echo " + line + b"\r" for line in lines))
    text = wait_for(shell, b"\r\n" + lines[-1] + b"\r\n", reader=reader, timeout=60).decode()
    assert re.findall(r"\r\n([a-f]{100})\r\n", text) == [line.decode() for line in lines]
    count, received = irqs(shell)
    assert received >= 6 * 106 and count >= 3         # the ring filled: the paste took more than one


def test_with_poll_1_the_shell_spins_on_the_line_status_instead(hv):
    """The comparison the command line offers: poll=1 reads LSR in a loop, so the idle vCPU keeps running
    and makes port I/O exits all the time; it takes no UART interrupt and still answers."""
    vm = hv.create_vm("polling", mem_mb=32)
    vm.load(guest("shell.elf"), "shell.elf", cmdline="poll=1")
    vm.start()
    wait_for(vm, b"webhyve> ")
    v = vm.vcpus[0]
    inout = int(v.counters[stats.VMEXIT_INOUT])
    time.sleep(0.5)
    assert int(v.counters[stats.VMEXIT_INOUT]) - inout > 100
    assert vm.state == "running"
    assert irqs(vm) == (0, 0)
    assert int(v.counters[stats.VCPU_EXTINT_COUNT]) == 0
    hv.destroy_vm("polling")
