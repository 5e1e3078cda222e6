"""The execute-permission scan's candidates (vcpu/paging.py): what gets a code hook and what runs natively."""
import numpy as np

from engine.vcpu.paging import candidates


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
