"""vmmctl: bhyvectl's cousin. `vmmctl run IMAGE` boots a guest here with its serial console on this terminal;
`vmmctl --vm=NAME --get-stats` and the other bhyvectl options, and `list`, `console`, `sysctl`,
`screenshot`, `record`, `tasks`, act on the VMs of a running webhyve server (docs/vmmctl.md)."""
import contextlib
import os
import time
import select
import signal
import sys
import termios
import threading
import tty
import urllib.parse

import click

from engine.door import Host
from engine.door.tables import KINDS, ConfigError, EngineError, names

from . import bhyvectl as B
from .client import Client, settings
from .console import run_console

ESCAPE = b"\x1d"            # Ctrl-], as telnet and virsh console use
ESCAPE_NAME = "Ctrl-]"
CLEAN_STOPS = ("halt", "poweroff", "reset")   # a guest reboot ends `vmmctl run` cleanly, as bhyve exits 0


class Vmmctl(click.Group):
    """A usage error is one line on stderr (no usage block) and status 2; a refusal one line and status 1."""

    def main(self, args=None, prog_name="vmmctl", **kwargs):
        try:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.UsageError as problem:
            click.echo("vmmctl: %s (vmmctl --help lists the options)" % problem.format_message(), err=True)
            sys.exit(2)
        except click.ClickException as problem:
            click.echo("vmmctl: %s" % problem.format_message(), err=True)
            sys.exit(problem.exit_code)
        except click.Abort:
            sys.exit(130)


class NameParam(click.ParamType):
    """A VM or snapshot name, checked by engine/names.py's rule before anything is sent to the server."""
    name = "name"

    def __init__(self, what):
        self.what = what

    def convert(self, value, param, ctx):
        try:
            return names.check(value, self.what)
        except ConfigError as problem:
            self.fail(str(problem), param, ctx)


VM_NAME, SNAPSHOT_NAME = NameParam("VM name"), NameParam("snapshot name")


def _int(text, what):
    try:
        return int(text, 0)
    except (TypeError, ValueError):
        raise click.BadParameter("%r is not a number (decimal or 0x…)" % text, param_hint=what) from None


def _bhyvectl_params():
    """The generated options: a flag per getter (bhyvectl's and webhyve's --get-vmcs-FIELD), --set-REG=V per settable
    register, and bhyvectl's options webhyve refuses (B.REFUSED), each taking an argument where bhyvectl's does."""
    flags = [option for option, _ in B.GETTERS + list(B.TAIL) if option not in ("getcap", "get-stats", "get-memmap")]
    flags += list(B.SILENT_ON_INTEL)
    params = [click.Option(["--" + option], is_flag=True, hidden=True) for option in flags]
    params += [click.Option(["--set-" + reg], metavar="V", hidden=True) for reg in B.SETTABLE]
    for option in B.REFUSED:
        takes_value = option.startswith(("set-", "desc-", "unassign-", "assert-", "rtc-")) and \
            not option.startswith("set-desc-")
        params.append(click.Option(["--" + option], is_flag=not takes_value, hidden=True,
                                   expose_value=True, default=None))
    return params


def _epilog():
    return ("bhyvectl options (no subcommand, with --vm), in bhyvectl's names and formats: --get-REG, --set-REG=V, "
            "--get-desc-SEG, --get-vmcs-*, --get-eptp, --get-exception-bitmap, --get-intinfo, --get-active-cpus, "
            "--get-memseg, --get-cpu-topology ...; --get-vmcs-FIELD for each of the %d modeled VMCS fields. "
            "Refused, with the reason: %s. See docs/vmmctl.md."
            % (len(B.V.FIELDS), ", --".join(sorted(B.REFUSED))))


@click.group(cls=Vmmctl, invoke_without_command=True, epilog=_epilog(),
             context_settings={"max_content_width": 110})
@click.option("--url", help="The webhyve server (else WEBHYVE_URL, the config file, http://127.0.0.1:8080).")
@click.option("--vm", "vm_name", type=VM_NAME, metavar="NAME", help="The VM the bhyvectl options act on.")
@click.option("--cpu", default=0, show_default=True, help="The vCPU the options act on.")
@click.option("--create", is_flag=True, help="Create VM --vm from --guest or --image (--set-mem, --cpus); it starts.")
@click.option("--guest", metavar="NAME", help="With --create: a bundled guest (shell, spin, ...).")
@click.option("--image", type=click.Path(exists=True, dir_okay=False), help="With --create: upload this image.")
@click.option("--set-mem", "mem_mb", type=int, metavar="MB", help="With --create: guest memory in MiB (64), "
              "rounded up to 2 MiB as bhyvectl does.")
@click.option("--cpus", type=int, help="With --create: number of vCPUs (1).")
@click.option("--destroy", is_flag=True, help="Destroy the VM.")
@click.option("--pause", is_flag=True, help="Pause the VM (webhyve; bhyvectl has none).")
@click.option("--resume", is_flag=True, help="Resume the paused VM (webhyve).")
@click.option("--run", "run_once", is_flag=True, help="Paused VM: one VM_RUN of the vCPU, to the first exit the "
              "kernel hands to userspace; pause and dump it.")
@click.option("--get-all", is_flag=True, help="Every bhyvectl getter once, in bhyvectl's order.")
@click.option("--get-stats", is_flag=True, help="The vCPU's statistics (bhyve's names and format).")
@click.option("--get-memmap", is_flag=True, help="The guest-physical memory map.")
@click.option("--get-gpa-pmap", metavar="GPA", help="The EPT entries translating guest-physical GPA.")
@click.option("--inject-nmi", is_flag=True, help="Inject an NMI (when the engine can).")
@click.option("--checkpoint", type=SNAPSHOT_NAME, metavar="NAME", help="Save a snapshot NAME on the server; the VM runs on.")
@click.option("--suspend", type=SNAPSHOT_NAME, metavar="NAME", help="Save a snapshot NAME, then power the VM off.")
@click.option("--force-reset", is_flag=True, help="Reset the VM (it boots again).")
@click.option("--force-poweroff", is_flag=True, help="Power the VM off.")
@click.option("--getcap", is_flag=True, help="Print the capabilities (or --capname's).")
@click.option("--setcap", type=click.IntRange(0, 1), metavar="0|1", help="Set or clear --capname.")
@click.option("--capname", type=click.Choice(B.CAPABILITIES), help="The capability --getcap/--setcap act on.")
@click.pass_context
def main(ctx, url, vm_name, **options):
    """Control webhyve virtual machines: locally (run) or on a webhyve server (everything else).

    \b
    vmmctl run IMAGE                     boot IMAGE here, its console on this terminal
    vmmctl --vm=NAME --get-stats         bhyvectl's options against the server's VM NAME
    vmmctl list | console VM | sysctl [NAME[=V]] | screenshot VM -o F.png | record VM -o F.cast
    vmmctl tasks [VM]                    the task log: who started what, when, how long, the result
    vmmctl snapshot save|restore|list|delete   vmmctl demo [NAME] -o DIR
    """
    ctx.obj = {"url": url}
    given = {k: v for k, v in options.items() if v not in (None, False) and k != "cpu"}
    if ctx.invoked_subcommand is not None:
        if vm_name or given:
            raise click.UsageError("bhyvectl options go without a subcommand: vmmctl --vm=NAME --get-…")
        return
    if not vm_name:
        if given:
            raise click.UsageError("which VM? add --vm=NAME (vmmctl list shows them)")
        click.echo(ctx.get_help())
        return
    if not given:
        raise click.UsageError("nothing to do for VM %r: add an option such as --get-stats or --get-all" % vm_name)
    setters = checked_input(options)                     # bad input is refused before anything is asked or changed
    bhyvectl(client(ctx), vm_name, options, setters)


main.params.extend(_bhyvectl_params())


def client(ctx):
    return Client(*settings(ctx.find_root().obj["url"]))


def vm_url(name):
    return "/api/v1/vms/" + urllib.parse.quote(name, safe="")


def bhyvectl(api, name, o, setters):
    """bhyvectl's main(), in its order: create (and memory), setters, NMI, the getters (--get-all walks them once),
    setcap, gpa-pmap, getcap, cpus, intinfo, stats, topology, run, reset, poweroff, destroy, then the snapshots.
    webhyve's --pause comes before the setters, --resume after --run."""
    cpu = o["cpu"]
    vm_path, vcpu_path = vm_url(name), "/api/v1/ctl/vms/%s/vcpus/%d" % (urllib.parse.quote(name, safe=""), cpu)
    src = Sources(api, vm_path, vcpu_path, cpu, o["capname"] if o["getcap"] else None)
    if o["create"]:
        create(api, name, o)
    if o["pause"]:
        api.post(vm_path + "/pause")
    for reg, value in setters.items():
        api.put("%s/registers/%s" % (vcpu_path, reg), json={"value": value})
    if o["inject_nmi"]:
        api.post(vcpu_path + "/nmi")
    everything = o["get_all"]
    for option, get in B.GETTERS:
        if everything and (option, get) in B.EXTRA or not (everything or o[_key(option)]):
            continue
        click.echo("\n".join(get(src)))
    for option in B.SILENT_ON_INTEL:
        if o[_key(option)]:
            click.echo("vmmctl: bhyvectl on Intel prints nothing for --%s (only its AMD getter prints it); the VMCS "
                       "field: --get-vmcs-%s" % (option, option[4:].replace("virtual-apic-address", "virtual-apic")
                                                 .replace("apic-access-address", "apic-access")), err=True)
    if o["setcap"] is not None:
        api.put("%s/capabilities/%s" % (vcpu_path, o["capname"]), json={"value": o["setcap"]})
        src.state = None                                 # getcap reads the capability as set
    if o["get_gpa_pmap"] is not None:
        gpa = o["get_gpa_pmap"]
        click.echo(B.gpa_pmap_line(gpa, api.get(vm_path + "/ept/lookup", params={"gpa": gpa})["value"]))
    for option, get in B.TAIL:
        if everything or o[_key(option)]:
            click.echo("\n".join(get(src)))
    if o["run_once"]:
        click.echo("\n".join(B.run_dump(cpu, api.post(vcpu_path + "/run"))))
    if o["resume"]:
        api.post(vm_path + "/resume")
    if o["force_reset"]:
        api.post(vm_path + "/reset")
    if o["force_poweroff"]:
        api.post(vm_path + "/poweroff")
    if o["destroy"]:
        api.delete(vm_path)
    for key, suspend in (("checkpoint", False), ("suspend", True)):
        if o[key]:
            saved = api.post(vm_path + "/snapshot", json={"name": o[key], "suspend": suspend})
            click.echo("vmmctl: snapshot %s: %d pages, %d bytes, %.3f s%s" % (
                saved["name"], saved["pages"], saved["bytes"], saved["seconds"], "; VM powered off" if suspend else ""),
                err=True)


def _key(option):
    return option.replace("-", "_")


class Sources:
    """What the getters print from, each fetched from the server when first needed: the vCPU's state (one visit
    of its thread), the VM, its memory map, the vCPU's stats and every vCPU's run state."""

    def __init__(self, api, vm_path, vcpu_path, cpu, capname):
        self.api, self.vm_path, self.vcpu_path, self.cpu, self.capname = api, vm_path, vcpu_path, cpu, capname
        self._state = self._vm = self._memmap = self._stats = None

    @property
    def state(self):
        if self._state is None:
            self._state = self.api.get(self.vcpu_path)
        return self._state

    @state.setter
    def state(self, value):
        self._state = value

    @property
    def vm(self):
        if self._vm is None:
            self._vm = self.api.get(self.vm_path)
        return self._vm

    @property
    def memmap(self):
        if self._memmap is None:
            self._memmap = self.api.get(self.vm_path + "/ept")["value"]
        return self._memmap

    @property
    def stats_text(self):
        return self.api.get("%s/vcpus/%d/stats" % (self.vm_path, self.cpu))["text"]

    def cpus_in(self, wanted):
        """The vCPUs whose run state passes `wanted` (idle: not started or waiting for INIT-SIPI; paused)."""
        path = self.vcpu_path.rsplit("/", 1)[0]
        return [i for i in range(self.vm["cpus"])
                if wanted(self.state["state"] if i == self.cpu else self.api.get("%s/%d" % (path, i))["state"])]


def checked_input(o):
    """{register: value} for the setters; UsageError for any value or combination that cannot work, and for each
    bhyvectl option webhyve cannot carry out (named, with the reason)."""
    for option, why in B.REFUSED.items():
        if o[_key(option)] not in (None, False):
            raise click.UsageError("--%s is refused: %s" % (option, why))
    setters = {reg: _int(o["set_" + reg], "--set-" + reg) for reg in B.SETTABLE if o["set_" + reg] is not None}
    if o["get_gpa_pmap"] is not None:
        o["get_gpa_pmap"] = _int(o["get_gpa_pmap"], "--get-gpa-pmap")
    if o["setcap"] is not None and not o["capname"]:
        raise click.UsageError("--setcap needs --capname=NAME")
    if o["create"] and not (o["guest"] or o["image"]):
        raise click.UsageError("--create needs --guest=NAME (a bundled guest) or --image=FILE")
    if o["mem_mb"] is not None and not o["create"]:
        raise click.UsageError("--set-mem sets up the memory of the VM --create makes: a VM's memory is set once "
                               "(bhyvectl's vm_setup_memory fails on it, errno = 17, EEXIST)")
    if o["mem_mb"] is not None and o["mem_mb"] <= 0:
        raise click.BadParameter("%d MiB is no memory" % o["mem_mb"], param_hint="--set-mem")
    return setters


def create(api, name, o):
    """vm_create and vm_setup_memory: --set-mem MiB rounded up to 2 MiB (bhyvectl's roundup(memsize, 2 * MB))."""
    mem = o["mem_mb"] or 64
    fields = {"name": name, "mem_mb": mem + (mem & 1), "cpus": o["cpus"] or 1}
    if o["image"]:
        with open(o["image"], "rb") as f:
            api.post("/api/v1/vms", data={k: str(v) for k, v in fields.items()},
                     files={"image": (os.path.basename(o["image"]), f)})
    else:
        api.post("/api/v1/vms", json={**fields, "guest": o["guest"]})


# -- subcommands on the server ----------------------------------------------------------------------
@main.command("list")
@click.pass_context
def list_vms(ctx):
    """The server's VMs: name, state, vCPUs, memory, VM exits, image; in a cluster each VM's node, then the nodes."""
    listing = client(ctx).get("/api/v1/vms")
    vms, cluster = listing["vms"], listing.get("cluster")
    node = (lambda vm: "  %s" % vm.get("node", "?")) if cluster else (lambda vm: "")
    click.echo("%-16s %-10s %4s %7s %12s  %-14s%s" % ("NAME", "STATE", "CPUS", "MEM", "EXITS", "IMAGE",
                                                     "  NODE" if cluster else ""))
    for vm in vms:
        click.echo("%-16s %-10s %4d %6dM %12d  %-14s%s" % (vm["name"], vm["state"], vm["cpus"], vm["mem_mb"],
                                                          vm["exits"], vm["image"], node(vm)))
    if cluster:
        list_nodes(listing["nodes"], cluster)


def list_nodes(nodes, cluster):
    """The cluster's nodes with their load, and what is wrong with the cluster if anything is."""
    click.echo("\nNODES (cluster on %s, answered by %s)" % (cluster["redis"], cluster["node"]))
    for n in nodes:
        click.echo("%-16s %-5s %3s CPUs  load %5s  %5s/%5s MiB free  %3s VMs  %s" % (
            n["name"], n["state"], n["cpus"], n["load"], n["mem_free_mb"], n["mem_total_mb"], n["vms"], n["url"]))
    if not cluster["ok"]:
        click.echo("cluster: " + cluster["message"], err=True)


@main.command()
@click.argument("vm", type=VM_NAME)
@click.argument("node", type=click.STRING)
@click.option("--auto-converge", is_flag=True, help="Slow the guest down while it dirties memory faster than it is "
                                                     "sent (QEMU's auto-converge).")
@click.pass_context
def migrate(ctx, vm, node, auto_converge):
    """Live-migrate VM to cluster node NODE while it runs; its consoles stay connected (docs/cluster.md)."""
    figures = client(ctx).post(vm_url(vm) + "/migrate", json={"node": node, "auto_converge": auto_converge})
    print_migration(figures)


def print_migration(f):
    """The figures of a migration, one line per pre-copy round, as `virsh domjobinfo` gives them after one."""
    click.echo("VM %s migrated to node %s in %.3f s; downtime %.1f ms" % (f["vm"], f["node"], f["total_s"], f["downtime_ms"]))
    for i, r in enumerate(f["rounds"], 1):
        click.echo("  round %-3d %8d pages %12d bytes of data  %8.3f s%s" % (
            i, r["pages"], r["data_bytes"], r["seconds"], "  vCPUs throttled %d%%" % r["throttle"] if r["throttle"] else ""))
    click.echo("  stop-and-copy %4d pages" % f["final_pages"])
    click.echo("  total %12d pages sent, %d bytes on the wire" % (f["pages_sent"], f["bytes_sent"]))


@main.command()
@click.argument("vm", type=VM_NAME, required=False)
@click.option("-n", "--limit", type=click.IntRange(1, 500), default=50, show_default=True, help="The newest so many.")
@click.pass_context
def tasks(ctx, vm, limit):
    """The server's task log, newest first (only VM's when given): start, end, duration, node, who, what, status."""
    query = {"limit": limit, **({"vm": vm} if vm else {})}
    rows = client(ctx).get("/api/v1/tasks?" + urllib.parse.urlencode(query))["tasks"]
    click.echo("%-19s %-19s %10s  %-12s %-10s %-40s %s" % ("STARTED", "ENDED", "DURATION", "NODE", "WHO",
                                                          "DESCRIPTION", "STATUS"))
    for t in rows:
        click.echo("%-19s %-19s %9.3fs  %-12s %-10s %-40s %s" % (
            when(t["started"]), when(t["ended"]) if t["ended"] else "-", t["duration_s"], t["node"], t["who"],
            t["description"], task_status(t)))


def when(epoch):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def task_status(t):
    """OK, the error the server answered (with its HTTP status), or how far a running task has got."""
    if t["state"] == "running":
        p = t["progress"] or {}
        done = "" if p.get("fraction") is None else " %d%%" % round(p["fraction"] * 100)
        return "running%s%s" % (done, ": " + p["text"] if p.get("text") else "")
    return t["status"] if t["state"] == "ok" else "error %s: %s" % (t["http_status"], t["status"])


@main.command()
@click.argument("vm", type=VM_NAME)
@click.option("--idle", default=1.0, show_default=True,
              help="With piped input: detach once the guest has been quiet this long after the input ended.")
@click.pass_context
def console(ctx, vm, idle):
    """The serial console of VM in this terminal (Ctrl-] detaches); piped stdin is typed into the guest."""
    api = client(ctx)
    api.get(vm_url(vm))                 # a missing VM or a wrong token: one clear line first
    run_console(api.url, api.token, vm, idle, lambda text: click.echo(text, err=True))


@main.command()
@click.argument("assignments", nargs=-1, metavar="[NAME[=VALUE]]...")
@click.option("-d", "descriptions", is_flag=True, help="Print the descriptions instead of the values.")
@click.pass_context
def sysctl(ctx, assignments, descriptions):
    """Read or change the hw.vmm.* tunables, as sysctl(8) does; no NAME lists them all."""
    api = client(ctx)
    tunables = api.get("/api/v1/tunables")["tunables"]
    status = 0
    for text in assignments or ("",):
        name, _, value = text.partition("=")
        if "=" in text:
            answer = api.put("/api/v1/tunables/%s" % name, json={"value": value})
            click.echo("%s: %d -> %d" % (answer["name"], answer["old"], answer["value"]))
            continue
        rows = [t for t in tunables if t["name"] == name or t["name"].startswith(name.rstrip(".") + ".") or not name]
        if not rows:
            click.echo("vmmctl: sysctl: unknown oid '%s'" % name, err=True)
            status = 1
        for t in rows:
            click.echo("%s: %s" % (t["name"], "%s %s" % (t["description"], when_read(t)) if descriptions else t["value"]))
    sys.exit(status)


def when_read(tunable):
    """When bhyve and webhyve read a tunable, for `sysctl -d`: bhyve reads most only when vmm.ko loads."""
    if tunable["read_only"]:
        return "(read-only: follows %s)" % tunable["set_by"]
    webhyve = "webhyve reads it when a VM is created: running VMs keep their value" if tunable["boot_only"] \
        else "webhyve applies a change to running VMs"
    return "(%s; %s)" % ("bhyve reads it only when vmm.ko loads" if tunable["bhyve_boot"] else "not in bhyve",
                         webhyve)


@main.command()
@click.argument("vm", type=VM_NAME)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True), help="The PNG file.")
@click.option("--screen", type=click.Choice(["serial", "vga"]), default="serial", show_default=True,
              help="The serial terminal or the VGA text screen.")
@click.pass_context
def screenshot(ctx, vm, output, screen):
    """Save a PNG of VM's serial terminal (or VGA text screen), drawn by the server."""
    png = client(ctx).get("%s/screenshot/%s.png" % (vm_url(vm), screen), raw=True).content
    with open(output, "wb") as f:
        f.write(png)
    click.echo("vmmctl: %s (%d bytes)" % (output, len(png)), err=True)


@main.command()
@click.argument("vm", type=VM_NAME)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, writable=True), help="The .cast file.")
@click.option("--seconds", type=float, help="Stop after this many seconds (else Ctrl-C stops).")
@click.pass_context
def record(ctx, vm, output, seconds):
    """Record VM's console as an asciicast v2 file on the server until Ctrl-C (or --seconds), then download it."""
    api = client(ctx)
    with stop_on_signals() as stop:                    # before starting: an early Ctrl-C still downloads
        started = api.post(vm_url(vm) + "/recording")
        click.echo("vmmctl: recording %s as %s; %s" % (
            vm, started["id"], "for %gs" % seconds if seconds is not None else "Ctrl-C stops"), err=True)
        try:
            stop.wait(seconds)
        finally:
            api.delete(vm_url(vm) + "/recording")
    data = api.get("/api/v1/recordings/%s" % started["id"], params={"download": "1"}, raw=True).content
    with open(output, "wb") as f:
        f.write(data)
    click.echo("vmmctl: %s (%d bytes); play it with: asciinema play %s" % (output, len(data), output), err=True)


@main.group()
def snapshot():
    """Snapshots on the server: save VM NAME, restore NAME [--as VM], list, delete NAME."""


@snapshot.command("save")
@click.argument("vm", type=VM_NAME)
@click.argument("name", type=SNAPSHOT_NAME)
@click.pass_context
def snapshot_save(ctx, vm, name):
    """Save VM's whole state as snapshot NAME (bhyvectl --checkpoint); the VM runs on."""
    saved = client(ctx).post(vm_url(vm) + "/snapshot", json={"name": name})
    click.echo("%s: %d pages, %d bytes, saved in %.3f s" % (saved["name"], saved["pages"], saved["bytes"],
                                                            saved["seconds"]))


@snapshot.command("restore")
@click.argument("name", type=SNAPSHOT_NAME)
@click.option("--as", "vm", type=VM_NAME, metavar="VM", help="The new VM's name (else the saved one).")
@click.option("--paused", is_flag=True, help="Leave it paused.")
@click.pass_context
def snapshot_restore(ctx, name, vm, paused):
    """A new VM on the server from snapshot NAME, carrying on where it was saved."""
    body = {"start": not paused}
    if vm:
        body["vm"] = vm
    done = client(ctx).post("/api/v1/snapshots/%s/restore" % urllib.parse.quote(name, safe=""), json=body)
    click.echo("%s: restored from %s in %.3f s, %s" % (done["vm"]["name"], name, done["seconds"], done["vm"]["state"]))


@snapshot.command("list")
@click.pass_context
def snapshot_list(ctx):
    """The server's snapshots."""
    rows = client(ctx).get("/api/v1/snapshots")["snapshots"]
    click.echo("%-24s %-16s %8s %5s %12s" % ("NAME", "VM", "MEM", "CPUS", "BYTES"))
    for s in rows:
        click.echo("%-24s %-16s %8s %5s %12d%s" % (s["name"], s.get("vm", "?"), "%dM" % s["mem_mb"] if "mem_mb" in s else "?",
                                                 s.get("cpus", "?"), s["bytes"], "  " + s["error"] if "error" in s else ""))


@snapshot.command("delete")
@click.argument("name", type=SNAPSHOT_NAME)
@click.pass_context
def snapshot_delete(ctx, name):
    client(ctx).delete("/api/v1/snapshots/%s" % urllib.parse.quote(name, safe=""))
    click.echo("deleted %s" % name)


@main.command()
@click.argument("name", required=False)
@click.option("-o", "--output", default="demo-out", show_default=True, type=click.Path(file_okay=False),
              help="Where the .cast, the screenshots and the summary go.")
def demo(name, output):
    """Run a bundled scenario headless, here (no server needed); without NAME, list them."""
    from ..demos import scenario as scenarios
    if not name:
        for key, title in scenarios.bundled().items():
            click.echo("%-18s %s" % (key, title))
        return
    try:
        summary = scenarios.run_headless(name, output)
    except scenarios.ScenarioError as problem:
        raise click.ClickException(str(problem)) from None
    click.echo(summary["summary"])
    click.echo("\nwritten: " + ", ".join(summary["files"]))


@contextlib.contextmanager
def stop_on_signals():
    """An event SIGINT (Ctrl-C) and SIGTERM set while the block runs, instead of raising."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--mem", "mem_mb", default=64, show_default=True, help="Guest memory in MiB.")
@click.option("--cpus", default=1, show_default=True, help="Number of vCPUs.")
@click.option("--cmdline", default="", help="Kernel command line (multiboot, Linux).")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False), help="Initial ramdisk of a Linux kernel.")
@click.option("--kind", type=click.Choice(KINDS), help="Image kind, when it cannot be detected (flat64).")
@click.option("--load-addr", type=lambda s: int(s, 0), help="Load address of a flat64 image.")
@click.option("--host-mem", "host_mem_mb", default=2048, show_default=True, help="Modeled host memory in MiB.")
@click.option("--stats", "show_stats", is_flag=True, help="Print bhyve-style per-vCPU stats when the VM stops.")
@click.option("--timeout", type=float, help="Power the VM off after this many seconds.")
@click.option("--gdb", "gdb", metavar="[w]PORT", callback=lambda ctx, param, value: _gdb_port(value),
              help="Serve gdb on 127.0.0.1:PORT (bhyve's -G); wPORT holds the guest at its entry for gdb.")
@click.option("-s", "--slot", "slots", multiple=True, metavar="SLOT[:FUNC],EMULATION[,OPTIONS]",
              help="A PCI device, as bhyve's -s: 2,virtio-blk,disk.img[,ro] or "
              "3,virtio-net,switch0[,mac=MAC][,listen=|connect=HOST:PORT]. Repeatable.")
def run(image, mem_mb, cpus, cmdline, initrd, kind, load_addr, host_mem_mb, show_stats, timeout, gdb, slots):
    """Boot IMAGE (multiboot, Linux bzImage or vmlinux, boot sector / raw disk, or --kind flat64) with its console here.

    On a terminal the console is raw; press Ctrl-] to power the VM off and leave. With piped stdin the
    input is typed into the guest and vmmctl waits for the VM to stop (or --timeout).
    """
    try:
        vm = Host(host_mem_mb=host_mem_mb).create_vm(names.from_file(image), mem_mb=mem_mb, cpus=cpus, slots=slots)
        with open(image, "rb") as f:
            data = f.read()
        ramdisk = None
        if initrd is not None:
            with open(initrd, "rb") as f:
                ramdisk = f.read()
        vm.load(data, image, kind=kind, cmdline=cmdline, load_addr=load_addr, initrd=ramdisk)
        if gdb is not None:
            port = vm.gdb_listen(gdb[1], wait=gdb[0])
            click.echo("vmmctl: gdb stub on 127.0.0.1:%d; in gdb: target remote 127.0.0.1:%d%s"
                       % (port, port, " (the guest waits at its entry)" if gdb[0] else ""), err=True)
    except (EngineError, OSError) as problem:
        raise click.ClickException(str(problem))
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo("vmmctl: console of %s; press %s to power off and leave" % (vm.name, ESCAPE_NAME), err=True)
    reader = vm.console_reader()
    done = threading.Event()
    threading.Thread(target=_pump_output, args=(reader, done), daemon=True).start()
    vm.start()
    state = _attach_terminal(vm, timeout) if interactive else _type_until_stopped(vm, sys.stdin.fileno(), timeout)
    vm.poweroff()
    done.set()
    sys.stdout.buffer.write(reader.read(0))
    sys.stdout.flush()
    reason = vm.suspend_reason
    click.echo("\r\nvmmctl: VM %s stopped: %s" % (vm.name, vm.suspend_message or state), err=True)
    if show_stats:
        for vcpu in vm.vcpus():
            click.echo(vcpu.stats()["text"])
    sys.exit(0 if reason in CLEAN_STOPS else 2)


def _gdb_port(value):
    """bhyve's -G syntax: PORT, or wPORT to wait for the debugger before the guest's first instruction."""
    if value is None:
        return None
    wait = value.startswith("w")
    digits = value[1:] if wait else value
    if not digits.isdigit() or int(digits) > 65535:
        raise click.BadParameter("%r is not [w]PORT (a TCP port 0-65535, w to wait for gdb)" % value)
    return wait, int(digits)


def _pump_output(reader, done):
    while not done.is_set():
        data = reader.read(0.05)
        if data:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()


def _attach_terminal(vm, timeout):
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        return _type_until_stopped(vm, fd, timeout)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _type_until_stopped(vm, fd, timeout):
    """Copy stdin to the guest until the VM stops, the escape key, or the timeout; returns the VM state."""
    deadline = None if timeout is None else time.monotonic() + timeout
    open_input = True
    while True:
        state = vm.wait(states=("suspended", "idle"), timeout=0.05)
        if state in ("suspended", "idle"):
            return state
        if deadline is not None and time.monotonic() > deadline:
            return "timeout after %gs" % timeout
        if open_input and select.select([fd], [], [], 0)[0]:
            data = os.read(fd, 1024)
            if not data:
                open_input = False             # end of piped input: the guest runs on until it stops
            elif ESCAPE in data:
                vm.send_input(data.split(ESCAPE)[0])
                return "left with %s" % ESCAPE_NAME
            else:
                vm.send_input(data.replace(b"\n", b"\r"))
