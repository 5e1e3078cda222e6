"""Live migration of a running VM to another host: pre-copy over the dirty log, stop-and-copy, commit.

wire.py frames and authenticates the stream, pages.py puts guest pages on it, source.py and target.py are the two
sides. The transport (a TCP connection the cluster opens, with a key derived from its secret) is the caller's.
"""
from .source import send_vm
from .target import receive_vm
from .wire import Channel

__all__ = ["Channel", "receive_vm", "send_vm"]
