"""PCI devices through the REST API: POST /vms takes bhyve's -s arguments (`slots`), parsed by the parser vmmctl run
uses, and GET /vms/NAME/devices shows the bus as the device models hold it. A bad -s is a 400 with the CLI's own
message and leaves no VM; a disk image comes only from the server's disk directory (DISKS_DIR)."""
import os

import pytest
from click.testing import CliRunner

from tests.webhyve.conftest import ROOT, ready_or_fail
from webhyve.cli.vmmctl import main

SHELL = os.path.join(ROOT, "guests", "build", "shell.elf")


@pytest.fixture
def disks(app):
    """The server's disk directory with a 1 MiB image, disk.img."""
    folder = app.config["DISKS_DIR"]
    os.makedirs(folder)
    with open(os.path.join(folder, "disk.img"), "wb") as f:
        f.write(bytes(1 << 20))
    return folder


def console(client, name):
    return client.get("/api/v1/vms/%s/console" % name).json["text"]


def vm_names(client):
    return [vm["name"] for vm in client.get("/api/v1/vms").json["vms"]]


def test_create_with_slots_as_bhyve_takes_them(client, viewer, disks):
    """-s 3,virtio-blk,disk.img and -s 4,virtio-net,switch0 from JSON: the guest's lspci lists them, and the devices
    panel has each slot with its IDs, BARs as placed, MSI-X entries and queues, and the image it serves."""
    created = client.post("/api/v1/vms", json={"name": "dev", "guest": "shell",
                                               "slots": ["3,virtio-blk,disk.img", "4,virtio-net,switch0"]})
    assert created.status_code == 201, created.json
    ready_or_fail(lambda: "webhyve>" in console(client, "dev"), "VM 'dev' never printed its prompt",
                  lambda: console(client, "dev"), lambda: client.delete("/api/v1/vms/dev"))
    client.post("/api/v1/vms/dev/console", json={"data": "lspci\r"})
    ready_or_fail(lambda: "00:04.0 1af4:1041 class 020000" in console(client, "dev"), "lspci listed no NIC",
                  lambda: console(client, "dev"), lambda: client.delete("/api/v1/vms/dev"))
    assert "00:03.0 1af4:1042 class 010000" in console(client, "dev")
    functions = viewer.get("/api/v1/vms/dev/devices").json["functions"]     # the viewer reads it too
    assert [(f["bdf"], f["vendor"], f["device"], f["class"]) for f in functions] == [
        ("00:00.0", 0x1275, 0x1275, 0x060000), ("00:03.0", 0x1AF4, 0x1042, 0x010000),
        ("00:04.0", 0x1AF4, 0x1041, 0x020000)]
    _, blk, net = functions
    assert blk["backend"] == {"emulation": "virtio-blk", "image": os.path.realpath(os.path.join(disks, "disk.img")),
                              "readonly": False, "capacity_sectors": 2048}
    assert [(b["index"], b["kind"], b["size"]) for b in blk["bars"]] == [(1, "mem32", 0x1000), (4, "mem32", 0x4000)]
    assert all(0xC0000000 <= b["address"] < 0xC0040000 for b in blk["bars"])
    assert len(blk["msix"]["vectors"]) == 2 and all(v["masked"] for v in blk["msix"]["vectors"])   # as at reset
    assert [q["size"] for q in blk["virtio"]["queues"]] == [256] and blk["counts"]["read"] == 0  # no driver
    assert net["backend"]["switch"] == "switch0" and net["backend"]["mac"].startswith("00:a0:98:")
    assert [q["index"] for q in net["virtio"]["queues"]] == [0, 1]


def test_an_upload_takes_slots_one_per_line(client, disks):
    """A multipart upload's `slots` is the create form's textarea: one -s a line, blank lines left out."""
    with open(SHELL, "rb") as f:
        created = client.post("/api/v1/vms", content_type="multipart/form-data", data={
            "name": "up", "image": (f, "shell.elf"), "start": "false",
            "slots": "3,virtio-blk,disk.img\r\n\r\n  5:1,virtio-blk,./disk.img,ro\n"})
    assert created.status_code == 201, created.json
    functions = client.get("/api/v1/vms/up/devices").json["functions"]
    assert [(f["bdf"], f.get("backend", {}).get("readonly")) for f in functions] == [
        ("00:00.0", None), ("00:03.0", False), ("00:05.1", True)]


CLI_ERRORS = ["3", "3,e1000,switch0", "3:9,virtio-net,switch0", "1:3:0,virtio-net,switch0", "x,virtio-net,switch0",
              "0,virtio-net,switch0", "3,virtio-net,tap0", "3,virtio-net,switch0,mac=zz", "3,virtio-blk",
              "3,virtio-blk,disk.img,rw"]


@pytest.mark.parametrize("spec", CLI_ERRORS)
def test_a_bad_slot_is_the_clis_error_as_a_400(client, disks, spec):
    """The message is the one vmmctl run prints for the same -s (without its "vmmctl: "), and no VM is left."""
    answer = client.post("/api/v1/vms", json={"name": "bad", "guest": "shell", "slots": [spec]})
    cli = CliRunner(mix_stderr=False).invoke(main, ["run", SHELL, "-s", spec])
    assert cli.exit_code == 1 and cli.stderr.startswith("vmmctl: -s %s: " % spec), cli.stderr
    assert answer.status_code == 400 and answer.json["error"] == cli.stderr.strip()[len("vmmctl: "):]
    assert vm_names(client) == []


def test_a_slot_taken_twice_and_too_many_are_refused(client, disks):
    twice = client.post("/api/v1/vms", json={"name": "bad", "guest": "shell",
                                             "slots": ["3,virtio-blk,disk.img", "3,virtio-net,switch0"]})
    assert twice.status_code == 400
    assert twice.json["error"] == "-s 3,virtio-net,switch0: slot 00:03.0 is already taken by 3,virtio-blk,disk.img"
    many = client.post("/api/v1/vms", json={"name": "bad", "guest": "shell",
                                            "slots": ["%d,virtio-net,switch0" % n for n in range(1, 32)]})
    assert many.status_code == 400 and "at most" in many.json["error"] and "PCI devices" in many.json["error"]
    not_a_list = client.post("/api/v1/vms", json={"name": "bad", "guest": "shell", "slots": "3,virtio-blk,disk.img"})
    assert not_a_list.status_code == 400 and "field 'slots' must be a list" in not_a_list.json["error"]
    assert vm_names(client) == []


def test_images_come_only_from_the_disk_directory(client, disks, tmp_path):
    """An absolute path, a way out by .. or by a symbolic link, a file that is not there: each a 400 that says so,
    the same whether or not the file outside exists, and nothing is opened."""
    outside = tmp_path / "secret.img"
    outside.write_bytes(bytes(4096))
    os.symlink(str(outside), os.path.join(disks, "link.img"))
    where = "the server's disk directory (WEBHYVE_DISKS_DIR)"
    for path, says in ((str(outside), "%s is an absolute path: give the image's path inside %s" % (outside, where)),
                       ("../secret.img", "../secret.img leads outside " + where),
                       ("../nothing.img", "../nothing.img leads outside " + where),
                       ("link.img", "link.img leads outside " + where),
                       ("none.img", "no image file none.img in " + where),
                       ("a\0b", "an image path has no NUL character")):
        spec = "3,virtio-blk,%s" % path
        answer = client.post("/api/v1/vms", json={"name": "bad", "guest": "shell", "slots": [spec]})
        assert answer.status_code == 400 and answer.json["error"] == "-s %s: virtio-blk: %s" % (spec, says)
    sockets = client.post("/api/v1/vms", json={"name": "bad", "guest": "shell",
                                               "slots": ["4,virtio-net,switch0,listen=127.0.0.1:0"]})
    assert sockets.status_code == 400 and "listen= and connect= open sockets" in sockets.json["error"]
    assert vm_names(client) == []
