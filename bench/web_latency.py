"""webhyve's web benchmark: keystroke-to-echo latency through the real server, and guest speed under viewers.

Starts the server as `make run` does (gunicorn, one worker, threads) on a free loopback port with the shell
guest as VM "demo", then, in the same run:
  1. latency: a Socket.IO client types one character at a time into the shell and times until the echo
     arrives over the websocket (p50, p99), first as the only viewer, then with VIEWERS more viewers
     attached in a separate process, each acknowledging output as a browser does;
  2. guest speed: the CPU-bound `spin` guest runs to completion while the shell prints `help` every
     50 ms, once with no viewers and once with VIEWERS viewers on the shell's console; the ratio is reported.
Prints figures only; exits non-zero only when a run fails (a missing echo, a guest that does not finish).
"""
import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import requests
import socketio

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.webhyve.live import CONTROL, VIEWER, auth, start_server, stop_server  # noqa: E402  (the tests' server)

SPIN_ITERS = 600_000_000
TYPING_GAP = 0.05                   # 20 keys per second, a fast typist; the pump batches at most every 20 ms


class BenchError(Exception):
    """A run failed: the server did not start, an echo never came, a guest did not finish."""


def connect(url, token, vm, on_output=None):
    """A Socket.IO client on /console over websocket, attached to `vm`, acknowledging what it receives."""
    client = socketio.Client(reconnection=False)

    def output(message):
        try:
            client.emit("ack", {"vm": vm, "position": message["end"]}, namespace="/console")
        except socketio.exceptions.BadNamespaceError:
            return                                  # output that raced our own disconnect
        if on_output:
            on_output(message)
    client.on("output", output, namespace="/console")
    for attempt in range(3):                        # a handshake can time out while 50 others connect
        try:
            client.connect(url, namespaces=["/console"], transports=["websocket"], auth={"token": token},
                           wait_timeout=10)
            break
        except socketio.exceptions.ConnectionError:
            if attempt == 2:
                raise
            time.sleep(0.5)
    reply = client.call("attach", {"vm": vm}, namespace="/console", timeout=10)
    if not reply.get("ok"):
        raise BenchError("attach %s: %s" % (vm, reply))
    return client


def viewers_process(url, vms, count, ready, stop):
    """`count` read-only viewers on each VM in `vms`, in their own process so they do not share our GIL."""
    clients = [connect(url, VIEWER, vm) for vm in vms for _ in range(count)]
    ready.set()
    stop.wait()
    for client in clients:
        client.disconnect()


class Viewers:
    def __init__(self, url, vms, count):
        self.ready, self.stop = multiprocessing.Event(), multiprocessing.Event()
        self.process = multiprocessing.Process(target=viewers_process, args=(url, vms, count, self.ready, self.stop))

    def __enter__(self):
        self.process.start()
        if not self.ready.wait(120):
            raise BenchError("the viewers did not attach")
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.process.join(30)


def keystroke_latency(url, keystrokes):
    """Seconds from sending each character to receiving its echo, for `keystrokes` characters."""
    echoed, expected = threading.Event(), {}

    def on_output(message):
        if expected.get("char") is not None and expected["char"] in message["data"]:
            expected["at"] = time.perf_counter()
            echoed.set()
    typist = connect(url, CONTROL, "demo", on_output)
    samples = []
    try:
        for i in range(keystrokes):
            if i % 50 == 0:
                typist.call("input", {"vm": "demo", "data": "\x15"}, namespace="/console")   # Ctrl-U: empty the line
                time.sleep(0.05)
            char = "abcdefghijklmnopqrstuvwxyz"[i % 26]
            echoed.clear()
            expected.update(char=char, at=None)
            sent = time.perf_counter()
            typist.emit("input", {"vm": "demo", "data": char}, namespace="/console")
            if not echoed.wait(5):
                raise BenchError("no echo of %r within 5 s" % char)
            samples.append(expected["at"] - sent)
            expected["char"] = None
            time.sleep(TYPING_GAP)
    finally:
        typist.call("input", {"vm": "demo", "data": "\x15"}, namespace="/console")
        typist.disconnect()
    return samples


def wait_for_text(url, name, text, timeout=5):
    """The VM's console shows `text` (the pump is at most a batch behind the guest)."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if text in requests.get(url + "/api/v1/vms/%s/console" % name, headers=auth(CONTROL)).json()["text"]:
            return True
        time.sleep(0.02)
    return False


def vcpu_runtime(url, name):
    """Seconds vCPU 0 of `name` has spent in its run loop (bhyve's VCPU_TOTAL_RUNTIME)."""
    stats = requests.get(url + "/api/v1/vms/%s/vcpus/0/stats" % name, headers=auth(CONTROL)).json()
    return stats["by_id"]["VCPU_TOTAL_RUNTIME"] / 1e9


def cpu_seconds(pid):
    """User + system CPU seconds of a process and its children so far (/proc/PID/stat fields 14-17)."""
    total = 0.0
    for task in [pid] + children(pid):
        with open("/proc/%d/stat" % task) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid):
    with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
        return [int(c) for c in f.read().split()]


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def spin_seconds(url, name, server_pid):
    """Run the spin guest to completion while the shell prints: wall seconds, the spin vCPU's runtime
    (time inside its run loop), and the CPU seconds the whole server process used meanwhile."""
    stop = threading.Event()

    def chatter():
        while not stop.wait(0.05):
            requests.post(url + "/api/v1/vms/demo/console", json={"data": "help\r"}, headers=auth(CONTROL))
    talker = threading.Thread(target=chatter, daemon=True)
    talker.start()
    try:
        started, cpu_before = time.perf_counter(), cpu_seconds(server_pid)
        created = requests.post(url + "/api/v1/vms", headers=auth(CONTROL),
                                json={"name": name, "guest": "spin", "cmdline": "iters=%d" % SPIN_ITERS})
        if created.status_code != 201:
            raise BenchError("create %s: %s" % (name, created.text))
        while True:
            vm = requests.get(url + "/api/v1/vms/" + name, headers=auth(CONTROL)).json()
            if vm["state"] == "suspended":
                break
            if time.perf_counter() - started > 120:
                raise BenchError("%s did not finish in 120 s" % name)
            time.sleep(0.01)
        wall, server_cpu = time.perf_counter() - started, cpu_seconds(server_pid) - cpu_before
        runtime = vcpu_runtime(url, name)
        if vm["suspend_reason"] != "halt" or not wait_for_text(url, name, "checksum="):
            raise BenchError("%s ended without its checksum: %s" % (name, vm["suspend_message"]))
        requests.delete(url + "/api/v1/vms/" + name, headers=auth(CONTROL))
        return wall, runtime, server_cpu
    finally:
        stop.set()
        talker.join()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--keystrokes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3, help="guest-speed runs per case (best is kept)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="webhyve-bench-")
    try:
        process, url = start_server(workdir, threads=200)
    except RuntimeError as problem:
        print("bench failed: %s" % problem, file=sys.stderr)
        return 1
    try:
        print("keystroke -> echo over the websocket, %d keystrokes %d ms apart (ms):" % (args.keystrokes, 1000 * TYPING_GAP))
        alone = keystroke_latency(url, args.keystrokes)
        with Viewers(url, ["demo"], args.viewers):
            crowded = keystroke_latency(url, args.keystrokes)
        for label, samples in (("1 viewer (the typist)", alone), ("typist + %d viewers" % args.viewers, crowded)):
            print("  %-24s p50 %6.2f   p99 %6.2f   max %6.2f" % (label, 1e3 * statistics.median(samples),
                                                                 1e3 * percentile(samples, 99), 1e3 * max(samples)))
        print("\nspin guest, %d iterations, while the shell prints `help` every 50 ms (best of %d, interleaved):" % (SPIN_ITERS, args.runs))
        none, watched = [], []
        for i in range(args.runs):                  # interleaved, so drifting load on the machine hits both
            none.append(spin_seconds(url, "bare%d" % i, process.pid) + (0.0,))
            with Viewers(url, ["demo"], args.viewers) as viewers:
                before = cpu_seconds(viewers.process.pid)
                run = spin_seconds(url, "watched%d" % i, process.pid)
                watched.append(run + (cpu_seconds(viewers.process.pid) - before,))
        none, watched = min(none), min(watched)
        print("  %-12s %8s %10s %22s %22s" % ("", "wall s", "spin vCPU s", "server CPU s per s", "viewers' CPU s per s"))
        for label, (wall, runtime, server, clients) in (("no viewers", none), ("%d viewers" % args.viewers, watched)):
            print("  %-12s %8.3f %10.3f %22.2f %22.2f" % (label, wall, runtime, server / wall, clients / wall))
        print("  speed with %d viewers / with none: wall %.2f, spin vCPU runtime %.2f (2 cores, shared with the server and the viewers)" % (
            args.viewers, none[0] / watched[0], none[1] / watched[1]))
    except BenchError as problem:
        print("bench failed: %s" % problem, file=sys.stderr)
        return 1
    finally:
        stop_server(process)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
