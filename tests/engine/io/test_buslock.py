"""The bus lock (io/buslock.py): which 16-byte chunks of a page hold a LOCK, the block check against its
plain-Python twin, and two vCPUs on two host CPUs whose locked increments all count."""
import numpy as np
import pytest

from engine.io import buslock as B
from engine.mmu.access import xtab_find
from tests.engine.conftest import FLAT_BASE, assemble


def chunks(bits):
    return [i for i in range(256) if int(bits[i >> 6]) >> (i & 63) & 1]


def code_page(src, tmp_path):
    code = np.frombuffer(assemble(src, tmp_path), np.uint8)
    page = np.full(4096, 0x90, np.uint8)               # NOPs after the code
    page[:code.size] = code
    return page


def test_every_lockable_form_is_found_and_an_f0_inside_another_instruction_is_not(tmp_path):
    page = code_page("""
        .org 0x000
        lock inc qword ptr [rdi]
        .org 0x010, 0x90
        lock cmpxchg [rsi], ecx
        .org 0x020, 0x90
        lock xadd qword ptr gs:[rax + 8], rbx
        .org 0x030, 0x90
        lock bts dword ptr [rdi], 3
        .org 0x040, 0x90
        lock cmpxchg16b [rdi]
        .org 0x050, 0x90
        lock or byte ptr [rdi + 0x10], 1
        .org 0x060, 0x90
        and rsp, -16                      # 48 83 E4 F0: an F0 immediate
        sub rsp, 8                        # then REX.W 83 with a register ModR/M: not a locked form
        .org 0x070, 0x90
        mov eax, 0xF0F0F0F0               # F0 bytes followed by more F0s and a RET
        ret
        .org 0x080, 0x90
        xchg [rdi], rax                   # locked without a prefix by the CPU itself: nothing to map
    """, tmp_path)
    assert chunks(B.lock_chunks(page)) == [0, 1, 2, 3, 4, 5]


def test_a_lock_cut_off_by_the_page_end_counts():
    page = np.full(4096, 0x90, np.uint8)
    page[4095] = 0xF0
    assert chunks(B.lock_chunks(page)) == [255]


def twin_has_lock(xtab, bits, mask, page, first, last):
    """page_has_lock in plain Python."""
    with np.errstate(over="ignore"):                   # the hash multiplies modulo 2**64 on purpose
        slot = xtab_find.py_func(xtab, mask, page)
    if slot < 0 or int(xtab[2 * slot]) != page | 1:
        return False
    word = sum(int(bits[B.WORDS * slot + w]) << (64 * w) for w in range(B.WORDS))
    return any(word >> i & 1 for i in range(first, last + 1))


def test_the_block_check_matches_its_python_twin():
    rng = np.random.default_rng(7)
    mask = 63
    xtab = np.zeros(2 * (mask + 1), np.uint64)
    bits = np.zeros(B.WORDS * (mask + 1), np.uint64)
    pages = [0xFFFFFFFF81000000 + 0x1000 * i for i in range(40)]
    for page in pages:
        slot = xtab_find(xtab, mask, np.uint64(page))
        xtab[2 * slot] = page | 1
        bits[B.WORDS * slot:B.WORDS * (slot + 1)] = rng.integers(0, 2**63, B.WORDS, dtype=np.uint64) & \
            rng.integers(0, 2**63, B.WORDS, dtype=np.uint64) & rng.integers(0, 2**63, B.WORDS, dtype=np.uint64)
    for _ in range(3000):
        page = pages[rng.integers(0, len(pages))] if rng.random() < 0.9 else 0x400000
        first = int(rng.integers(0, 256))
        last = int(rng.integers(first, min(first + 8, 255) + 1))
        assert B.page_has_lock(xtab, bits, mask, np.uint64(page), first, last) == \
            twin_has_lock(xtab, bits, mask, page, first, last)


COUNTERS = """
    mov rcx, 200000
1:  lock inc qword ptr [0x500000]
    lock add qword ptr [0x500008], 3
    dec rcx
    jnz 1b
    lock inc qword ptr [0x500010]     # this vCPU is done
2:  cmp qword ptr [0x500010], 2
    jne 2b
    cli
    hlt
"""


@pytest.mark.parametrize("same_host_cpu", [False, True])
def test_two_vcpus_lose_no_locked_increment(hv, tmp_path, same_host_cpu):
    """Two vCPUs each add 200,000 times with LOCK INC and LOCK ADD to two shared words: on two host CPUs they
    run at once (the bus lock keeps every read-modify-write whole), on one they take turns."""
    vm = hv.create_vm("locked", mem_mb=16, cpus=2)
    vm.load(assemble(COUNTERS, tmp_path, base=FLAT_BASE), "g.bin", kind="flat64")
    if same_host_cpu:
        for v in vm.vcpus:
            v.pin(0)
    assert len({v.hostcpu.index for v in vm.vcpus}) == (1 if same_host_cpu else 2)
    vm.start(all_vcpus=True)
    assert vm.wait(states=("suspended",), timeout=120) == "suspended", vm.state
    words = np.frombuffer(vm.memory_access.read(0x500000, 24), np.uint64)
    assert words.tolist() == [400000, 1200000, 2]
