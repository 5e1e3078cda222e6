"""GET /metrics as Prometheus scrapes it: bhyve's stats per vCPU under their IDs, the VM's state and memory."""
from prometheus_client.parser import text_string_to_metric_families

from engine.door.tables import STATS
from tests.webhyve.conftest import VIEWER


def scrape(app, token=VIEWER):
    response = app.test_client().get("/metrics", headers={"Authorization": "Bearer " + token})
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    return {f.name: f for f in text_string_to_metric_families(response.get_data(as_text=True))}


def samples(family, **labels):
    return [s for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def test_a_paused_vms_counters_are_the_ones_its_stats_panel_shows(app, client, shell_vm):
    """With the VM paused nothing moves: every counter of vcpu0 in /metrics equals the stats panel's, by bhyve ID,
    with bhyve's description as its help; the array stat has one sample per element."""
    assert client.post("/api/v1/vms/sh/pause").status_code == 200
    by_id = client.get("/api/v1/vms/sh/vcpus/0/stats").json["by_id"]
    families = scrape(app)
    checked = 0
    for ident, description, n in STATS:
        if ident.startswith("VMM_MEM"):
            continue
        family = families["webhyve_vmm_" + ident.lower()]
        assert family.type == "counter" and family.documentation == description
        got = samples(family, vm="sh", vcpu="0")
        totals = [s for s in got if s.name.endswith("_total")]
        if n == 1:
            assert [s.value for s in totals] == [by_id[ident]], ident
        else:
            assert sorted((int(s.labels["index"]), s.value) for s in totals) == list(enumerate(by_id[ident])), ident
        checked += 1
    assert checked == len(STATS) - 2 and by_id["VMEXIT_COUNT"] > 0
    state = {s.labels["state"]: s.value for s in samples(families["webhyve_vm_state"], vm="sh")}
    assert state["paused"] == 1 and sum(state.values()) == 1
    assert samples(families["webhyve_vm_memory_bytes"], vm="sh")[0].value == 64 << 20
    resident = samples(families["webhyve_vmm_vmm_mem_resident_bytes"], vm="sh")[0].value
    assert 0 < resident <= 64 << 20 and resident % 4096 == 0


def test_counters_grow_while_the_guest_runs_and_a_scrape_needs_a_token(app, client, shell_vm):
    before = samples(scrape(app)["webhyve_vmm_vmexit_count"], vm="sh", vcpu="0")[0].value
    client.post("/api/v1/vms/sh/console", json={"data": "help\r"})
    after = before
    for _ in range(200):
        after = samples(scrape(app)["webhyve_vmm_vmexit_count"], vm="sh", vcpu="0")[0].value
        if after > before:
            break
    assert after > before
    assert app.test_client().get("/metrics").status_code == 401
    assert app.test_client().get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    openmetrics = app.test_client().get("/metrics", headers={"Authorization": "Bearer " + VIEWER,
                                                             "Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.get_data(as_text=True).rstrip().endswith("# EOF")
