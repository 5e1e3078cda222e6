"""The GDB remote stub of one VM (bhyve's -G port): gdb's remote serial protocol on 127.0.0.1.

One debugger at a time. On connect every vCPU stops (all-stop); vCPUs are threads 1..N; registers
are one x86-64 register file in every mode (target.py), and gdb is told when a vCPU's mode changes; memory is guest-linear through
the vCPU's page tables; Z0/Z1 are code-hook breakpoints, Z2-Z4 watchpoints; Ctrl-C (\\x03) stops
the guest. When gdb detaches or goes away, breakpoints are dropped and the guest runs on.
"""
import collections
import select
import signal
import socket
import threading

from ..errors import EngineError
from . import rsp, target

POLL = 0.05
PACKET_SIZE = 0x4000
MAX_READ = PACKET_SIZE // 2 - 16        # an `m` reply is hex: two characters per byte, plus framing
CLEAN_STOPS = ("halt", "poweroff", "reset")
STOP_KINDS = {"breakpoint": "swbreak:;", "step": "", "entry": "", "interrupt": ""}


class Disconnected(Exception):
    """gdb closed the connection."""


class GdbStub:
    """Legend: the listening socket and the session state belong to the stub's thread."""

    def __init__(self, vm, port, wait=False):
        self.vm = vm
        self.debugger = vm.debugger
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(("127.0.0.1", port))
            self.listener.listen(1)
            self.wait = wait
            if wait:
                self.debugger.stop_at_entry()
        except BaseException:
            self.listener.close()
            raise
        self.port = self.listener.getsockname()[1]
        self.closing = False
        self.conn = None
        self.thread = threading.Thread(target=self._serve, name="%s-gdb" % vm.name, daemon=True)
        self.thread.start()

    def close(self):
        self.closing = True
        for sock in (self.listener, self.conn):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self.thread.join(5)

    # -- connection ---------------------------------------------------------------------------------
    def _serve(self):
        while not self.closing:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conn = conn
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.vm.log("gdb connected from 127.0.0.1")
            try:
                self._session()
            except (Disconnected, OSError, ValueError):      # ValueError: close() took the socket
                pass
            except EngineError as problem:                    # e.g. a vCPU that would not stop
                self.vm.log("gdb session ended: %s" % problem)
            finally:
                self._let_go()
                conn.close()
                self.conn = None

    def _let_go(self):
        try:
            self.debugger.stop_all()
            self.debugger.detach()
        except EngineError as problem:
            self.vm.log("gdb detach: %s" % problem)
        self.vm.log("gdb disconnected; the guest runs on")

    def _session(self):
        self.parser, self.pending, self.last_sent = rsp.Parser(), collections.deque(), b""
        self.g_thread = self.c_thread = 0
        self.arch, self.mode = None, None
        if self.wait and self.debugger.entry is not None:
            self._wait_entry()
        self.debugger.stop_all()
        self.last_stop = self._stop_reply(None)
        while True:
            event = self._next_event()
            if event[0] == "packet":
                self._send_ack(b"+")
                reply = self._dispatch(event[1])
                if reply is not None:
                    self._send(reply)
            elif event[0] == "bad":
                self._send_ack(b"-")
            elif event[0] == "nack" and self.last_sent:
                self.conn.sendall(self.last_sent)

    def _wait_entry(self):
        while self.debugger.entry is not None and self.vm.suspend_reason is None:
            event = self.debugger.next_event(POLL)
            if event is not None and event.reason == "entry":
                return

    def _next_event(self, timeout=None):
        """The next protocol event, reading the socket only when none is pending; None after `timeout`."""
        if not self.pending:
            ready, _, _ = select.select([self.conn], [], [], timeout)
            if ready:
                data = self.conn.recv(65536)
                if not data:
                    raise Disconnected()
                self.parser.feed(data)
                self.pending.extend(self.parser.events())
        return self.pending.popleft() if self.pending else None

    def _send(self, payload):
        self.last_sent = rsp.frame(payload)
        self.conn.sendall(self.last_sent)

    def _send_ack(self, ack):
        self.conn.sendall(ack)

    # -- packets ------------------------------------------------------------------------------------
    def _dispatch(self, packet):
        kind = packet[:1]
        try:
            if kind == b"q" or kind == b"Q":
                return self._query(packet.decode("latin-1"))
            if kind == b"v":
                return self._v_packet(packet.decode("latin-1"))
            if kind == b"X":
                header, _, data = packet[1:].partition(b":")
                return self._write_memory(header.decode(), rsp.unescape(data))
            handler = HANDLERS.get(kind.decode("latin-1"))
            return handler(self, packet[1:].decode("latin-1")) if handler else b""
        except (EngineError, ValueError, IndexError, KeyError) as problem:
            self.vm.log("gdb: %s: %s" % (packet[:40].decode("latin-1"), problem))
            return b"E16"

    def _vcpu(self, tid=None):
        """The vCPU index of gdb thread `tid` (1..N; 0 or none: the selected one, else the first)."""
        tid = self.g_thread if tid is None else tid
        return max(tid, 1) - 1

    def _query(self, packet):
        name, _, args = packet.partition(":")
        if name == "qSupported":
            return b"PacketSize=%x;qXfer:features:read+;swbreak+;hwbreak+;vContSupported+" % PACKET_SIZE
        if name == "qXfer" and args.startswith("features:read:target.xml:"):
            self.arch = self.debugger.architecture(self._vcpu())
            offset, length = (int(x, 16) for x in args.rsplit(":", 1)[1].split(","))
            xml = target.description(self.arch).encode()
            chunk = xml[offset:offset + length]
            return (b"l" if offset + length >= len(xml) else b"m") + chunk
        if packet == "qfThreadInfo":
            return b"m" + b",".join(b"%x" % (i + 1) for i in range(self.debugger.vcpu_count()))
        if packet == "qsThreadInfo":
            return b"l"
        if packet == "qC":
            return b"QC%x" % (self._vcpu() + 1)
        if name == "qAttached":
            return b"1"
        if packet.startswith("qThreadExtraInfo,"):
            text = self.debugger.describe(self._vcpu(int(packet.split(",")[1], 16)))
            return text.encode().hex().encode()
        return b""

    def _v_packet(self, packet):
        if packet == "vCont?":
            return b"vCont;c;C;s;S"
        if packet.startswith("vCont;"):
            steps, others = set(), False
            for action in packet.split(";")[1:]:
                verb, _, tid = action.partition(":")
                if verb[:1] in ("s", "S"):
                    steps.add(self._thread_index(tid))
                elif verb[:1] in ("c", "C"):
                    others = True
            return self._run(steps, others)
        return b""

    def _thread_index(self, tid):
        tid = int(tid, 16) if tid and tid != "-1" else self.c_thread or self.g_thread or 1
        return max(tid, 1) - 1

    # -- running and stopping -----------------------------------------------------------------------
    def _run(self, steps, others):
        if not self.debugger.resume(steps=steps, others=others):
            return self._stop_reply(None)        # nothing to run (a vCPU never started): stopped as it was
        while True:
            packet = self._next_event(POLL)
            if packet is not None and packet[0] == "interrupt":
                self.debugger.stop_all()
                return self._stop_reply(None, signal.SIGINT)
            event = self.debugger.next_event(0)
            if event is not None:
                self.debugger.stop_all()
                self.g_thread = event.vcpu + 1
                return self._stop_reply(event)
            if self.vm.suspend_reason is not None:
                self.debugger.stop_all()
                if self.vm.suspend_reason in CLEAN_STOPS:
                    return b"W00"
                return self._stop_reply(None, signal.SIGSEGV)

    def _stop_reply(self, event, signo=signal.SIGTRAP):
        self._note_mode_change()
        if event is None:
            self.last_stop = b"T%02xthread:%x;" % (signo, self._vcpu() + 1)
        elif event.reason == "watchpoint":
            self.last_stop = b"T05%s:%x;thread:%x;" % (event.watch_kind.encode(), event.address, event.vcpu + 1)
        else:
            self.last_stop = b"T05%sthread:%x;" % (STOP_KINDS[event.reason].encode(), event.vcpu + 1)
        return self.last_stop

    def _note_mode_change(self):
        """gdb's architecture decodes the code and unwinds the frames; the stub cannot set it, so an O packet says
        when the stopped vCPU's mode is another than at the last stop (real, protected, long)."""
        now = self.debugger.mode(self._vcpu())
        if self.mode is not None and now != self.mode:
            text = ("webhyve: vcpu%d is now in %s mode (registers unchanged); for gdb to decode its code: "
                    "set architecture %s\n" % (self._vcpu(), {"i8086": "real", "i386": "protected",
                                                               "i386:x86-64": "64-bit"}[now], now))
            if self.conn is not None:
                self._send(b"O" + text.encode().hex().encode())
        self.mode = now

    def _continue(self, args):
        return self._run(set(), True)

    def _step(self, args):
        return self._run({self._thread_index("")}, False)

    def _status(self, args):
        return self.last_stop

    def _set_thread(self, args):
        which, tid = args[0], int(args[1:], 16) if args[1:] not in ("", "-1") else 0
        if tid > self.debugger.vcpu_count():
            return b"E22"
        if which == "g":
            self.g_thread = tid
        else:
            self.c_thread = tid
        return b"OK"

    def _thread_alive(self, args):
        return b"OK" if 1 <= int(args, 16) <= self.debugger.vcpu_count() else b"E22"

    # -- registers and memory -----------------------------------------------------------------------
    def _arch(self):
        if self.arch is None:
            self.arch = self.debugger.architecture(self._vcpu())
        return self.arch

    def _read_registers(self, args):
        return self.debugger.read_registers(self._vcpu(), self._arch()).hex().encode()

    def _write_registers(self, args):
        self.debugger.write_registers(self._vcpu(), self._arch(), bytes.fromhex(args))
        return b"OK"

    def _read_register(self, args):
        number = int(args, 16)
        if number >= len(target.ARCHITECTURES[self._arch()]):
            return b"E45"
        return self.debugger.read_registers(self._vcpu(), self._arch(), number).hex().encode()

    def _write_register(self, args):
        number, value = args.split("=")
        self.debugger.write_registers(self._vcpu(), self._arch(), bytes.fromhex(value), int(number, 16))
        return b"OK"

    def _read_memory(self, args):
        address, length = (int(x, 16) for x in args.split(","))
        data = self.debugger.read_memory(self._vcpu(), address, min(length, MAX_READ))
        return data.hex().encode() if data else b"E14"

    def _write_memory_hex(self, args):
        header, data = args.split(":")
        return self._write_memory(header, bytes.fromhex(data))

    def _write_memory(self, header, data):
        address, length = (int(x, 16) for x in header.split(","))
        if data:
            self.debugger.write_memory(self._vcpu(), address, data[:length])
        return b"OK"

    # -- breakpoints and watchpoints -----------------------------------------------------------------
    def _insert(self, args):
        kind, address, length = args.split(",")[:3]
        return self._point(int(kind), int(address, 16), int(length, 16), True)

    def _remove(self, args):
        kind, address, length = args.split(",")[:3]
        return self._point(int(kind), int(address, 16), int(length, 16), False)

    def _point(self, kind, address, length, insert):
        d = self.debugger
        if kind in (0, 1):
            d.add_breakpoint(address) if insert else d.remove_breakpoint(address)
        elif kind in (2, 3, 4):
            name = {2: "watch", 3: "rwatch", 4: "awatch"}[kind]
            if insert:
                d.add_watchpoint(name, address, length, self._vcpu())
            else:
                d.remove_watchpoint(name, address, length)
        else:
            return b""
        return b"OK"

    def _detach(self, args):
        self._send(b"OK")
        raise Disconnected()

    def _kill(self, args):
        raise Disconnected()


HANDLERS = {
    "?": GdbStub._status, "c": GdbStub._continue, "s": GdbStub._step, "H": GdbStub._set_thread,
    "T": GdbStub._thread_alive, "g": GdbStub._read_registers, "G": GdbStub._write_registers,
    "p": GdbStub._read_register, "P": GdbStub._write_register, "m": GdbStub._read_memory,
    "M": GdbStub._write_memory_hex, "Z": GdbStub._insert, "z": GdbStub._remove, "D": GdbStub._detach,
    "k": GdbStub._kill,
}
