"""Session hooks for the whole suite: the bounds-checked hostile-value run starts with the session when the
session collects its test (in the xdist controller, before the workers start: they find it through the
environment, tests/engine/hostile_run.py); under xdist, the files that boot Linux go to the workers first; one
headless Chromium per process for every test that drives a page."""
import os
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from engine import precompile
from tests.engine import hostile_run

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"


def pytest_sessionstart(session):
    """The hostile run starts, then the engine's big kernels compile (before any worker starts) if this source has
    not had `make precompile`: a test waits for its guest, never for the compiler."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if hostile_run.wanted(session.config.args, str(session.config.rootpath)):
        hostile_run.start()
    precompile.ensure_ahead()


def pytest_sessionfinish(session, exitstatus):
    hostile_run.stop()


def boots_linux(test_file):
    """Whether a test file boots Debian's kernel (a minute or more of a core each, where most files take seconds)."""
    try:
        return "linux_images(" in (ROOT / test_file).read_text()
    except OSError:
        return False


def pytest_xdist_make_scheduler(config, log):
    """xdist's --dist loadfile hands out the files with the most tests first, which leaves the few long Linux boots
    (few tests each) to the end: one worker then boots them one after another while the other has nothing left.
    Handed out first, they run beside the many short files, which fill the other worker and the gaps."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class LinuxFirst(LoadFileScheduling):
        ordered = False

        def _assign_work_unit(self, node):
            if not self.ordered:
                self.ordered = True
                units = sorted(self.workqueue.items(), key=lambda unit: not boots_linux(unit[0]))  # stable
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return LinuxFirst(config, log)


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium under Playwright, once per process: Playwright's sync API runs one instance per thread,
    so the browser tests and the cluster's page test share this one (a second one raises "using Playwright Sync
    API inside the asyncio loop")."""
    assert os.path.exists(CHROMIUM), "browser tests need Debian's chromium: `make deps` installs it"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()
