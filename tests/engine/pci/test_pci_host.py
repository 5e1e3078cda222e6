"""PCI configuration mechanism #1 with the host bridge at 00:00.0 against PCI Local Bus 3.0: CONFIG_ADDRESS
only through dword accesses, configuration reads of the bridge and of absent functions at every width and
offset, the writable, write-1-to-clear and read-only bits of the header, and hostile addresses and values."""
import random

import pytest

from engine.errors import ConfigError
from engine.pci import config as P
from engine.pci.host import ENABLE, PciHost, bdf
from engine.pci.hostbridge import HostBridge

# The host bridge's first 64 bytes as bhyve's pci_hostbridge.c makes them (little-endian dwords): vendor and
# device 0x1275, command and status 0, revision 0, class 06/00/00, header type 0, the rest 0.
BRIDGE_DWORDS = [0x12751275, 0, 0x06000000] + [0] * 13


def host():
    bus = PciHost()
    bus.attach(0, 0, HostBridge())
    return bus


def address(bus=0, device=0, function=0, register=0, enable=True):
    return (ENABLE if enable else 0) | bus << 16 | device << 11 | function << 8 | register


def config_read(pci, where, offset, size):
    """A configuration read as Linux's pci_conf1_read does it: the dword address, then CONFIG_DATA at the
    offset within the dword with the access's width."""
    pci.address_write(0, where | (offset & 0xFC), 4)
    return pci.data_read(offset & 3, size)


def config_write(pci, where, offset, value, size):
    pci.address_write(0, where | (offset & 0xFC), 4)
    pci.data_write(offset & 3, value, size)


def test_config_address_latches_only_dwords_and_reads_its_reserved_bits_as_zero():
    pci = host()
    pci.address_write(0, 0xFFFFFFFF, 4)
    assert pci.address_read(0, 4) == 0x80FFFFFC
    pci.address_write(0, 0x12345678, 4)
    for offset in range(4):
        pci.address_write(offset, 0xAA, 1)                # not a configuration access: passes through as I/O
        assert pci.address_read(offset, 1) == 0xFF
    pci.address_write(0, 0xBBBB, 2)
    pci.address_write(2, 0xBBBB, 2)
    assert pci.address_read(0, 2) == 0xFFFF and pci.address_read(2, 2) == 0xFFFF
    assert pci.address_read(0, 4) == 0x12345678 & 0x80FFFFFC


def test_byte_and_word_accesses_to_0xcf8_reach_what_else_decodes_there():
    seen = []
    pci = PciHost(passthrough=lambda offset, size, is_in, value: seen.append((offset, size, is_in, value)) or 0x5A)
    pci.address_write(1, 0x06, 1)                         # e.g. the reset control register at 0xCF9
    assert pci.address_read(1, 1) == 0x5A
    assert seen == [(1, 1, False, 0x06), (1, 1, True, 0)]


@pytest.mark.parametrize("size", [1, 2, 4])
def test_the_host_bridge_reads_at_every_width_and_offset(size):
    pci = host()
    image = b"".join(d.to_bytes(4, "little") for d in BRIDGE_DWORDS) + bytes(192)
    for offset in range(0, 256, size):
        want = int.from_bytes(image[offset:offset + size], "little")
        assert config_read(pci, address(), offset, size) == want, (offset, size)


@pytest.mark.parametrize("size", [1, 2, 4])
def test_absent_devices_functions_and_buses_read_all_ones(size):
    pci = host()
    ones = (1 << 8 * size) - 1
    for where in [address(device=d) for d in range(1, 32)] + [address(function=f) for f in range(1, 8)] + \
                 [address(bus=b) for b in (1, 2, 0x80, 0xFF)]:
        for offset in range(0, 256, size):
            assert config_read(pci, where, offset, size) == ones, (hex(where), offset)
    assert config_read(pci, address(enable=False), 0, size) == ones    # no configuration cycle at all


def test_writable_bits_w1c_status_and_read_only_fields():
    """Command: I/O, memory, bus master, SERR#, interrupt disable; cache line size, latency timer and interrupt
    line are read/write; the status error bits clear when 1 is written; IDs, class, header type and the BARs
    ignore writes (a BAR that reads 0 after 0xFFFFFFFF is written is not implemented)."""
    pci = host()
    bridge = pci.functions[0, 0]
    config_write(pci, address(), P.COMMAND, 0xFFFF, 2)
    assert config_read(pci, address(), P.COMMAND, 2) == P.COMMAND_WRITABLE
    config_write(pci, address(), P.CACHE_LINE_SIZE, 0xFFFFFFFF, 4)
    assert config_read(pci, address(), P.CACHE_LINE_SIZE, 4) == 0x0000FFFF
    config_write(pci, address(), P.INTERRUPT_LINE, 0x0B, 1)
    assert config_read(pci, address(), P.INTERRUPT_LINE, 4) == 0x0B
    bridge.config[P.STATUS + 1] = 0xF9                        # the device reported every error
    config_write(pci, address(), P.STATUS, 0x2000, 2)         # software clears "received master abort"
    assert config_read(pci, address(), P.STATUS, 2) == 0xD900
    for offset in [0, 8, 0x0C] + list(range(P.BAR0, 0x40, 4)) + [0x40, 0xFC]:
        before = config_read(pci, address(), offset, 4)
        config_write(pci, address(), offset, 0xFFFFFFFF, 4)
        after = config_read(pci, address(), offset, 4)
        writable = int.from_bytes(bridge.wmask[offset:offset + 4], "little")
        w1c = int.from_bytes(bridge.w1cmask[offset:offset + 4], "little")
        assert after == before & ~writable & ~w1c | writable, hex(offset)


def test_a_word_at_an_odd_offset_inside_the_dword_is_a_cycle_with_those_byte_enables():
    pci = host()
    pci.address_write(0, address(), 4)
    assert pci.data_read(1, 2) == 0x7512 and pci.data_read(3, 1) == 0x12


def test_hostile_addresses_and_values_never_raise_and_leave_the_ids_alone():
    pci = host()
    rng = random.Random(16)
    for _ in range(20000):
        value, offset = rng.getrandbits(32), rng.randrange(4)
        size = rng.choice([1, 2, 4])
        size = min(size, 4 - offset)
        choice = rng.randrange(4)
        if choice == 0:
            pci.address_write(rng.randrange(4), value, rng.choice([1, 2, 4]))
        elif choice == 1:
            pci.data_write(offset, value, size)
        elif choice == 2:
            assert 0 <= pci.data_read(offset, size) < 1 << 8 * size
        else:
            pci.address_write(0, value | ENABLE, 4)
    assert config_read(pci, address(), 0, 4) == 0x12751275
    assert config_read(pci, address(), 8, 4) == 0x06000000


def test_attach_reset_and_state():
    pci = host()
    with pytest.raises(ConfigError, match="00:00.0 is already taken"):
        pci.attach(0, 0, HostBridge())
    with pytest.raises(ConfigError, match="device 0-31"):
        pci.attach(32, 0, HostBridge())
    config_write(pci, address(), P.COMMAND, 0x0007, 2)
    state = pci.state()
    assert list(state["functions"]) == ["00:00.0"] and state["address"] == address(register=P.COMMAND)
    crafted = dict(state, functions={"00:00.0": [0xAB] * 256})
    other = host()
    other.load_state(crafted)
    assert config_read(other, address(), 0, 4) == 0x12751275            # read-only bytes come from the model
    assert config_read(other, address(), P.COMMAND, 2) == 0xABAB & P.COMMAND_WRITABLE
    with pytest.raises(ConfigError, match="00:03.0"):
        other.load_state(dict(state, functions={bdf(3, 0): [0] * 256}))
    pci.reset()
    assert pci.address_read(0, 4) == 0 and config_read(pci, address(), P.COMMAND, 2) == 0
