"""GET /metrics: every VM's and vCPU's bhyve stats in Prometheus's text format, read when scraped.

Each stat of engine/stats.py (bhyve's vmm_stat table) is one metric family named after its bhyve ID,
`webhyve_vmm_<id>`, with bhyve's description as its help and the labels `vm` and `vcpu`; an array stat
(`VLAPIC_INTR_LVT`) adds `index`. Counts are counters (`…_total`); the memory bhyve reports on vCPU 0
(VMM_MEM_RESIDENT, VMM_MEM_WIRED) is a gauge per VM in bytes. Beside them, per VM: its state, vCPUs,
configured memory and uptime, and who is looking: its console viewers (browsers, `vmmctl console`) and the
browsers its panels are pushed to, wherever in the cluster they are connected. A vCPU's counters come from one
visit of its thread, so one vCPU's numbers are from one moment; different vCPUs' are not (bhyvectl --get-stats
reads them the same way).

Prometheus scrapes with `Authorization: Bearer TOKEN` (either token: the stats are what a viewer sees; in users mode
an API token, and the scrape holds the VMs that token's user sees).
"""
from flask import Blueprint, Response, current_app, g, request
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from engine.door.tables import STATS

from . import policy
from .access import authenticate

bp = Blueprint("metrics", __name__)
PREFIX = "webhyve_vmm_"
GAUGES = {"VMM_MEM_RESIDENT": "bytes", "VMM_MEM_WIRED": "bytes"}        # per VM, from counter_totals()
LIFECYCLE_STATES = ("running", "halted", "paused", "suspended", "idle")


class FleetCollector:
    """Collects from the fleet at scrape time, the VMs `principal` may see (policy.py); nothing is kept between
    scrapes."""

    def __init__(self, fleet, inspector, principal):
        self.fleet, self.inspector, self.principal = fleet, inspector, principal

    def collect(self):
        sessions = policy.visible(self.principal, self.fleet.list())
        yield from self._vm_families(sessions)
        per_vcpu = [(s.name, view.index, view.stats()["by_id"]) for s in sessions for view in s.vm.vcpus()]
        for ident, description, n in STATS:
            if ident in GAUGES:
                continue
            family = CounterMetricFamily(PREFIX + ident.lower(), description,
                                         labels=("vm", "vcpu") if n == 1 else ("vm", "vcpu", "index"))
            for vm, index, by_id in per_vcpu:
                if n == 1:
                    family.add_metric((vm, str(index)), by_id[ident])
                else:
                    for i, value in enumerate(by_id[ident]):
                        family.add_metric((vm, str(index), str(i)), value)
            yield family

    def _vm_families(self, sessions):
        descriptions = {ident: description for ident, description, _ in STATS}
        memory = {ident: GaugeMetricFamily("%s%s_%s" % (PREFIX, ident.lower(), unit), descriptions[ident] + " (bytes)",
                                           labels=("vm",)) for ident, unit in GAUGES.items()}
        state = GaugeMetricFamily("webhyve_vm_state", "1 for the VM's lifecycle state, 0 for the others",
                                  labels=("vm", "state"))
        vcpus = GaugeMetricFamily("webhyve_vm_vcpus", "vCPUs the VM was created with", labels=("vm",))
        configured = GaugeMetricFamily("webhyve_vm_memory_bytes", "guest memory the VM was created with",
                                       labels=("vm",))
        uptime = GaugeMetricFamily("webhyve_vm_uptime_seconds", "seconds since the VM last booted (absent when "
                                   "not booted)", labels=("vm",))
        viewers = GaugeMetricFamily("webhyve_vm_console_viewers", "consoles attached to the VM (browsers, vmmctl)",
                                    labels=("vm",))
        watchers = GaugeMetricFamily("webhyve_vm_panel_watchers", "browsers the VM's panels are pushed to",
                                     labels=("vm",))
        for session in sessions:
            summary, totals = session.summary(), session.vm.counter_totals()
            for word in LIFECYCLE_STATES:
                state.add_metric((session.name, word), 1 if summary["state"] == word else 0)
            vcpus.add_metric((session.name,), summary["cpus"])
            configured.add_metric((session.name,), summary["mem_mb"] << 20)
            if summary["uptime_s"] is not None:
                uptime.add_metric((session.name,), summary["uptime_s"])
            for ident, family in memory.items():
                family.add_metric((session.name,), totals[ident])
            with session.pump.lock:
                viewers.add_metric((session.name,), len(session.pump.viewers))
            watchers.add_metric((session.name,), len(self.inspector.watchers_of(session.name)))
        yield from (state, vcpus, configured, uptime, viewers, watchers, *memory.values())


@bp.get("/metrics")
def metrics():
    """Prometheus's text format, or OpenMetrics when the scraper's Accept asks for it, from a registry built for
    this scrape."""
    authenticate()
    registry = CollectorRegistry(auto_describe=False)
    extensions = current_app.extensions
    registry.register(FleetCollector(extensions["webhyve.fleet"], extensions["webhyve.inspector"], g.user))
    encode, content_type = choose_encoder(request.headers.get("Accept"))
    return Response(encode(registry), content_type=content_type)
