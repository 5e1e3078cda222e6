"""The engine's exception family: every refusal names the problem and, where there is one, the way out."""


class EngineError(Exception):
    """Base of every error the engine raises on purpose."""


class ImageError(EngineError):
    """A guest image that cannot be loaded: wrong magic, truncated, segments outside memory..."""


class ConfigError(EngineError):
    """A VM configuration the modeled host cannot give (memory, vCPUs, unknown profile...)."""


class TunableError(EngineError):
    """An unknown tunable or a value outside what it accepts."""


class StateError(EngineError):
    """A request that is not allowed in the VM's or vCPU's current state."""


class SnapshotError(EngineError):
    """A snapshot file that cannot be restored (damaged, truncated, foreign or crafted), or one that cannot be
    written; the message names the file and the problem."""


class UnsupportedByModel(Exception):
    """The guest did something the model does not implement yet: its vCPU's thread suspends the VM, naming it."""


class MigrationError(EngineError):
    """A live migration that cannot go on (the peer refused, the connection broke, a frame failed its check);
    the message says which step. The VM stays where it was running, unless `committed`: COMMIT was sent and the
    target may have started the VM, so the source keeps its copy paused."""
    committed = False
