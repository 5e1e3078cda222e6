"""The execute-permission scan (vcpu/paging.py): its candidates, what gets a code hook and what runs natively, and
a guest that rewrites the block it runs in."""
import numpy as np
import pytest
from unicorn import x86_const as X

from engine.vcpu.paging import candidates
from tests.engine.conftest import FLAT_BASE, assemble


def page_with(*placed):
    page = np.zeros(0x1000, np.uint8)
    for offset, insn in placed:
        page[offset:offset + len(insn)] = insn
    return page


def test_msr_cr_invlpg_lmsw_and_pause_are_hooked_with_their_prefixes():
    found = set(candidates(page_with((0x10, [0x0F, 0x01, 0x38]),          # invlpg [rax]
                                     (0x20, [0x0F, 0x01, 0xF0]),          # lmsw ax
                                     (0x30, [0x66, 0x0F, 0x22, 0xD8]),    # mov cr3, rax behind a prefix
                                     (0x40, [0x0F, 0x30]),                # wrmsr
                                     (0x50, [0xF3, 0x90]))))              # pause
    assert {0x10, 0x20, 0x30, 0x31, 0x40, 0x50} <= found


def test_hlt_lock_and_the_rest_of_group_7_are_not_hooked():
    found = set(candidates(page_with((0x10, [0xF4]),                      # hlt: Unicorn leaves emu_start after it
                                     (0x20, [0xF0, 0x0F, 0xB1, 0x0A]),    # lock cmpxchg: io/buslock.py's business
                                     (0x30, [0x0F, 0x01, 0xCB]),          # stac
                                     (0x40, [0x0F, 0x01, 0xF8]),          # swapgs
                                     (0x50, [0x0F, 0x01, 0xD0]),          # xgetbv
                                     (0x60, [0x0F, 0x01, 0xF9]))))        # rdtscp
    assert not found


def test_at_the_end_of_a_page_an_opcode_start_is_hooked_whatever_follows():
    assert {0xFFE} <= set(candidates(page_with((0xFFE, [0x0F, 0x01]))))  # the ModRM byte is on the next page
    assert {0xFFF} <= set(candidates(page_with((0xFFF, [0x0F]))))


REWRITES_ITS_OWN_BLOCK = """
    lea rdi, [rip + 2f]
    mov ecx, 1000
1:  mov esi, 0x90909090
    mov dword ptr [rdi], esi          # rewrites the next four bytes of the block it runs in
2:  nop
    nop
    nop
    nop
    dec ecx
    jnz 1b
    cli
    hlt
"""


@pytest.mark.parametrize("cpus", [1, 2])
def test_a_store_into_the_running_block_completes(hv, tmp_path, cpus):
    """Linux patches its alternatives with memcpy on memcpy's own page. Such a store makes QEMU end the block and
    ask for the instruction alone (precise self-modifying code); the write also withdrew execute until the page
    is scanned again, and that exit used to lose the request: the block was translated whole again, the store
    rewrote it again, for ever. Each pass now costs the write's rescan and nothing more."""
    vm = hv.create_vm("smc", mem_mb=16, cpus=cpus)
    vm.load(assemble(REWRITES_ITS_OWN_BLOCK, tmp_path, base=FLAT_BASE), "g.bin", kind="flat64")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended", hex(vm.vcpus[0].uc.reg_read(X.UC_X86_REG_RIP))
    assert vm.suspend_reason == "halt"
    assert vm.vcpus[0].uc.reg_read(X.UC_X86_REG_RCX) == 0
