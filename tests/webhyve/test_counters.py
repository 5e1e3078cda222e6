"""The counter history behind the VM page's graphs and the stats table's rates (webhyve/sessions/counters.py)."""
from engine.door.tables import STATS
from webhyve.sessions.counters import GAUGES, GRAPHED, CounterHistory, flatten
from tests.webhyve.conftest import wait_for
from tests.webhyve.test_namespaces import sio


def vcpu_stats(**counts):
    """One vCPU's stats {ID: count} as a visit reads them: every stat, arrays as lists, unnamed ones zero."""
    return {ident: counts.get(ident, 0) if n == 1 else [counts.get(ident, 0)] * n for ident, _, n in STATS}


def test_ticks_become_deltas_of_what_moved_and_rates_per_row():
    """Two vCPUs sampled 0.5 s apart: the VM's point holds the summed deltas of the stats that moved; each vCPU's
    rows get delta / dt, gauges none."""
    h = CounterHistory()
    h.sample(100.0, None, [vcpu_stats(VMEXIT_COUNT=10, TLB_HITS=5, VMM_MEM_RESIDENT=4096),
                           vcpu_stats(VMEXIT_COUNT=1)])
    assert h.latest() is None and h.vcpu_rates(0) is None            # one reading: no delta yet
    h.sample(100.5, None, [vcpu_stats(VMEXIT_COUNT=20, VMEXIT_HLT=4, TLB_HITS=5, VMM_MEM_RESIDENT=8192),
                           vcpu_stats(VMEXIT_COUNT=4, VLAPIC_IPI_SEND=2)])
    assert h.latest() == {"t": 100.5, "dt": 0.5, "d": {"VMEXIT_COUNT": 13, "VMEXIT_HLT": 4, "VLAPIC_IPI_SEND": 2}}
    rows = [ident for ident, _, n in STATS for _ in range(n)]
    rates0 = dict(zip(rows, h.vcpu_rates(0)))
    assert rates0["VMEXIT_COUNT"] == 20.0 and rates0["VMEXIT_HLT"] == 8.0 and rates0["TLB_HITS"] == 0.0
    assert all(rates0[g] is None for g in GAUGES)                       # resident memory is a level
    assert dict(zip(rows, h.vcpu_rates(1)))["VMEXIT_COUNT"] == 6.0
    assert h.latest()["d"]["VMEXIT_COUNT"] / h.latest()["dt"] == rates0["VMEXIT_COUNT"] + 6.0


def test_the_window_keeps_the_last_minutes_and_a_restart_leaves_a_gap():
    h = CounterHistory(window_s=10)
    for i in range(30):
        h.sample(float(i), {k: 3 * i for k in GRAPHED})
    assert [s["t"] for s in h.history()] == [float(t) for t in range(20, 30)]
    assert h.latest()["d"]["TLB_MISSES"] == 3 and h.vcpu_rates(0) is None        # unwatched: VM-wide only
    h.sample(30.0, {k: 1 for k in GRAPHED})                              # a reset: the counters start again
    assert h.latest()["t"] == 29.0
    h.sample(31.0, {k: 2 for k in GRAPHED})
    assert h.latest() == {"t": 31.0, "dt": 1.0, "d": {k: 1 for k in GRAPHED}}


def test_a_restart_between_watched_ticks_gives_no_rate():
    h = CounterHistory()
    h.sample(1.0, None, [vcpu_stats(VMEXIT_COUNT=100)])
    h.sample(2.0, None, [vcpu_stats(VMEXIT_COUNT=3)])
    assert h.vcpu_rates(0) is None
    h.sample(3.0, None, [vcpu_stats(VMEXIT_COUNT=5)])
    assert dict(zip([i for i, _, n in STATS for _ in range(n)], h.vcpu_rates(0)))["VMEXIT_COUNT"] == 2.0


def test_flatten_follows_the_stats_table_rows():
    counts = vcpu_stats(VLAPIC_INTR_LVT=7, MSR_UNKNOWN=9)
    flat = flatten(counts)
    assert len(flat) == sum(n for _, _, n in STATS) and flat[-1] == 9 and flat.count(7) == 7


def test_a_watched_vm_s_stats_rate_is_its_graph_point(app, client, shell_vm):
    """The shell answering `help` on a watched 1-vCPU VM: the update's rates point and the stats table's VM-exit
    rate come from the same visit, so they are the same number."""
    inspect = sio(app, client, namespace="/inspect")
    watched = inspect.emit("watch", {"vm": "sh"}, namespace="/inspect", callback=True)["panels"]
    assert isinstance(watched["graphs"], list)
    found = []

    def consistent_update():
        client.post("/api/v1/vms/sh/console", json={"data": "help\r"})
        for event in inspect.get_received("/inspect"):
            changed = event["args"][0]["panels"]
            point, stats = changed.get("rates"), changed.get("stats/0")
            if point and stats and point["d"].get("VMEXIT_COUNT"):
                rate = {r["description"]: r["rate"] for r in stats["rows"]}["total number of vm exits"]
                if rate is not None:             # the first watched tick has the VM's point, not yet a vCPU's rate
                    found.append((point["d"]["VMEXIT_COUNT"] / point["dt"], rate))
        return found
    assert wait_for(consistent_update, timeout=10, step=0.25)         # a `help` per tick or so
    assert all(graph == table for graph, table in found), found


def test_no_exit_is_lost_between_creation_and_the_ticks(client):
    """memtouch backs its pages and stops within a tick or two of its creation: the history's exit deltas add up to
    the VM's total, the first tick's included (the history starts from the VM's creation)."""
    assert client.post("/api/v1/vms", json={"name": "touch", "guest": "memtouch", "mem_mb": 64,
                                            "cmdline": "pages=4000"}).status_code == 201
    summary = lambda: client.get("/api/v1/vms/touch").json
    assert wait_for(lambda: summary()["state"] == "suspended", timeout=30)
    total = summary()["exits"]

    def counted():
        return sum(s["exits"].get("VMEXIT_COUNT", 0) for s in client.get("/api/v1/vms/touch/exits").json["samples"])
    assert wait_for(lambda: counted() == total, timeout=5), (counted(), total)
    assert total > 4000                                  # one EPT violation per page at least
    client.delete("/api/v1/vms/touch")
