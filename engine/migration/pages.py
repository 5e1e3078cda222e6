"""Guest pages on the migration stream: a PAGE frame holds up to BATCH pages, all-zero ones without their bytes.

Payload: n (u32), then n page numbers (u64), n leaf bits (u64: the EPT entry less its address, as a snapshot keeps
them), n flags (u8: 1 when the bytes follow), then 4 KiB for each flagged page, in order. The receiver checks the
sizes add up before it touches anything and fills the pages through the EPT as a snapshot restore does.
"""
import struct

import numpy as np

from ..errors import MigrationError
from ..mmu import ept as EPT

BATCH = 1024                      # 4 MiB of data at most per frame
COUNT = struct.Struct("<I")


def send(channel, pmap, pages):
    """Send the guest pages numbered `pages` (read now, through the EPT); returns (pages, bytes of data) sent."""
    sent_data = 0
    for at in range(0, len(pages), BATCH):
        chunk = np.ascontiguousarray(pages[at:at + BATCH], np.uint64)
        bits, data = pmap.read_pages(chunk)
        full = data.any(axis=1)
        channel.send(b"PAGE", COUNT.pack(chunk.size), chunk, bits, full.astype(np.uint8), data[full])
        sent_data += int(full.sum()) * EPT.PAGE
    return len(pages), sent_data


def decode(payload):
    """(page numbers, bits, data rows of every page) from a PAGE frame; MigrationError if its sizes disagree."""
    if len(payload) < COUNT.size:
        raise MigrationError("a PAGE frame without its count")
    n, = COUNT.unpack_from(payload)
    head = COUNT.size + n * 17
    if n > BATCH or len(payload) < head:
        raise MigrationError("a PAGE frame claiming %d pages in %d bytes" % (n, len(payload)))
    pages = np.frombuffer(payload, np.uint64, n, COUNT.size)
    bits = np.frombuffer(payload, np.uint64, n, COUNT.size + 8 * n)
    full = np.frombuffer(payload, np.uint8, n, COUNT.size + 16 * n) != 0
    if len(payload) != head + int(full.sum()) * EPT.PAGE:
        raise MigrationError("a PAGE frame of %d bytes where its %d pages with data need %d"
                             % (len(payload), int(full.sum()), head + int(full.sum()) * EPT.PAGE))
    data = np.zeros((n, EPT.PAGE), np.uint8)
    data[full] = np.frombuffer(payload, np.uint8, int(full.sum()) * EPT.PAGE, head).reshape(-1, EPT.PAGE)
    return pages, bits, data


def fill(vm, pages, bits, data):
    """Map the pages in `vm` (not running) and give them their contents and bits."""
    mem = vm.hypervisor.memory
    gpas = pages << np.uint64(12)
    flat = data.reshape(-1)
    done = 0
    while done < gpas.size:
        done = EPT.fill_pages(mem, mem.view(np.uint64), vm.pmap.st, vm.pmap.host_pool, vm.pmap.segtab,
                              len(vm.segments), gpas, bits, flat, done)
        if done < 0:
            raise MigrationError("guest-physical %#x does not fit VM %r's memory or cap" % (int(gpas[-1 - done]), vm.name))
        if done < gpas.size:
            vm.pmap.refill(vm.pmap.host_pool)
