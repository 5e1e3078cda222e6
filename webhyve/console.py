"""The /console Socket.IO namespace: attach to a VM's serial console, type into it, acknowledge output.

Events from the browser (each answered through its ack with {"ok": True, …} or {"error": message}):
  attach {vm, since?}  join the VM's room; get a replay of the screen and scrollback, or, with `since`
                       (the last position received before a drop), exactly the bytes missed
  input  {vm, data}    type into the guest (control token only)
  ack    {vm, position} flow control: the browser's terminal has written up to `position`
  detach {vm}
Server → browser: output {data, start, end} (bytes), replay {data, position}, marker {label}, vm_state.
"""
from flask import current_app, request
from flask_socketio import Namespace, join_room, leave_room

from .access import CONTROL, role_of
from .errors import ApiError

MAX_INPUT = 4096


def handler(method):
    """Run an event handler; any bad payload or refusal becomes {"error": …} and changes nothing."""
    def wrapper(self, payload=None, *_extra):
        try:
            if not isinstance(payload, dict):
                raise ApiError(400, "send an object, e.g. {\"vm\": \"demo\"}")
            return {"ok": True, **(method(self, payload) or {})}
        except ApiError as problem:
            return {"error": problem.message, "status": problem.status}
        except Exception as problem:            # a bug answers this event with an error; the server goes on
            current_app.logger.exception("%s failed", method.__name__)
            return {"error": "internal error: %r" % problem, "status": 500}
    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class ConsoleNamespace(Namespace):
    """Legend: `roles` maps a connected sid to its role; `attached` maps it to the VM names it follows."""

    def __init__(self, fleet, namespace="/console"):
        super().__init__(namespace)
        self.fleet = fleet
        self.roles, self.attached = {}, {}

    def on_connect(self, auth=None):
        role = role_of((auth or {}).get("token") if isinstance(auth, dict) else None) or role_of(request.args.get("token"))
        if role is None:
            raise ConnectionRefusedError("a valid token is required")
        self.roles[request.sid] = role
        self.attached[request.sid] = set()

    def on_disconnect(self, *reason):
        sid = request.sid
        for name in self.attached.pop(sid, ()):
            try:
                self.fleet.get(name).pump.detach(sid)
            except ApiError:
                pass                                  # the VM was destroyed meanwhile
        self.roles.pop(sid, None)

    def _session(self, payload):
        name = payload.get("vm")
        if not isinstance(name, str):
            raise ApiError(400, "which VM? send {\"vm\": NAME}")
        return self.fleet.get(name)

    @handler
    def on_attach(self, payload):
        session = self._session(payload)
        sid, since = request.sid, payload.get("since")
        first = session.pump.attach(sid, self.roles[sid], since if isinstance(since, int) else None)
        join_room("vm:" + session.name)
        self.attached[sid].add(session.name)
        return {**first, "role": self.roles[sid], "state": session.vm.state}

    @handler
    def on_detach(self, payload):
        session = self._session(payload)
        session.pump.detach(request.sid)
        leave_room("vm:" + session.name)
        self.attached[request.sid].discard(session.name)

    @handler
    def on_input(self, payload):
        if self.roles.get(request.sid) != CONTROL:
            raise ApiError(403, "read-only viewer: typing needs the control token")
        session = self._session(payload)
        data = payload.get("data")
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not isinstance(data, bytes) or not 0 < len(data) <= MAX_INPUT:
            raise ApiError(400, "data must be text or bytes, 1 to %d long" % MAX_INPUT)
        session.vm.console.send_input(data)
        return {"sent": len(data)}

    @handler
    def on_ack(self, payload):
        position = payload.get("position")
        if not isinstance(position, int):
            raise ApiError(400, "position must be an integer")
        if not self._session(payload).pump.ack(request.sid, position):
            raise ApiError(409, "not attached to this VM")
