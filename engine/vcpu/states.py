"""A vCPU's run states, as its thread, the VM and every view name them.

idle: not started, waiting for INIT-SIPI, or powered off; running: in the guest or about to enter it;
halted: in a HLT (or a BIOS wait for a key) until an interrupt ends it; paused: by pause() or the
debugger, remembering what a resume returns to; suspended: stopped for good, with the VM's reason.
"""
IDLE, RUNNING, HALTED, PAUSED, SUSPENDED = "idle", "running", "halted", "paused", "suspended"
