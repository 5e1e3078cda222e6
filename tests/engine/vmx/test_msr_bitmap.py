"""The MSR bitmap as SDM 25.6.9 lays it out and bhyve's vmx_init fills it: a real host page the VMCS points at,
and RDMSR/WRMSR that exit only where its bit is set; the lookup kernel against a plain-Python twin."""
import random

import numpy as np

from engine import stats as S
from engine.vmx import controls as K
from engine.vmx import exits as E
from engine.vmx import hooks
from engine.vmx import msr_bitmap as MB
from tests.engine.cpu.test_msrs import GP, rd, run_ops, wr

# vmx_init and vmx_msr_guest_init: (MSR, readable, writable) in dump_intel_msr_pm's order
BHYVE_PAGE = [(0x10, True, False), (0xC0000080, True, True), (0xC0000081, True, True), (0xC0000082, True, True),
              (0xC0000083, True, True), (0xC0000084, True, True), (0xC0000100, True, True),
              (0xC0000101, True, True), (0xC0000102, True, True), (0x174, True, True), (0x175, True, True),
              (0x176, True, True)]


def twin_exits(bitmap, index, is_write):
    """SDM 26.1.3, read off the page byte by byte."""
    index &= 0xFFFFFFFF
    if index <= 0x1FFF:
        offset = 2048 if is_write else 0
    elif 0xC0000000 <= index <= 0xC0001FFF:
        offset, index = (3072 if is_write else 1024), index - 0xC0000000
    else:
        return True
    return bool(bitmap[offset + index // 8] >> (index % 8) & 1)


def test_change_access_clears_the_bits_of_the_sdm_layout():
    """msr_bitmap_change_access: read-low at 0, read-high at 1024, write-low at 2048, write-high at 3072, bit n of
    each for MSR base + n; bits cleared for the access granted, set for the other."""
    page = np.zeros(MB.PAGE, np.uint8)
    MB.initialize(page)
    MB.change_access(page, 0x10, MB.ACCESS_READ)                   # byte 2, bit 0
    MB.change_access(page, 0xC0000102, MB.ACCESS_RW)               # byte 0x20 of the high halves, bit 2
    MB.change_access(page, 0x1FFF, MB.ACCESS_WRITE)                # the last bit of write-low
    assert page[2] == 0xFE and page[2048 + 2] == 0xFF
    assert page[1024 + 0x20] == 0xFB and page[3072 + 0x20] == 0xFB
    assert page[1023] == 0xFF and page[2048 + 1023] == 0x7F
    assert int(np.count_nonzero(page != 0xFF)) == 4
    MB.change_access(page, 0x10, 0)                                # taken back: all ones again
    assert page[2] == 0xFF
    for outside in (0x2000, 0xBFFFFFFF, 0xC0002000, 0xC0010000):
        try:
            MB.change_access(page, outside, MB.ACCESS_RW)
        except ValueError as problem:
            assert "outside the MSR bitmap's ranges" in str(problem)
        else:
            raise AssertionError("%#x was accepted" % outside)


def test_exits_kernel_matches_its_twin():
    """The hook's lookup on random pages, for the ranges' edges, their neighbours and random MSRs."""
    rng = random.Random(17)
    edges = [0, 1, 7, 8, 0x1FFF, 0x2000, 0xBFFFFFFF, 0xC0000000, 0xC0000007, 0xC0001FFF, 0xC0002000, 0xFFFFFFFF,
             1 << 32 | 0x10]
    for _ in range(20):
        page = np.frombuffer(rng.randbytes(MB.PAGE), np.uint8).copy()
        indices = edges + [rng.randrange(0x2000) for _ in range(100)] + \
            [0xC0000000 + rng.randrange(0x2000) for _ in range(100)] + [rng.getrandbits(32) for _ in range(50)]
        for index in indices:
            for is_write in (False, True):
                assert MB.exits(page, np.uint64(index), is_write) == twin_exits(page, index, is_write), hex(index)


def test_the_page_bhyve_fills():
    """vmx_init's guest_msr_rw/ro list and vmx_msr_guest_init's: FS/GS base, SYSENTER, EFER, the syscall MSRs and
    KGSBASE read and written, the TSC only read; PAT, TSC_AUX, APIC_BASE and the rest exit."""
    page = np.zeros(MB.PAGE, np.uint8)
    MB.vmx_init(page)
    assert MB.permissions(page) == BHYVE_PAGE
    for msr in (0x1B, 0x277, 0xC0000103, 0x1A0, 0x3A):
        assert MB.exits(page, np.uint64(msr), False) and MB.exits(page, np.uint64(msr), True)


def test_the_vmcs_points_at_the_vms_page(hv, tmp_path):
    """Every vCPU's MSR_BITMAP is its VM's one page (vmx_vcpu_init: vtophys(vmx->msr_bitmap)), "use MSR bitmaps"
    is set, and the host memory there is the page bhyve fills; another VM has its own; destroying frees it."""
    one = hv.create_vm("one", mem_mb=16, cpus=2)
    two = hv.create_vm("two", mem_mb=16)
    at = one.vcpus[0].vmcs["MSR_BITMAP"]
    assert at != 0 and at % MB.PAGE == 0 and one.vcpus[1].vmcs["MSR_BITMAP"] == at == one.msr_bitmap
    assert two.vcpus[0].vmcs["MSR_BITMAP"] not in (0, at)
    assert one.vcpus[0].vmcs["PRI_PROC_BASED_CTLS"] & K.PROCBASED_MSR_BITMAPS
    assert MB.permissions(hv.memory[at:at + MB.PAGE]) == BHYVE_PAGE
    assert "MSR bitmap" in hv.allocator.used[at][1]
    hv.destroy_vm("one")
    assert at not in hv.allocator.used


def test_with_virtual_interrupt_delivery_the_x2apic_msrs_still_exit(hv):
    """bhyve opens the x2APIC MSRs (vmx_allow_x2apic_msrs) only in vmx_enable_x2apic_mode_vid, when a guest with
    virtual-interrupt delivery turns x2APIC mode on. cascadelake has virtual-interrupt delivery but, like every
    modeled CPU, offers no x2APIC (CPUID.1:ECX[21]), so its page is the same as haswell's."""
    vm = hv.create_vm("vid", mem_mb=16, profile="cascadelake")
    leaf1 = [row for row in vm.cpuid.reshape(-1, 6) if row[0] == 1][0]
    assert not int(leaf1[4]) & 1 << 21
    at = vm.vcpus[0].vmcs["MSR_BITMAP"]
    assert vm.vcpus[0].vmcs["SEC_PROC_BASED_CTLS"] & K.PROCBASED2_VIRTUAL_INTERRUPT_DELIVERY
    assert MB.permissions(hv.memory[at:at + MB.PAGE]) == BHYVE_PAGE
    for msr in (0x802, 0x808, 0x80B, 0x830, 0x83F):
        assert MB.exits(hv.memory[at:at + MB.PAGE], np.uint64(msr), False)
        assert MB.exits(hv.memory[at:at + MB.PAGE], np.uint64(msr), True)


def exits_of(vm, reason):
    return [row for row in vm.vcpus[0].exit_log() if row["reason"] == reason]


def test_a_passthrough_msr_runs_without_an_exit(hv, tmp_path):
    """WRMSR FS_BASE and KERNEL_GS_BASE, RDMSR of them, of EFER and of the TSC: they take effect, no exit is
    recorded or counted. IA32_APIC_BASE, PAT, a TSC write and an MSR the CPU lacks exit as before; a
    passthrough write the CPU refuses (a non-canonical FS base) is the guest's #GP without an exit."""
    vm, got = run_ops(hv, tmp_path, [
        wr(0xC0000100, 0x7000), rd(0xC0000100), wr(0xC0000102, 0x1234000), rd(0xC0000102), rd(0xC0000080), rd(0x10),
        wr(0xC0000100, 1 << 63)])
    assert got[:4] == [None, 0x7000, None, 0x1234000] and got[4] & 0x500 == 0x500 and got[5] > 0 and got[6] == GP
    counters = vm.vcpus[0].counters
    assert counters[S.VMEXIT_RDMSR] == counters[S.VMEXIT_WRMSR] == 0
    assert not exits_of(vm, E.RDMSR) and not exits_of(vm, E.WRMSR)
    vm2, got = run_ops(hv, tmp_path, [rd(0x1B), rd(0x277), wr(0x10, 1 << 40), rd(0x12345)], name="exiting")
    assert got[0] == 0xFEE00900 and got[3] == GP
    counters = vm2.vcpus[0].counters
    assert (counters[S.VMEXIT_RDMSR], counters[S.VMEXIT_WRMSR], counters[S.MSR_UNKNOWN]) == (3, 1, 1)
    assert [row["reason"] for row in vm2.vcpus[0].exit_log() if row["reason"] in (E.RDMSR, E.WRMSR)] == \
        [E.RDMSR, E.RDMSR, E.WRMSR, E.RDMSR]


def test_without_use_msr_bitmaps_every_msr_access_exits(hv, tmp_path):
    """SDM 26.1.3: with the control clear the page is not read, an RDMSR of FS_BASE exits."""
    vm = hv.create_vm("nobitmap", mem_mb=16)
    vm.load(b"\xfa\xf4", "g.bin", kind="flat64")
    v = vm.vcpus[0]
    v.uc.reg_write(hooks.X.UC_X86_REG_RCX, 0xC0000100)
    assert not hooks.msr_exit(v.ctx, 0x200000, False, 2)
    v.vmcs["PRI_PROC_BASED_CTLS"] = v.vmcs["PRI_PROC_BASED_CTLS"] & ~K.PROCBASED_MSR_BITMAPS
    assert hooks.msr_exit(v.ctx, 0x200000, False, 2)
    assert v.counters[S.VMEXIT_RDMSR] == 1 and v.exit_log()[-1]["reason"] == E.RDMSR
