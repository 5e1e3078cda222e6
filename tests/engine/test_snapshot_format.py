"""The snapshot file: a running guest goes through plain data (JSON and .npy, no pickle) and comes back the same,
and a truncated, foreign or crafted file — pickles that would run code included — is refused with a message
naming the problem, before the host it is restored into changes at all."""
import io
import json
import pickle
import random
import resource
import signal
import threading
import zipfile

import numpy as np
import pytest

from engine import Hypervisor
from engine.cpu import tsc, ucstate
from engine.snapshot import SnapshotError, read_header
from engine.core import ctx as C
from engine.core import vmcs as VMCS
from tests.engine.conftest import assemble

COUNTER = 0x400000
# every vCPU adds to one counter, with lazy flags and an x87 stack in flight
COUNT = """
    fninit
1:  lock inc qword ptr [0x400000]
    add rcx, 3
    fld1
    fstp st(0)
    jmp 1b
"""
MEMBERS = {"manifest.json", "cpu.npy", "vmcs.npy", "counters.npy", "msrs.npy", "lapic.npy", "pages_gpa.npy",
           "pages_bits.npy", "pages_data.npy", "tlb.npy", "image.npy", "initrd.npy"}


class Payload:
    """Unpickling this creates `marker`: what a crafted snapshot would do to the server if it were unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def counter(vm):
    return int.from_bytes(vm.memory_access.read(COUNTER, 8), "little")


def wait_count(vm, above):
    while counter(vm) <= above:
        assert vm.state in ("running", "halted"), vm.state


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A paused two-vCPU guest's snapshot, taken on a host whose trace_guest_exceptions tunable is on."""
    folder = tmp_path_factory.mktemp("good")
    hv = Hypervisor(host_mem_mb=256)
    hv.tunables.set("hw.vmm.trace_guest_exceptions", 1)
    vm = hv.create_vm("small", mem_mb=8, cpus=2)
    vm.load(assemble(COUNT, folder), "count.bin", kind="flat64")
    vm.start(all_vcpus=True)
    wait_count(vm, 1000)
    vm.pause()
    vm.snapshot(folder / "good.snap")
    vm.poweroff()
    return folder / "good.snap"


# -- crafting files ---------------------------------------------------------------------------------------
def members(path):
    with zipfile.ZipFile(path) as z:
        return {info.filename: z.read(info) for info in z.infolist()}


def write_zip(path, content, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in content.items():
            z.writestr(name, data)
    return path


def npy(array, allow_pickle=False):
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def array(content, name):
    return np.lib.format.read_array(io.BytesIO(content[name + ".npy"]), allow_pickle=False).copy()


def crafted(good, out, manifest=None, arrays=None, raw=None, drop=()):
    """`good` with its manifest changed by manifest(doc), arrays by arrays[name](a) (in place or returned),
    members replaced by raw {name: bytes}, and members dropped."""
    content = members(good)
    if manifest is not None:
        doc = json.loads(content["manifest.json"])
        manifest(doc)
        content["manifest.json"] = json.dumps(doc).encode()
    for name, change in (arrays or {}).items():
        a = array(content, name)
        changed = change(a)
        content[name + ".npy"] = npy(a if changed is None else changed)
    content.update(raw or {})
    for name in drop:
        del content[name]
    return write_zip(out, content)


def refused(path, match, host=None):
    """Restoring `path` raises SnapshotError matching `match`, and the host is as it was."""
    host = host or Hypervisor(host_mem_mb=256)
    tunables, free = host.tunables.values.copy(), host.allocator.free_bytes
    with pytest.raises(SnapshotError, match=match):
        host.restore_vm(path)
    assert host.vms == {} and np.array_equal(host.tunables.values, tunables) and host.allocator.free_bytes == free


# -- round trip -------------------------------------------------------------------------------------------
def test_a_running_guest_comes_back_from_plain_data_exactly_as_it_was(hv, tmp_path):
    vm = hv.create_vm("count", mem_mb=8, cpus=2)
    vm.load(assemble(COUNT, tmp_path), "count.bin", kind="flat64")
    vm.start(all_vcpus=True)
    wait_count(vm, 1000)
    vm.snapshot(tmp_path / "running.snap")                 # taken while it runs: paused, saved, resumed
    assert vm.state in ("running", "halted")
    vm.pause()
    path = vm.snapshot(tmp_path / "paused.snap")["path"]
    saved = counter(vm)
    with zipfile.ZipFile(path) as z:
        assert {i.filename for i in z.infolist()} == MEMBERS and z.infolist()[0].filename == "manifest.json"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in z.infolist())
        assert json.loads(z.read("manifest.json"))["version"] == 3
        saved_tsc = [info["tsc"] for info in json.loads(z.read("manifest.json"))["vcpus"]]
    with np.load(path, allow_pickle=False) as plain:                  # plain numpy reads it, no pickle
        assert not any(plain[name].dtype.hasobject for name in plain.files if name != "manifest.json")
        assert plain["cpu"].dtype == ucstate.RECORD and plain["cpu"].shape == (2,)
    copy = Hypervisor(host_mem_mb=256).restore_vm(path, name="again", start=False)
    assert copy.state == "paused" and counter(copy) == saved
    for a, b, tsc_at_save in zip(vm.vcpus, copy.vcpus, saved_tsc):
        assert ucstate.read(a.uc).tobytes() == ucstate.read(b.uc).tobytes()
        assert a.registers() == b.registers()
        assert np.array_equal(a.counters, b.counters) and np.array_equal(a.msrs, b.msrs)
        assert tsc_at_save <= tsc.value(b) <= tsc.value(a)        # the TSC goes on from where it was saved
        guest_fields = [f.slot for f in VMCS.FIELDS if f.name not in ("EPTP", "ENTRY_MSR_LOAD", "TSC_OFFSET")]
        assert np.array_equal(a.vmcs.store[guest_fields], b.vmcs.store[guest_fields])
        assert [int(a.ctx[s]) for s in (C.LAPIC_FIX, C.INJECT, C.PENDING)] == \
               [int(b.ctx[s]) for s in (C.LAPIC_FIX, C.INJECT, C.PENDING)]
    assert copy.memory_access.read(0x200000, 4096) == vm.memory_access.read(0x200000, 4096)
    copy.resume()
    wait_count(copy, saved + 1000)
    copy.poweroff()
    vm.poweroff()


# -- refusals ---------------------------------------------------------------------------------------------
def test_truncated_files_are_refused(good, tmp_path):
    raw = good.read_bytes()
    host = Hypervisor(host_mem_mb=256)
    for cut in (0, 3, 100, len(raw) // 3, len(raw) // 2, len(raw) - 30, len(raw) - 1):
        (tmp_path / "cut.snap").write_bytes(raw[:cut])
        refused(tmp_path / "cut.snap", "not a readable snapshot|truncated", host)
    content = members(good)
    content["lapic.npy"] = content["lapic.npy"][:-100]              # the member ends early, the zip is whole
    refused(write_zip(tmp_path / "short.snap", content), r"truncated or damaged: member lapic.npy has \d+ bytes", host)
    content = members(good)
    content["vmcs.npy"] = content["vmcs.npy"].replace(b"'shape': (", b"'shape': [")     # a damaged header literal
    refused(write_zip(tmp_path / "header.snap", content), "member vmcs.npy cannot be read", host)


def test_foreign_files_and_other_formats_are_refused(good, tmp_path):
    host = Hypervisor(host_mem_mb=256)
    (tmp_path / "png.snap").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    refused(tmp_path / "png.snap", "not a zip archive", host)
    refused(write_zip(tmp_path / "docs.snap", {"readme.txt": b"hello"}), "a zip without manifest.json", host)
    np.savez(tmp_path / "plain.npz", data=np.arange(10))
    refused(tmp_path / "plain.npz", "a zip without manifest.json", host)
    content = members(good)
    content["manifest.json"] = content["manifest.json"].replace(b'"webhyve-snapshot"', b'"qemu-savevm"')
    refused(write_zip(tmp_path / "other.snap", content), "not a webhyve snapshot .format 'qemu-savevm'", host)
    refused(write_zip(tmp_path / "deflated.snap", members(good), zipfile.ZIP_DEFLATED), "compressed", host)
    content = members(good)
    content["manifest.json"] = b'{"format": "webhyve-snapshot", "version": 3' + b"[" * 100000
    refused(write_zip(tmp_path / "notjson.snap", content), "manifest.json is not valid JSON", host)


def test_a_manifest_asking_for_more_memory_than_the_host_has_is_refused_before_anything_is_allocated(good, tmp_path):
    def mem(mb):
        return lambda doc: doc["vm"].update(mem_mb=mb, mem_cap_mb=mb)
    refused(crafted(good, tmp_path / "huge.snap", manifest=mem(1 << 20)),
            "describes a VM of 1048576 MiB; this modeled host has 256 MiB in all")
    refused(crafted(good, tmp_path / "absurd.snap", manifest=mem(1 << 40)), r"vm.mem_mb = \d+ is outside 1..1048576")
    refused(crafted(good, tmp_path / "pages.snap", manifest=lambda doc: doc["memory"].update(pages=1 << 20)),
            "memory.pages = 1048576 is more than the VM's 8 MiB")
    refused(crafted(good, tmp_path / "image.snap", manifest=lambda doc: doc["image"].update(bytes=1 << 29)),
            r"image.npy has shape \(\d+,\); the manifest says \(536870912,\)")


def test_arrays_of_the_wrong_dtype_or_shape_are_refused(good, tmp_path):
    host = Hypervisor(host_mem_mb=256)
    refused(crafted(good, tmp_path / "float.snap", arrays={"pages_gpa": lambda a: a.astype(np.float64)}),
            "member pages_gpa.npy holds float64, expected uint64", host)
    refused(crafted(good, tmp_path / "narrow.snap", arrays={"vmcs": lambda a: a[:, :-1]}),
            r"member vmcs.npy has shape \(2, %d\); the manifest says \(2, %d\)" % (VMCS.NFIELDS - 1, VMCS.NFIELDS),
            host)
    refused(crafted(good, tmp_path / "record.snap", arrays={"cpu": lambda a: a[["regs", "eip"]].copy()}),
            "member cpu.npy holds records of 2 fields", host)
    refused(crafted(good, tmp_path / "fortran.snap", arrays={"lapic": np.asfortranarray}),
            "member lapic.npy is in Fortran order", host)


def test_missing_and_unexpected_members_are_refused(good, tmp_path):
    host = Hypervisor(host_mem_mb=256)
    refused(crafted(good, tmp_path / "missing.snap", drop=["tlb.npy", "cpu.npy"]),
            "incomplete: cpu.npy, tlb.npy missing", host)
    refused(crafted(good, tmp_path / "extra.snap", raw={"run.sh": b"rm -rf /"}), "does not have: run.sh", host)
    content = members(good)
    with zipfile.ZipFile(tmp_path / "twice.snap", "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in list(content.items()) + [("cpu.npy", content["cpu.npy"])]:
            z.writestr(name, data)
    refused(tmp_path / "twice.snap", "member cpu.npy appears more than once", host)


def test_an_object_array_member_is_refused_without_unpickling_it(good, tmp_path):
    marker = tmp_path / "object-array-ran"
    for name in ("cpu", "image"):
        evil = np.array([Payload(marker)], dtype=object)
        path = crafted(good, tmp_path / ("%s.snap" % name), raw={name + ".npy": npy(evil, allow_pickle=True)})
        refused(path, r"member %s.npy is an array of Python objects, .* \(nothing was unpickled\)" % name)
    assert not marker.exists()


def test_a_pickle_payload_that_would_create_a_file_never_runs(good, tmp_path):
    """Where version 1 kept each vCPU's pickled Unicorn context, and as the whole file: refused, not run."""
    marker = tmp_path / "pickle-ran"
    content = members(good)
    manifest = json.loads(content.pop("manifest.json"))
    manifest["version"] = 1
    old = {"header.npy": npy(np.frombuffer(json.dumps(manifest).encode(), np.uint8)),
           "vcpu0_uc.npy": npy(np.frombuffer(pickle.dumps(Payload(marker)), np.uint8))}
    for name in ("pages_gpa", "pages_bits", "tlb", "image"):
        old[name + ".npy"] = content[name + ".npy"]
    old["pages_data.npy"] = npy(array(content, "pages_data").reshape(-1))
    for part, source in (("vmcs", "vmcs"), ("counters", "counters"), ("msrs", "msrs"), ("lapic", "lapic")):
        for i in range(2):
            old["vcpu%d_%s.npy" % (i, part)] = npy(array(content, source)[i].reshape(-1))
    old["vcpu1_uc.npy"] = old["vcpu0_uc.npy"]
    refused(write_zip(tmp_path / "v1.snap", old), "a version 1 snapshot.* does not unpickle")
    (tmp_path / "raw.snap").write_bytes(pickle.dumps(Payload(marker)))
    refused(tmp_path / "raw.snap", "not a zip archive")
    content = members(good)
    content["manifest.json"] = pickle.dumps(Payload(marker))
    refused(write_zip(tmp_path / "manifest.snap", content), "manifest.json is not valid JSON")
    for path in ("v1.snap", "raw.snap", "manifest.snap"):
        with pytest.raises(SnapshotError):
            read_header(tmp_path / path)
    assert not marker.exists()


def test_random_damage_is_refused_with_a_snapshot_error_or_restores(good, tmp_path):
    """Bytes changed anywhere (seeded): the zip CRCs, the .npy headers and the checks catch it, or the
    change was harmless (a timestamp) and the VM restores; never another exception."""
    raw, rng, host = good.read_bytes(), random.Random(15), Hypervisor(host_mem_mb=256)
    outcomes = set()
    for _ in range(150):
        data = bytearray(raw)
        for _ in range(rng.choice((1, 3))):
            data[rng.randrange(len(data))] = rng.randrange(256)
        (tmp_path / "damaged.snap").write_bytes(bytes(data))
        try:
            host.destroy_vm(host.restore_vm(tmp_path / "damaged.snap", start=False).name)
            outcomes.add("restored")
        except SnapshotError:
            outcomes.add("refused")
    assert "refused" in outcomes and host.vms == {}


def _set(path, value):
    def change(doc):
        where = doc
        for key in path[:-1]:
            where = where[key]
        where[path[-1]] = value
    return change


@pytest.mark.parametrize("manifest, named", [
    (_set(("vm", "name"), "../../etc/passwd"), "vm.name = '../../etc/passwd' breaks the VM name rule"),
    (_set(("vm", "mem_mb"), "8"), "vm.mem_mb is '8', not an integer"),
    (_set(("vm", "cpus"), 3), "vcpus lists 2 vCPUs; vm.cpus says 3"),
    (_set(("vm", "profile"), "pentium"), "vm.profile is 'pentium', not one of"),
    (_set(("vm", "shell"), "rm -rf /"), "vm has a field 'shell' that webhyve does not write"),
    (_set(("vcpus", 0, "lapic", str(C.LAPIC_FIX)), 1 << 40),            # an index into the virtual-APIC page
     r"vcpus\[0\].lapic.%d = \d+ is outside 0..4096" % C.LAPIC_FIX),
    (_set(("vcpus", 1, "hostcpu"), -1), r"vcpus\[1\].hostcpu = -1 is outside 0..63"),
    (_set(("vcpus", 1, "index"), 0), r"vcpus\[1\].index = 0, not its position 1"),
    (_set(("vcpus", 0, "state"), "exploding"), r"vcpus\[0\].state is 'exploding'"),
    (_set(("vcpus", 1, "boot"), True), r"vcpus\[1\] is to boot through the reset stub, which its flat64 image"),
    (_set(("devices", "pit", "counters", 0, "reload"), 0), r"devices.pit.counters\[0\].reload = 0 is outside 1..65536"),
    (_set(("devices", "rtc", "index"), 200), "devices.rtc.index = 200 is outside 0..127"),
    (_set(("devices", "rtc", "ram"), [0] * 127), "devices.rtc.ram is .*, not a list of 128 items"),
    (_set(("devices", "kbc", "pending"), 0x20), "devices.kbc.pending is 32, not one of"),
    (_set(("devices", "kbc", "queue"), [[1, 2, 3]]), r"devices.kbc.queue\[0\]\[1\] is 2, not true or false"),
    (_set(("devices", "pci", "functions", "00:20.0"), [0] * 256), "'00:20.0' is not a PCI function's place"),
    (_set(("devices", "pci", "address"), 3), "devices.pci.address = 0x3 has bits outside 0x80fffffc"),
    (_set(("devices", "com1", "rx"), list(range(17))), "devices.com1.rx is .*, not a list of at most 16 items"),
    (_set(("devices", "vga", "crtc", "999"), 1), "devices.vga.crtc key '999' is not a number in 0..255"),
    (_set(("devices", "acpi", "pm", "control"), 5 << 10), "devices.acpi.pm.control = 0x1400 has SCI_EN clear"),
    (_set(("devices", "acpi", "pm", "enable"), 1), "devices.acpi.pm.enable = 0x1 has bits outside 0x720"),
    (_set(("tunables", "hw.vmm.maxcpu"), 1000), r"tunables\[hw.vmm.maxcpu\] = 1000 is outside 1..255"),
    (_set(("tunables", "kernel.evil"), 1), r"tunables\[kernel.evil\] is not a tunable of this webhyve"),
    (_set(("saved_at",), float("inf")), "is not valid JSON"),
])
def test_a_crafted_manifest_value_is_refused_naming_its_field(good, tmp_path, manifest, named):
    refused(crafted(good, tmp_path / "crafted.snap", manifest=manifest), named)


def _cpu(field, value):
    def change(a):
        a[0][field] = value
    return change


def _element(index, value):
    def change(a):
        a[index] = value
    return change


@pytest.mark.parametrize("arrays, named", [
    ({"cpu": _cpu("fpstt", 9)}, r"cpu\[0\] fpstt = 0x9 \(allowed: below 0x8\)"),
    ({"cpu": _cpu("cc_op", 200)}, r"cpu\[0\] cc_op = 0xc8"),
    ({"cpu": _cpu("efer", 1 << 40)}, r"cpu\[0\] efer"),
    ({"pages_bits": _element(0, 0xDEAD000 | 7)}, r"pages_bits\[0\] = 0xdead007 has bits outside"),
    ({"pages_gpa": _element(0, 0x123)}, r"pages_gpa\[0\] = 0x123 is not page-aligned"),
    ({"pages_gpa": _element(-1, 1 << 40)}, r"pages_gpa\[\d+\] = 0x10000000000 is beyond the VM's 8 MiB"),
    ({"pages_gpa": lambda a: np.concatenate([a[:1], a[:-1]])}, r"pages_gpa\[1\] = 0x\w+ is not above the page before"),
    ({"vmcs": _element((1, VMCS.BY_NAME["VPID"].slot), 1 << 20)}, r"vmcs\[1\] field VPID = 0x100000 is wider than 16"),
    ({"msrs": _element((0, 0, 0), 0xC0000080)}, r"msrs\[0\] is not the haswell profile's MSR table"),
    ({"tlb": lambda a: np.array([[0, 9, 0x1000, 0x1000, 7, 0]], np.uint64)}, r"tlb\[0\].vpid = 0x9"),
    ({"tlb": lambda a: np.array([[0, 1, 0x1000, 0x1000, 0xFF, 0]], np.uint64)}, r"tlb\[0\].perms = 0xff"),
])
def test_a_crafted_array_value_is_refused_naming_it(good, tmp_path, arrays, named):
    rows = _set(("tlb_entries",), 1) if "tlb" in arrays else None        # the manifest counts the TLB rows
    refused(crafted(good, tmp_path / "crafted.snap", manifest=rows, arrays=arrays), named)


def test_a_tlb_entry_for_a_high_half_address_is_restored(good, tmp_path):
    """A kernel's linear addresses (0xffff888000000000 on) are above 2^63: the restore inserts them as saved."""
    high = 0xFFFF888000400000
    row = np.array([[0, 1, high, COUNTER, 3, 1]], np.uint64)                # the guest's counter page
    path = crafted(good, tmp_path / "high.snap", manifest=_set(("tlb_entries",), 1), arrays={"tlb": lambda a: row})
    copy = Hypervisor(host_mem_mb=256).restore_vm(path, start=False)
    assert [(e["linear"], e["gpa"]) for host in copy.hypervisor.hostcpus for e in host.tlb_entries()
            if e["vpid"] == copy.vcpus[0].vpid] == [(high, COUNTER)]
    copy.hypervisor.destroy_vm(copy.name)


# -- writing ----------------------------------------------------------------------------------------------
def test_a_failed_save_leaves_the_previous_file_whole_and_no_temporary_file(good, tmp_path):
    hv = Hypervisor(host_mem_mb=256)
    vm = hv.restore_vm(good, start=False)
    path = tmp_path / "keep.snap"
    vm.snapshot(path)
    before = path.read_bytes()
    limits, handler = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, limits[1]))   # a disk that fills up at 16 KiB
    try:
        with pytest.raises(SnapshotError, match="cannot write snapshot .*keep.snap: File too large"):
            vm.snapshot(path)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert len(before) > 16 << 10 and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.snap"]
    vm.poweroff()


def test_a_reader_never_sees_a_half_written_snapshot(good, tmp_path):
    vm = Hypervisor(host_mem_mb=256).restore_vm(good, start=False)
    path = tmp_path / "busy.snap"
    vm.snapshot(path)
    done, problems, reads = threading.Event(), [], [0]

    def reader():
        while not done.is_set():
            try:
                read_header(path)
                reads[0] += 1
            except SnapshotError as problem:
                problems.append(str(problem))
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(20):
            vm.snapshot(path)
    finally:
        done.set()
        thread.join()
    assert problems == [] and reads[0] > 0
    vm.poweroff()
