"""The sending side of a live migration: pre-copy rounds over the dirty log while the guest runs, then the
stop-and-copy, then the target's commit. A failure at any step before the commit leaves the VM running here.

Round 1 sends every resident page; each later round sends the pages the dirty log says were written since the
last harvest (the CPU's stores through the EPT's D bits, the host's own writes: mmu/pmap.py). A harvest clears the
D bits and bumps the EPT generation; a running vCPU could still store through a translation it cached before, so
each harvest is followed by a visit to every vCPU (each leaves the guest once; its next entry does the INVEPT) and
only then are the pages read. Rounds stop, as QEMU's do, when what is left would go within the downtime limit at
the bandwidth measured, when the dirty set stops shrinking (unless auto-converge can still slow the guest down:
throttle.py), or after `max_rounds`. Then the VM is paused, the last dirty pages, the console and the CPU and
device state (a snapshot without memory, engine/snapshot.py) are sent; the target restores it and says READY; COMMIT hands the VM over and
the target's DONE ends it. The downtime is from the pause to DONE.
"""
import io
import time

import numpy as np

from .. import snapshot
from .. import snapshot_file as F
from ..errors import MigrationError
from ..mmu import ept as EPT
from ..vcpu.states import HALTED, RUNNING
from . import pages as P
from .throttle import Throttle

MAX_ROUNDS = 30
MAX_DOWNTIME = 0.3               # seconds: QEMU's default downtime-limit (300 ms)


def send_vm(vm, channel, extra=None, on_progress=None, max_rounds=MAX_ROUNDS, max_downtime=MAX_DOWNTIME,
            auto_converge=False, before_commit=None):
    """Migrate `vm` over `channel` (wire.Channel). `extra()`: JSON the caller's counterpart receives with the
    state (taken with the VM stopped); `before_commit()`: called once the target is ready, just before COMMIT
    hands it the VM (the caller stops claiming the VM there; a failure after it still raises, before it the VM
    runs on here); `on_progress(dict)` after each round; `max_downtime`: how long the last
    pages may take to send (QEMU's downtime-limit); `auto_converge`: slow down a guest that dirties faster than
    the rounds send (throttle.py, QEMU's auto-converge, off by default as there). Returns the
    figures; raises MigrationError (the VM runs on here) when the target refuses or the connection fails before
    the commit."""
    if vm.hypervisor.tunables.get("hw.vmm.ept.skip_invalidation"):
        raise MigrationError("VM %r cannot be migrated while hw.vmm.ept.skip_invalidation=1: the dirty log needs "
                             "the EPT invalidations that tunable skips" % vm.name)
    figures = {"vm": vm.name, "rounds": [], "pages_sent": 0, "bytes_sent": 0, "phase": "connecting"}
    progress = _reporter(figures, channel, on_progress)
    started = time.monotonic()
    channel.send_json(b"HELO", hello(vm))
    channel.recv_json(b"OKAY")
    throttle = Throttle(vm)
    try:
        todo = _pre_copy(vm, channel, figures, progress, throttle if auto_converge else None, max_rounds, max_downtime)
    finally:
        throttle.stop()
    return _stop_and_copy(vm, channel, figures, progress, extra, before_commit, started, todo)


def _pre_copy(vm, channel, figures, progress, throttle, max_rounds, max_downtime):
    """The rounds; returns the last harvest, still to send. As QEMU decides: the pre-copy ends when the pages left
    would go in `max_downtime` seconds at the bandwidth the last round measured, or after `max_rounds`; a round
    whose dirty set is not smaller than the one before ends it too, unless auto-converge (`throttle`) can still
    slow the guest down: it tightens once a round dirties more than half of what it sent."""
    _harvest(vm)                                     # the log starts now: round 1 reads every page after this
    todo = vm.pmap.resident_pages()
    previous = None
    while True:
        t0 = time.monotonic()
        figures["phase"] = "pre-copy"
        n, data = P.send(channel, vm.pmap, todo)
        seconds = time.monotonic() - t0
        figures["pages_sent"] += n
        figures["rounds"].append({"pages": n, "data_bytes": data, "seconds": round(seconds, 4),
                                  "throttle": throttle.percent if throttle else 0})
        todo = _harvest(vm)
        progress(dirty=len(todo))
        expected = len(todo) * seconds / max(n, 1)
        if expected <= max_downtime or len(figures["rounds"]) >= max_rounds:
            return todo
        shrinking = previous is None or len(todo) < previous
        if throttle is not None and len(todo) > n / 2 and not throttle.tighten() and not shrinking:
            return todo
        if throttle is None and not shrinking:
            return todo
        previous = len(todo)


def hello(vm):
    """What the target needs to build the same VM before the first page arrives."""
    st = vm.pmap.st
    return {"name": vm.name, "mem_mb": vm.mem_size >> 20, "cpus": len(vm.vcpus), "profile": vm.profile.name,
            "mem_cap_mb": int(st[EPT.S_CAP]) * EPT.PAGE >> 20, "slots": list(vm.slots),
            "resident_pages": int(st[EPT.S_RESIDENT])}


def _stop_and_copy(vm, channel, figures, progress, extra, before_commit, started, todo):
    """Pause, send `todo` (the last round's harvest) with what was written since, the state; hand over."""
    was = vm.state
    stopped = time.monotonic()
    if was in (RUNNING, HALTED):
        vm.pause()
    try:
        figures["phase"] = "stop-and-copy"
        todo = np.union1d(todo, vm.pmap.dirty_pages(True))    # stopped: nothing cached can still store
        n, data = P.send(channel, vm.pmap, todo)
        figures["pages_sent"] += n
        figures["final_pages"] = n
        manifest, arrays = snapshot.capture(vm, pages=False)
        manifest["vm"]["state"] = was                # what the VM does on the target once it has it
        state = io.BytesIO()
        F.write_to(state, manifest, arrays)
        channel.send_json(b"XTRA", {"console": console_state(vm.console),
                                    "debug_console": console_state(vm.debug_console),
                                    "was": was, "extra": extra() if extra else None})
        channel.send(b"STAT", state.getbuffer())
        channel.recv_json(b"REDY")
        figures["phase"] = "commit"
        if before_commit:
            before_commit()
        channel.send_json(b"COMT", {})
    except BaseException:
        if was in (RUNNING, HALTED):
            vm.resume()                              # the target never took it: it runs on here
        raise
    try:
        channel.recv_json(b"DONE")
    except MigrationError as problem:
        figures["phase"] = "unknown"
        failure = MigrationError("VM %r was handed over but the target did not confirm (%s): it stays paused here; "
                                 "the cluster's registry says where it runs" % (vm.name, problem))
        failure.committed = True
        raise failure from None
    figures["downtime_ms"] = round((time.monotonic() - stopped) * 1000, 1)
    figures["total_s"] = round(time.monotonic() - started, 3)
    figures["bytes_sent"] = channel.bytes_sent
    progress(phase="done")
    return figures


def console_state(console):
    state = console.state()
    return {"start": state["start"], "output": state["output"].decode("latin-1"),
            "input": state["input"].decode("latin-1")}


def _harvest(vm):
    """The pages written since the last harvest, once no vCPU can still store through a translation from before."""
    pages = vm.pmap.dirty_pages(True)
    vm.pmap_invalidate_ept("dirty log harvested (live migration)")
    for vcpu in vm.vcpus:
        vcpu.visit(lambda v: None)                   # out of the guest once: its next entry does the INVEPT
    return pages


def _reporter(figures, channel, on_progress):
    def progress(**changes):
        figures.update(changes)
        figures["bytes_sent"] = channel.bytes_sent
        if on_progress is not None:
            on_progress(dict(figures, rounds=list(figures["rounds"])))
    return progress
