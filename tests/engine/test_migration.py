"""Live migration between two modeled hosts over a real TCP connection: memtouch keeps rewriting its pages while
they are copied, and its own checksum, printed on the target, proves no write was lost."""
import socket
import threading

import pytest

from engine import Hypervisor
from engine import migration
from engine.errors import MigrationError
from tests.engine.conftest import CHECKED, guest
from tests.guests.memtouch_reference import checksum

KEY = b"k" * 32
PAGES, PASSES = 4096, 600


@pytest.fixture
def hosts():
    made = [Hypervisor(host_mem_mb=512, tunables=CHECKED) for _ in range(2)]
    yield made
    for hv in made:
        for vm in list(hv.vms.values()):
            vm.poweroff()


def connected():
    """Two ends of a real TCP connection on 127.0.0.1."""
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    return client, accepted


def memtouch(hv, passes=PASSES):
    vm = hv.create_vm("mt", mem_mb=64)
    vm.load(guest("memtouch.elf"), "memtouch.elf", cmdline="pages=%d pattern=random passes=%d" % (PAGES, passes))
    vm.start()
    wait_for(vm, b"base=0x")
    return vm


def wait_for(vm, text, timeout=60):
    reader = vm.console.reader()
    seen = b""
    while text not in seen:
        chunk = reader.read(timeout)
        assert chunk, "console never showed %r: %r" % (text, seen)
        seen += chunk


def migrate(source_vm, target_hv, key=KEY, target_key=KEY, **limits):
    """Run both sides; (figures or the source's error, arrival or the target's error)."""
    a, b = connected()
    got = {}

    def receive():
        try:
            got["arrival"] = migration.receive_vm(target_hv, migration.Channel(b, target_key, "source"))
            got["arrival"].done()
        except Exception as problem:
            got["arrival"] = problem

    thread = threading.Thread(target=receive)
    thread.start()
    try:
        figures = migration.send_vm(source_vm, migration.Channel(a, key, "target"), **limits)
    except MigrationError as problem:
        figures = problem
    a.close()
    thread.join(60)
    b.close()
    return figures, got["arrival"]


@pytest.mark.parametrize("tunables", [{}, {"hw.vmm.ept.use_hw_ad_bits": 0, "hw.vmm.ept.use_superpages": 0}],
                         ids=["hw-ad", "emulated-ad"])
def test_a_guest_rewriting_its_pages_finishes_on_the_target_with_its_checksum(hosts, tunables):
    src, dst = hosts
    for hv in hosts:
        for name, value in tunables.items():
            hv.tunables.set(name, value)
    vm = memtouch(src)
    figures, arrival = migrate(vm, dst)
    assert isinstance(figures, dict), figures
    src.destroy_vm("mt")
    moved = arrival.vm
    assert moved.wait(states=("suspended",), timeout=120) == "suspended"
    out = moved.console.contents().decode()
    assert "pages=%d pattern=random passes=%d" % (PAGES, PASSES) in out     # the console came along
    assert "checksum=0x%016x" % checksum(PAGES, "random", PASSES) in out
    assert moved.suspend_reason == "halt"
    assert figures["pages_sent"] == arrival.pages >= 1 and len(figures["rounds"]) >= 1
    assert figures["downtime_ms"] > 0 and figures["bytes_sent"] > 0


def test_a_wrong_key_is_refused_and_the_guest_runs_on_at_the_source(hosts):
    src, dst = hosts
    vm = memtouch(src, passes=200)
    figures, arrival = migrate(vm, dst, target_key=b"x" * 32)
    assert isinstance(figures, MigrationError) and isinstance(arrival, MigrationError)
    assert "HMAC" in str(arrival)
    assert "mt" not in dst.vms
    assert vm.wait(states=("suspended",), timeout=120) == "suspended"
    assert "checksum=0x%016x" % checksum(PAGES, "random", 200) in vm.console.contents().decode()


def test_a_target_that_refuses_leaves_the_vm_running(hosts):
    src, dst = hosts
    dst.create_vm("mt", mem_mb=16)                   # the name is taken there
    vm = memtouch(src, passes=200)
    figures, arrival = migrate(vm, dst)
    assert "already exists" in str(figures)
    assert vm.state in ("running", "halted", "suspended")
    assert vm.wait(states=("suspended",), timeout=120) == "suspended"
    assert "checksum=0x%016x" % checksum(PAGES, "random", 200) in vm.console.contents().decode()


def test_a_connection_cut_during_pre_copy_leaves_the_vm_running(hosts):
    src, dst = hosts
    vm = memtouch(src, passes=200)
    a, b = connected()
    channel = migration.Channel(a, KEY, "target")

    def target():                                    # takes HELO, says OKAY, reads one page frame, hangs up
        peer = migration.Channel(b, KEY, "source")
        peer.recv_json(b"HELO")
        peer.send_json(b"OKAY", {})
        peer.recv(b"PAGE")
        b.close()

    thread = threading.Thread(target=target)
    thread.start()
    calls = []
    with pytest.raises(MigrationError) as info:
        migration.send_vm(vm, channel, before_commit=lambda: calls.append(1))
    thread.join(10)
    a.close()
    assert not info.value.committed and calls == []
    assert vm.wait(states=("suspended",), timeout=120) == "suspended"
    assert "checksum=0x%016x" % checksum(PAGES, "random", 200) in vm.console.contents().decode()


def test_a_target_lost_after_commit_leaves_the_source_paused_and_says_so(hosts):
    """The target takes everything, answers READY, reads COMMIT and hangs up without DONE: the source cannot know
    whether the guest runs there, so it keeps its copy paused (not destroyed, not resumed) and says so. The caller's
    before_commit ran once, just before COMMIT; the paused copy still resumes and finishes its work."""
    src, _ = hosts
    vm = memtouch(src, passes=200)
    a, b = connected()
    seen = []

    def target():
        peer = migration.Channel(b, KEY, "source")
        peer.recv_json(b"HELO")
        peer.send_json(b"OKAY", {})
        while peer.recv(b"PAGE", b"XTRA")[0] != b"XTRA":
            pass
        peer.recv(b"STAT")
        peer.send_json(b"REDY", {"pages": 0})
        seen.append(peer.recv_json(b"COMT")[0])
        b.close()

    thread = threading.Thread(target=target)
    thread.start()
    calls = []
    with pytest.raises(MigrationError, match="handed over but the target did not confirm.*stays paused here") as info:
        migration.send_vm(vm, migration.Channel(a, KEY, "target"), before_commit=lambda: calls.append(list(seen)))
    thread.join(10)
    a.close()
    assert info.value.committed and seen == [b"COMT"] and calls == [[]]      # called before COMMIT went out
    assert vm.state == "paused" and vm.name in src.vms
    vm.resume()
    assert vm.wait(states=("suspended",), timeout=120) == "suspended"
    assert "checksum=0x%016x" % checksum(PAGES, "random", 200) in vm.console.contents().decode()


def test_the_dirty_log_holds_what_the_host_wrote_for_the_guest(hosts):
    vm = hosts[0].create_vm("d", mem_mb=16)
    vm.memory_access.write(0x5FF0, b"x" * 32)             # a loader's or a device's write, across two pages
    assert {5, 6} <= set(vm.dirty_log())
    assert not {5, 6} & set(vm.dirty_log())            # harvested: clean again


def test_a_vm_never_started_moves_with_its_zero_pages_and_stays_idle(hosts):
    src, dst = hosts
    vm = src.create_vm("idle", mem_mb=16)
    vm.memory_access.write(0x10000, bytes(4096))      # resident, all zeros: sent without its bytes
    vm.memory_access.write(0x20000, b"written by the host")
    figures, arrival = migrate(vm, dst)
    assert isinstance(figures, dict), figures
    moved = arrival.vm
    assert moved.state == "idle" and arrival.pages == figures["pages_sent"]
    assert {0x10, 0x20} <= set(moved.pmap.resident_pages().tolist())
    assert moved.memory_access.read(0x20000, 19) == b"written by the host"


def test_auto_converge_throttles_a_guest_that_dirties_faster_than_the_rounds_send(hosts):
    src, dst = hosts
    vm = memtouch(src, passes=1000)
    reader = vm.console.reader()
    while vm.pmap.resident_pages().size < PAGES:      # in its loop, every page touched: it dirties at full speed
        assert not reader.read(0.01).count(b"checksum"), "memtouch finished before it was migrated"
    figures, arrival = migrate(vm, dst, auto_converge=True, max_downtime=0.0001, max_rounds=6)
    assert isinstance(figures, dict), figures
    throttles = [r["throttle"] for r in figures["rounds"]]
    assert throttles[0] == 0 and 20 in throttles and throttles == sorted(throttles), figures   # 20, then up by 10
    assert all(b - a in (0, 10) for a, b in zip(throttles[1:], throttles[2:])), throttles
    src.destroy_vm("mt")
    moved = arrival.vm
    assert moved.wait(states=("suspended",), timeout=300) == "suspended"
    assert "checksum=0x%016x" % checksum(PAGES, "random", 1000) in moved.console.contents().decode()
