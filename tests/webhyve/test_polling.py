"""Viewers polling every panel as fast as they can while an SMP guest counts: the count is exact, no request fails."""
import re
import threading

from tests.webhyve.conftest import VIEWER, ready_or_fail, wait_for

WORK = 1_000_000                # increments per vCPU: the guest counts for many seconds, polled all along
VIEWERS, ROUNDS = 4, 40         # each viewer asks for every panel ROUNDS times: about 2,000 requests


def panels(vm, rip):
    """Every panel of the VM page, as REST paths: per vCPU registers (with the disassembly), VMCS, stats (with
    the exit log) and a guest-linear walk of where it runs; the TLB/L1D, the EPT map and a walk, the exit history."""
    paths = ["/api/v1/vms/%s/%s" % (vm, p) for p in ("caches", "ept", "ept/lookup?gpa=0x100000", "exits")]
    for i in (0, 1):
        paths += ["/api/v1/vms/%s/vcpus/%d/%s" % (vm, i, p) for p in ("registers", "vmcs", "stats")]
        paths.append("/api/v1/vms/%s/vcpus/%d/translate?gla=%#x" % (vm, i, rip))
    return paths


def poll(app, paths, statuses, states):
    viewer = app.test_client()
    viewer.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + VIEWER
    for _ in range(ROUNDS):
        for path in paths:
            response = viewer.get(path)
            statuses.append((path, response.status_code))
            if path.endswith("/registers") and response.status_code == 200:
                states.append(response.json["state"])


def test_viewers_polling_every_panel_leave_the_smp_count_exact(app, client):
    created = client.post("/api/v1/vms", json={"name": "smp", "guest": "smp", "cpus": 2, "mem_mb": 32,
                                               "cmdline": "work=%d" % WORK})
    assert created.status_code == 201, created.json
    console = lambda: client.get("/api/v1/vms/smp/console").json["text"]
    ready_or_fail(lambda: "counting" in console(), "the SMP guest never started counting", console,
                  lambda: client.delete("/api/v1/vms/smp"))
    rip = client.get("/api/v1/vms/smp/vcpus/0/registers").json["registers"]["rip"]
    statuses, states = [], []
    viewers = [threading.Thread(target=poll, args=(app, panels("smp", rip), statuses, states)) for _ in range(VIEWERS)]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        viewer.join()
    assert len(statuses) == VIEWERS * ROUNDS * len(panels("smp", rip))
    assert [s for s in statuses if s[1] != 200] == []
    assert "running" in states                              # the polls met the guest while it counted
    finished = re.compile(r"smp: counter \d+ (ok|WRONG)")     # the verdict, not just the line's start
    assert wait_for(lambda: finished.search(console()), timeout=600), console()[-300:]
    assert "smp: counter %d ok" % (2 * WORK) in console()
