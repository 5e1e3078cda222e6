"""memtouch end to end: its checksum against the plain-Python reference, and what the EPT shows after."""
import pytest

from engine.mmu import ept as E
from tests.engine.conftest import guest
from tests.guests.memtouch_reference import checksum


def run(hv, cmdline, mem_mb=64, **tunables):
    for name, value in tunables.items():
        hv.tunables.set(name, value)
    vm = hv.create_vm("memtouch", mem_mb=mem_mb)
    vm.load(guest("memtouch.elf"), "memtouch.elf", cmdline=cmdline)
    vm.start()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    return vm, vm.console.contents().decode()


@pytest.mark.parametrize("pattern,pages,passes", [("seq", 700, 1), ("reverse", 300, 2), ("random", 2000, 2)])
def test_checksum_matches_reference(hv, pattern, pages, passes):
    vm, out = run(hv, "pages=%d pattern=%s passes=%d" % (pages, pattern, passes))
    assert "pages=%d pattern=%s passes=%d" % (pages, pattern, passes) in out
    assert "checksum=0x%016x" % checksum(pages, pattern, passes) in out


def test_sequential_touch_fills_two_superpages_and_the_dirty_log(hv):
    vm, out = run(hv, "pages=1024 pattern=seq")
    assert "checksum=0x%016x" % checksum(1024) in out
    for region in (0x1000000, 0x1200000):
        assert vm.gpa_pmap(region + 0x1234)[-1]["level"] == 2
    dirty = set(vm.dirty_log())
    assert set(range(0x1000, 0x1400)) <= dirty
    assert not set(vm.dirty_log()) & set(range(0x1000, 0x1400))           # harvested: clean again


def test_emulated_ad_bits_and_no_superpages_give_the_same_answer(hv):
    vm, out = run(hv, "pages=1024 pattern=random passes=2",
                  **{"hw.vmm.ept.use_hw_ad_bits": 0, "hw.vmm.ept.use_superpages": 0})
    assert "checksum=0x%016x" % checksum(1024, "random", 2) in out
    assert vm.pmap.stats()["superpages"] == 0 and not vm.pmap.st[E.S_FLAGS] & E.F_HW_AD
    assert vm.gpa_pmap(0x1000000)[-1]["flags"].startswith("RW")
    assert "EMUL_V" in vm.gpa_pmap(0x1000000)[-1]["flags"]
