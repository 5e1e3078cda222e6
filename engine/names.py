"""The one rule for the names users give: VMs, snapshots, recordings and demos use ASCII letters, digits, '-' and '_', 1 to 64.

Names become file names (recordings are VM-stamp-n.cast, snapshots NAME.snap), URL path segments and
terminal output, so the rule is the intersection of what each of those takes without quoting: ASCII
only (a VM named `ünï` once recorded files the recordings list could not parse) and short enough that
a recording's file name stays far below the 255 bytes a file system allows.
"""
import re

from .errors import ConfigError

MAX_LENGTH = 64
CHARACTERS = "A-Za-z0-9_-"
PATTERN = "[%s]{1,%d}" % (CHARACTERS, MAX_LENGTH)        # for other patterns built on it (recording file names)
RULE = "ASCII letters, digits, '-' and '_', 1 to %d characters" % MAX_LENGTH
_NAME = re.compile(PATTERN)


def problem(name):
    """What is wrong with `name` as a name, or None when it follows the rule."""
    if not isinstance(name, str):
        return "must be text, not %s" % type(name).__name__
    if not name:
        return "is empty"
    if len(name) > MAX_LENGTH:
        return "is %d characters long, more than %d" % (len(name), MAX_LENGTH)
    if not _NAME.fullmatch(name):
        bad = next(c for c in name if not re.fullmatch("[%s]" % CHARACTERS, c))
        return "has %r, which is not allowed" % bad
    return None


def check(name, what="VM name"):
    """`name` itself, or ConfigError naming what is wrong and the rule."""
    wrong = problem(name)
    if wrong:
        raise ConfigError("%s %s %s: use %s" % (what, _shown(name), wrong, RULE))
    return name


def from_file(path):
    """A name for a VM made from a file: its base name up to the first dot, every other character as '_'."""
    stem = re.split(r"[\\/]", path)[-1].split(".")[0]
    return re.sub("[^%s]" % CHARACTERS, "_", stem)[:MAX_LENGTH] or "vm"


def _shown(name):
    text = repr(name)
    return text if len(text) <= 40 else text[:37] + "..."
