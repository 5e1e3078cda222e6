"""Locked instructions across vCPUs (io/buslock.py): which 16-byte chunks of a page hold a LOCK or an XCHG, the
block check against its plain-Python twin, and 2-vCPU guests on two host CPUs whose locked increments all
count, whose spinlock released by a plain store is never lost, whose XCHG tokens are conserved, and whose
misaligned locked adds (QEMU's EXCP_ATOMIC) run whole."""
import numpy as np
import pytest
from unicorn import x86_const as X

from engine.core import ctx as C
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
        xchg [rdi], rax                   # locked without a prefix by the CPU itself
        .org 0x090, 0x90
        xchg rax, rbx                     # registers only: nothing to lock
        xchg al, cl
    """, tmp_path)
    assert chunks(B.lock_chunks(page)) == [0, 1, 2, 3, 4, 5, 8]


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


BOTH_DONE = """
    lock inc qword ptr [0x500010]            # this vCPU is done
9:  cmp qword ptr [0x500010], 2
    jne 9b
    cli
    hlt
"""


def run_two(hv, tmp_path, source, words, timeout=120):
    """Two vCPUs on two host CPUs run `source`, then wait for each other and halt; the first `words` qwords at
    0x500000 after."""
    vm = hv.create_vm("locked", mem_mb=16, cpus=2)
    vm.load(assemble(source + BOTH_DONE, tmp_path, base=FLAT_BASE), "g.bin", kind="flat64")
    assert len({v.hostcpu.index for v in vm.vcpus}) == 2
    vm.start(all_vcpus=True)
    state = vm.wait(states=("suspended",), timeout=timeout)
    rips = [hex(v.uc.reg_read(X.UC_X86_REG_RIP)) for v in vm.vcpus]     # where a hung guest spins
    assert state == "suspended", (state, rips)
    return vm, np.frombuffer(vm.memory_access.read(0x500000, 8 * words), np.uint64).tolist()


SPINLOCK = """
    mov rcx, 100000
1:  mov edx, 1
    xor eax, eax
    lock cmpxchg dword ptr [0x500000], edx   # the fast path: fails whenever the other vCPU holds it
    jz 3f
2:  xor eax, eax                             # the slow path: try again at once, failing while it is held
    lock cmpxchg dword ptr [0x500000], edx
    jnz 2b
3:  inc qword ptr [0x500008]                 # under the lock: a plain read-modify-write
    mov byte ptr [0x500000], 0               # spin_unlock: a plain store
    dec rcx
    jnz 1b
"""


def test_a_spinlock_released_by_a_plain_store_is_never_lost(hv, tmp_path):
    """A failing LOCK CMPXCHG translated for one vCPU stores back the value it read, so the other vCPU's
    unlocking store in between was lost and both spun for ever (Linux on 2 vCPUs hung so): with parallel
    blocks the compare-exchange is the host's, and every one of the 200,000 locked sections counts."""
    _, words = run_two(hv, tmp_path, SPINLOCK, 3)
    assert words == [0, 200000, 2]


XCHG_TOKENS = """
    mov rcx, 200000
    mov eax, 1                               # each vCPU holds one token; the word starts with none
1:  xchg dword ptr [0x500000], eax           # no LOCK prefix: locked by the CPU all the same
    xchg dword ptr [0x500000], eax
    dec rcx
    jnz 1b
    lock add qword ptr [0x500008], rax       # give back what it holds
"""


def test_xchg_with_memory_conserves_what_it_swaps(hv, tmp_path):
    """Two tokens swapped in and out of one word 800,000 times: none made, none lost."""
    _, words = run_two(hv, tmp_path, XCHG_TOKENS, 3)
    assert (words[0] & 0xFFFFFFFF) + words[1] == 2 and words[2] == 2, words


MISALIGNED = """
    mov rcx, 20000
1:  lock add dword ptr [0x500ffe], 1         # crosses a page: the host atomic gives up (EXCP_ATOMIC)
    lock add qword ptr [0x500103], 1         # misaligned within a page: the same
    dec rcx
    jnz 1b
"""


def test_misaligned_locked_adds_run_whole_one_at_a_time(hv, tmp_path):
    """QEMU runs a locked access its host atomics cannot do alone, with the other vCPUs stopped; here it runs
    as a serial one-instruction block under the bus lock: every add counts, and the vCPUs counted them."""
    vm, _ = run_two(hv, tmp_path, MISALIGNED, 0)
    raw = vm.memory_access.read(0x500000, 0x1002)
    assert int.from_bytes(raw[0xFFE:0x1002], "little") == 40000
    assert int.from_bytes(raw[0x103:0x10B], "little") == 40000
    assert sum(int(v.ctx[C.ATOMIC_SERIAL]) for v in vm.vcpus) >= 2 * 40000
