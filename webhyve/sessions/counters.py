"""A VM's counter history: bhyve's stats (engine/stats.py, vmm_stat) sampled once per panel tick, as deltas.

Two things are kept, both fed by the /inspect ticker for every VM, watched or not:
- the VM's history over the last WINDOW_S seconds: per tick, `{t, dt, d}` with the delta `d` of each GRAPHED stat
  summed over the vCPUs (only those that moved), for the page's graphs over time and the exit histogram;
- each vCPU's rate per second over the last tick, of every row of its stats table (bhyvectl --get-stats order,
  arrays expanded), for the rate beside each total.
A watched VM is sampled from the counters its panels' visits read (one moment per vCPU), so the stats table's rate
and the graph's point of the same tick are the same delta over the same dt; an unwatched VM from `counter_totals()`
(the same counters, read without a visit), which gives no per-vCPU rates.

Counters only grow while a VM lives; a reset or a restore starts them again from zero. A tick in which one went
down is a restart: it gives no point and no rate (a gap in the graph), the next tick measures from there.
"""
import collections
import threading

from engine.door.tables import STATS

WINDOW_S = 300                   # the graphs show the last 5 minutes
GAUGES = ("VMM_MEM_RESIDENT", "VMM_MEM_WIRED")      # levels, not counts: no rate (bhyve sets them when read)
GRAPHED = tuple(ident for ident, _, n in STATS if n == 1 and (ident.startswith("VMEXIT_") or ident in (
    "EPT_FIRST_TOUCH", "TLB_HITS", "TLB_MISSES", "L1D_FLUSH_MSR", "L1D_FLUSH_SW", "VLAPIC_IPI_SEND",
    "VLAPIC_IPI_RECV")))


def tick(before, after):
    """The seconds between two samples as the page gets them (0.1 ms): the graph's point and the stats table's rate
    divide by this same number, so they agree exactly."""
    return max(round(after - before, 4), 0.0001)


def flatten(by_id):
    """A vCPU's stats {ID: count or [counts]} as one list in the stats table's row order (engine/stats.py rows())."""
    out = []
    for ident, _, n in STATS:
        value = by_id[ident]
        out.extend(value if n > 1 else [value])
    return out


GAUGE_ROWS = frozenset(i for i, ident in enumerate(ident for ident, _, n in STATS for _ in range(n))
                       if ident in GAUGES)


def row_rates(before, after, dt):
    """Per-second rates of each row from two flattened readings `dt` seconds apart; None for a gauge; None for all
    when a counter went down (the VM restarted in between)."""
    if any(a < b for i, (b, a) in enumerate(zip(before, after)) if i not in GAUGE_ROWS):
        return None
    return [None if i in GAUGE_ROWS else (a - b) / dt for i, (b, a) in enumerate(zip(before, after))]


def delta(before, after):
    """{ID: after - before} of the GRAPHED stats that moved; None when one went down (a restart)."""
    moved = {k: after[k] - before[k] for k in GRAPHED if after[k] != before[k]}
    return None if any(v < 0 for v in moved.values()) else moved


class CounterHistory:
    """Legend: `samples`, `_last`, `_vcpus` and `_vcpu_rates` are guarded by `lock`; the ticker samples (and the
    VM's session once, when it takes the VM)."""

    def __init__(self, window_s=WINDOW_S):
        self.window_s = window_s
        self.samples = collections.deque()
        self.lock = threading.Lock()
        self._last = None                 # (clock, {ID: VM-wide count}) of the last tick
        self._vcpus = None                # (clock, [flattened counters] per vCPU) of the last watched tick
        self._vcpu_rates = {}             # vCPU index → [rate per row] over the last watched tick

    def sample(self, t, totals, vcpus=None, clock=None):
        """One tick at wall-clock `t` (the graph's time axis), `clock` seconds on a monotonic clock (for dt; `t`
        when not given): `totals` {ID: VM-wide count}; `vcpus` each vCPU's stats {ID: count} from one visit (a
        watched VM), whose sum then replaces `totals`."""
        clock = t if clock is None else clock
        if vcpus is not None:
            totals = {k: sum(v[k] for v in vcpus) for k in GRAPHED}
        with self.lock:
            if self._last is not None and clock > self._last[0]:
                moved = delta(self._last[1], totals)
                if moved is not None:
                    self.samples.append({"t": round(t, 3), "dt": tick(self._last[0], clock), "d": moved})
            self._last = (clock, {k: totals[k] for k in GRAPHED})
            while self.samples and self.samples[0]["t"] <= t - self.window_s:
                self.samples.popleft()
            self._sample_vcpus(clock, vcpus)

    def _sample_vcpus(self, t, vcpus):
        if vcpus is None:                 # unwatched: no visit, no per-vCPU rate; the next watch starts afresh
            self._vcpus, self._vcpu_rates = None, {}
            return
        now = [flatten(v) for v in vcpus]
        if self._vcpus is not None and t > self._vcpus[0]:
            dt = tick(self._vcpus[0], t)
            self._vcpu_rates = {i: row_rates(b, a, dt) for i, (b, a) in enumerate(zip(self._vcpus[1], now))}
        self._vcpus = (t, now)

    def history(self):
        with self.lock:
            return list(self.samples)

    def latest(self):
        """The last tick's sample, or None before the second tick."""
        with self.lock:
            return self.samples[-1] if self.samples else None

    def vcpu_rates(self, index):
        """[rate per second of each stats row] of vCPU `index` over the last tick, or None (not watched for two
        ticks yet, or restarted)."""
        with self.lock:
            return self._vcpu_rates.get(index)
