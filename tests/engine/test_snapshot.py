"""Snapshots: save a running guest, restore it into a fresh modeled host, and it carries on; bad files
are refused with a message that says what is wrong, and nothing running is disturbed."""
import zipfile

import pytest

from engine import Hypervisor
from engine import stats as S
from engine.snapshot import SnapshotError
from tests.engine.conftest import assemble, guest, wait_for

COUNTER = 0x400000


def test_shell_snapshot_restored_in_a_fresh_host_answers_as_before(hv, tmp_path):
    vm = hv.create_vm("shell", mem_mb=128)
    vm.load(guest("shell.elf"), "shell.elf")
    vm.start()
    wait_for(vm, b"webhyve> ")
    vm.console.send_input(b"help\r")
    wait_for(vm, b"cpuid")
    exits = int(vm.vcpus[0].counters[S.VMEXIT_COUNT])
    path = tmp_path / "shell.snap"
    hv.tunables.set("hw.vmm.trace_guest_exceptions", 1)
    info = vm.snapshot(path)
    assert vm.state in ("running", "halted")
    assert 0 < info["pages"] < 128 * 256 // 4               # only what was touched
    other = Hypervisor(host_mem_mb=512)
    copy = other.restore_vm(path)
    assert copy.name == "shell" and copy.mem_size == 128 << 20
    assert other.tunables.get("hw.vmm.trace_guest_exceptions") == 1
    assert any("tunables set as saved: hw.vmm.trace_guest_exceptions=1" in e for e in copy.events)
    assert int(copy.vcpus[0].counters[S.VMEXIT_COUNT]) >= exits
    reader = copy.console.reader(from_start=False)
    copy.console.send_input(b"help\r")
    assert b"cpuid" in wait_for(copy, b"cpuid", reader=reader)
    other.destroy_vm("shell")
    hv.destroy_vm("shell")


def test_a_counting_guest_continues_from_where_it_was_saved(hv, tmp_path):
    vm = hv.create_vm("count", mem_mb=16)
    vm.load(assemble("""
    1:  inc qword ptr [0x400000]
        mov rax, [0x400000]
        cmp rax, 300000000
        jb 1b
        cli
        hlt
    """, tmp_path), "count.bin", kind="flat64")
    vm.start()
    while int.from_bytes(vm.memory_access.read(COUNTER, 8), "little") < 1000:
        pass
    vm.pause()
    saved = int.from_bytes(vm.memory_access.read(COUNTER, 8), "little")
    rip = vm.registers()["rip"]
    vm.snapshot(tmp_path / "count.snap")
    vm.poweroff()
    copy = Hypervisor(host_mem_mb=256).restore_vm(tmp_path / "count.snap", name="again", start=False)
    assert copy.state == "paused"
    assert int.from_bytes(copy.memory_access.read(COUNTER, 8), "little") == saved
    assert copy.registers()["rip"] == rip
    copy.resume()
    while int.from_bytes(copy.memory_access.read(COUNTER, 8), "little") <= saved + 1000:
        pass
    copy.poweroff()


def test_damaged_truncated_and_foreign_files_are_refused(hv, tmp_path):
    vm = hv.create_vm("small", mem_mb=8)
    vm.load(assemble("cli\nhlt", tmp_path), "h.bin", kind="flat64")
    vm.start()
    vm.wait(states=("suspended",), timeout=20)
    good = tmp_path / "good.snap"
    vm.snapshot(good)
    raw = good.read_bytes()
    (tmp_path / "cut.snap").write_bytes(raw[:len(raw) // 2])
    with pytest.raises(SnapshotError, match="truncated or damaged"):
        hv.restore_vm(tmp_path / "cut.snap", name="x")
    flipped = bytearray(raw)
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("pages_data.npy")
    flipped[info.header_offset + 200] ^= 0xFF
    (tmp_path / "flip.snap").write_bytes(bytes(flipped))
    with pytest.raises(SnapshotError, match="damaged"):
        hv.restore_vm(tmp_path / "flip.snap", name="x")
    (tmp_path / "other.snap").write_bytes(b"not a snapshot at all")
    with pytest.raises(SnapshotError, match="not a readable snapshot"):
        hv.restore_vm(tmp_path / "other.snap", name="x")
    old = tmp_path / "old.snap"
    with zipfile.ZipFile(good) as z, zipfile.ZipFile(old, "w") as out:
        for info in z.infolist():
            data = z.read(info)
            out.writestr(info, data.replace(b'"version": 3', b'"version": 0') if info.filename == "manifest.json" else data)
    with pytest.raises(SnapshotError, match="version 0"):
        hv.restore_vm(old, name="x")
    assert set(hv.vms) == {"small"} and vm.suspend_reason == "halt"


def test_the_lapic_timer_keeps_ticking_after_a_restore(hv, tmp_path):
    """The timer guest's periodic LAPIC timer: its registers (virtual-APIC page) and period come along,
    so the restored guest goes on counting seconds where it was."""
    vm = hv.create_vm("timer", mem_mb=32)
    vm.load(guest("timer.elf"), "timer.elf", cmdline="hz=100 seconds=4")
    vm.start()
    wait_for(vm, b"second 1: ")
    vm.snapshot(tmp_path / "timer.snap")
    vm.poweroff()
    copy = Hypervisor(host_mem_mb=256).restore_vm(tmp_path / "timer.snap")
    reader = copy.console.reader(from_start=False)
    seen = wait_for(copy, b"timer: done", reader=reader, timeout=60)
    assert b"second 3: " in seen and copy.wait(states=("suspended",), timeout=30) == "suspended"


def test_full_2mib_regions_come_back_with_their_contents_as_superpages(hv, tmp_path):
    """memtouch fills two 2 MiB regions (superpages); after a restore their bytes are the same and they are
    superpages again."""
    vm = hv.create_vm("full", mem_mb=64)
    vm.load(guest("memtouch.elf"), "memtouch.elf", cmdline="pages=1024 pattern=seq")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended"
    before = vm.memory_access.read(0x1000000, 4 << 20)
    vm.snapshot(tmp_path / "full.snap")
    copy = Hypervisor(host_mem_mb=256).restore_vm(tmp_path / "full.snap", start=False)
    assert copy.memory_access.read(0x1000000, 4 << 20) == before
    assert [copy.gpa_pmap(g)[-1]["level"] for g in (0x1000000, 0x1200000)] == [2, 2]
