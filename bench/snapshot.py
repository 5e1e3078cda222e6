"""Snapshot save and restore of a 128 MiB guest: memtouch touching 8 MiB, then 100 MiB of it.

Prints seconds for `vm.snapshot()` (pause, write, resume) and `Hypervisor.restore_vm()` (read, rebuild
memory and EPT, CPU and devices), best of three, and the file size. Run: .venv/bin/python bench/snapshot.py
"""
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine import Hypervisor  # noqa: E402

MEMTOUCH = os.path.join(ROOT, "guests", "build", "memtouch.elf")
RUNS = 3


def measure(pages):
    hv = Hypervisor(host_mem_mb=1024)
    vm = hv.create_vm("snap", mem_mb=128)
    with open(MEMTOUCH, "rb") as f:
        vm.load(f.read(), "memtouch.elf", cmdline="pages=%d pattern=seq" % pages)
    vm.start()
    vm.wait(states=("suspended",), timeout=120)
    saves, restores = [], []
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "snap.snap")
        for i in range(RUNS):
            start = time.perf_counter()
            vm.snapshot(path)
            saves.append(time.perf_counter() - start)
            other = Hypervisor(host_mem_mb=1024)
            start = time.perf_counter()
            other.restore_vm(path, name="copy%d" % i)
            restores.append(time.perf_counter() - start)
            other.destroy_vm("copy%d" % i)
        size = os.path.getsize(path)
    return min(saves), min(restores), size, vm.pmap.stats()["resident_pages"]


def main():
    print("command: %s" % " ".join([sys.executable] + sys.argv))
    print("%-28s %10s %10s %12s %10s" % ("128 MiB guest", "save s", "restore s", "file MiB", "pages"))
    for pages in (2048, 25600):
        save, restore, size, resident = measure(pages)
        print("%-28s %10.3f %10.3f %12.1f %10d" % ("memtouch pages=%d" % pages, save, restore, size / 2**20, resident))


if __name__ == "__main__":
    main()
