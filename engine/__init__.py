"""webhyve's engine: a software bhyve on VT-x around Unicorn. Public API: Hypervisor, VM, the errors."""
from .errors import ConfigError, EngineError, ImageError, StateError, TunableError
from .hypervisor import Hypervisor
from .vm import VM

__all__ = ["Hypervisor", "VM", "EngineError", "ImageError", "ConfigError", "StateError", "TunableError"]
