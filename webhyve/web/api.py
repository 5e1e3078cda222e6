"""The JSON REST API under /api/v1: VMs and their lifecycle, console input, state panels, tunables,
screenshots and recordings. Every error is JSON {"error": message} with its HTTP status; what each route
accepts is declared in api_schema.py and checked before the view runs (g.body, g.query)."""
import os
import re

from flask import Blueprint, Response, current_app, g, request, send_file

from ..sessions import screenshot
from ..sessions.errors import ApiError
from ..sessions.fleet import LIFECYCLE
from ..sessions.recording import NAME as RECORDING_NAME
from ..sessions.recording import list_recordings
from ..sessions.tasks import migration_progress
from . import devices, panels, policy
from .access import control_required, users
from .policy import ADMIN, CREATE, requires
from .api_schema import DEFAULT_MEM_MB, guard
from .tasks import current, recorded

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.before_request(guard)


def fleet():
    return current_app.extensions["webhyve.fleet"]


# -- who am I ---------------------------------------------------------------------------------------
@bp.get("/session")
def whoami():
    """Who the request is: its role as the quick start says it (control or view), and in users mode the user."""
    user = g.user
    return {"role": g.role, **({} if users() is None else {"user": user.name, "user_role": user.role,
                                                           "pools": sorted(user.pools)})}


# -- VMs ----------------------------------------------------------------------------------------------
# Debian's own kernel with the busybox initramfs `make linux` builds (guests/Makefile): what the VM list offers
# as "Linux (Debian kernel + busybox)", booted as `vmmctl run vmlinux --initrd initrd.gz --cmdline ...` would: the
# kernel's ELF that make linux takes out of Debian's vmlinuz, without the decompressor (20 s of a 45 s boot).
LINUX_GUEST = "linux"
LINUX_CMDLINE = "console=ttyS0 panic=-1"
LINUX_MEM_MB = 256            # the kernel's init_size above its 16 MiB load address, and room for the initramfs


@bp.get("/guests")
def guests():
    """The bundled guests' names, and the kind each loads as (null: detected from the image)."""
    found = bundled_guests()
    kinds = {name: kind for name, (_, kind) in sorted(found.items())}
    if bundled_linux():
        kinds[LINUX_GUEST] = "linux"
    return {"guests": sorted(kinds), "kinds": kinds}


def bundled_linux():
    """(kernel path, initrd path) of the bundled Linux guest, or None when `make linux` has not built it; the
    kernel is the vmlinux, or Debian's vmlinuz where there is none."""
    directory = os.path.join(current_app.config["GUESTS_DIR"], "linux")
    initrd = os.path.join(directory, "initrd.gz")
    for kernel in (os.path.join(directory, name) for name in ("vmlinux", "vmlinuz")):
        if os.path.isfile(kernel) and os.path.isfile(initrd):
            return kernel, initrd
    return None


def bundled_guests():
    """{name: (path, kind)} for the images guests/Makefile builds; kind None means detect it. A flat binary
    NAME.bin wins over NAME.elf: that ELF is only the link step to it (flat64, readers, firsttouch)."""
    directory = current_app.config["GUESTS_DIR"]
    if not os.path.isdir(directory):
        return {}
    found = {}
    for name in sorted(os.listdir(directory)):
        stem, _, ext = name.rpartition(".")
        if ext == "bin":
            found[stem] = (os.path.join(directory, name), "flat64")
        elif ext in ("elf", "img") and not os.path.exists(os.path.join(directory, stem + ".bin")):
            found[stem] = (os.path.join(directory, name), None)
    return found


CLI_KIND = re.compile(r"--kind (\w+)")


def form_words(problem):
    """The engine's loaders speak vmmctl's flags (--kind flat64); a page user has the form's "kind" field."""
    problem.message = CLI_KIND.sub(lambda m: 'kind "%s" (the form\'s kind field; vmmctl --kind %s)' % (m[1], m[1]),
                                   problem.message)
    return problem


def cluster():
    return current_app.extensions.get("webhyve.cluster")


@bp.get("/vms")
def list_vms():
    """The VMs; in cluster mode every node's, each with its node, and the nodes with their load."""
    summaries = [vm_summary(s) for s in policy.visible(g.user, fleet().list())]
    return {"vms": summaries} if cluster() is None else cluster().listing(summaries)


def vm_summary(session):
    """A VM's summary, with its owner and pool when it has them (users mode)."""
    summary = session.summary()
    for key in ("owner", "pool"):
        if getattr(session, key, None) is not None:
            summary[key] = getattr(session, key)
    return summary


def ownership(body):
    """(owner, pool) of a VM this request creates: an operator's own (in one of its pools, if it names one); an
    administrator names any user and any pool. 400/403 saying why otherwise."""
    user, owner, pool = g.user, body.get("owner"), body.get("pool")
    if user.token is not None:              # the quick start: nobody owns it
        return owner, pool
    if owner is not None and owner != user.name:
        if user.role != "administrator":
            raise ApiError(403, "%s is an operator: it creates VMs for itself, not for %r" % (user.name, owner))
        if users().get(owner) is None:
            raise ApiError(400, "POST /api/v1/vms: owner %r: no such user" % owner)
    if pool is not None and user.role != "administrator" and pool not in user.pools:
        raise ApiError(403, "%s is not in pool %r (its pools: %s)" % (user.name, pool, ", ".join(sorted(user.pools))
                                                                      or "none"))
    return owner or user.name, pool


@bp.post("/vms")
@requires(CREATE)
@recorded("create")
def create_vm():
    """JSON {name, guest, ...} for a bundled guest, or multipart with an `image` file for an upload."""
    body = g.body
    owner, pool = ownership(body)
    if body["node"] is not None and cluster() is None:
        raise ApiError(400, "POST /api/v1/vms: node %r: this server runs alone (started without --redis), there "
                            "is no node to choose" % body["node"])
    initrd, cmdline, mem_mb = None, body["cmdline"], body["mem_mb"]
    if body.get("guest") == LINUX_GUEST and bundled_linux():
        kernel, ramdisk = bundled_linux()
        with open(kernel, "rb") as f, open(ramdisk, "rb") as r:
            data, filename, kind, initrd = f.read(), os.path.basename(kernel), "linux", r.read()
        cmdline, mem_mb = cmdline or LINUX_CMDLINE, mem_mb or LINUX_MEM_MB
    elif "guest" in body:
        path, kind = bundled_guests().get(body["guest"], (None, None))
        if path is None:
            raise ApiError(400, "no bundled guest %r (bundled: %s)" % (body["guest"], ", ".join(guests()["guests"])))
        with open(path, "rb") as f:
            data, filename = f.read(), os.path.basename(path)
    else:
        upload = request.files["image"]
        data, filename, kind = upload.read(), os.path.basename(upload.filename or "upload.img"), None
        if "initrd" in request.files and request.files["initrd"].filename:    # a kernel's initrd, as --initrd
            initrd = request.files["initrd"].read()
    slots = devices.parse(body["slots"], current_app.config["DISKS_DIR"])
    try:
        session = fleet().create(body["name"], data, filename, kind=body["kind"] or kind,
                                 mem_mb=mem_mb or DEFAULT_MEM_MB, cpus=body["cpus"], profile=body["profile"],
                                 cmdline=cmdline, start=body["start"], initrd=initrd, slots=slots)
    except ApiError as problem:
        raise form_words(problem) from None
    session.owner, session.pool = owner, pool
    return vm_summary(session), 201


@bp.get("/vms/<name>")
def get_vm(name):
    session = fleet().get(name)
    where = {} if cluster() is None else {"node": cluster().name}
    return {**vm_summary(session), **where, "events": session.vm.events(50)}


@bp.delete("/vms/<name>")
@control_required
@recorded("destroy")
def destroy_vm(name):
    fleet().destroy(name)
    return {"destroyed": name}


@bp.post("/vms/<name>/migrate")
@requires(ADMIN)
@recorded("migrate")
def migrate(name):
    """Live migration to another node of the cluster (webhyve/cluster/migration.py): the figures once it runs there."""
    cluster = current_app.extensions.get("webhyve.cluster")
    if cluster is None:
        raise ApiError(409, "live migration moves a VM between the nodes of a cluster; this server runs alone "
                            "(start the nodes with --redis and --cluster-secret: docs/cluster.md)")
    task = current()
    return cluster.migrations.migrate(name, g.body["node"], auto_converge=g.body["auto_converge"],
                                      on_progress=lambda figures: task.progress(*migration_progress(figures)))


@bp.post("/vms/<name>/<action>")
@control_required
@recorded("lifecycle")
def lifecycle(name, action):
    if action not in LIFECYCLE:
        raise ApiError(404, "no action %r: use one of %s" % (action, ", ".join(LIFECYCLE)))
    return vm_summary(fleet().lifecycle(name, action))


# -- console --------------------------------------------------------------------------------------------
@bp.get("/vms/<name>/console")
def console_text(name):
    pump = fleet().get(name).pump
    return {"text": pump.terminal.text(), "screen": pump.terminal.lines(), "position": pump.position}


@bp.post("/vms/<name>/console")
@control_required
def console_input(name):
    data = g.body["data"]
    fleet().get(name).vm.send_input(data.encode("utf-8"))
    return {"sent": len(data)}


@bp.get("/vms/<name>/vga")
def vga(name):
    screen = fleet().get(name).vm.vga()
    return {"lines": screen["lines"], "cursor": screen["cursor"]}


# -- state panels -------------------------------------------------------------------------------------------
@bp.get("/vms/<name>/vcpus/<int:index>/registers")
def registers(name, index):
    return panels.vcpu_panels(fleet().get(name).vm, index, ("registers",))["registers"]


@bp.get("/vms/<name>/vcpus/<int:index>/vmcs")
def vmcs(name, index):
    return panels.vcpu_panels(fleet().get(name).vm, index, ("vmcs",))["vmcs"]


@bp.get("/vms/<name>/vcpus/<int:index>/stats")
def stats(name, index):
    return panels.vcpu_panels(fleet().get(name).vm, index, ("stats",))["stats"]


@bp.get("/vms/<name>/vcpus/<int:index>/translate")
def translate(name, index):
    return panels.translate(fleet().get(name).vm, index, g.query["gla"])


@bp.get("/vms/<name>/ept")
def ept(name):
    return panels.ept(fleet().get(name).vm)


@bp.get("/vms/<name>/ept/lookup")
def ept_lookup(name):
    return panels.ept_lookup(fleet().get(name).vm, g.query["gpa"])


@bp.get("/vms/<name>/devices")
def pci_devices(name):
    return panels.devices(fleet().get(name).vm)


@bp.get("/vms/<name>/caches")
def caches(name):
    return panels.caches(fleet().get(name).vm)


@bp.get("/vms/<name>/exits")
def exit_history(name):
    session = fleet().get(name)
    return {"samples": list(session.exit_history)}


# -- tunables -----------------------------------------------------------------------------------------------
@bp.get("/tunables")
def tunables():
    return {"tunables": fleet().host.tunables()}


@bp.put("/tunables/<name>")
@requires(ADMIN)
def set_tunable(name):
    return fleet().set_tunable(name, g.body["value"])


# -- screenshots and recordings ---------------------------------------------------------------------------------
@bp.get("/vms/<name>/screenshot/<which>.png")
def take_screenshot(name, which):
    session = fleet().get(name)
    if which == "vga":
        png = screenshot.vga_png(session.vm.vga())
    elif which == "serial":
        png = screenshot.serial_png(session.pump.terminal)
    else:
        raise ApiError(404, "screenshots are vga.png and serial.png, not %s.png" % which)
    filename = "%s-%s.png" % (name, which)
    return Response(png, mimetype="image/png", headers={"Content-Disposition": "inline; filename=" + filename})


@bp.post("/vms/<name>/recording")
@control_required
def start_recording(name):
    return fleet().start_recording(fleet().get(name)).info(), 201


@bp.delete("/vms/<name>/recording")
@control_required
def stop_recording(name):
    recording = fleet().stop_recording(fleet().get(name))
    if recording is None:
        raise ApiError(409, "VM %r is not being recorded" % name)
    return recording.info()


@bp.get("/recordings")
def recordings():
    """The recordings; a user who does not see every VM, those of the VMs it sees."""
    found = list_recordings(fleet().recordings_dir, fleet().active_recordings())
    return {"recordings": [r for r in found if recording_visible(r["id"])]}


def recording_visible(rid):
    """A recording is named after its VM (NAME-STAMP-N.cast): visible with that VM. A user who does not see every
    VM sees none of a VM that is gone."""
    if g.user.sees_all:
        return True
    named = RECORDING_NAME.fullmatch(rid)
    return named is not None and named["vm"] in {s.name for s in policy.visible(g.user, fleet().list())}


@bp.get("/recordings/<rid>")
def download_recording(rid):
    path = os.path.join(fleet().recordings_dir, rid)
    if not RECORDING_NAME.fullmatch(rid) or not os.path.isfile(path) or not recording_visible(rid):
        raise ApiError(404, "no recording %r" % rid)
    return send_file(path, mimetype="application/x-asciicast", as_attachment=g.query["download"],
                     download_name=rid, max_age=0)
