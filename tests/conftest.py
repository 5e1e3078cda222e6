"""Session hooks for the whole suite: the bounds-checked hostile-value run starts with the session when the
session collects its test (in the xdist controller, before the workers start: they find it through the
environment, tests/engine/hostile_run.py); under xdist, the files that boot Linux go to the workers first."""
import os
from pathlib import Path

from tests.engine import hostile_run

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    if hostile_run.wanted(session.config.args, str(session.config.rootpath)):
        hostile_run.start()


def pytest_sessionfinish(session, exitstatus):
    hostile_run.stop()


def boots_linux(test_file):
    """Whether a test file boots Debian's kernel (a minute or more of a core each, where most files take seconds)."""
    try:
        return "linux_images()" in (ROOT / test_file).read_text()
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
