"""Once `python -m engine.precompile` has run (make run and make test run it first), a server that boots its demo
VM and serves the VM page's panels compiles no numba kernel: it loads every one from the cache."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SERVER = r"""
import time
from webhyve.web import create_app, shutdown
app = create_app({"TESTING": True, "HOST_MEM_MB": 256, "CONTROL_TOKEN": "c", "VIEWER_TOKEN": "v",
                  "DEMO_GUEST": "shell", "RECORDINGS_DIR": %(tmp)r, "SNAPSHOTS_DIR": %(tmp)r, "DISKS_DIR": %(tmp)r})
client = app.test_client()
client.environ_base["HTTP_AUTHORIZATION"] = "Bearer c"
deadline = time.monotonic() + 300
while "webhyve>" not in client.get("/api/v1/vms/demo/console").json["text"]:
    assert time.monotonic() < deadline, "the demo VM never printed its prompt"
    time.sleep(0.1)
for path in ("vcpus/0/registers", "vcpus/0/vmcs", "vcpus/0/stats", "vcpus/0/translate?gla=0x1000", "ept",
             "ept/lookup?gpa=0x1000", "caches", "devices", "exits", "vga"):
    response = client.get("/api/v1/vms/demo/" + path)
    assert response.status_code == 200, (path, response.json)
print("panels read", flush=True)
shutdown(app)
"""


def test_a_server_after_precompile_loads_every_kernel_from_the_cache(tmp_path):
    subprocess.run([sys.executable, "-m", "engine.precompile"], cwd=ROOT, check=True, timeout=1800)
    env = dict(os.environ, NUMBA_DEBUG_CACHE="1")
    run = subprocess.run([sys.executable, "-c", SERVER % {"tmp": str(tmp_path)}], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "panels read" in run.stdout, run.stderr[-2000:]
    saved = [line for line in run.stdout.splitlines() if line.startswith("[cache] data saved")]
    loaded = [line for line in run.stdout.splitlines() if line.startswith("[cache] data loaded")]
    assert not saved, "compiled at first use, not by engine/precompile.py:\n" + "\n".join(saved)
    assert loaded, "no kernel came from the cache: " + run.stdout[-1000:]
