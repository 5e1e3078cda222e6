"""Live migration between two modeled hosts in one process over a real loopback TCP connection (engine/migration).

For each guest: total time, pre-copy rounds, pages and bytes sent, downtime (pause to the target's DONE), against
the floor: the guest's resident memory sent once (the same pages with the VM paused). Guests: an idle shell in 256
MiB; memtouch in 256 MiB rewriting 60,000 random pages as fast as it runs, without and with auto-converge (without,
the rounds stop when its dirty set stops shrinking); Linux at its shell prompt when `make linux` has built it.
A warm-up migration runs first (its downtime is printed: the kernels' first calls in a process). Run:
.venv/bin/python bench/migrate.py
"""
import os
import socket
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from engine import Hypervisor, migration  # noqa: E402

BUILD = os.path.join(ROOT, "guests", "build")
KEY = os.urandom(32)


def read(name):
    with open(os.path.join(BUILD, name), "rb") as f:
        return f.read()


def wait_console(vm, text, timeout=300):
    reader, seen = vm.console.reader(), b""
    deadline = time.monotonic() + timeout
    while text not in seen:
        if time.monotonic() > deadline:
            raise SystemExit("%s never printed %r" % (vm.name, text))
        seen += reader.read(1.0)


def connected():
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    accepted, _ = server.accept()
    server.close()
    return client, accepted


def migrate(vm, target, auto_converge=False):
    a, b = connected()
    got = {}

    def receive():
        got["arrival"] = migration.receive_vm(target, migration.Channel(b, KEY, "source"))
        got["arrival"].done()

    thread = threading.Thread(target=receive)
    thread.start()
    figures = migration.send_vm(vm, migration.Channel(a, KEY, "target"), auto_converge=auto_converge)
    thread.join()
    a.close()
    b.close()
    return figures, got["arrival"].vm


def floor(vm, target):
    """The resident pages sent once, the VM paused: what any migration must at least move."""
    vm.pause()
    a, b = connected()
    pages = vm.pmap.resident_pages()
    sink = threading.Thread(target=lambda: [b.recv_into(bytearray(1 << 20)) for _ in iter(int, 1)], daemon=True)
    sink.start()
    start = time.perf_counter()
    migration.pages.send(migration.Channel(a, KEY, "sink"), vm.pmap, pages)
    seconds = time.perf_counter() - start
    a.close()
    vm.resume()
    return len(pages), seconds


def guests():
    yield "idle shell, 256 MiB", dict(image=read("shell.elf"), filename="shell.elf", mem=256), b"webhyve>"
    for converge in (False, True):
        yield ("memtouch, 256 MiB, 60,000 pages rewritten%s" % (", auto-converge" if converge else ""), dict(
            image=read("memtouch.elf"), filename="memtouch.elf", mem=256, auto_converge=converge,
            cmdline="pages=60000 pattern=random passes=100000", resident=60000), b"base=0x")
    kernel, initrd = os.path.join(BUILD, "linux", "vmlinuz"), os.path.join(BUILD, "linux", "initrd.gz")
    if os.path.exists(kernel) and os.path.exists(initrd):
        with open(initrd, "rb") as f:
            yield "Linux at its shell, 256 MiB", dict(image=read("linux/vmlinuz"), filename="vmlinuz", mem=256,
                                                     cmdline='console=ttyS0 panic=-1 quiet whrun="echo migrate-ready; sleep 100000"',
                                                     initrd=f.read()), b"migrate-ready"


def warm_up():
    """One migration of a small idle VM first: the first call of each numba kernel in a process loads it from the
    cache (tens of ms each), which would otherwise land in the first guest's downtime."""
    source, target = Hypervisor(host_mem_mb=256), Hypervisor(host_mem_mb=256)
    vm = source.create_vm("warm", mem_mb=16)
    vm.load(read("shell.elf"), "shell.elf")
    vm.start()
    wait_console(vm, b"webhyve>")
    figures, moved = migrate(vm, target)
    moved.poweroff()
    return figures["downtime_ms"]


def main():
    print("warm-up migration (a 16 MiB idle shell, numba kernels loaded from the cache): %.1f ms down" % warm_up())
    print("%-58s %8s %6s %9s %11s %10s %9s %11s" % ("guest", "total s", "rounds", "pages", "MB on wire",
                                                   "downtime", "floor s", "floor pages"))
    for label, spec, ready in guests():
        source, target = Hypervisor(host_mem_mb=1024), Hypervisor(host_mem_mb=1024)
        vm = source.create_vm("m", mem_mb=spec["mem"])
        vm.load(spec["image"], spec["filename"], cmdline=spec.get("cmdline", ""), initrd=spec.get("initrd"))
        vm.start()
        wait_console(vm, ready)
        while vm.pmap.resident_pages().size < spec.get("resident", 0):     # memtouch has touched its pages
            time.sleep(0.05)
        pages, floor_s = floor(vm, target)
        figures, moved = migrate(vm, target, spec.get("auto_converge", False))
        source.destroy_vm("m")
        throttle = max(r["throttle"] for r in figures["rounds"])
        label += ", %d%% at the end" % throttle if throttle else ""
        print("%-58s %8.3f %6d %9d %11.1f %8.1f ms %9.3f %11d" % (
            label, figures["total_s"], len(figures["rounds"]), figures["pages_sent"], figures["bytes_sent"] / 1e6,
            figures["downtime_ms"], floor_s, pages))
        moved.poweroff()


if __name__ == "__main__":
    main()
