"""Session hooks for the whole suite: the bounds-checked hostile-value run starts as soon as the tests are known
(in one process; under pytest-xdist, where every worker collects every test, the test starts it when it runs)."""
import os

from tests.engine import hostile_run


def pytest_collection_finish(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if any(item.nodeid.endswith("test_hostile_values_bounds_checked") for item in session.items):
        hostile_run.start()


def pytest_sessionfinish(session, exitstatus):
    hostile_run.stop()
