"""A vCPU: one Unicorn instance, one thread, an explicit run state, controlled from other threads by messages.

thread.py (the thread, its driver loop and messages, visits), guest.py (registers, the VMCS guest-state area,
guest-linear memory), build.py (the Unicorn instance, hooks and boot registers), handlers.py and paging.py
(the userspace exit handlers), halting.py (HLT in userspace), states.py (the run states).
"""
from .guest import GPRS, REG_IDS, SEGMENTS
from .states import HALTED, IDLE, PAUSED, RUNNING, SUSPENDED
from .thread import Vcpu

__all__ = ["Vcpu", "GPRS", "SEGMENTS", "REG_IDS", "IDLE", "RUNNING", "HALTED", "PAUSED", "SUSPENDED"]
