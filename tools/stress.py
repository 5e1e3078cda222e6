"""`make stress`: the timing-sensitive tests, many times in a row, while two CPU burners share the machine.

A test that fails one run in a hundred is a bug in the engine or in the test; this is where it shows.
Prints one line per run and, last, how many of the runs passed; exits nonzero unless all did.
Usage: python tools/stress.py [--runs N] [pytest selection ...]
"""
import argparse
import subprocess
import sys
import time

# Interrupts, timers, SMP, kicks, visits, halts, snapshots of running VMs, gdb, the web console, panels polled
# while an SMP guest counts, and the browser.
TIMING_SENSITIVE = [
    "tests/engine/io",
    "tests/engine/test_kicks.py",
    "tests/engine/test_visit.py",
    "tests/engine/test_hostcpu_sharing.py",
    "tests/engine/test_snapshot.py",
    "tests/engine/test_migration.py",          # harvests and visits the vCPUs while they run
    "tests/engine/test_reset.py",
    "tests/engine/debug",
    "tests/webhyve/test_namespaces.py",
    "tests/webhyve/test_counters.py",          # the ticker's samples of running guests
    "tests/webhyve/test_polling.py",
    "tests/webhyve/test_server.py",
    "tests/webhyve/test_vmmctl.py",
    "tests/browser",
]
BURNER = "while True: pass"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("tests", nargs="*", default=TIMING_SENSITIVE)
    args = parser.parse_args()
    burners = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(2)]
    passed = 0
    try:
        for run in range(1, args.runs + 1):
            started = time.monotonic()
            result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
                                    + args.tests, capture_output=True, text=True)
            last = (result.stdout.strip().splitlines() or ["(no output)"])[-1]
            ok = result.returncode == 0
            passed += ok
            print("stress run %d/%d: %s in %.0f s: %s" % (run, args.runs, "passed" if ok else "FAILED",
                                                         time.monotonic() - started, last), flush=True)
            if not ok:
                print(result.stdout[-4000:], flush=True)
    finally:
        for burner in burners:
            burner.kill()
    print("stress: %d of %d runs passed (2 CPU burners running)" % (passed, args.runs))
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
