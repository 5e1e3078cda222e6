"""Linux's panic as its console shows it: `Kernel panic - not syncing: REASON`, and, when the kernel will not reboot
(panic=0, the default), `---[ end Kernel panic - not syncing: REASON ]---` right before it spins for good.

bhyve has no notion of a guest panic (the guest spins, or resets after panic=N seconds); QEMU and Proxmox learn
of one from the pvpanic device, which needs a driver the guest may not load. webhyve reads COM1 instead, where
every Linux guest here writes its console: at the end marker the VM stops with reason "panic" and the kernel's
own line as the message, and a reset that follows a panic line (panic=N) says it came after that panic.
"""
PANIC = b"Kernel panic - not syncing: "
END = b"---[ end Kernel panic - not syncing: "
MAX_LINE = 1024             # a console line longer than this is cut: a panic reason is one short line


class PanicWatch:
    """Follows a console's output line by line. `on_end(text)` is called at the end marker; `seen` holds the last
    panic line since `clear()` (the guest's boot)."""

    def __init__(self, on_end):
        self.on_end = on_end
        self.line = bytearray()
        self.seen = None

    def clear(self):
        self.line.clear()
        self.seen = None

    def feed(self, data):
        for byte in data:
            if byte == 0x0A:
                self._line(bytes(self.line))
                self.line.clear()
            elif len(self.line) < MAX_LINE:
                self.line.append(byte)

    def _line(self, line):
        at = line.find(END)
        if at >= 0:
            reason = line[at + len(END):].rstrip(b"\r ").removesuffix(b"]---").rstrip()
            self.seen = _text(PANIC + reason)
            self.on_end(self.seen)
            return
        at = line.find(PANIC)
        if at >= 0:
            self.seen = _text(line[at:].rstrip(b"\r "))


def _text(raw):
    return raw.decode("utf-8", "replace")
