"""webhyve's engine: a software bhyve on VT-x around Unicorn. Public API: Hypervisor, VM, the errors."""
import hashlib
import os
import pathlib
import sys


def _numba_cache_dir():
    """numba's cache=True checks only a function's own file, so a kernel that inlines another module's
    constants (ctx slots, stat slots) would keep stale ones from its cache. The cache therefore lives in a
    directory named after a digest of every engine source: any change starts a fresh one."""
    root = pathlib.Path(__file__).resolve().parent
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return str(root.parent / ".numba-cache" / digest.hexdigest()[:16])


if "NUMBA_CACHE_DIR" not in os.environ:
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache_dir()
    if "numba" in sys.modules:                 # imported before us: its config read the environment already
        sys.modules["numba"].config.CACHE_DIR = os.environ["NUMBA_CACHE_DIR"]

from .errors import ConfigError, EngineError, ImageError, StateError, TunableError  # noqa: E402
from .hypervisor import Hypervisor  # noqa: E402
from .vm import VM  # noqa: E402

__all__ = ["Hypervisor", "VM", "EngineError", "ImageError", "ConfigError", "StateError", "TunableError"]
