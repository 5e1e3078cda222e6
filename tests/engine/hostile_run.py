"""The bounds-checked hostile-value run as a background process, started as soon as the session starts
(tests/conftest.py) so that its kernels compile (minutes on 2 cores) while the rest of the suite runs;
test_hostile_values waits for it. Its output and return code go to files in one folder, named to the test
through WEBHYVE_HOSTILE_RUN: under pytest-xdist the process that starts it (the controller) is not the worker
that runs the test."""
import os
import shlex
import subprocess
import sys
import tempfile
import time

import engine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTILE = os.path.join("tests", "engine", "hostile")
WHERE = "WEBHYVE_HOSTILE_RUN"
RUN = {}


def wanted(args, rootdir):
    """Whether a session given these paths (node ids, or none: the testpaths) collects the hostile test."""
    target = os.path.join(ROOT, "tests", "engine", "test_hostile_values.py")
    paths = [os.path.abspath(os.path.join(rootdir, a.split("::")[0])) for a in args if not a.startswith("-")]
    return not paths or any(target == p or target.startswith(p.rstrip(os.sep) + os.sep) for p in paths)


def start():
    """Start the run, once per session; not inside the bounds-checked run itself, nor when a parent process
    (the xdist controller) started it already."""
    if RUN or os.environ.get("NUMBA_BOUNDSCHECK") == "1" or os.environ.get(WHERE):
        return
    folder = tempfile.mkdtemp(prefix="hostile-run-")
    cache = engine._numba_cache_dir() + "-boundscheck"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "-W", "error::pytest.PytestUnraisableExceptionWarning", HOSTILE]
    # the return code is written last, by rename: a reader that sees it sees the whole output
    script = "%s > %s/output 2>&1; echo $? > %s/code.tmp; mv %s/code.tmp %s/code" % (
        " ".join(map(shlex.quote, command)), *(shlex.quote(folder),) * 4)
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=cache)
    RUN["process"] = subprocess.Popen(["sh", "-c", script], cwd=ROOT, env=env, start_new_session=True)
    os.environ[WHERE] = folder                   # inherited by the workers xdist starts after this


def wait(timeout):
    """(return code, output) of the run, started here if nobody started it; None when `timeout` passes."""
    start()
    folder = os.environ[WHERE]
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(folder, "code")):
        if time.monotonic() > deadline:
            stop()
            return None
        time.sleep(0.5)                          # a file written by another process: nothing to wait on but it
    with open(os.path.join(folder, "code")) as f:
        code = int(f.read())
    with open(os.path.join(folder, "output")) as f:
        return code, f.read()


def stop():
    """End a run the session no longer waits for (a suite stopped early): the shell and its pytest."""
    if RUN and RUN["process"].poll() is None:
        os.killpg(RUN["process"].pid, 9)
        RUN["process"].wait()
