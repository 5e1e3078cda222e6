"""The web server's VMs: each engine VM with its output pump, its image (for reset) and its counter history.

Everything the REST API and the namespaces do to a VM goes through here, and from here only through the
engine's door (engine/door: Host, VmView, VcpuView). Engine refusals become ApiErrors with the engine's own
message.
"""
import os
import threading
import time

from engine.door.tables import (DEFAULT_PROFILE, ConfigError, ImageError, SnapshotError, StateError,
                                TunableError)

from .counters import CounterHistory
from .errors import ApiError
from .pump import OutputPump
from .recording import Recording, new_path

HISTORY_SAMPLES = 120                   # the exit histogram's ticks
LIFECYCLE = ("start", "pause", "resume", "reset", "poweroff")
# What each lifecycle button does in each engine state; the page enables only these. A powered-off or
# stopped VM starts again with a fresh boot (engine/vm/machine.py's start), as in Proxmox.
ACTIONS = {"idle": ("start",), "running": ("pause", "reset", "poweroff"), "halted": ("pause", "reset", "poweroff"),
           "paused": ("resume", "reset", "poweroff"), "suspended": ("start", "reset", "poweroff")}
# The words the pages show for the engine's states, and what each means (the page's legend).
LEGEND = (("not started", "created, never started: Start boots it"),
          ("running", "a vCPU is executing guest code"),
          ("idle in HLT", "every vCPU waits in HLT with interrupts on (an idle shell or kernel); a key or a timer wakes it"),
          ("paused", "stopped by you; Resume continues where it was, typed keys wait in the queue"),
          ("powered off", "Power off stopped it; Start boots it afresh"),
          ("stopped", "the guest stopped the VM (the reason follows: triple fault, halt with interrupts off, "
                      "shutdown); Start or Reset boots it afresh"))


def actions(state, reason):
    """The lifecycle actions that apply: ACTIONS by state, less Power off for a VM already powered off."""
    return [a for a in ACTIONS.get(state, ()) if not (a == "poweroff" and reason == "poweroff")]


def status(state, reason, message):
    """(word, detail) for the pages: the engine's state in the legend's words."""
    if state == "suspended":
        if reason == "poweroff":
            return "powered off", message or "powered off"
        return "stopped: %s" % (reason or "?"), message or ""
    word = {"idle": "not started", "halted": "idle in HLT"}.get(state, state)
    return word, dict(LEGEND)[word]
MAX_MEM_MB = 4096


def engine_error(problem):
    """The HTTP status for an engine refusal: bad input 400, bad state 409, unknown VM 404."""
    if isinstance(problem, StateError):
        return ApiError(409, str(problem))
    if isinstance(problem, ConfigError) and str(problem).startswith("no VM named"):
        return ApiError(404, str(problem))
    if isinstance(problem, (ImageError, ConfigError, TunableError)):
        return ApiError(400, str(problem))
    return ApiError(500, "engine error: %s" % problem)


class VmSession:
    """A VM as the web side holds it. Legend: `recording` is guarded by the pump lock; `stat_history` has its own."""

    def __init__(self, vm, image, emit, pump_interval):
        self.vm = vm
        self.image = image                      # (bytes, filename, kind, cmdline) for reset
        self.pump = OutputPump(vm, emit, pump_interval)
        self.recording = None
        self.stat_history = CounterHistory()       # sampled by the /inspect ticker (webhyve/web/inspector.py)
        # From here: a guest's first tick is counted (a new VM's counters are zero; a restored one's go on).
        self.stat_history.sample(time.time(), vm.counter_totals(), clock=time.monotonic())
        self.started_at = None                  # wall-clock time of the last boot, for the uptime
        self.handing_over = False               # a live migration is handing it to another node (cluster/migration.py)
        self.owner = self.pool = None           # users mode: the user who created it and its pool (web/policy.py)

    @property
    def name(self):
        return self.vm.name

    def summary(self):
        vm = self.vm
        state, reason, message = vm.state, vm.suspend_reason, vm.suspend_message
        if state in ("idle", "suspended"):
            self.started_at = None
        elif self.started_at is None:            # booted by someone else (a demo, a restore): from now
            self.started_at = time.time()
        word, detail = status(state, reason, message)
        return {"name": vm.name, "state": state, "mem_mb": vm.mem_mb, "cpus": vm.cpus, "profile": vm.profile,
                "image": self.image[1], "kind": vm.image_kind, "exits": vm.counter_totals()["VMEXIT_COUNT"],
                "suspend_reason": reason, "suspend_message": message,
                "status": word, "status_detail": detail, "actions": actions(state, reason),
                "uptime_s": None if self.started_at is None else round(time.time() - self.started_at, 1),
                "recording": self.recording.id if self.recording else None}

    @property
    def exit_history(self):
        """The exit-reason histogram over time: per tick, the VMEXIT_* counts since the tick before."""
        return [{"t": s["t"], "exits": {k: v for k, v in s["d"].items() if k.startswith("VMEXIT_")}}
                for s in self.stat_history.history()[-HISTORY_SAMPLES:]]


class Fleet:
    """Legend: `sessions` is guarded by `lock`; the host and its tunables are shared by every VM. `listeners` are
    called as listener(name, session) after a VM is created, changes state or (session None) is destroyed: the
    cluster's registry (webhyve/cluster/node.py)."""

    def __init__(self, host, emit, recordings_dir, pump_interval=0.02):
        self.host = host
        self._emit = emit
        self.recordings_dir = recordings_dir
        self.pump_interval = pump_interval
        self.sessions = {}
        self.lock = threading.Lock()
        self.listeners = []
        os.makedirs(recordings_dir, exist_ok=True)
        host.on_tunable_change(self._tunable_changed)

    # -- VMs --------------------------------------------------------------------------------------------
    def get(self, name):
        with self.lock:
            session = self.sessions.get(name)
        if session is None:
            raise ApiError(404, "no VM named %r" % name)
        return session

    def list(self):
        with self.lock:
            return list(self.sessions.values())

    def create(self, name, data, filename, kind=None, mem_mb=64, cpus=1, profile=DEFAULT_PROFILE, cmdline="",
               start=True, initrd=None, slots=()):
        """Create, load and (by default) start a VM; a bad image leaves no VM behind. `initrd`: a Linux kernel's;
        `slots`: its PCI devices, bhyve's -s arguments (text, or parsed already: web/devices.py)."""
        if not 1 <= mem_mb <= MAX_MEM_MB:
            raise ApiError(400, "mem_mb must be 1 to %d, not %s" % (MAX_MEM_MB, mem_mb))
        try:
            vm = self.host.create_vm(name, mem_mb=mem_mb, cpus=cpus, profile=profile, slots=slots)
        except Exception as problem:
            raise engine_error(problem) from None
        try:
            vm.load(data, filename, kind=kind, cmdline=cmdline, initrd=initrd)
        except Exception as problem:
            self.host.destroy_vm(name)
            raise engine_error(problem) from None
        session = VmSession(vm, (data, filename, kind, cmdline), self._emit_console, self.pump_interval)
        with self.lock:
            self.sessions[name] = session
        if start:
            self.lifecycle(name, "start")
        else:
            self._changed(name, session)
        return session

    def restore(self, path, name=None, start=True):
        """A VM from a snapshot file, held like one created here (reset boots the saved image again)."""
        try:
            vm = self.host.restore_vm(path, name=name, start=start)
        except SnapshotError:
            raise
        except Exception as problem:
            raise engine_error(problem) from None
        data, filename, kind, cmdline, _ = vm.load_args or (b"", "snapshot", None, "", None)
        session = VmSession(vm, (data, filename, kind, cmdline), self._emit_console, self.pump_interval)
        if start:
            session.started_at = time.time()             # the restored VM runs on from here
        with self.lock:
            self.sessions[vm.name] = session
        self._changed(vm.name, session)
        return session

    def adopt(self, view, uptime_s=None, notify=True):
        """Hold a VM that arrived by live migration (engine VmView, already restored), as one created here."""
        data, filename, kind, cmdline, _ = view.load_args or (b"", "migrated", None, "", None)
        session = VmSession(view, (data, filename, kind, cmdline), self._emit_console, self.pump_interval)
        if uptime_s is not None:
            session.started_at = time.time() - uptime_s
        with self.lock:
            if view.name in self.sessions:
                raise ApiError(409, "a VM named %r is already here" % view.name)
            self.sessions[view.name] = session
        if notify:
            self.notify(view.name, session)
        return session

    def release(self, name):
        """Let go of a VM that now runs on another node: its engine VM and pump go, quietly (no listener hears of
        it and no console is told it was destroyed: it moved, and the registry already says where)."""
        self._drop(name)

    def notify(self, name, session):
        """Tell the listeners a VM was created or changed (session None: destroyed)."""
        self._changed(name, session)

    def destroy(self, name):
        self._drop(name)
        self._changed(name, None)
        self._emit("vm_state", {"vm": name, "state": "destroyed"}, "vm:" + name, "/console")

    def _drop(self, name):
        session = self.get(name)
        with self.lock:
            self.sessions.pop(name, None)
        self.stop_recording(session)
        session.pump.stop()
        self.host.destroy_vm(name)

    def lifecycle(self, name, action):
        """start, pause, resume, reset or poweroff; a request not valid in the VM's state is a 409."""
        session = self.get(name)
        if action not in LIFECYCLE:
            raise ApiError(400, "unknown action %r: use one of %s" % (action, ", ".join(LIFECYCLE)))
        vm = session.vm
        try:
            getattr(vm, action)()
        except Exception as problem:
            raise engine_error(problem) from None
        if action in ("start", "reset"):
            session.started_at = time.time()
        self._changed(name, session)
        self._emit("vm_state", {"vm": name, "state": vm.state, "action": action}, "vm:" + name, "/console")
        return session

    def _changed(self, name, session):
        for listener in self.listeners:
            listener(name, session)

    def close(self):
        for session in self.list():
            self.destroy(session.name)

    # -- tunables -------------------------------------------------------------------------------------------
    def set_tunable(self, name, value):
        try:
            return self.host.set_tunable(name, value)
        except TunableError as problem:
            raise ApiError(400, str(problem)) from None

    def _tunable_changed(self, name, old, new):
        """Every change is a marker in each console and each recording (bhyve would need a reboot for most)."""
        label = "%s: %d -> %d" % (name, old, new)
        for session in self.list():
            session.pump.marker(label)
            self._emit("marker", {"vm": session.name, "label": label, "t": time.time()}, "vm:" + session.name,
                       "/console")

    # -- recordings -------------------------------------------------------------------------------------------
    def start_recording(self, session):
        with session.pump.lock:
            if session.recording is not None:
                raise ApiError(409, "VM %r is already being recorded to %s" % (session.name, session.recording.id))
            cols, rows = session.pump.terminal.screen.columns, session.pump.terminal.screen.lines
            session.recording = Recording(new_path(self.recordings_dir, session.name), session.name, cols, rows)
            session.recording.output(session.pump.terminal.replay().encode())
            session.pump.add_recording(session.recording)
            return session.recording

    def stop_recording(self, session):
        with session.pump.lock:
            recording, session.recording = session.recording, None
        if recording is not None:
            session.pump.remove_recording(recording)
        return recording

    def active_recordings(self):
        return {s.recording.id for s in self.list() if s.recording is not None}

    def _emit_console(self, event, data, sid):
        self._emit(event, data, sid, "/console")
