"""The bounds-checked hostile-value run as a background process: started when collection ends (tests/conftest.py),
so that its kernels compile (minutes on 2 cores) while the rest of the suite runs; test_hostile_values waits for it.
One module object holds it: the conftest and the test both import it as tests.engine.hostile_run."""
import os
import subprocess
import sys
import tempfile

import engine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOSTILE = os.path.join("tests", "engine", "hostile")
RUN = {}


def start():
    """Start the run, once per session; not inside the bounds-checked run itself."""
    if RUN or os.environ.get("NUMBA_BOUNDSCHECK") == "1":
        return
    cache = engine._numba_cache_dir() + "-boundscheck"
    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=cache)
    RUN["output"] = tempfile.TemporaryFile(mode="w+")
    RUN["process"] = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                       "-W", "error::pytest.PytestUnraisableExceptionWarning", HOSTILE],
                                      cwd=ROOT, env=env, stdout=RUN["output"], stderr=subprocess.STDOUT, text=True)


def wait(timeout):
    """(return code, output) of the run, started here if nobody started it; None when `timeout` passes."""
    start()
    try:
        code = RUN["process"].wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop()
        return None
    RUN["output"].seek(0)
    return code, RUN["output"].read()


def stop():
    """End a run the session no longer waits for (a suite stopped early)."""
    if RUN and RUN["process"].poll() is None:
        RUN["process"].kill()
        RUN["process"].wait()
