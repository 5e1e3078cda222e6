"""The /console Socket.IO namespace: attach to a VM's serial console, type into it, acknowledge output.

Events from the browser (each answered through its ack with {"ok": True, …} or {"error", "status"}; what each
accepts is declared in events.py and checked before the handler runs):
  attach {vm, since?}  join the VM's room; get a replay of the screen and scrollback, or, with `since`
                       (the last position received before a drop), exactly the bytes missed
  input  {vm, data}    type into the guest (control token only)
  ack    {vm, position} flow control: the browser's terminal has written up to `position`
  detach {vm}
Server → browser: output {data, start, end} (bytes), replay {data, position}, marker {label}, vm_state.

In cluster mode an event for a VM on another node runs there (cluster.dispatch forwards it with this browser's
sid); that node's pump then sends the output to the sid through the Redis message queue.
"""
from flask import request
from flask_socketio import disconnect, join_room, leave_room

from ..sessions.errors import ApiError
from . import audit, policy
from .access import CONTROL, VIEW, still_valid
from .events import CheckedNamespace, handler


class ConsoleNamespace(CheckedNamespace):
    """Legend: `principals` maps a connected sid to who it is (policy.Principal); `attached` maps it to the VM
    names it follows. Each event's VM is checked with policy.may: one the sid may not see is a 404."""

    def __init__(self, fleet, namespace="/console", cluster=None):
        super().__init__(namespace)
        self.fleet = fleet
        self.attached = {}
        self.cluster = cluster
        if cluster is not None:
            cluster.ops.update({"console.attach": self.attach, "console.detach": self.detach,
                                "console.input": self.input, "console.ack": self.ack})
            cluster.forget_hooks.append(self.forget)

    def run(self, op, payload, local, role=None):
        """`local(sid, role, payload)` here, or on the VM's node in cluster mode; `role` is CONTROL when this sid
        may control the VM (404 when it may not see it). A sid whose user is no longer valid is disconnected."""
        sid = request.sid
        if role is None:
            try:
                principal = still_valid(self.principals[sid])
            except ApiError:
                disconnect()
                raise
            role = self.role_for(principal, payload["vm"])
        if self.cluster is None:
            return local(sid, role, payload)
        return self.cluster.dispatch(op, sid, role, payload, local)

    def role_for(self, principal, name):
        session = policy.visible_session(principal, self.fleet, name)
        return CONTROL if policy.may(principal, policy.CONTROL, session) else VIEW

    def connected(self, sid):
        self.attached[sid] = set()

    def disconnected(self, sid):
        for name in self.attached.pop(sid, ()):
            try:
                self.run("console.detach", {"vm": name}, self.detach, role=VIEW)
            except ApiError:
                pass                                  # the VM was destroyed meanwhile, or its node is gone

    @handler
    def on_attach(self, payload):
        answer = self.run("console.attach", payload, self.attach)
        join_room("vm:" + payload["vm"])
        self.attached[request.sid].add(payload["vm"])
        principal = self.principals[request.sid]
        if answer["role"] == CONTROL and principal.token is None:      # users mode: who may type where, once
            audit.record(principal, "console.attach", payload["vm"], status=200, mode="control")
        return answer

    @handler
    def on_detach(self, payload):
        self.run("console.detach", payload, self.detach)
        leave_room("vm:" + payload["vm"])
        self.attached[request.sid].discard(payload["vm"])

    @handler
    def on_input(self, payload):
        return self.run("console.input", payload, self.input)

    @handler
    def on_ack(self, payload):
        return self.run("console.ack", payload, self.ack)

    # -- what each event does on the VM's node (sid: the browser's, wherever it is connected) ---------------
    def attach(self, sid, role, payload):
        session = self.fleet.get(payload["vm"])
        first = session.pump.attach(sid, role == CONTROL, payload.get("since"))
        return {**first, "role": role, "state": session.vm.state}

    def detach(self, sid, role, payload):
        self.fleet.get(payload["vm"]).pump.detach(sid)

    def input(self, sid, role, payload):
        if role != CONTROL:
            raise ApiError(403, "read-only viewer: typing needs the control token")
        session, data = self.fleet.get(payload["vm"]), payload["data"]
        data = data.encode("utf-8") if isinstance(data, str) else data
        session.vm.send_input(data)
        return {"sent": len(data)}

    def forget(self, sid):
        """A browser whose node died: it is nobody's viewer any more."""
        for session in self.fleet.list():
            session.pump.detach(sid)

    def ack(self, sid, role, payload):
        if not self.fleet.get(payload["vm"]).pump.ack(sid, payload["position"]):
            raise ApiError(409, "not attached to this VM")
