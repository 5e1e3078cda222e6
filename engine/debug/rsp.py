"""GDB's remote serial protocol framing: $payload#checksum packets, acks, the \\x03 interrupt, escapes.

Pure functions and a byte-stream parser (gdb manual, Appendix E "Overview" and "Binary Data"): the
stub and the tests' raw-socket client share them.
"""
INTERRUPT = b"\x03"
ESCAPE = 0x7D                        # '}': the next byte is XOR 0x20
MUST_ESCAPE = b"#$}*"


def checksum(payload):
    return sum(payload) & 0xFF


def escape(data):
    out = bytearray()
    for byte in data:
        if byte in MUST_ESCAPE:
            out += bytes((ESCAPE, byte ^ 0x20))
        else:
            out.append(byte)
    return bytes(out)


def unescape(data):
    out, i = bytearray(), 0
    while i < len(data):
        if data[i] == ESCAPE and i + 1 < len(data):
            out.append(data[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(data[i])
            i += 1
    return bytes(out)


def frame(payload):
    """A packet ready to send; the payload is escaped (harmless for hex, needed for binary replies)."""
    body = escape(payload)
    return b"$" + body + b"#%02x" % checksum(body)


class Parser:
    """Feed received bytes; `events()` yields ("packet", payload), ("bad", payload), ("interrupt",),
    ("ack",) and ("nack",) in arrival order. A packet's payload is returned still escaped: only the
    binary-data packets (X) unescape, after splitting off their header."""

    def __init__(self):
        self.buffer = b""

    def feed(self, data):
        self.buffer += data

    def events(self):
        while self.buffer:
            first = self.buffer[:1]
            if first == b"+":
                self.buffer = self.buffer[1:]
                yield ("ack",)
            elif first == b"-":
                self.buffer = self.buffer[1:]
                yield ("nack",)
            elif first == INTERRUPT:
                self.buffer = self.buffer[1:]
                yield ("interrupt",)
            elif first == b"$":
                end = self.buffer.find(b"#")
                if end < 0 or len(self.buffer) < end + 3:
                    return                               # the rest has not arrived yet
                body, sent = self.buffer[1:end], self.buffer[end + 1:end + 3]
                self.buffer = self.buffer[end + 3:]
                try:
                    good = int(sent, 16) == checksum(body)
                except ValueError:
                    good = False
                yield ("packet", body) if good else ("bad", body)
            else:
                self.buffer = self.buffer[1:]            # noise between packets
