"""The receiving side of a live migration: a VM built from the sender's HELO, filled page by page while the
source still runs it, given its CPU and device state at STAT, and started only at COMMIT.

Until COMMIT nothing here is visible to anyone: the caller holds the Arrival and lists the VM only once it has
it. Any failure (a refused HELO, a frame that fails its check, a page outside memory, a snapshot that does not
verify, the connection gone) destroys the half-built VM and tells the source why, so it runs on there.
"""
import json
import os
import tempfile

from .. import names, snapshot
from ..errors import EngineError, MigrationError
from ..vcpu.states import HALTED, RUNNING
from . import pages as P

HELLO_FIELDS = {"name": str, "mem_mb": int, "cpus": int, "profile": str, "mem_cap_mb": int, "slots": list,
                "resident_pages": int}


class Arrival:
    """A migrated VM, restored and paused, waiting for the caller to take it: `done()` starts it (as it was
    on the source) and tells the source, which then removes its copy; `abandon(why)` drops it."""

    def __init__(self, vm, channel, info):
        self.vm, self.channel = vm, channel
        self.was, self.extra = info["was"], info.get("extra")
        self.pages = 0

    def done(self):
        if self.was in (RUNNING, HALTED):
            self.vm.resume()
        self.channel.send_json(b"DONE", {})

    def abandon(self, why):
        self.channel.fail(why)
        self.vm.hypervisor.destroy_vm(self.vm.name)


def receive_vm(hypervisor, channel, admit=None, on_progress=None):
    """Take a VM from `channel` (wire.Channel) until the source's COMMIT. `admit(hello)` may refuse it by
    raising MigrationError (a node that cannot give its memory); `on_progress(pages)` as pages arrive."""
    try:
        _, hello = channel.recv_json(b"HELO")
        _check_hello(hello)
        if admit is not None:
            admit(hello)
        vm = hypervisor.create_vm(hello["name"], mem_mb=hello["mem_mb"], cpus=hello["cpus"], profile=hello["profile"],
                                  mem_cap_mb=hello["mem_cap_mb"], slots=hello["slots"])
    except EngineError as problem:
        channel.fail(problem)
        raise MigrationError(str(problem)) from None
    try:
        channel.send_json(b"OKAY", {})
        return _fill(vm, channel, on_progress)
    except BaseException as problem:
        channel.fail(problem)
        hypervisor.destroy_vm(vm.name)
        raise


def _fill(vm, channel, on_progress):
    received = 0
    while True:
        kind, payload = channel.recv(b"PAGE", b"XTRA")
        if kind == b"XTRA":
            break
        pages, bits, data = P.decode(payload)
        P.fill(vm, pages, bits, data)
        received += pages.size
        if on_progress is not None:
            on_progress(received)
    try:
        info = json.loads(payload)
        consoles = [_console(info[k]) for k in ("console", "debug_console")]
    except (ValueError, KeyError, TypeError) as problem:
        raise MigrationError("the source's XTRA frame is malformed: %s" % problem) from None
    _, state = channel.recv(b"STAT")
    fd, path = tempfile.mkstemp(prefix="webhyve-migration-", suffix=".snap")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(state)
        snapshot.adopt(vm, path)
    except EngineError as problem:
        raise MigrationError("the VM's state does not restore here: %s" % problem) from None
    finally:
        os.unlink(path)
    vm.console.load_state(consoles[0])
    vm.debug_console.load_state(consoles[1])
    arrival = Arrival(vm, channel, info)
    arrival.pages = received
    channel.send_json(b"REDY", {"pages": received})
    channel.recv_json(b"COMT")
    return arrival


def _check_hello(hello):
    for field, kind in HELLO_FIELDS.items():
        if not isinstance(hello.get(field), kind) or isinstance(hello.get(field), bool):
            raise MigrationError("the source's HELO has no valid %r" % field)
    names.check(hello["name"])
    if not all(isinstance(s, str) for s in hello["slots"]):
        raise MigrationError("the source's HELO has slots that are not text")


def _console(state):
    if not isinstance(state, dict) or not isinstance(state.get("start"), int) or state["start"] < 0:
        raise TypeError("a console state without a valid start")
    return {"start": state["start"], "output": state["output"].encode("latin-1"),
            "input": state["input"].encode("latin-1")}
