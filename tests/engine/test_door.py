"""engine/door: everything a front end reads is plain data, from a running SMP guest that is left undisturbed."""
import pytest

from engine.door import PARTS, Host
from tests.engine.conftest import guest

PLAIN = (dict, list, tuple, str, bytes, int, float, bool, type(None))


def plain(value):
    """True when `value` is made only of dicts, lists, tuples, strings, bytes and numbers."""
    if isinstance(value, dict):
        return all(plain(k) and plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    return type(value) in PLAIN


@pytest.fixture
def smp():
    """guests/smp.elf on 2 vCPUs, counting long enough for the reads below."""
    host = Host(host_mem_mb=256)
    vm = host.create_vm("smp", mem_mb=32, cpus=2)
    vm.load(guest("smp.elf"), "smp.elf", cmdline="work=3000000")
    vm.start()
    yield vm
    vm.poweroff()


def test_every_read_is_plain_data_and_the_guest_counts_right(smp):
    """Every part of both vCPUs, the disassembly, a walk, bhyvectl's state, the VM's views: plain values only;
    and the guest's spinlocked counter comes out exact."""
    reads = []
    for vcpu in smp.vcpus():
        got = vcpu.read(*PARTS)
        reads += [got, vcpu.next_instructions(got["registers"]), vcpu.translate(got["registers"]["rip"]),
                  vcpu.bhyve_state(), vcpu.stats(got["counters"])]
    reads += [smp.vga(), smp.memmap(), smp.gpa_pmap(0x100000), smp.ept_stats(), smp.counter_totals(), smp.events(),
              smp.read_memory(0x100000, 64)]
    assert all(plain(r) for r in reads)
    assert smp.wait(states=("suspended",), timeout=120) == "suspended"
    assert b"smp: counter 6000000 ok" in smp.console_contents()
