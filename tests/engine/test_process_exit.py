"""A program that exits while its guests still run ends cleanly (no crash from vCPU threads in Unicorn)."""
import subprocess
import sys

from tests.engine.conftest import GUESTS, ROOT

SCRIPT = """
import sys, time
sys.path.insert(0, %r)
from engine import Hypervisor
hv = Hypervisor(host_mem_mb=256)
for name in ("a", "b"):
    vm = hv.create_vm(name, mem_mb=16)
    vm.load(open(%r, "rb").read(), "spin.elf", cmdline="iters=4000000000")
    vm.start()
time.sleep(0.3)
print("leaving with", [vm.state for vm in hv.vms.values()])
"""


def test_exit_with_running_vms_is_clean():
    done = subprocess.run([sys.executable, "-c", SCRIPT % (ROOT, GUESTS + "/spin.elf")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "leaving with ['running', 'running']" in done.stdout
