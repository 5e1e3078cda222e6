"""REST /api/v1 through Flask's test client: VMs, lifecycle, console, panels, tunables, tokens and bad input."""
import pytest

from tests.webhyve.conftest import LIVE, ready_or_fail, wait_for

from engine.core import vmcs as V


def console_text(client, name):
    return client.get("/api/v1/vms/%s/console" % name).json["text"]


def test_no_token_no_data(app):
    """Without a token, or with a wrong one, every API route answers 401 with a JSON error."""
    anonymous = app.test_client()
    for path in ("/api/v1/vms", "/api/v1/tunables", "/api/v1/recordings"):
        response = anonymous.get(path)
        assert response.status_code == 401 and "token" in response.json["error"]
    assert anonymous.get("/api/v1/vms", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_type_help_and_read_the_answer(client, shell_vm):
    """Console input typed through the API reaches the shell; its help list comes back in the console text."""
    assert client.post("/api/v1/vms/sh/console", json={"data": "help\r"}).json == {"sent": 5}
    assert wait_for(lambda: "cpuid LEAF [SUB]" in console_text(client, "sh"))
    vms = client.get("/api/v1/vms").json["vms"]
    assert [(v["name"], v["image"]) for v in vms] == [("sh", "shell.elf")] and vms[0]["state"] in LIVE
    assert vms[0]["exits"] > 0


def test_viewer_token_is_read_only(client, viewer, shell_vm):
    """The viewer token reads everything but cannot type, change state or tunables; nothing changes."""
    assert viewer.get("/api/v1/vms/sh/console").status_code == 200
    assert viewer.post("/api/v1/vms/sh/console", json={"data": "echo no\r"}).status_code == 403
    assert viewer.post("/api/v1/vms/sh/pause").status_code == 403
    assert viewer.put("/api/v1/tunables/hw.vmm.halt_detection", json={"value": 0}).status_code == 403
    assert viewer.delete("/api/v1/vms/sh").status_code == 403
    assert client.get("/api/v1/vms/sh").json["state"] in LIVE
    assert "echo no" not in console_text(client, "sh")


def test_lifecycle_and_state_panels(client, shell_vm):
    """Pause shows every register and the next instructions; VMCS groups and stats follow the engine tables."""
    assert client.post("/api/v1/vms/sh/pause").json["state"] == "paused"
    regs = client.get("/api/v1/vms/sh/vcpus/0/registers").json
    assert regs["bits"] == 32 and "cr0" in regs["registers"]
    first = regs["disassembly"][0]
    assert first["address"] == regs["registers"]["rip"] and first["text"]
    vmcs = client.get("/api/v1/vms/sh/vcpus/0/vmcs").json
    assert [g["name"] for g in vmcs["groups"]] == list(V.GROUPS)
    fields = {f["name"]: f for g in vmcs["groups"] for f in g["fields"]}
    assert fields["GUEST_RIP"]["encoding"] == 0x681E and fields["VPID"]["value"] >= 17    # vpid_alloc: above hw.vmm.maxcpu
    assert vmcs["last_exit"]["name"] in ("EXTERNAL_INTERRUPT", "HLT")    # the pause kicked it out, or it waited in HLT
    stats = client.get("/api/v1/vms/sh/vcpus/0/stats").json
    assert stats["by_id"]["VMEXIT_INOUT"] > 0 and stats["text"].startswith("vcpu0 stats:")
    assert client.post("/api/v1/vms/sh/pause").status_code == 409          # not allowed twice
    assert client.post("/api/v1/vms/sh/resume").json["state"] in LIVE
    client.post("/api/v1/vms/sh/console", json={"data": "echo back\r"})
    assert wait_for(lambda: "\nback" in console_text(client, "sh"))


def test_reset_without_engine_support_is_a_clear_409(app, client, shell_vm):
    """The engine has no vm.reset() yet: the API says so and the VM keeps running."""
    vm = app.extensions["webhyve.fleet"].get("sh").vm
    response = client.post("/api/v1/vms/sh/reset")
    if hasattr(vm, "reset"):
        assert response.status_code == 200
    else:
        assert response.status_code == 409 and "reset not supported" in response.json["error"]
        assert client.get("/api/v1/vms/sh").json["state"] in LIVE


def test_poweroff_then_destroy(client, shell_vm):
    assert client.post("/api/v1/vms/sh/poweroff").json["state"] == "suspended"
    assert client.delete("/api/v1/vms/sh").json == {"destroyed": "sh"}
    assert client.get("/api/v1/vms/sh").status_code == 404
    assert client.get("/api/v1/vms").json["vms"] == []


def test_summary_words_actions_and_uptime_follow_the_state(client, shell_vm):
    """The words the pages show and the buttons they enable: idle in HLT; powered off (Start and Reset only);
    stopped with its reason after the guest's own triple fault (Start, Reset, Power off); Start boots it afresh."""
    vm = lambda: client.get("/api/v1/vms/sh").json
    assert wait_for(lambda: vm()["status"] == "idle in HLT")
    now = vm()
    assert now["actions"] == ["pause", "reset", "poweroff"] and now["uptime_s"] >= 0
    off = client.post("/api/v1/vms/sh/poweroff").json
    assert (off["status"], off["actions"], off["uptime_s"]) == ("powered off", ["start", "reset"], None)
    on = client.post("/api/v1/vms/sh/start").json                  # no longer "already started" (409)
    assert on["state"] in LIVE and on["actions"] == ["pause", "reset", "poweroff"]
    assert wait_for(lambda: "start after powered off" in console_text(client, "sh"))
    assert wait_for(lambda: console_text(client, "sh").rstrip().endswith("webhyve>"))
    client.post("/api/v1/vms/sh/console", json={"data": "triple\r"})
    assert wait_for(lambda: vm()["state"] == "suspended")
    stopped = vm()
    assert stopped["status"] == "stopped: triplefault" and stopped["actions"] == ["start", "reset", "poweroff"]
    assert "triple fault" in stopped["status_detail"]
    assert client.post("/api/v1/vms/sh/start").json["state"] in LIVE


def test_bundled_flat_binaries_are_flat64(client):
    """flat64 and readers are offered as flat64 and boot so, not refused under "detect" as their link-step ELF."""
    kinds = client.get("/api/v1/guests").json["kinds"]
    assert kinds["flat64"] == kinds["readers"] == "flat64" and kinds["shell"] is None
    for name in ("flat64", "readers"):
        made = client.post("/api/v1/vms", json={"name": name, "guest": name, "mem_mb": 16})
        assert made.status_code == 201 and made.json["kind"] == "flat64", made.json
        client.delete("/api/v1/vms/" + name)


def test_upload_a_bad_image_is_refused_and_leaves_nothing(client, shell_vm):
    """An uploaded file with no multiboot header or boot signature: the loader's message, no VM created."""
    import io
    response = client.post("/api/v1/vms", data={"name": "junk", "image": (io.BytesIO(b"\x01" * 2048), "junk.img")},
                           content_type="multipart/form-data")
    assert response.status_code == 400 and "junk.img" in response.json["error"]
    assert "boot signature" in response.json["error"]
    assert 'kind "flat64" (the form\'s kind field; vmmctl --kind flat64)' in response.json["error"]
    assert [v["name"] for v in client.get("/api/v1/vms").json["vms"]] == ["sh"]


def test_too_many_vcpus_is_refused_with_the_engines_reason(client):
    """cpus beyond VM_MAXCPU, or beyond hw.vmm.maxcpu: 400 with the engine's message, no VM created."""
    from engine.tunables import VM_MAXCPU
    response = client.post("/api/v1/vms", json={"name": "many", "guest": "shell", "cpus": VM_MAXCPU + 1})
    assert response.status_code == 400
    assert "%d vCPUs requested; webhyve models at most %d (xAPIC IDs are 8 bits" % (VM_MAXCPU + 1, VM_MAXCPU) \
        in response.json["error"]
    response = client.post("/api/v1/vms", json={"name": "many", "guest": "shell", "cpus": 17})
    assert response.status_code == 400 and "hw.vmm.maxcpu allows 1 to 16" in response.json["error"]
    assert client.get("/api/v1/vms").json["vms"] == []


def test_upload_a_boot_sector(client):
    """A real boot sector uploaded as a file is detected, booted and writes through the BIOS."""
    import io
    import os
    from tests.webhyve.conftest import ROOT
    with open(os.path.join(ROOT, "guests", "build", "bootsec.img"), "rb") as f:
        image = f.read()
    response = client.post("/api/v1/vms", data={"name": "bs", "mem_mb": "2", "image": (io.BytesIO(image), "disk.img")},
                           content_type="multipart/form-data")
    assert response.status_code == 201 and response.json["kind"] == "bootsector"
    assert wait_for(lambda: any(line.strip() for line in client.get("/api/v1/vms/bs/vga").json["lines"]))


def test_malformed_requests_get_json_errors(client, shell_vm):
    """Broken JSON, wrong types, unknown names: a 4xx with a message each, and the VM runs on."""
    cases = [
        client.post("/api/v1/vms", data="{not json", content_type="application/json"),
        client.post("/api/v1/vms", json=["a list"]),
        client.post("/api/v1/vms", json={"name": "x"}),
        client.post("/api/v1/vms", json={"name": "x", "guest": "nope"}),
        client.post("/api/v1/vms", json={"name": "x", "guest": "shell", "mem_mb": "lots"}),
        client.post("/api/v1/vms", json={"name": "bad name!", "guest": "shell"}),
        client.post("/api/v1/vms", json={"name": "sh", "guest": "shell"}),
        client.post("/api/v1/vms/sh/console", json={"data": 42}),
        client.post("/api/v1/vms/sh/explode"),
        client.get("/api/v1/vms/nope/vcpus/0/registers"),
        client.get("/api/v1/vms/sh/vcpus/7/registers"),
        client.get("/api/v1/vms/sh/ept/lookup?gpa=banana"),
        client.put("/api/v1/tunables/hw.vmm.nonsense", json={"value": 1}),
        client.put("/api/v1/tunables/hw.vmm.halt_detection", json={"value": 7}),
        client.get("/api/v1/no/such/route"),
        client.get("/api/v1/vms/sh/screenshot/other.png"),
    ]
    for response in cases:
        assert 400 <= response.status_code < 500, response.get_data(as_text=True)
        assert response.json["error"]
    assert client.get("/api/v1/vms/sh").json["state"] in LIVE
    assert [v["name"] for v in client.get("/api/v1/vms").json["vms"]] == ["sh"]


def test_tunable_change_is_validated_and_applied(client):
    tunables = {t["name"]: t for t in client.get("/api/v1/tunables").json["tunables"]}
    assert tunables["hw.vmm.halt_detection"]["value"] == 1 and tunables["hw.vmm.halt_detection"]["description"]
    assert client.put("/api/v1/tunables/hw.vmm.halt_detection", json={"value": "off"}).json == \
        {"name": "hw.vmm.halt_detection", "old": 1, "value": 0}
    tunables = {t["name"]: t for t in client.get("/api/v1/tunables").json["tunables"]}
    assert tunables["hw.vmm.halt_detection"]["value"] == 0 and tunables["hw.vmm.halt_detection"]["default"] == 1


def test_engine_views_ept_tlb_and_l1d(client, shell_vm):
    """The EPT map, an EPT walk, a guest-linear translation, the TLB and L1D models, as the panels get them."""
    ept = client.get("/api/v1/vms/sh/ept").json
    assert ept["available"] and ept["value"][0]["name"] == "lowmem" and ept["value"][0]["populated"] > 0
    lookup = client.get("/api/v1/vms/sh/ept/lookup?gpa=0x100000").json["value"]
    assert [row["level"] for row in lookup] == [4, 3, 2, 1] or lookup[-1]["level"] == 2
    assert lookup[-1]["flags"].startswith("R")                     # the kernel's page is mapped
    caches = client.get("/api/v1/vms/sh/caches").json
    tlb, l1d = caches["tlb"][0]["value"], caches["l1d"][0]["value"]
    assert tlb["misses"] > 0 and tlb["vpid"] >= 17 and tlb["capacity"] == 1024       # vpid_alloc: above maxcpu
    assert l1d["hostcpu"] == tlb["hostcpu"] and sum(l1d["occupancy"].values()) + l1d["free_lines"] == 512
    assert l1d["flushes_sw"] > 0                                   # haswell: bhyve's software flush on entry
    client.post("/api/v1/vms/sh/pause")
    walk = client.get("/api/v1/vms/sh/vcpus/0/translate?gla=0x100000").json["value"]
    leaf, size = lookup[-1], 1 << (12 + 9 * (lookup[-1]["level"] - 1))       # a 4 KiB or a 2 MiB leaf
    assert walk["gpa"] == 0x100000 and walk["hpa"] == leaf["entry"] & 0xFFFFFFFFFF000 & ~(size - 1)


def test_every_bundled_guest_boots(client):
    """Each image guests/Makefile builds is offered, and creating a VM from it loads and starts it."""
    guests = client.get("/api/v1/guests").json["guests"]
    assert {"shell", "hello", "spin", "longmode", "flat64", "bootsec"} <= set(guests)
    for guest in ("hello", "longmode", "flat64", "bootsec"):
        response = client.post("/api/v1/vms", json={"name": guest, "guest": guest, "mem_mb": 8})
        assert response.status_code == 201, response.json
        assert response.json["kind"] == {"flat64": "flat64", "bootsec": "bootsector"}.get(guest, "multiboot")


def test_one_name_rule_for_vms_snapshots_and_recordings(client):
    """VM and snapshot names follow engine/names.py; a 64-character VM records and its recording is listed under
    its name (a 300-character name once failed with a 500, `ünï` recorded files the list never showed)."""
    longest = "v" * 64
    assert client.post("/api/v1/vms", json={"name": longest, "guest": "hello", "start": False}).status_code == 201
    refused = [
        client.post("/api/v1/vms", json={"name": "ünï", "guest": "hello", "start": False}),
        client.post("/api/v1/vms", json={"name": "x" * 300, "guest": "hello", "start": False}),
        client.post("/api/v1/vms", json={"name": "x" * 65, "guest": "hello", "start": False}),
        client.post("/api/v1/vms/%s/snapshot" % longest, json={"name": "ünï"}),
        client.post("/api/v1/snapshots/%s/restore" % ("s" * 65), json={}),
        client.post("/api/v1/vms/ünï/recording"),
    ]
    for response in refused:
        assert response.status_code == 400, response.json
        assert "ASCII letters, digits, '-' and '_', 1 to 64 characters" in response.json["error"]
    assert [vm["name"] for vm in client.get("/api/v1/vms").json["vms"]] == [longest]
    started = client.post("/api/v1/vms/%s/recording" % longest)
    assert started.status_code == 201
    client.delete("/api/v1/vms/%s/recording" % longest)
    assert [(r["id"], r["vm"]) for r in client.get("/api/v1/recordings").json["recordings"]] == \
        [(started.json["id"], longest)]


def test_a_guest_that_never_gets_ready_is_destroyed_and_fails_the_test(client):
    """What the VM fixtures do when their guest misses its timeout: no VM is left running behind the failure."""
    assert client.post("/api/v1/vms", json={"name": "late", "guest": "shell"}).status_code == 201
    console = lambda: client.get("/api/v1/vms/late/console").json["text"]
    with pytest.raises(pytest.fail.Exception, match="VM 'late' never said hello within 0.5s; destroyed. Console: "):
        ready_or_fail(lambda: "hello" in console(), "VM 'late' never said hello", console,
                      lambda: client.delete("/api/v1/vms/late"), timeout=0.5)
    assert client.get("/api/v1/vms").json["vms"] == []


def test_the_bundled_linux_guest_and_an_uploaded_kernel_with_its_initrd(client):
    """The VM list offers Debian's kernel with the busybox initramfs as bundled guest "linux" (256 MiB and
    console=ttyS0 unless the request says otherwise); a kernel and an initrd uploaded as files load the same way;
    an initrd the memory cannot hold and a truncated kernel are refused with the loader's reason, no VM left."""
    import io
    import os
    from tests.webhyve.conftest import ROOT
    assert "linux" in client.get("/api/v1/guests").json["guests"]
    response = client.post("/api/v1/vms", json={"name": "lx", "guest": "linux", "start": False})
    assert response.status_code == 201 and response.json["kind"] == "linux", response.json
    with open(os.path.join(ROOT, "guests", "build", "linux", "vmlinuz"), "rb") as f:
        kernel = f.read()
    with open(os.path.join(ROOT, "guests", "build", "linux", "initrd.gz"), "rb") as f:
        initrd = f.read()
    response = client.post("/api/v1/vms", data={"name": "up", "mem_mb": "128", "cmdline": "console=ttyS0 quiet",
                                                "start": "false", "image": (io.BytesIO(kernel), "vmlinuz"),
                                                "initrd": (io.BytesIO(initrd), "initrd.gz")},
                           content_type="multipart/form-data")
    assert response.status_code == 201 and response.json["kind"] == "linux", response.json
    big = client.post("/api/v1/vms", data={"name": "big", "mem_mb": "90", "image": (io.BytesIO(kernel), "vmlinuz"),
                                           "initrd": (io.BytesIO(bytes(40 << 20)), "huge.gz")},
                      content_type="multipart/form-data")
    assert big.status_code == 400 and "does not fit in guest memory" in big.json["error"], big.json
    cut = client.post("/api/v1/vms", data={"name": "cut", "mem_mb": "100",
                                           "image": (io.BytesIO(kernel[:len(kernel) // 2]), "vmlinuz")},
                      content_type="multipart/form-data")
    assert cut.status_code == 400 and "truncated" in cut.json["error"], cut.json
    assert sorted(v["name"] for v in client.get("/api/v1/vms").json["vms"]) == ["lx", "up"]
