"""Session hooks for the whole suite: the bounds-checked hostile-value run starts with the session when the
session collects its test (in the xdist controller, before the workers start: they find it through the
environment, tests/engine/hostile_run.py)."""
import os

from tests.engine import hostile_run


def pytest_sessionstart(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if hostile_run.wanted(session.config.args, str(session.config.rootpath)):
        hostile_run.start()


def pytest_sessionfinish(session, exitstatus):
    hostile_run.stop()
