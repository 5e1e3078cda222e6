"""The debugger: gdb's remote stub per VM (gdbstub.py) over an all-stop VM debugger (debugger.py)."""
from .debugger import Debugger
from .gdbstub import GdbStub

__all__ = ["Debugger", "GdbStub"]
