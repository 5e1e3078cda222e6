"""REST endpoints for snapshots and demos (/api/v1/snapshots, /api/v1/demos): bhyvectl's --checkpoint and
--suspend, restore into this server, and the bundled scenarios run live on the server's fleet."""
import datetime
import os
import threading
import time

from flask import Blueprint, current_app, g

from engine.door.tables import SnapshotError
from engine.door.tables import read_snapshot_header as read_header

from ..demos import scenario as demo
from ..sessions.errors import ApiError
from ..sessions.fleet import engine_error
from . import policy
from .access import control_required
from .api import fleet, vm_summary
from .policy import ADMIN, requires
from .api_schema import guard
from .tasks import current, recorded

bp = Blueprint("snapdemo", __name__, url_prefix="/api/v1")
bp.before_request(guard)
_runs, _runs_lock = {}, threading.Lock()


def snapshot_path(name):
    """The file of snapshot `name`, a name api_schema.py has checked by engine/names.py's rule."""
    return os.path.join(current_app.config["SNAPSHOTS_DIR"], name + ".snap")


# -- snapshots --------------------------------------------------------------------------------------------
@bp.get("/snapshots")
def list_snapshots():
    folder = current_app.config["SNAPSHOTS_DIR"]
    out = []
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if entry.endswith(".snap"):
            path = os.path.join(folder, entry)
            item = {"name": entry[:-5], "bytes": os.path.getsize(path)}
            try:
                header = read_header(path)
                item.update(vm=header["vm"]["name"], mem_mb=header["vm"]["mem_mb"], cpus=header["vm"]["cpus"],
                            profile=header["vm"]["profile"], saved_at=header["saved_at"])
            except SnapshotError as problem:
                item["error"] = str(problem)
            out.append(item)
    if not g.user.sees_all:             # users mode: the snapshots of the VMs this user sees
        seen = {s.name for s in policy.visible(g.user, fleet().list())}
        out = [item for item in out if item.get("vm") in seen]
    return {"snapshots": out}


@bp.post("/vms/<vm>/snapshot")
@control_required
@recorded("snapshot")
def save_snapshot(vm):
    """{name, suspend?}: --checkpoint (the VM runs on) or --suspend (it is powered off after saving)."""
    body = g.body
    path = snapshot_path(body["name"])
    session = fleet().get(vm)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    started = time.perf_counter()
    current().progress(None, "writing %s.snap" % body["name"])      # the engine does not say how far it has got
    try:
        result = session.vm.snapshot(path)
    except Exception as problem:
        raise engine_error(problem) from None
    if body["suspend"]:
        fleet().lifecycle(vm, "poweroff")
    return {"name": body["name"], "pages": result["pages"], "bytes": os.path.getsize(path),
            "seconds": round(time.perf_counter() - started, 3), "suspended": body["suspend"]}, 201


@bp.post("/snapshots/<name>/restore")
@requires(ADMIN)
@recorded("restore")
def restore_snapshot(name):
    """{vm?, start?}: a new VM from the snapshot (named as saved unless `vm` says otherwise)."""
    body = g.body
    path = snapshot_path(name)
    if not os.path.exists(path):
        raise ApiError(404, "no snapshot named %r" % name)
    started = time.perf_counter()
    try:
        session = fleet().restore(path, body["vm"], start=body["start"])
    except SnapshotError as problem:
        raise ApiError(400, str(problem)) from None
    return {"vm": vm_summary(session), "seconds": round(time.perf_counter() - started, 3)}, 201


@bp.delete("/snapshots/<name>")
@requires(ADMIN)
def delete_snapshot(name):
    path = snapshot_path(name)
    if not os.path.exists(path):
        raise ApiError(404, "no snapshot named %r" % name)
    os.remove(path)
    return {"deleted": name}


# -- demos ----------------------------------------------------------------------------------------------
@bp.get("/demos")
def list_demos():
    with _runs_lock:
        runs = {name: dict(run) for name, run in _runs.items()}
    return {"demos": [{"name": name, "title": title, "run": runs.get(name)} for name, title in demo.bundled().items()]}


@bp.post("/demos/<name>")
@requires(ADMIN)
@recorded("demo")
def run_demo(name):
    """Run a bundled scenario live on this server: its VM appears in the list, its recording in recordings."""
    try:
        scenario = demo.load(name)
    except demo.ScenarioError as problem:
        raise ApiError(404, str(problem)) from None
    with _runs_lock:
        if _runs.get(name, {}).get("state") == "running":
            raise ApiError(409, "demo %r is already running" % name)
        stamp = datetime.datetime.now().strftime("%Y%m%dT%H%M%S")
        outdir = os.path.join(current_app.config["RECORDINGS_DIR"], "demos", "%s-%s" % (name, stamp))
        record = _runs[name] = {"state": "running", "step": 0, "steps": len(scenario["step"]), "outdir": outdir}
    the_fleet, task = fleet(), current().detach()

    def on_step(run, i, step):
        record["step"] = i
        task.progress((i - 1) / record["steps"], "step %d of %d" % (i, record["steps"]))

    def work():
        try:
            summary = demo.Run(the_fleet, scenario, outdir, on_step=on_step).run()
            record.update(state="done", figures=summary["figures"], log=summary["log"],
                          files=[os.path.basename(f) for f in summary["files"]])
            task.finish()
        except Exception as problem:
            record.update(state="failed", error=str(problem))
            task.fail(str(problem))

    threading.Thread(target=work, name="demo-" + name, daemon=True).start()
    return {"name": name, "vm": scenario["name"].replace("-", "_"), "run": record}, 202
