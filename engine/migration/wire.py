"""The migration stream: typed frames over one connection, each one authenticated and numbered.

A frame is a 4-byte kind, an 8-byte big-endian length, the payload, and HMAC-SHA256(key, sequence number ‖ kind ‖
length ‖ payload). The key is the migration's own (the cluster derives it from its secret and the migration's id),
and each direction counts its frames from 0: a frame from another migration, a replayed, reordered, dropped or
altered one fails its check, and the receiver stops with a MigrationError saying which frame. Nothing is parsed
before its HMAC holds.
"""
import hashlib
import hmac
import json
import socket
import struct

from ..errors import MigrationError

HEADER = struct.Struct(">4sQ")
MAC_BYTES = 32
MAX_FRAME = 256 << 20            # a frame of pages is at most a few MiB; a boot image and initrd some tens
SEQUENCE = struct.Struct(">Q")


class Channel:
    """One side of a migration connection. Legend: used by one thread at a time; `sent`/`received` count frames
    and `bytes_sent` the payload bytes, for the progress a user watches."""

    def __init__(self, sock, key, peer="peer"):
        self.sock, self.key, self.peer = sock, bytes(key), peer
        self.sent = self.received = self.bytes_sent = 0
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            # the handover is a few small frames each way: Nagle's wait for an ACK the peer delays (40 ms on Linux)
            # was most of the downtime before this
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _mac(self, sequence, header, parts):
        mac = hmac.new(self.key, SEQUENCE.pack(sequence) + header, hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.digest()

    def send(self, kind, *parts):
        """One frame whose payload is the bytes-like `parts` one after the other."""
        parts = [memoryview(p).cast("B") for p in parts if len(p)]      # (an empty array cannot be cast)
        header = HEADER.pack(kind, sum(p.nbytes for p in parts))
        mac = self._mac(self.sent, header, parts)
        try:
            if sum(p.nbytes for p in parts) < 65536:         # a small frame goes out as one segment
                self.sock.sendall(b"".join([header, *parts, mac]))
            else:
                self.sock.sendall(header)
                for part in parts:
                    self.sock.sendall(part)
                self.sock.sendall(mac)
        except OSError as problem:
            raise MigrationError("the connection to %s broke while sending: %s" % (self.peer, _why(problem))) from None
        self.sent += 1
        self.bytes_sent += len(header) + sum(p.nbytes for p in parts) + MAC_BYTES

    def send_json(self, kind, value):
        self.send(kind, json.dumps(value, allow_nan=False).encode())

    def recv(self, *kinds):
        """(kind, payload) of the next frame, whose kind must be one of `kinds` (or FAIL, raised as the peer's
        refusal)."""
        header = self._exactly(HEADER.size)
        kind, length = HEADER.unpack(header)
        if length > MAX_FRAME:
            raise MigrationError("%s sent frame %d claiming %d bytes (at most %d): refused"
                                 % (self.peer, self.received, length, MAX_FRAME))
        payload = self._exactly(length)
        mac = self._exactly(MAC_BYTES)
        if not hmac.compare_digest(mac, self._mac(self.received, header, [payload])):
            raise MigrationError("frame %d from %s fails its HMAC (wrong cluster secret, or altered, replayed or "
                                 "out of order): migration stopped" % (self.received, self.peer))
        self.received += 1
        if kind == b"FAIL":
            raise MigrationError(payload.decode("utf-8", "replace"))
        if kinds and kind not in kinds:
            raise MigrationError("%s sent a %r frame where %s was due" % (
                self.peer, kind.decode("latin-1"), " or ".join(k.decode() for k in kinds)))
        return kind, payload

    def recv_json(self, *kinds):
        kind, payload = self.recv(*kinds)
        try:
            value = json.loads(payload)
        except ValueError:
            raise MigrationError("%s sent a %s frame that is not JSON" % (self.peer, kind.decode("latin-1"))) from None
        if not isinstance(value, dict):
            raise MigrationError("%s sent a %s frame that is not a JSON object" % (self.peer, kind.decode("latin-1")))
        return kind, value

    def fail(self, why):
        """Tell the peer why this side stops (best effort: the connection may be what failed)."""
        try:
            self.send(b"FAIL", str(why).encode())
        except MigrationError:
            pass

    def _exactly(self, n):
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            try:
                k = self.sock.recv_into(view[got:], min(n - got, 1 << 22))
            except socket.timeout:
                raise MigrationError("%s sent nothing for too long: migration stopped" % self.peer) from None
            except OSError as problem:
                raise MigrationError("the connection to %s broke: %s" % (self.peer, _why(problem))) from None
            if k == 0:
                raise MigrationError("%s closed the connection in the middle of the migration" % self.peer)
            got += k
        return bytes(buf)


def _why(problem):
    return problem.strerror or str(problem) or type(problem).__name__
