"""A switch port speaking QEMU's `-netdev socket` stream protocol (QEMU net/socket.c, net_socket_send and
net_socket_receive: each Ethernet frame on a TCP connection is preceded by its length as a 4-byte big-endian
integer), so that `qemu-system-x86_64 -netdev socket,id=n,connect=127.0.0.1:PORT -device virtio-net-pci,netdev=n`
(or `listen=`) joins a webhyve switch, and two webhyve processes can join theirs. No privileges: a TCP socket.

`QemuSocket.listen(switch, "127.0.0.1:PORT")` accepts any number of peers, each one a port of its own on the
switch (QEMU's listen takes one; a switch takes many); `QemuSocket.connect(switch, "HOST:PORT")` is one peer that
must be listening already (QEMU's connect= fails the same way). A peer's frames are read on a thread of its link
and handed to the switch; frames for the peer go through a bounded queue to a writer thread, so a slow peer costs
drops (counted as the port's tx_dropped), never the sender's time. A length of 0 or beyond the switch's largest
frame is a broken stream: that link is closed. Ends with close() of its owner (the VM's virtio-net device).
"""
import collections
import socket
import struct
import threading

from ..errors import ConfigError
from .switch import MAX_FRAME, Port

QUEUE_FRAMES = 256                    # frames waiting for a slow peer before we drop
CONNECT_TIMEOUT = 10.0
LENGTH = struct.Struct(">I")


def parse_address(text):
    """"HOST:PORT" -> (host, port) with a numeric port (0: listen where the host says); ConfigError otherwise."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError("virtio-net: %r is not HOST:PORT (as QEMU's -netdev socket,listen=127.0.0.1:5555)" % text)
    return host, int(port)


class StreamLink:
    """One TCP connection to a peer: a port on the switch. Legend: `queue` and `closed` change under `cond`."""

    def __init__(self, switch, sock, name):
        self.sock = sock
        self.port = switch.attach(Port(name, self.deliver))
        self.cond = threading.Condition()
        self.queue = collections.deque()
        self.closed = False
        self.reader = threading.Thread(target=self._read_loop, name=name + "-rx", daemon=True)
        self.writer = threading.Thread(target=self._write_loop, name=name + "-tx", daemon=True)
        self.reader.start()
        self.writer.start()

    def deliver(self, frame):
        with self.cond:
            if self.closed or len(self.queue) >= QUEUE_FRAMES:
                return False
            self.queue.append(bytes(frame))
            self.cond.notify()
            return True

    def _recv_exactly(self, n):
        buf = bytearray()
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def _read_loop(self):
        try:
            while True:
                head = self._recv_exactly(4)
                if head is None:
                    break
                (length,) = LENGTH.unpack(head)
                if not 0 < length <= MAX_FRAME:
                    break                               # not QEMU's stream protocol (or out of step): hang up
                frame = self._recv_exactly(length)
                if frame is None:
                    break
                self.port.send(frame)
        except OSError:
            pass
        self.close()

    def _write_loop(self):
        while True:
            with self.cond:
                while not self.queue and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                frames = list(self.queue)
                self.queue.clear()
            try:
                self.sock.sendall(b"".join(LENGTH.pack(len(f)) + f for f in frames))
            except OSError:
                self.close()
                return

    def close(self):
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.cond.notify_all()
        self.port.detach()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def join(self, timeout=5.0):
        for thread in (self.reader, self.writer):
            if thread is not threading.current_thread():
                thread.join(timeout)


class QemuSocket:
    """A listening or connected endpoint of one switch. Legend: `links` changes under `lock`."""

    def __init__(self, switch, name):
        self.switch, self.name = switch, name
        self.lock = threading.Lock()
        self.links = []
        self.listener = self.acceptor = None
        self.closed = False

    @classmethod
    def listen(cls, switch, address):
        host, port = parse_address(address)
        endpoint = cls(switch, "%s-listen-%s" % (switch.name, port))
        try:
            sock = socket.create_server((host, port), reuse_port=False)
        except OSError as problem:
            raise ConfigError("virtio-net: cannot listen on %s: %s" % (address, problem.strerror or problem)) \
                from None
        endpoint.listener = sock
        endpoint.acceptor = threading.Thread(target=endpoint._accept_loop, name=endpoint.name, daemon=True)
        endpoint.acceptor.start()
        return endpoint

    @classmethod
    def connect(cls, switch, address):
        host, port = parse_address(address)
        endpoint = cls(switch, "%s-connect-%s" % (switch.name, port))
        try:
            sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        except OSError as problem:
            raise ConfigError("virtio-net: cannot connect to %s: %s (is the peer listening?)"
                              % (address, problem.strerror or problem)) from None
        endpoint._add(sock)
        return endpoint

    @property
    def address(self):
        """(host, port) the listener is bound to (a port of 0 asks the host for a free one)."""
        return self.listener.getsockname()[:2]

    def _add(self, sock):
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = "%s:%s" % sock.getpeername()[:2]
        with self.lock:
            if self.closed:
                sock.close()
                return
            self.links = [link for link in self.links if not link.closed]
            self.links.append(StreamLink(self.switch, sock, "socket %s" % peer))

    def _accept_loop(self):
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return                                   # the listener was shut down
            self._add(sock)

    def close(self):
        with self.lock:
            self.closed = True
            links, self.links = self.links, []
        if self.listener is not None:
            try:
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.acceptor.join(5.0)
        for link in links:
            link.close()
            link.join()
