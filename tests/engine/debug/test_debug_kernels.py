"""The debugger's numba kernel against its plain-Python twin, and the protocol framing and target tables."""
import xml.etree.ElementTree as ET

import numpy as np
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as X

from engine.debug import rsp, target, traps


def watch_row_twin(rows, kind, address, size):
    want = traps.WATCH_WRITE if kind == traps.UC_MEM_WRITE else traps.WATCH_READ
    for i, (first, end, kinds) in enumerate(rows):
        if kinds & want and address < end and address + size > first:
            return i
    return -1


def test_watch_row_matches_its_twin_on_random_accesses():
    """Random watch rows and accesses: the kernel picks the same first overlapping row as the twin."""
    rng = np.random.default_rng(7)
    for _ in range(300):
        n = int(rng.integers(0, 5))
        rows = [(int(f), int(f) + int(rng.choice([1, 2, 4, 8, 3])), int(rng.integers(1, 4)))
                for f in rng.integers(0x1000, 0x1040, n)]
        flat = np.array([v for row in rows for v in row] or [0], np.uint64)
        kind = int(rng.choice([traps.UC_MEM_READ, traps.UC_MEM_WRITE]))
        address, size = int(rng.integers(0xFF8, 0x1050)), int(rng.choice([1, 2, 4, 8]))
        assert traps.watch_row(flat, n, kind, address, size) == watch_row_twin(rows, kind, address, size)


def test_unaligned_store_that_straddles_a_watch_start_hits():
    """A 4-byte store at first-2 touches a 2-byte watch: it counts (gdb's watch covers the bytes)."""
    rows = np.array([0x2000, 0x2002, traps.WATCH_WRITE], np.uint64)
    assert traps.watch_row(rows, 1, traps.UC_MEM_WRITE, 0x1FFE, 4) == 0
    assert traps.watch_row(rows, 1, traps.UC_MEM_READ, 0x1FFE, 4) == -1
    assert traps.watch_row(rows, 1, traps.UC_MEM_WRITE, 0x1FFC, 2) == -1


def test_packets_frame_escape_and_parse_back():
    """A payload with every character that needs escaping survives frame → parser → unescape."""
    payload = b"m}#$*\x03 ok"
    parser = rsp.Parser()
    framed = rsp.frame(payload)
    assert framed.count(b"#") == 1
    parser.feed(b"+" + framed[:5])
    assert list(parser.events()) == [("ack",)]              # half a packet waits for the rest
    parser.feed(framed[5:] + rsp.INTERRUPT + b"$g#00")
    events = list(parser.events())
    assert events[0][0] == "packet" and rsp.unescape(events[0][1]) == payload
    assert events[1:] == [("interrupt",), ("bad", b"g")]


def test_the_description_is_the_layout_gdb_requires():
    """One description: the core feature in QEMU's x86-64 order (16 GPRs, rip, eflags, six selectors, x87) with the
    i386 names after it, then org.gnu.gdb.i386.sys (segment bases, control registers, EFER); no <architecture>."""
    root = ET.fromstring(target.description("i386:x86-64"))
    assert root.find("architecture") is None
    core = root.find("feature[@name='org.gnu.gdb.i386.core']")
    names = [r.get("name") for r in core.findall("reg")]
    assert names[:26] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp"] + ["r%d" % i for i in range(8, 16)] \
        + ["rip", "eflags", "cs", "ss", "ds", "es", "fs", "gs", "st0", "st1"]
    assert names[-9:] == ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip"]
    sys_feature = root.find("feature[@name='org.gnu.gdb.i386.sys']")
    assert [r.get("name") for r in sys_feature.findall("reg")] == ["fs_base", "gs_base", "k_gs_base", "cr0", "cr2",
                                                                 "cr3", "cr4", "cr8", "efer"]
    all_regs = root.findall(".//reg")
    assert [r.get("name") for r in all_regs] == [r.name for r in target.X86_64]
    assert not {r.get("type") for r in all_regs} & {"code_ptr", "data_ptr"}     # sized by gdb's architecture
    assert {int(r.get("bitsize")) for r in all_regs} == {32, 64, 80}


def test_register_bytes_round_trip_on_a_unicorn_cpu():
    """read_all/write_all over a real Unicorn CPU: little-endian; an i386 name writes the low half of its register,
    keeping the upper half; k_gs_base and efer are the MSRs."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.reg_write(X.UC_X86_REG_RAX, 0xAAAAAAAA11111111)
    uc.reg_write(X.UC_X86_REG_R15, 0x0123456789ABCDEF)
    uc.reg_write(X.UC_X86_REG_MSR, (target.MSR_KERNEL_GS_BASE, 0xFFFF800000001000))
    arch = target.architecture_of(uc)
    data = target.read_all(uc, arch)
    assert len(data) == sum(r.bits for r in target.X86_64) // 8
    assert data[15 * 8:16 * 8] == (0x0123456789ABCDEF).to_bytes(8, "little")
    offset = {}
    at = 0
    for reg in target.X86_64:
        offset[reg.name] = at
        at += reg.bits // 8
    assert data[offset["eax"]:offset["eax"] + 4] == (0x11111111).to_bytes(4, "little")
    assert data[offset["k_gs_base"]:offset["k_gs_base"] + 8] == (0xFFFF800000001000).to_bytes(8, "little")
    regs = bytearray(data)
    regs[offset["eax"]:offset["eax"] + 4] = (0x22222222).to_bytes(4, "little")
    target.write_all(uc, arch, bytes(regs))
    assert uc.reg_read(X.UC_X86_REG_RAX) == 0xAAAAAAAA22222222
    assert target.mode_of(uc) in ("i8086", "i386", "i386:x86-64")
