"""The cluster secret: an HMAC-SHA256 over each forwarded request's content and time, checked by the node it reaches.

A node forwards a request for a VM it does not hold to the VM's node with four headers: the sender's node name,
the time, the role the sender already checked (control or view) and the signature over all of them together
with the method, the path with its query and a SHA-256 of the body. The receiver refuses a request whose
signature does not match (a forged or altered one), whose time is more than MAX_SKEW seconds away from its own
clock (an old one replayed), or whose signature it has already seen within that window (the same one replayed).
The secret itself never travels and is never stored in Redis.
"""
import hashlib
import hmac
import threading
import time

from ..sessions.errors import ApiError

NODE, TIME, ROLE, SIGNATURE = "X-Webhyve-Node", "X-Webhyve-Time", "X-Webhyve-Role", "X-Webhyve-Signature"
HEADERS = (NODE, TIME, ROLE, SIGNATURE)
MAX_SKEW = 30.0              # seconds: the nodes' clocks must agree this well (NTP does far better)
ROLES = ("control", "view")


def digest(secret, method, path, node, when, role, body):
    """The signature: HMAC-SHA256 keyed by the cluster secret over every part, one per line."""
    message = "\n".join(("webhyve-forward-v1", method.upper(), path, node, when, role,
                         hashlib.sha256(body or b"").hexdigest()))
    return hmac.new(secret.encode(), message.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


class Signer:
    """Signs what this node forwards and checks what it receives. Legend: `_seen` (signature → expiry) is
    guarded by `_lock`."""

    def __init__(self, secret, node):
        if not secret:
            raise ValueError("cluster mode needs a cluster secret (--cluster-secret or WEBHYVE_CLUSTER_SECRET), "
                             "the same on every node: forwarded requests are signed with it")
        self.secret, self.node = secret, node
        self._seen = {}
        self._lock = threading.Lock()

    def headers(self, method, path, role, body):
        when = "%.6f" % time.time()
        return {NODE: self.node, TIME: when, ROLE: role,
                SIGNATURE: digest(self.secret, method, path, self.node, when, role, body)}

    def verify(self, method, path, headers, body):
        """The role a valid forwarded request carries; ApiError 403 naming what is wrong otherwise."""
        node, when, role, signature = (headers.get(h, "") for h in HEADERS)
        if not (node and when and signature) or role not in ROLES:
            raise ApiError(403, "forwarded request refused: it lacks the cluster headers %s" % ", ".join(HEADERS))
        try:
            skew = abs(time.time() - float(when))
        except ValueError:
            skew = float("inf")
        if skew > MAX_SKEW:
            raise ApiError(403, "forwarded request refused: its time %s is more than %d s from this node's clock "
                                "(a replay, or the nodes' clocks disagree)" % (when[:32], MAX_SKEW))
        expected = digest(self.secret, method, path, node, when, role, body)
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "surrogatepass")):
            raise ApiError(403, "forwarded request refused: bad cluster signature (the sender's cluster secret "
                                "differs from this node's, or the request was altered)")
        self._remember(signature)
        return role

    def _remember(self, signature):
        now = time.monotonic()
        with self._lock:
            if signature in self._seen:
                raise ApiError(403, "forwarded request refused: this signed request was already received (a replay)")
            self._seen = {s: t for s, t in self._seen.items() if t > now} if len(self._seen) > 4096 else self._seen
            self._seen[signature] = now + 2 * MAX_SKEW
