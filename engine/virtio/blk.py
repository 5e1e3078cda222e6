"""virtio-blk on a raw image file (Virtual I/O Device (VIRTIO) Version 1.1, §5.2 "Block Device"), as bhyve's
pci_virtio_block.c offers it: one request queue; reads, writes, flushes (fsync), discards (a hole punched in the
file), the device ID string; read-only images answer writes and discards VIRTIO_BLK_S_IOERR (§5.2.6.2).

A request (§5.2.6) is a chain: the 16-byte header (type, reserved, sector) readable, then the data (readable for a
write, device-writable for a read), then one device-writable status byte. Data moves between the image and guest
memory with preadv/pwritev straight into the host ranges vring.pop found (no copy), and a device write over a page
the vCPUs run code from drops their translations (GuestRam.dma_written). A request whose data is not a whole number
of 512-byte sectors, reaches past the capacity, or has no room for its status is an error (IOERR, or with no
status byte nothing written).

Configuration (§5.2.4): capacity in 512-byte sectors, size_max, seg_max, blk_size, and for discards
max_discard_sectors, max_discard_seg, discard_sector_alignment.
"""
import ctypes
import os
import struct

from ..errors import ConfigError
from .pci import VirtioPci, ranges

SECTOR = 512
# feature bits (§5.2.3)
F_SIZE_MAX, F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH, F_DISCARD = 1 << 1, 1 << 2, 1 << 5, 1 << 6, 1 << 9, 1 << 13
# request types and status (§5.2.6)
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD = 0, 1, 4, 8, 11
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
SIZE_MAX, SEG_MAX = 1 << 16, 126
ID_BYTES = 20
MAX_DISCARD_SECTORS, MAX_DISCARD_SEG = 1 << 22, 1
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
COUNTS = ("read", "write", "flush", "discard", "get_id", "error", "read_bytes", "write_bytes")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)


class VirtioBlk(VirtioPci):
    emulation = "virtio-blk"
    device_id = 2
    class_code = (0x01, 0x00)          # mass storage, SCSI (what QEMU's virtio-blk-pci says)
    num_queues = 1
    queue_max = 256

    def __init__(self, ram, bar_base, path, readonly=False):
        try:
            self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        except OSError as problem:
            raise ConfigError("virtio-blk: cannot open %s: %s" % (path, problem.strerror)) from None
        self.path, self.readonly = path, readonly
        self.capacity = os.fstat(self.fd).st_size // SECTOR
        self.ident = ("WH-%08x" % (os.fstat(self.fd).st_ino & 0xFFFFFFFF)).encode()[:ID_BYTES]
        self.device_features = F_SIZE_MAX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | (F_RO if readonly else F_DISCARD)
        super().__init__(ram, bar_base)
        self.counts = dict.fromkeys(COUNTS, 0)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def describe(self):
        """The transport's view and the image: its path, read-only or not, capacity in sectors."""
        out = super().describe()
        out["backend"] = {"emulation": "virtio-blk", "image": self.path, "readonly": self.readonly,
                          "capacity_sectors": self.capacity}
        return out

    # -- snapshots: the image's contents are the user's file, not the snapshot's --------------------------------
    def device_state(self):
        state = super().device_state()
        state["blk"] = {"capacity": self.capacity, "readonly": self.readonly, "counts": dict(self.counts)}
        return state

    def check_device_state(self, saved):
        super().check_device_state(saved)
        if saved["blk"]["readonly"] != self.readonly:
            raise ConfigError("the disk was %s when saved; %s is attached %s now" % (
                "read-only" if saved["blk"]["readonly"] else "writable", self.path,
                "read-only" if self.readonly else "writable"))
        if saved["blk"]["capacity"] != self.capacity:
            raise ConfigError("the guest saw a disk of %d sectors; %s has %d now (a different image?)"
                              % (saved["blk"]["capacity"], self.path, self.capacity))

    def load_device_state(self, saved):
        super().load_device_state(saved)
        self.counts.update(saved["blk"]["counts"])

    def device_config(self):
        """struct virtio_blk_config (§5.2.4), up to the discard fields."""
        return struct.pack("<QIIHBBIBBHIB3xIII", self.capacity, SIZE_MAX, SEG_MAX, 0, 0, 0, SECTOR, 0, 0, 0, 0, 0,
                           0 if self.readonly else MAX_DISCARD_SECTORS, 0 if self.readonly else MAX_DISCARD_SEG, 1)

    # -- requests ----------------------------------------------------------------------------------------------
    def handle(self, queue, rows, readable, writable):
        if writable < 1:
            self.counts["error"] += 1
            return 0                                   # no status byte: nothing to answer with
        mem = self.ram.view
        status_at = ranges(rows, readable + writable - 1, 1)[0]
        if readable < 16:
            status, done = S_IOERR, 0
        else:
            header = b"".join(bytes(mem[h:h + n]) for h, n, _ in ranges(rows, 0, 16))
            kind, _, sector = struct.unpack("<IIQ", header)
            try:
                status, done = self._serve(kind, sector, rows, readable, writable)
            except OSError:                            # the host's I/O error is the guest's (§5.2.6: IOERR)
                status, done = S_IOERR, 0
        mem[status_at[0]] = status
        self.ram.dma_written(status_at[2], 1)
        if status != S_OK:
            self.counts["error"] += 1
        return done + 1

    def _serve(self, kind, sector, rows, readable, writable):
        """(status, data bytes written into the chain)."""
        mem = self.ram.view
        if kind == T_IN:
            length = writable - 1
            pieces = ranges(rows, readable, length)
            if not self._fits(sector, length):
                return S_IOERR, 0
            got = os.preadv(self.fd, [mem[h:h + n] for h, n, _ in pieces], sector * SECTOR) if length else 0
            for h, n, g in pieces:
                self.ram.dma_written(g, n)
            if got < length:                           # a file shorter than its capacity said: zeros
                for h, n, _ in ranges(rows, readable + got, length - got):
                    mem[h:h + n] = bytes(n)
            self.counts["read"] += 1
            self.counts["read_bytes"] += length
            return S_OK, length
        if kind == T_OUT:
            length = readable - 16
            if self.readonly or not self._fits(sector, length):
                return S_IOERR, 0
            if length:
                os.pwritev(self.fd, [mem[h:h + n] for h, n, _ in ranges(rows, 16, length)], sector * SECTOR)
            self.counts["write"] += 1
            self.counts["write_bytes"] += length
            return S_OK, 0
        if kind == T_FLUSH:
            os.fsync(self.fd)
            self.counts["flush"] += 1
            return S_OK, 0
        if kind == T_GET_ID:
            length = min(writable - 1, ID_BYTES)
            data = self.ident.ljust(ID_BYTES, b"\0")[:length]
            at = 0
            for h, n, g in ranges(rows, readable, length):
                mem[h:h + n] = data[at:at + n]
                self.ram.dma_written(g, n)
                at += n
            self.counts["get_id"] += 1
            return S_OK, length
        if kind == T_DISCARD:
            return self._discard(rows, readable)
        return S_UNSUPP, 0

    def _fits(self, sector, length):
        return length % SECTOR == 0 and sector <= self.capacity and length // SECTOR <= self.capacity - sector

    def _discard(self, rows, readable):
        """Segments of {le64 sector, le32 num_sectors, le32 flags} (§5.2.6): holes punched, the size kept."""
        mem = self.ram.view
        length = readable - 16
        if self.readonly or length % 16 or length // 16 > MAX_DISCARD_SEG:
            return S_IOERR, 0
        data = b"".join(bytes(mem[h:h + n]) for h, n, _ in ranges(rows, 16, length))
        for at in range(0, length, 16):
            sector, count, flags = struct.unpack_from("<QII", data, at)
            if flags:
                return S_UNSUPP, 0                     # the unmap flag belongs to write-zeroes only (§5.2.6.2)
            if count > MAX_DISCARD_SECTORS or not self._fits(sector, count * SECTOR):
                return S_IOERR, 0
            if count and _libc.fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                         sector * SECTOR, count * SECTOR) != 0:
                pass                                   # a file system without holes: discarding is advisory
        self.counts["discard"] += 1
        return S_OK, 0


def parse_options(options):
    """bhyve's virtio-blk options: PATH[,ro]; (path, readonly)."""
    if not options:
        raise ConfigError("virtio-blk needs an image: -s SLOT,virtio-blk,PATH[,ro]")
    path, *rest = options.split(",")
    readonly = False
    for option in rest:
        if option == "ro":
            readonly = True
        else:
            raise ConfigError("virtio-blk: unknown option %r (PATH[,ro])" % option)
    if not os.path.isfile(path):
        raise ConfigError("virtio-blk: no image file %s" % path)
    return path, readonly
