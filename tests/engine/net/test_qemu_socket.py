"""A switch port speaking QEMU's -netdev socket stream protocol, against a peer written here as QEMU's
net/socket.c speaks it (a 4-byte big-endian length before each frame): frames both ways through a listening and
a connecting endpoint, each peer a port of its own, a broken length hanging up, and a clear error for an address
nobody listens on or one already taken."""
import socket
import struct
import threading

import pytest

from engine.errors import ConfigError
from engine.net import switch as S
from engine.net.qemu_socket import QemuSocket, parse_address

HERE, PEER = b"\x02\x00\x00\x00\x00\x01", b"\x52\x54\x00\x12\x34\x56"
DEADLINE = 10


class Inbox:
    """A port's far side that lets a test wait (with a deadline) for frames."""

    def __init__(self, switch, name="here"):
        self.frames, self.cond = [], threading.Condition()
        self.port = switch.attach(S.Port(name, self.deliver))

    def deliver(self, frame):
        with self.cond:
            self.frames.append(bytes(frame))
            self.cond.notify_all()
        return True

    def wait(self, count):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.frames) >= count, DEADLINE), self.frames
            return list(self.frames)


def recv_frame(sock):
    def exactly(n):
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "the endpoint hung up"
            data += chunk
        return data
    (length,) = struct.unpack(">I", exactly(4))
    return exactly(length)


def send_frame(sock, frame):
    sock.sendall(struct.pack(">I", len(frame)) + frame)


def eth(dst, src, payload):
    return dst + src + b"\x08\x00" + payload


def wait_ports(switch, count):
    cond = threading.Condition()
    with cond:
        assert cond.wait_for(lambda: len(switch.ports) == count, DEADLINE), switch.describe()


def test_a_listening_endpoint_carries_frames_both_ways_and_takes_many_peers():
    switch = S.Switch("switch1")
    here = Inbox(switch)
    endpoint = QemuSocket.listen(switch, "127.0.0.1:0")
    try:
        peer = socket.create_connection(endpoint.address, timeout=DEADLINE)
        send_frame(peer, eth(HERE, PEER, b"from qemu"))
        assert here.wait(1) == [eth(HERE, PEER, b"from qemu")]
        here.port.send(eth(PEER, HERE, b"to qemu"))            # PEER was learned on the socket's port
        assert recv_frame(peer) == eth(PEER, HERE, b"to qemu")
        second = socket.create_connection(endpoint.address, timeout=DEADLINE)
        wait_ports(switch, 3)
        here.port.send(eth(b"\xff" * 6, HERE, b"everyone"))   # a broadcast reaches both peers
        assert recv_frame(peer) == recv_frame(second) == eth(b"\xff" * 6, HERE, b"everyone")
        socket_port = [p for p in switch.ports if p is not here.port][0]
        assert socket_port.counts["rx_packets"] == 1 and socket_port.counts["tx_packets"] == 2
        peer.sendall(struct.pack(">I", 0))                      # a length of 0 is not the protocol: hung up
        assert peer.recv(16) == b""
        wait_ports(switch, 2)
        second.close()
        wait_ports(switch, 1)
    finally:
        endpoint.close()
    with pytest.raises(OSError):
        socket.create_connection(endpoint.address, timeout=DEADLINE)


def test_a_connecting_endpoint_joins_a_listening_peer():
    switch = S.Switch("switch2")
    here = Inbox(switch)
    server = socket.create_server(("127.0.0.1", 0))
    endpoint = QemuSocket.connect(switch, "127.0.0.1:%d" % server.getsockname()[1])
    try:
        peer, _ = server.accept()
        peer.settimeout(DEADLINE)
        here.port.send(eth(b"\xff" * 6, HERE, b"hello"))
        assert recv_frame(peer) == eth(b"\xff" * 6, HERE, b"hello")
        send_frame(peer, eth(HERE, PEER, b"x" * 1500))
        assert here.wait(1)[0] == eth(HERE, PEER, b"x" * 1500)
    finally:
        endpoint.close()
        server.close()
    assert switch.ports == [here.port]


def test_addresses_nobody_listens_on_taken_or_malformed_are_clear_errors():
    switch = S.Switch("switch3")
    taken = socket.create_server(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ConfigError, match="cannot listen on 127.0.0.1:%d" % port):
            QemuSocket.listen(switch, "127.0.0.1:%d" % port)
    finally:
        taken.close()
    with pytest.raises(ConfigError, match="is the peer listening"):
        QemuSocket.connect(switch, "127.0.0.1:%d" % port)
    for bad in ("127.0.0.1", ":5555", "localhost:http", "127.0.0.1:70000", ""):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_address(bad)
    assert switch.ports == []
