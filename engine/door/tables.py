"""The engine's tables as front ends print them: registers, VMCS fields, exit reasons, stats, names, errors.

Front ends generate their options, panels and formats from these (STYLE.md: tables over flags) and import
them from here, the door, rather than from the modules that own them.
"""
from .. import names
from ..core import vmcs
from ..cpu import profiles as _profiles
from ..devices.vga_text import LIGHT_GREY as VGA_CURSOR
from ..devices.vga_text import PALETTE as VGA_PALETTE
from ..errors import ConfigError, EngineError, ImageError, MigrationError, SnapshotError, StateError, TunableError
from ..loaders import KINDS
from ..snapshot import read_header as read_snapshot_header
from ..stats import TABLE as STATS
from ..stats import by_id as stats_by_id
from ..stats import format_stats
from ..stats import rows as stats_rows
from ..vcpu import GPRS, SEGMENTS
from ..slots import EMULATIONS
from ..slots import parse_all as parse_slots
from ..vmx import exits

PROFILES, DEFAULT_PROFILE = tuple(_profiles.PROFILES), _profiles.DEFAULT
REGISTERS = GPRS + SEGMENTS + ("efer",)            # what a vCPU's registers() holds, and --set-REG may change

__all__ = ["names", "ConfigError", "EngineError", "ImageError", "SnapshotError", "StateError", "TunableError",
           "KINDS", "read_snapshot_header", "STATS", "stats_by_id", "format_stats", "stats_rows", "GPRS", "SEGMENTS",
           "REGISTERS", "exits", "vmcs", "PROFILES", "DEFAULT_PROFILE", "VGA_PALETTE", "VGA_CURSOR", "EMULATIONS",
           "parse_slots"]
