"""What every Socket.IO event accepts, as one table, and the namespace base class that checks and answers them.

Each event carries one JSON object; its entry in EVENTS says which fields and what each must be
(schema.py's types, the same as the REST API's). CheckedNamespace refuses an unknown event, a second
argument or a bad payload before any handler runs, answering through the event's ack with {"error",
"status"}; a handler's own refusal (an ApiError) is answered the same way, and its result as {"ok": True, …}.
"""
from flask import current_app, request
from flask_socketio import Namespace

from ..sessions.errors import ApiError
from .access import connection_principal
from .api_schema import MAX_INPUT, VM
from .schema import Int, Schema, SchemaError, Typed

MAX_POSITION = (1 << 63) - 1                      # positions are absolute byte offsets in a VM's console stream

EVENTS = {
    "/console": {
        "attach": Schema(vm=VM, since=Int(0, MAX_POSITION, default=None, nullable=True)),
        "input": Schema(vm=VM, data=Typed(1, MAX_INPUT)),
        "ack": Schema(vm=VM, position=Int(0, MAX_POSITION)),
        "detach": Schema(vm=VM),
    },
    "/inspect": {
        "watch": Schema(vm=VM),
        "unwatch": Schema(vm=VM),
    },
    "/tasks": {},                                 # server → page only: task {…} (web/tasks.py)
}


def refusal(problem):
    return {"error": problem.message, "status": problem.status}


def handler(method):
    """Answer an event: the method's result as {"ok": True, …}; an ApiError or a bug as {"error", "status"}."""
    def wrapper(self, payload):
        try:
            return {"ok": True, **(method(self, payload) or {})}
        except ApiError as problem:
            return refusal(problem)
        except Exception as problem:            # a bug answers this event with an error; the server goes on
            current_app.logger.exception("%s failed", method.__name__)
            return {"error": "internal error: %r" % problem, "status": 500}
    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class CheckedNamespace(Namespace):
    """A namespace whose client events are checked against EVENTS[namespace] before their handler runs, and whose
    connections are authenticated once: `principals` maps each connected sid to who it is (policy.Principal).
    A subclass adds to a connection's start and end through `connected(sid)` and `disconnected(sid)`."""

    def __init__(self, namespace):
        super().__init__(namespace)
        self.principals = {}

    def on_connect(self, auth=None):
        principal = connection_principal(auth)
        if principal is None:
            raise ConnectionRefusedError("a valid token or login is required")
        self.principals[request.sid] = principal
        self.connected(request.sid)

    def on_disconnect(self, *reason):
        try:
            self.disconnected(request.sid)
        finally:
            self.principals.pop(request.sid, None)

    def connected(self, sid):
        pass

    def disconnected(self, sid):
        pass

    def trigger_event(self, event, *args):
        if self._from_the_server(event, args):
            return super().trigger_event(event, *args)
        sid, payload = args[0], args[1:]
        events = EVENTS[self.namespace]
        where = "%s %s" % (self.namespace, event)
        if event not in events:
            return refusal(ApiError(404, "%s has no event %r: send one of %s" % (
                self.namespace, event, ", ".join(events) or "none (it only pushes to the page)")))
        if len(payload) != 1:
            return refusal(SchemaError("%s: send exactly one object, not %d arguments" % (where, len(payload))))
        try:
            clean = events[event].check(payload[0], where)
        except SchemaError as problem:
            return refusal(problem)
        return super().trigger_event(event, sid, clean)

    def _from_the_server(self, event, args):
        """True for python-socketio's own connect and disconnect. A client may send events by those names
        too; they must not run the handlers. The real connect passes the connection's WSGI environ; the
        real disconnect comes when the sid is no longer connected (python-socketio's pre_disconnect)."""
        server = self.socketio.server
        if event == "connect":
            return len(args) >= 2 and args[1] is server.get_environ(args[0], self.namespace)
        if event == "disconnect":
            return bool(args) and not server.manager.is_connected(args[0], self.namespace)
        return False
