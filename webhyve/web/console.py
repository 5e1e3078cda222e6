"""The /console Socket.IO namespace: attach to a VM's serial console, type into it, acknowledge output.

Events from the browser (each answered through its ack with {"ok": True, …} or {"error", "status"}; what each
accepts is declared in events.py and checked before the handler runs):
  attach {vm, since?}  join the VM's room; get a replay of the screen and scrollback, or, with `since`
                       (the last position received before a drop), exactly the bytes missed
  input  {vm, data}    type into the guest (control token only)
  ack    {vm, position} flow control: the browser's terminal has written up to `position`
  detach {vm}
Server → browser: output {data, start, end} (bytes), replay {data, position}, marker {label}, vm_state.
"""
from flask import request
from flask_socketio import join_room, leave_room

from ..sessions.errors import ApiError
from .access import CONTROL, connection_role
from .events import CheckedNamespace, handler


class ConsoleNamespace(CheckedNamespace):
    """Legend: `roles` maps a connected sid to its role; `attached` maps it to the VM names it follows."""

    def __init__(self, fleet, namespace="/console"):
        super().__init__(namespace)
        self.fleet = fleet
        self.roles, self.attached = {}, {}

    def on_connect(self, auth=None):
        role = connection_role(auth)
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

    @handler
    def on_attach(self, payload):
        session, sid = self.fleet.get(payload["vm"]), request.sid
        role = self.roles[sid]
        first = session.pump.attach(sid, role == CONTROL, payload["since"])
        join_room("vm:" + session.name)
        self.attached[sid].add(session.name)
        return {**first, "role": role, "state": session.vm.state}

    @handler
    def on_detach(self, payload):
        session = self.fleet.get(payload["vm"])
        session.pump.detach(request.sid)
        leave_room("vm:" + session.name)
        self.attached[request.sid].discard(session.name)

    @handler
    def on_input(self, payload):
        if self.roles[request.sid] != CONTROL:
            raise ApiError(403, "read-only viewer: typing needs the control token")
        session, data = self.fleet.get(payload["vm"]), payload["data"]
        data = data.encode("utf-8") if isinstance(data, str) else data
        session.vm.send_input(data)
        return {"sent": len(data)}

    @handler
    def on_ack(self, payload):
        if not self.fleet.get(payload["vm"]).pump.ack(request.sid, payload["position"]):
            raise ApiError(409, "not attached to this VM")
