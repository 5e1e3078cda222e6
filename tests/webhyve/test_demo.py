"""The bundled scenarios, run headless as `vmmctl demo` runs them, and the snapshot and demo endpoints."""
import json
import os
import pickle
import re
import subprocess
import sys
import zipfile

import pytest

from tests.guests.linux_images import LINUX_DIR, kernel_release, linux_images
from tests.webhyve.conftest import ROOT, wait_for
from webhyve.demos import scenario as demo

SCENARIOS = {"demand-paging", "invept-sharing", "l1tf", "linux-boot", "posted-interrupts"}


def asciinema_cat(path):
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "asciinema"), "cat", path],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


# linux-boot is one boot of Debian's kernel on 2 vCPUs: about 100 s here (45 s of it in the bzImage's decompressor,
# before the first line), beyond what the suite can spend on one demo. It runs with WEBHYVE_LINUX_DEMO=1.
LINUX_DEMO = os.environ.get("WEBHYVE_LINUX_DEMO") == "1"


def linux_built():
    return (LINUX_DIR / "vmlinuz").exists() and (LINUX_DIR / "initrd.gz").exists()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run of each bundled scenario; linux-boot when asked for and `make linux` built the guest."""
    out = tmp_path_factory.mktemp("demos")
    return {name: demo.run_headless(name, str(out / name)) for name in demo.bundled()
            if name != "linux-boot" or (LINUX_DEMO and linux_built())}


def test_every_bundled_scenario_loads_and_runs(runs):
    assert set(demo.bundled()) == SCENARIOS
    assert set(runs) == SCENARIOS - (set() if LINUX_DEMO and linux_built() else {"linux-boot"})
    for name, summary in runs.items():
        cast, *pictures, text = summary["files"]
        assert cast.endswith(".cast") and text.endswith("-summary.txt")
        assert all(p.endswith(".png") and os.path.getsize(p) > 1000 for p in pictures)
        assert demo.load(name)["title"] in open(text).read()


def test_demand_paging_shows_faults_and_superpages(runs):
    figures = runs["demand-paging"]["figures"]
    assert figures["guest pages backed on first touch"] >= 3072
    assert figures["EPT violations (nested page faults)"] >= figures["guest pages backed on first touch"]
    assert figures["2 MiB superpages in place"] >= 5
    assert "checksum=0x" in asciinema_cat(runs["demand-paging"]["files"][0])


def test_invept_sharing_shows_one_invept_three_saved_and_a_stale_page(runs):
    figures = runs["invept-sharing"]["figures"]
    assert figures["INVEPTs after the move (4 vCPUs)"] - figures["INVEPTs before the move"] == 1
    assert figures["INVEPTs saved by eptgen per host CPU"] == 3
    assert figures["lines showing the new value while the invalidation is skipped"] == 0
    text = asciinema_cat(runs["invept-sharing"]["files"][0])
    assert text.index("sees 0x0000000000002222") < text.index("sees 0x0000000000003333")


def test_l1tf_leaks_until_the_flush_goes_on(runs):
    figures = runs["l1tf"]["figures"]
    assert 16 <= figures["secret bytes leaked (of 64)"] < 64
    assert figures["software L1D flushes"] > 0 and figures["transient windows"] == 192
    assert "hw.vmm.l1d_flush: 0 -> 1" in runs["l1tf"]["log"]
    # Tunables are host-wide: the run puts back what it changed, for the VMs that come after it.
    assert "restored host-wide hw.vmm.l1d_flush: 1 -> -1" in runs["l1tf"]["log"]
    assert "restored host-wide hw.vmm.l1d_sim: 1 -> 0" in runs["l1tf"]["log"]


def test_posted_interrupts_side_by_side(runs):
    figures = runs["posted-interrupts"]["figures"]
    for label in ("posted", "not posted"):
        assert figures["%s: interrupts sent/s" % label] >= 1000
        assert figures["%s: VM exits/s" % label] > 0
    assert figures["posted: external-interrupt exits/s"] < figures["not posted: external-interrupt exits/s"]


def test_linux_boot_narrates_exits_first_touches_invalidations_and_ipis(runs):
    """Debian's kernel on 2 vCPUs, to the init's workload and ACPI poweroff: the figures read at each mark grow as
    the boot goes on, both vCPUs came up through IPIs, and the invalidations bhyve saves are counted."""
    if not LINUX_DEMO:
        pytest.skip("one Linux boot on 2 vCPUs (about 100 s): run with WEBHYVE_LINUX_DEMO=1")
    linux_images()
    figures = runs["linux-boot"]["figures"]
    text = asciinema_cat(runs["linux-boot"]["files"][0])
    assert "Linux version " + kernel_release() in text
    assert "webhyve-init: up on %s, 2 CPU(s)" % kernel_release() in text
    assert text.index("answer=42") < text.index("forks=20") < text.index("reboot: Power down")
    touches = [figures[k] for k in ("first line: EPT first touches", "2 vCPUs up: EPT first touches",
                                     "init up: EPT first touches", "workload done: EPT first touches",
                                     "EPT first touches")]
    assert 0 < touches[0] and touches == sorted(touches)
    assert figures["workload done: EPT first touches"] - figures["init up: EPT first touches"] < 1000   # mapped already
    top = figures["top exit reasons"]
    assert len(top) == 6 and list(top.values()) == sorted(top.values(), reverse=True)
    assert {"VMEXIT_NESTED_FAULT", "VMEXIT_INOUT"} <= set(top) and not set(top) & set(demo.NOT_A_REASON)
    assert sum(top.values()) <= figures["exits"] and figures["init up: exits"] < figures["exits"]
    assert top["VMEXIT_NESTED_FAULT"] >= figures["EPT first touches"]       # every first touch is an EPT violation
    assert figures["2 vCPUs up: IPIs sent"] >= 3                          # INIT, SIPI, SIPI at least
    assert figures["IPIs sent"] >= figures["2 vCPUs up: IPIs sent"] and figures["IPIs received"] > 0
    assert figures["INVEPTs saved"] <= figures["INVEPTs done"]            # 2 vCPUs: one saved at most per INVEPT
    assert figures["INVVPIDs done"] + figures["INVVPIDs saved"] >= 2       # each vCPU's first entry on a host CPU
    summary = open(runs["linux-boot"]["files"][-1]).read()
    assert "VCPU_INVEPT_SAVED" in summary and "top exit reasons" in summary and "VMEXIT_NESTED_FAULT " in summary


def test_top_exits_and_an_initrd_are_scenario_keys(tmp_path):
    """`top_exits = N` names the N exit reasons counted most (sums over the vCPUs), as the histogram ranks them; a
    figure takes exactly one source; a missing initrd names the make target that builds it."""
    scenario = tmp_path / "top.toml"
    scenario.write_text('title = "top"\n[vm]\nguest = "shell.elf"\ncpus = 2\n[[step]]\nwait = "webhyve>"\n'
                        '[[step]]\nfigure = "top"\ntop_exits = 3\n[[step]]\nfigure = "all"\nstat = "VMEXIT_COUNT"\n')
    from engine.door import Host
    from webhyve.sessions.fleet import Fleet
    fleet = Fleet(Host(host_mem_mb=256), lambda *a, **k: None, str(tmp_path / "rec"))
    try:
        summary = demo.Run(fleet, demo.load(str(scenario)), str(tmp_path / "out")).run()
        top = summary["figures"]["top"]
        assert 1 <= len(top) <= 3 and all(k.startswith("VMEXIT_") and k not in demo.NOT_A_REASON for k in top)
        assert list(top.values()) == sorted(top.values(), reverse=True) and sum(top.values()) <= summary["figures"]["all"]
        assert "top = %s" % ", ".join("%s %d" % item for item in top.items()) in summary["log"]
        scenario.write_text('title = "x"\n[vm]\nguest = "linux/nothing"\ninitrd = "linux/initrd.gz"\n'
                            '[[step]]\nwait = "a"\n')
        with pytest.raises(demo.ScenarioError, match="guest linux/nothing is not built: run `make linux`"):
            demo.Run(fleet, demo.load(str(scenario)), str(tmp_path / "out2")).run()
    finally:
        fleet.close()
    scenario.write_text('title = "x"\n[vm]\nguest = "shell.elf"\n[[step]]\nfigure = "f"\nstat = "VMEXIT_COUNT"\n'
                        'top_exits = 2\n')
    with pytest.raises(demo.ScenarioError, match="step 1: figure 'f' needs exactly one of stat, ept"):
        demo.load(str(scenario))


def test_a_broken_scenario_is_refused_with_its_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('title = "x"\n[vm]\nguest = "shell.elf"\n[[step]]\nwait = "a"\nsleep = 1\n')
    with pytest.raises(demo.ScenarioError, match="step 1 needs exactly one of"):
        demo.load(str(bad))
    with pytest.raises(demo.ScenarioError, match="no scenario 'nope'"):
        demo.load("nope")


def test_a_scenario_named_against_the_name_rule_is_refused(tmp_path):
    """The scenario's name names its VM and files, so it follows engine/names.py's rule."""
    unnamed = tmp_path / "démo.toml"
    unnamed.write_text('title = "x"\n[vm]\nguest = "shell.elf"\n[[step]]\nwait = "a"\n')
    with pytest.raises(demo.ScenarioError, match="scenario name 'démo' has 'é'.*ASCII letters"):
        demo.load(str(unnamed))


def test_snapshot_endpoints_save_list_restore_and_delete(client, viewer, shell_vm):
    saved = client.post("/api/v1/vms/sh/snapshot", json={"name": "first"})
    assert saved.status_code == 201 and saved.json["pages"] > 0
    listed = client.get("/api/v1/snapshots").json["snapshots"]
    assert [(s["name"], s["vm"]) for s in listed] == [("first", "sh")]
    assert viewer.post("/api/v1/snapshots/first/restore", json={"vm": "x"}).status_code == 403
    restored = client.post("/api/v1/snapshots/first/restore", json={"vm": "copy"})
    assert restored.status_code == 201 and restored.json["vm"]["name"] == "copy"
    client.post("/api/v1/vms/copy/console", json={"data": "help\r"})
    assert wait_for(lambda: "cpuid" in client.get("/api/v1/vms/copy/console").json["text"])
    assert client.post("/api/v1/snapshots/../restore", json={}).status_code in (400, 404)
    assert client.post("/api/v1/vms/sh/snapshot", json={"name": "bad name!"}).status_code == 400
    assert client.post("/api/v1/snapshots/nothing/restore", json={}).status_code == 404
    assert client.delete("/api/v1/snapshots/first").json == {"deleted": "first"}
    assert client.get("/api/v1/snapshots").json["snapshots"] == []


class Payload:
    """Unpickling this creates `marker`: what a crafted snapshot would do to the server if it were unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_crafted_snapshot_files_are_listed_with_their_problem_and_refused_with_400(client, app, shell_vm, tmp_path):
    """Dropped into the snapshots folder: a pickle that would create a file, a foreign zip, and a real snapshot
    whose manifest points an APIC register fix-up outside the page. Each is listed with its problem, each
    restore answers 400 naming it, nothing runs and no VM appears."""
    assert client.post("/api/v1/vms/sh/snapshot", json={"name": "good"}).status_code == 201
    folder, marker = app.config["SNAPSHOTS_DIR"], tmp_path / "pickle-ran"
    with open(os.path.join(folder, "pickled.snap"), "wb") as f:
        pickle.dump(Payload(marker), f)
    with zipfile.ZipFile(os.path.join(folder, "foreign.snap"), "w") as z:
        z.writestr("readme.txt", "hello")
    with zipfile.ZipFile(os.path.join(folder, "good.snap")) as z, \
            zipfile.ZipFile(os.path.join(folder, "crafted.snap"), "w") as out:
        for info in z.infolist():
            data = z.read(info)
            if info.filename == "manifest.json":
                manifest = json.loads(data)
                manifest["vcpus"][0]["lapic"]["76"] = 1 << 40              # ctx.LAPIC_FIX
                data = json.dumps(manifest)
            out.writestr(info, data)
    problems = {"pickled": "not a zip archive", "foreign": "a zip without manifest.json",
                "crafted": "vcpus\\[0\\].lapic.76 = 1099511627776 is outside 0..4096"}
    listed = {s["name"]: s for s in client.get("/api/v1/snapshots").json["snapshots"]}
    assert "error" not in listed["good"]
    for name, problem in problems.items():
        assert re.search(problem, listed[name]["error"])
        refused = client.post("/api/v1/snapshots/%s/restore" % name, json={"vm": "x"})
        assert refused.status_code == 400 and re.search(problem, refused.json["error"])
    assert client.get("/api/v1/vms/x").status_code == 404 and not marker.exists()


def test_a_demo_runs_live_on_the_server(client, viewer):
    assert {d["name"] for d in viewer.get("/api/v1/demos").json["demos"]} == SCENARIOS
    assert viewer.post("/api/v1/demos/demand-paging").status_code == 403
    started = client.post("/api/v1/demos/demand-paging")
    assert started.status_code == 202
    assert wait_for(lambda: client.get("/api/v1/vms/demand_paging").status_code == 200)   # on the server's list

    def finished():
        run = next(d for d in client.get("/api/v1/demos").json["demos"] if d["name"] == "demand-paging")["run"]
        return run["state"] != "running" and run
    assert wait_for(finished, timeout=60)
    run = finished()
    assert run["state"] == "done" and run["figures"]["2 MiB superpages in place"] >= 5
    assert client.post("/api/v1/demos/no-such-demo").status_code == 404


def test_a_scenario_can_start_from_a_snapshot(tmp_path):
    """A shell at its prompt, saved; the scenario restores it and types at once, no boot in between."""
    from engine import Hypervisor
    from tests.engine.conftest import guest, wait_for as console_wait
    hv = Hypervisor(host_mem_mb=256)
    vm = hv.create_vm("saved", mem_mb=32)
    vm.load(guest("shell.elf"), "shell.elf")
    vm.start()
    console_wait(vm, b"webhyve> ")
    vm.snapshot(tmp_path / "shell.snap")
    hv.destroy_vm("saved")
    scenario = tmp_path / "from-snapshot.toml"
    scenario.write_text('title = "from a snapshot"\n[vm]\nsnapshot = "%s"\n[[step]]\ntype = "help\\r"\n'
                        '[[step]]\nwait = "cpuid"\n[[step]]\nfigure = "boots"\nconsole_count = "webhyve shell ready"\n'
                        % (tmp_path / "shell.snap"))
    from engine.door import Host
    from webhyve.sessions.fleet import Fleet
    fleet = Fleet(Host(host_mem_mb=256), lambda *a, **k: None, str(tmp_path / "rec"))
    try:
        summary = demo.Run(fleet, demo.load(str(scenario)), str(tmp_path / "out")).run()
    finally:
        fleet.close()
    assert summary["figures"]["boots"] == 0            # the console starts at the restored moment
