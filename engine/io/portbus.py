"""The I/O port bus: which device decodes each of the 65,536 ports, and how an access of any width reaches them.

bhyve splits the port space between the kernel (vmm_ioport.c: the handlers vmm.ko runs itself) and
userspace (inout.c: everything registered with register_inout); both hand a device the access as the
guest made it, and a byte-wide device that sees a word access fails it ("Unhandled inout"). A PC does
not: a 16- or 32-bit cycle to an 8-bit ISA device becomes consecutive byte cycles (the bus controller's
dynamic bus sizing), and an address nobody decodes floats high. QEMU's memory core does the same for a
region whose maximum access size is 1 (access_with_adjusted_size). So this bus does it, in one place:

- a device declares the widths it takes (1 always; 2 and 4 if it decodes them whole, e.g. a PCI
  configuration-data port); an access is cut into pieces, each the widest the device under it takes that
  fits both the access and the device, so a byte device sees byte accesses at consecutive ports and an
  access straddling two devices gives each its own bytes;
- a port that nobody decodes reads all ones and ignores writes;
- an access that runs past port 0xFFFF wraps to port 0 (the SDM's "wraps around the 16-bit I/O-port
  space", Vol. 3C §26.1.3), byte by byte.

The map is one byte per port, read by the IN/OUT exit hook (`access`, a numba kernel): bits 0-1 say
who handles the port (ctx.py's PORT_*: nobody, userspace, or a device the kernel emulates itself), bits
2-3 the wider widths its device takes, bit 4 marks a device's first port (so a piece never crosses from
one device into the next). Userspace pieces come back through the VM's callback to `PortBus.dispatch`.
"""
import numpy as np
from numba import carray, njit

from .. import stats as S
from ..core import ctx as C
from ..errors import ConfigError
from ..native import NUMBA, call_host, u64_ptr, u8_ptr

OWNER_MASK = 3
OWNER_NONE, OWNER_USER, OWNER_POST = C.PORT_NONE, C.PORT_USER, C.PORT_POST
TAKES_2, TAKES_4, FIRST = 4, 8, 16
PORTS = 0x10000
WIDTH_BITS = {1: 0, 2: TAKES_2, 4: TAKES_4}
INLINE = dict(NUMBA, inline="always")       # on the IN/OUT exit path: no call between kernels


@njit(**INLINE)
def piece(ports, port, remaining):
    """Width of the next piece of an access at `port` with `remaining` bytes to go: the widest the device there
    takes that fits the access and ends inside that device; 1 at an unclaimed port."""
    port = np.int64(port) & 0xFFFF
    entry = np.int64(ports[port])
    for width in (4, 2):
        if width > remaining or not entry & (TAKES_4 if width == 4 else TAKES_2) or port + width > PORTS:
            continue
        whole = True
        for k in range(1, width):
            following = np.int64(ports[port + k])
            if following & FIRST or (following & OWNER_MASK) != (entry & OWNER_MASK):
                whole = False
        if whole:
            return np.int64(width)
    return np.int64(1)


@njit(**INLINE)
def access(c, port, size, is_in, value):
    """An IN (returns what it reads) or OUT of `size` bytes at `port`, piece by piece: the kernel's own devices
    here, userspace devices through the VM's callback (one call per piece), all ones from unclaimed ports.
    A size other than 1, 2 or 4 (Unicorn gives no other) is clamped, so no index leaves the map."""
    ports = carray(u8_ptr(c[C.PORTS]), PORTS)
    size = min(max(np.int64(size), np.int64(1)), np.int64(4))
    result = np.uint64(0)
    done = np.int64(0)
    user = False
    while done < size:
        p = (np.int64(port) + done) & 0xFFFF
        width = piece(ports, p, size - done)
        shift = np.uint64(8 * done)
        ones = (np.uint64(1) << np.uint64(8 * width)) - np.uint64(1)
        owner = np.int64(ports[p]) & OWNER_MASK
        part = (np.uint64(value) >> shift) & ones
        got = ones
        if owner == OWNER_POST:                     # the POST-code latch at 0x80: one byte
            if is_in:
                got = c[C.POST] & np.uint64(0xFF)
            else:
                c[C.POST] = part & np.uint64(0xFF)
        elif owner == OWNER_USER:
            how = np.uint64(p) | (np.uint64(width) << np.uint64(16)) | (np.uint64(1 if is_in else 0) << np.uint64(24))
            got = call_host(c[C.HOSTCB], c[C.VCPUID], how, part, np.uint64(0)) & ones
            user = True
        if is_in:
            result |= got << shift
        done += width
    if user:
        carray(u64_ptr(c[C.STATS]), S.NSLOTS)[S.VMEXIT_USERSPACE] += 1
    return result


class PortBus:
    """One VM's port space. Legend: devices are attached by the VM (its composition root) before the vCPUs
    run, and the interrupt controllers again at a reset, when no vCPU runs; `portmap` is read by the exit
    hooks of every vCPU, `dispatch` runs on the vCPU thread whose access it is."""

    def __init__(self):
        self.portmap = np.zeros(PORTS, np.uint8)
        self._at = [None] * PORTS                   # per port: (name, base, read, write), userspace devices

    def attach(self, name, base, length, read, write, widths=(1,)):
        """A userspace device decoding ports base..base+length-1. A byte-wide piece calls `read(offset)` /
        `write(offset, value)`; a wider one, which only a device declaring that width gets, adds the size:
        `read(offset, size)` / `write(offset, value, size)`."""
        self._place(name, base, length, OWNER_USER, widths)
        for port in range(base, base + length):
            self._at[port] = (name, base, read, write)

    def attach_kernel(self, name, base, length, owner):
        """A byte-wide device the exit hook emulates itself (`access`), such as the POST latch."""
        if owner not in (OWNER_POST,):
            raise ConfigError("%s: the kernel has no device of kind %r" % (name, owner))
        self._place(name, base, length, owner, (1,))
        for port in range(base, base + length):
            self._at[port] = (name, base, None, None)

    def _place(self, name, base, length, owner, widths):
        if not (0 <= base and length >= 1 and base + length <= PORTS):
            raise ConfigError("%s: ports %#x+%d do not fit the 64 KiB port space" % (name, base, length))
        if 1 not in widths or not set(widths) <= set(WIDTH_BITS):
            raise ConfigError("%s: widths %r: a port device takes bytes (1) and may take 2 and 4" % (name, widths))
        for port in range(base, base + length):
            there = self._at[port]
            if there is not None and (there[0], there[1]) != (name, base):
                raise ConfigError("%s: port %#x is already decoded by %s" % (name, port, there[0]))
        entry = owner | sum(WIDTH_BITS[w] for w in set(widths))
        self.portmap[base:base + length] = entry
        self.portmap[base] = entry | FIRST

    def claimed(self, port):
        return self._at[port & 0xFFFF] is not None

    def device_at(self, port):
        """The name of the device decoding `port`, or None."""
        there = self._at[port & 0xFFFF]
        return there[0] if there else None

    def dispatch(self, port, size, is_in, value):
        """One piece of an access for a userspace device, as `access` cut it; returns what an IN reads."""
        there = self._at[port & 0xFFFF]
        if there is None or there[2] is None:       # not a userspace device's port: `access` never sends these
            return (1 << 8 * size) - 1 if is_in else 0
        name, base, read, write = there
        offset = port - base
        if is_in:
            return read(offset) if size == 1 else read(offset, size)
        if size == 1:
            write(offset, value)
        else:
            write(offset, value, size)
        return 0
