"""Scenarios: small declarative demos (webhyve/scenarios/*.toml) run the same way every time, headless or live.

A scenario names a guest, or a snapshot to start from (`snapshot = "path"` in [vm]), and a list of steps: type text, wait for text, set
a tunable, act as the host (move a page, pin vCPUs, invalidate), drop a marker, take a screenshot, wait,
and note a figure. It runs on a Fleet — the web server's, so an audience watches it in the page, or a
private one for `vmmctl demo NAME` — and leaves a recording (.cast), the screenshots and a summary of the
figures it noted in its output directory.
"""
import json
import os
import re
import time
import tomllib

from engine.door import Host
from engine.door.tables import names

from ..sessions import screenshot
from ..sessions.errors import ApiError
from ..sessions.fleet import Fleet

HERE = os.path.dirname(os.path.abspath(__file__))
SCENARIOS = os.path.join(HERE, "scenarios")
GUESTS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "guests", "build")
STEP_KINDS = ("type", "wait", "tunable", "host", "mark", "screenshot", "sleep", "figure", "rate")
HOST_ACTIONS = ("replace_page", "pin", "invalidate", "write", "interrupts")
FIGURE_SOURCES = ("stat", "ept", "console_count", "leaked_bytes", "top_exits")
# The VMEXIT_* stats that are not an exit reason: all exits (VMEXIT_COUNT), a condition vmm.c finds at an exit
# (VMEXIT_ASTPENDING, VMEXIT_REQIDLE, VMEXIT_RENDEZVOUS) and where one was handled (VMEXIT_USERSPACE).
NOT_A_REASON = ("VMEXIT_COUNT", "VMEXIT_ASTPENDING", "VMEXIT_REQIDLE", "VMEXIT_RENDEZVOUS", "VMEXIT_USERSPACE")


class ScenarioError(Exception):
    """A scenario file that cannot be run, or a step that failed (its message says which)."""


def bundled():
    """{name: title} of the scenarios shipped in webhyve/scenarios."""
    return {name: load(name)["title"] for name in sorted(f[:-5] for f in os.listdir(SCENARIOS) if f.endswith(".toml"))}


def load(name_or_path):
    """A scenario as a dict, checked: every step has exactly one known kind."""
    path = name_or_path if os.path.sep in name_or_path or name_or_path.endswith(".toml") else \
        os.path.join(SCENARIOS, name_or_path + ".toml")
    try:
        with open(path, "rb") as f:
            scenario = tomllib.load(f)
    except FileNotFoundError:
        raise ScenarioError("no scenario %r (bundled: %s)" % (name_or_path, ", ".join(sorted(
            f[:-5] for f in os.listdir(SCENARIOS) if f.endswith(".toml"))))) from None
    except tomllib.TOMLDecodeError as problem:
        raise ScenarioError("%s: %s" % (path, problem)) from None
    scenario.setdefault("name", os.path.basename(path)[:-5])
    wrong = names.problem(scenario["name"])
    if wrong:
        raise ScenarioError("%s: the scenario name %r %s: use %s (it names the VM and the files)"
                            % (path, scenario["name"], wrong, names.RULE))
    for key in ("title", "vm", "step"):
        if key not in scenario:
            raise ScenarioError("%s: missing [%s]" % (path, key))
    for i, step in enumerate(scenario["step"], 1):
        kinds = [k for k in STEP_KINDS if k in step]
        if len(kinds) != 1:
            raise ScenarioError("%s: step %d needs exactly one of %s, has %s" % (path, i, ", ".join(STEP_KINDS), kinds))
        if "figure" in step and sum(k in step for k in FIGURE_SOURCES) != 1:
            raise ScenarioError("%s: step %d: figure %r needs exactly one of %s"
                                % (path, i, step["figure"], ", ".join(FIGURE_SOURCES)))
        if "host" in step and step["host"] not in HOST_ACTIONS:
            raise ScenarioError("%s: step %d: host action %r is not one of %s"
                                % (path, i, step["host"], ", ".join(HOST_ACTIONS)))
    return scenario


class Run:
    """One run of a scenario on a fleet; `log` lines and `figures` are what the summary shows."""

    def __init__(self, fleet, scenario, outdir, name=None, on_step=None):
        self.fleet, self.scenario, self.outdir = fleet, scenario, outdir
        self.vm_name = name or scenario["name"].replace("-", "_")
        self.on_step = on_step or (lambda run, i, step: None)
        self.log, self.figures, self.files = [], {}, []
        self.session = None
        self.started = None                        # time.monotonic() when run() began: the marks say how far in
        self._saved_tunables = {}                  # host-wide tunable -> its value before this run
        os.makedirs(outdir, exist_ok=True)

    # -- the run ----------------------------------------------------------------------------------------
    def run(self):
        self.started = started = time.monotonic()
        try:
            self.session = self._create()
            vm = self.session.vm
            recording = self.fleet.start_recording(self.session)
            self._note("scenario %s: %s" % (self.scenario["name"], self.scenario["title"]))
            try:
                for i, step in enumerate(self.scenario["step"], 1):
                    self.on_step(self, i, step)
                    self._step(step)
            finally:
                recording = self.fleet.stop_recording(self.session) or recording
                cast = os.path.join(self.outdir, "%s.cast" % self.scenario["name"])
                with open(recording.path, "rb") as src, open(cast, "wb") as dst:
                    dst.write(src.read())
                self.files.insert(0, cast)
        finally:
            self._restore_tunables()
        self._note("finished in %.1f s; VM %s" % (time.monotonic() - started, vm.state))
        return self._summary()

    def _set_tunable(self, name, value):
        """Tunables are host-wide (every VM reads them, as bhyve's sysctls): remember the value before the
        demo's first change of each, so the run can put it back."""
        before = {t["name"]: t["value"] for t in self.fleet.host.tunables()}
        change = self.fleet.set_tunable(name, value)
        self._saved_tunables.setdefault(change["name"], before[change["name"]])
        return change

    def _restore_tunables(self):
        """Put back every host-wide tunable the demo changed, whatever happened in the run."""
        for name, value in reversed(list(self._saved_tunables.items())):
            change = self.fleet.set_tunable(name, value)
            if change["old"] != change["value"]:
                self._note("restored host-wide %s: %d -> %d" % (name, change["old"], change["value"]))
        self._saved_tunables.clear()

    def _create(self):
        cfg = self.scenario["vm"]
        if self.vm_name in {s.name for s in self.fleet.list()}:
            self.fleet.destroy(self.vm_name)
        for name, value in cfg.get("tunables", {}).items():
            self._set_tunable(name, value)
        if "snapshot" in cfg:                      # start from a saved moment instead of booting
            try:
                return self.fleet.restore(cfg["snapshot"], self.vm_name)
            except Exception as problem:
                raise ScenarioError("restoring %s: %s" % (cfg["snapshot"], problem)) from None
        data = self._guest_file(cfg["guest"])
        initrd = self._guest_file(cfg["initrd"]) if "initrd" in cfg else None      # a Linux kernel's initramfs
        cmdline = cfg.get("cmdline", "")
        self.secret = None
        if "l1tf_secret" in cfg:                   # the host's secret page, and where the attack aims
            self.secret = cfg["l1tf_secret"].encode().ljust(64, b".")[:64]
            hpa = self.fleet.host.place_secret(self.secret)
            cmdline = "secret=%#x len=%d %s" % (hpa, len(self.secret), cmdline)
        session = self.fleet.create(self.vm_name, data, cfg["guest"], kind=cfg.get("kind"),
                                    mem_mb=cfg.get("mem_mb", 64), cpus=cfg.get("cpus", 1),
                                    profile=cfg.get("profile", "haswell"), cmdline=cmdline,
                                    initrd=initrd, start=False)
        if "pin" in cfg:
            for vcpu in session.vm.vcpus():
                vcpu.pin(cfg["pin"])
        for gpa, value in cfg.get("memory", {}).items():
            session.vm.write_memory(int(gpa, 0), int(value).to_bytes(8, "little"))
        try:
            session.vm.start(all_vcpus=cfg.get("all_vcpus", False))
            session.started_at = time.time()            # the pages' uptime counts from this boot
        except Exception as problem:
            raise ScenarioError("starting %s: %s" % (cfg["guest"], problem)) from None
        return session

    @staticmethod
    def _guest_file(name):
        """The bytes of guests/build/NAME; a missing file names the make target that builds it."""
        try:
            with open(os.path.join(GUESTS, name), "rb") as f:
                return f.read()
        except FileNotFoundError:
            target = "linux" if name.startswith("linux" + os.path.sep) else "guests"
            raise ScenarioError("guest %s is not built: run `make %s`" % (name, target)) from None

    def _step(self, step):
        vm = self.session.vm
        if "type" in step:
            vm.send_input(step["type"].encode())
        elif "wait" in step:
            self._wait_for(step["wait"], step.get("timeout", 30))
        elif "tunable" in step:
            change = self._set_tunable(step["tunable"], step["value"])
            self._note("%s: %d -> %d" % (change["name"], change["old"], change["value"]))
        elif "host" in step:
            self._host(step)
        elif "mark" in step:
            self.session.pump.marker(step["mark"])
            self._note("mark: %s (at %.1f s)" % (step["mark"], time.monotonic() - self.started))
        elif "screenshot" in step:
            self._screenshot(step)
        elif "sleep" in step:
            time.sleep(float(step["sleep"]))
        elif "figure" in step:
            self.figures[step["figure"]] = self._measure(step)
            self._note("%s = %s" % (step["figure"], shown(self.figures[step["figure"]])))
        elif "rate" in step:
            first = self._stat(step["stat"])
            time.sleep(float(step.get("seconds", 2)))
            rate = round((self._stat(step["stat"]) - first) / float(step.get("seconds", 2)))
            self.figures[step["rate"]] = rate
            self._note("%s = %d/s" % (step["rate"], rate))

    def _wait_for(self, text, timeout):
        deadline = time.monotonic() + timeout
        while text not in self.session.pump.terminal.text():
            if time.monotonic() > deadline:
                raise ScenarioError("waited %s s for %r; the console ends with %r"
                                    % (timeout, text, self.session.pump.terminal.text()[-200:]))
            time.sleep(0.02)

    def _host(self, step):
        vm = self.session.vm
        action = step["host"]
        if action == "replace_page":
            hpa = vm.replace_page(int(step["gpa"], 0), int(step["value"]).to_bytes(8, "little"))
            self._note("host moved guest page %s to host-physical %#x holding %#x" % (step["gpa"], hpa, step["value"]))
        elif action == "write":
            vm.write_memory(int(step["gpa"], 0), int(step["value"]).to_bytes(8, "little"))
        elif action == "pin":
            for vcpu in vm.vcpus():
                vcpu.pin(step["cpu"])
        elif action == "invalidate":
            vm.invalidate_ept("scenario step")
            self._note("host: pmap_invalidate_ept")
        elif action == "interrupts":
            self._interrupts(step)

    def _interrupts(self, step):
        """A device model raising `vector` at vCPU 0 from a host thread, `per_second` for `seconds`
        (bhyve's vm_lapic_irq); the figures are what the VM exits cost while it does."""
        vm, label = self.session.vm, step.get("label", "interrupts")
        rate, seconds, vector = float(step.get("per_second", 1000)), float(step.get("seconds", 2)), int(step["vector"])
        exits, extint = self._stat("VMEXIT_COUNT"), self._stat("VMEXIT_EXTINT")
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            vm.lapic_intr(0, vector)
            sent += 1
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
        elapsed = time.monotonic() - start
        figures = {"%s: interrupts sent/s" % label: round(sent / elapsed),
                   "%s: VM exits/s" % label: round((self._stat("VMEXIT_COUNT") - exits) / elapsed),
                   "%s: external-interrupt exits/s" % label: round((self._stat("VMEXIT_EXTINT") - extint) / elapsed)}
        self.figures.update(figures)
        self._note("; ".join("%s = %s" % item for item in figures.items()))

    def _screenshot(self, step):
        kind = step["screenshot"]
        png = screenshot.vga_png(self.session.vm.vga()) if kind == "vga" else \
            screenshot.serial_png(self.session.pump.terminal)
        path = os.path.join(self.outdir, "%s-%s.png" % (self.scenario["name"], step.get("name", len(self.files))))
        with open(path, "wb") as f:
            f.write(png)
        self.files.append(path)
        self._note("screenshot: %s" % os.path.basename(path))

    def _stat(self, ident):
        return self.session.vm.counter_totals()[ident]

    def _measure(self, step):
        if "stat" in step:
            return self._stat(step["stat"])
        if "ept" in step:
            return self.session.vm.ept_stats()[step["ept"]]
        if "console_count" in step:
            return self.session.pump.terminal.text().count(step["console_count"])
        if "leaked_bytes" in step:
            # the whole line only: a wait that ends inside it would read an odd count of digits
            console = self.session.vm.console_contents().decode(errors="replace")
            found = re.search(r"l1tf: leaked ((?:[0-9a-f]{2})*)\r\n", console)
            leaked = bytes.fromhex(found.group(1)) if found else b""
            return sum(a == b for a, b in zip(leaked, self.secret or b""))
        if "top_exits" in step:
            return self._top_exits(int(step["top_exits"]))
        raise ScenarioError("figure %r needs one of %s" % (step["figure"], ", ".join(FIGURE_SOURCES)))

    def _top_exits(self, n):
        """{VMEXIT_* stat: sum over the vCPUs} of the n exit reasons counted most so far, most first: the bars
        the VM page's exit histogram shows highest."""
        totals = self.session.vm.counter_totals()
        reasons = [(count, ident) for ident, count in totals.items()
                   if ident.startswith("VMEXIT_") and ident not in NOT_A_REASON and count]
        return {ident: count for count, ident in sorted(reasons, key=lambda pair: (-pair[0], pair[1]))[:n]}

    def _note(self, line):
        self.log.append(line)

    def _summary(self):
        text = "\n".join([self.scenario["title"], "", self.scenario.get("story", "").strip(), ""] +
                         ["  " + line for line in self.log] + [""] +
                         ["%-40s %s" % (k, shown(v)) for k, v in self.figures.items()])
        path = os.path.join(self.outdir, "%s-summary.txt" % self.scenario["name"])
        with open(path, "w") as f:
            f.write(text + "\n")
        self.files.append(path)
        return {"scenario": self.scenario["name"], "figures": self.figures, "log": self.log, "files": self.files,
                "summary": text}


def shown(value):
    """A figure as the log and the summary print it: a count, or "NAME count, ..." for a set of them."""
    if isinstance(value, dict):
        return ", ".join("%s %s" % item for item in value.items())
    return str(value)


def run_headless(name, outdir, host_args=None):
    """`vmmctl demo NAME`: a private host and fleet, no server; returns the run's summary."""
    scenario = load(name)
    host = Host(**(host_args or {"host_mem_mb": 1024}))
    fleet = Fleet(host, lambda *args, **kwargs: None, os.path.join(outdir, ".recordings"))
    try:
        return Run(fleet, scenario, outdir).run()
    except ApiError as problem:
        raise ScenarioError(str(problem)) from None
    finally:
        fleet.close()


def as_json(summary):
    return json.dumps({k: v for k, v in summary.items() if k != "summary"}, indent=2)
