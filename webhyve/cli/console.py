"""vmmctl console: a VM's serial console in this terminal, over the server's /console Socket.IO namespace.

On a terminal the console is raw and Ctrl-] detaches. With piped stdin the input is typed into the guest
(newlines as carriage returns, as a terminal sends them) and vmmctl detaches once the guest has been quiet
for --idle seconds after the end of the input.
"""
import os
import select
import sys
import termios
import threading
import time
import tty

import socketio

from .client import ServerError

ESCAPE = b"\x1d"            # Ctrl-], as telnet, virsh console and `vmmctl run` use
ESCAPE_NAME = "Ctrl-]"
NAMESPACE = "/console"
MAX_INPUT = 4096


class ConsoleSession:
    """Legend: `last_output` and `gone` are written by the Socket.IO thread and read by the input loop."""

    def __init__(self, url, token, vm):
        self.url, self.token, self.vm = url, token, vm
        self.out = sys.stdout.buffer
        self.client = socketio.Client(reconnection=False)
        self.last_output = time.monotonic()
        self.gone = threading.Event()
        self.client.on("output", self._output, namespace=NAMESPACE)
        self.client.on("vm_state", self._vm_state, namespace=NAMESPACE)

    def _write(self, data):
        self.out.write(data)
        self.out.flush()
        self.last_output = time.monotonic()

    def _output(self, message):
        if message.get("vm", self.vm) == self.vm:
            self._write(message["data"].encode("latin-1"))
            self.client.emit("ack", {"vm": self.vm, "position": message["end"]}, namespace=NAMESPACE)

    def _vm_state(self, message):
        if message.get("state") == "destroyed":
            self.gone.set()

    def attach(self):
        """Connect and attach; returns the server's first answer: the role ("control" or "view") and the
        history to show (show_history), which run_console writes after its banner."""
        try:
            self.client.connect(self.url, namespaces=[NAMESPACE], transports=["websocket"],
                                auth={"token": self.token}, wait_timeout=10)
        except socketio.exceptions.ConnectionError as problem:
            raise ServerError("cannot open the console of %r at %s: %s" % (self.vm, self.url, problem)) from None
        first = self.client.call("attach", {"vm": self.vm}, namespace=NAMESPACE, timeout=10)
        if "error" in first:
            self.client.disconnect()
            raise ServerError(first["error"])
        return first

    def show_history(self, first):
        data = first["data"]
        self._write(data.encode("utf-8") if first["mode"] == "replay" else data.encode("latin-1"))

    def send(self, data):
        for start in range(0, len(data), MAX_INPUT):
            answer = self.client.call("input", {"vm": self.vm, "data": data[start:start + MAX_INPUT]},
                                      namespace=NAMESPACE, timeout=10)
            if "error" in answer:
                raise ServerError(answer["error"])

    def detach(self):
        try:
            self.client.call("detach", {"vm": self.vm}, namespace=NAMESPACE, timeout=5)
        except socketio.exceptions.TimeoutError:
            pass                                    # the server goes on without us either way
        self.client.disconnect()


def run_console(url, token, vm, idle, echo):
    """Attach, copy stdin to the guest until Ctrl-] / end of input + quiet / the VM is destroyed."""
    session = ConsoleSession(url, token, vm)
    first = session.attach()
    role = first["role"]
    interactive = sys.stdin.isatty()
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd) if interactive else None
    if interactive:
        tty.setraw(fd)                              # before the announcement: keys typed after it are raw
    # The banner first, on its own line, then the replayed history: a replay ends by placing the cursor
    # (ESC[nG) after the prompt, and a banner written after it was glued to the prompt.
    echo("vmmctl: attached to the serial console of %s (%s); press %s to detach\r" % (
        vm, "read-only viewer" if role != "control" else "control", ESCAPE_NAME))
    session.show_history(first)
    try:
        why = copy_input(session, fd, idle, role == "control", interactive, echo)
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        session.detach()
    echo("\r\nvmmctl: detached from %s (%s)" % (vm, why))


def copy_input(session, fd, idle, may_type, interactive, echo):
    open_input, told = True, False
    while not session.gone.is_set():
        if not open_input and time.monotonic() - session.last_output >= idle:
            return "end of input"
        if not open_input:
            time.sleep(0.05)
            continue
        if not select.select([fd], [], [], 0.05)[0]:
            continue
        data = os.read(fd, 1024)
        if not data:
            open_input = False
            session.last_output = max(session.last_output, time.monotonic())
            continue
        if ESCAPE in data:
            data, open_input = data.split(ESCAPE)[0], None
        if not interactive:
            data = data.replace(b"\n", b"\r")
        if data and may_type:
            session.send(data)
        elif data and not told:
            echo("vmmctl: read-only: typing needs the control token\r")
            told = True
        if open_input is None:
            return "left with %s" % ESCAPE_NAME
    return "the VM was destroyed"
