"""EPT kernels on their own: first touch, the memory cap, superpages, A/D bits (hardware and emulated),
the dirty log, protection and execute-only, and the EPTP bhyve builds."""
import numpy as np
import pytest

from engine import Hypervisor
from engine.errors import ConfigError
from engine.mmu import ept as E
from engine.mmu.pmap import MemoryCapError

from tests.engine.mmu.conftest import new_pool, new_state

HOST = 16 << 20
SEG = 0x400000                  # guest-physical 0..4 MiB lives here
PTP = 0x200000                  # the saved page-table slots


def fresh(flags, cap_pages=1024):
    host = np.zeros(HOST, np.uint8)
    host[SEG:SEG + (4 << 20)] = 0xCC                 # stale bytes a new page must not show
    mem64 = host.view(np.uint64)
    pool = new_pool(0x100000, 32)
    st = new_state(mem64, pool, flags, cap_pages, PTP, 2)
    return host, mem64, st, pool, np.array([0, 4 << 20, SEG], np.uint64)


def access(mem64, st, pool, segs, gpa, kind):
    return E.translate(mem64, st, pool, segs, 1, gpa, kind, 4)


def test_first_touch_backs_a_zeroed_page_and_counts_it():
    host, mem64, st, pool, segs = fresh(E.F_HW_AD)
    status, hpa, rwx, faults, _ = access(mem64, st, pool, segs, 0x3456, E.READ)
    assert (status, int(hpa), faults) == (E.HANDLED, SEG + 0x3456, 1)
    assert not host[SEG + 0x3000:SEG + 0x4000].any()
    assert host[SEG + 0x4000] == 0xCC                              # only that page
    assert (st[E.S_RESIDENT], st[E.S_FIRST_TOUCH]) == (1, 1)
    assert access(mem64, st, pool, segs, 0x3000, E.READ)[3] == 0    # the second access takes no fault


def test_outside_memory_and_over_the_cap_are_refused():
    host, mem64, st, pool, segs = fresh(E.F_HW_AD, cap_pages=2)
    assert access(mem64, st, pool, segs, 5 << 20, E.READ)[0] == E.NOT_MEMORY
    assert access(mem64, st, pool, segs, 0x0000, E.WRITE)[0] == E.HANDLED
    assert access(mem64, st, pool, segs, 0x1000, E.WRITE)[0] == E.HANDLED
    assert access(mem64, st, pool, segs, 0x2000, E.WRITE)[0] == E.OVER_CAP
    assert st[E.S_RESIDENT] == 2


def test_a_full_2mib_region_is_promoted_and_a_change_inside_demotes_it():
    host, mem64, st, pool, segs = fresh(E.F_HW_AD | E.F_SUPERPAGES)
    for page in range(511):
        access(mem64, st, pool, segs, 0x200000 + page * 0x1000, E.WRITE)
    assert E.walk(mem64, st, 0x200000, False)[0] == 1 and st[E.S_SUPER] == 0
    free_before = int(pool[0])
    access(mem64, st, pool, segs, 0x200000 + 511 * 0x1000, E.READ)
    level, ea, e, rwx = E.walk(mem64, st, 0x345678, False)
    assert level == 2 and e & E.EPT_PS and int(E.leaf_hpa(level, e, 0x345678)) == SEG + 0x345678
    assert (st[E.S_SUPER], st[E.S_PROMOTIONS], int(pool[0])) == (1, 1, free_before)      # the table stays saved
    assert mem64[(PTP >> 3) + 1] != 0
    assert E.change(mem64, st, pool, 0x201000, 0x1000, E.EPT_R | E.EPT_X, False) == 1
    assert (st[E.S_SUPER], st[E.S_DEMOTIONS]) == (0, 1)
    assert access(mem64, st, pool, segs, 0x201000, E.WRITE)[0] == E.DENIED
    status, hpa, rwx, faults, _ = access(mem64, st, pool, segs, 0x202000, E.WRITE)
    assert (status, int(hpa), faults) == (E.HANDLED, SEG + 0x202000, 0)


def test_without_superpage_support_nothing_is_promoted():
    host, mem64, st, pool, segs = fresh(E.F_HW_AD)
    for page in range(512):
        access(mem64, st, pool, segs, page * 0x1000, E.READ)
    assert E.walk(mem64, st, 0, False)[0] == 1 and st[E.S_SUPER] == 0


def test_hardware_ad_bits_set_by_the_walk_and_harvested_into_the_dirty_log():
    host, mem64, st, pool, segs = fresh(E.F_HW_AD)
    status, hpa, rwx, faults, _ = access(mem64, st, pool, segs, 0x5000, E.READ)
    assert not rwx & E.EPT_W                         # clean: the first write must come back to set D
    access(mem64, st, pool, segs, 0x6000, E.WRITE)
    level, ea, e, _ = E.walk(mem64, st, 0x5000, False)
    assert e & E.EPT_A and not e & E.EPT_D
    out = np.zeros(16, np.uint64)
    assert E.harvest_dirty(mem64, st, pool, 0, 4 << 20, out, True) == 1 and out[0] == 6
    assert E.harvest_dirty(mem64, st, pool, 0, 4 << 20, out, True) == 0
    access(mem64, st, pool, segs, 0x5000, E.WRITE)
    assert E.harvest_dirty(mem64, st, pool, 0, 4 << 20, out, False) == 1 and out[0] == 5


def test_emulated_ad_bits_fault_on_first_read_and_first_write():
    """PMAP_EMULATE_AD_BITS: bits 52/53 say valid and writable, R and W stand for accessed and dirty."""
    host, mem64, st, pool, segs = fresh(0)
    assert access(mem64, st, pool, segs, 0x7000, E.READ)[3] == 1            # first touch
    level, ea, e, _ = E.walk(mem64, st, 0x7000, False)
    assert e & E.EMUL_V and e & E.EMUL_RW and e & E.EPT_R and not e & E.EPT_W
    status, hpa, rwx, faults, qual = access(mem64, st, pool, segs, 0x7000, E.WRITE)
    assert (status, faults, int(st[E.S_AD_FAULTS])) == (E.HANDLED, 1, 1)
    out = np.zeros(4, np.uint64)
    assert E.harvest_dirty(mem64, st, pool, 0, 4 << 20, out, True) == 1 and out[0] == 7
    assert not E.walk(mem64, st, 0x7000, False)[2] & E.EPT_W
    assert access(mem64, st, pool, segs, 0x7000, E.WRITE)[3] == 1            # dirty again: one more fault
    E.change(mem64, st, pool, 0x7000, 0x1000, E.EPT_R | E.EPT_X, False)      # read-only in software
    assert access(mem64, st, pool, segs, 0x7000, E.WRITE)[0] == E.DENIED


def test_execute_only_mapping_denies_reads():
    host, mem64, st, pool, segs = fresh(E.F_HW_AD | E.F_EXEC_ONLY)
    access(mem64, st, pool, segs, 0x8000, E.READ)
    E.change(mem64, st, pool, 0x8000, 0x1000, E.EPT_X, False)
    assert access(mem64, st, pool, segs, 0x8000, E.FETCH)[0] == E.HANDLED
    status, hpa, rwx, faults, qual = access(mem64, st, pool, segs, 0x8000, E.READ)
    assert status == E.DENIED and qual == E.EPT_X                             # the qualification's R/W/X


def test_pmap_refuses_exec_only_without_support_and_write_without_read():
    hv = Hypervisor(host_mem_mb=64, tunables={"hw.vmm.ept.use_exec_only": 0})
    vm = hv.create_vm("x", mem_mb=4)
    vm.memory_access.write(0x1000, b"\x90")
    with pytest.raises(ConfigError, match="execute-only"):
        vm.protect(0x1000, 0x1000, "x")
    with pytest.raises(ConfigError, match="misconfiguration"):
        vm.protect(0x1000, 0x1000, "w")
    assert vm.protect(0x1000, 0x1000, "rx") == 1


def test_host_holds_respect_the_cap_and_vm_creation_checks_it():
    hv = Hypervisor(host_mem_mb=64)
    vm = hv.create_vm("capped", mem_mb=8, mem_cap_mb=1)
    vm.memory_access.write(0, bytes(1 << 20))
    with pytest.raises(MemoryCapError, match="cap of 1 MiB"):
        vm.memory_access.write(1 << 20, b"x")
    with pytest.raises(ConfigError, match="memory cap"):
        hv.create_vm("bad", mem_mb=8, mem_cap_mb=9)


def test_eptp_as_bhyve_builds_it():
    assert E.eptp(0x123000, True) == 0x123000 | 3 << 3 | 6 | 1 << 6
    assert E.eptp(0x123000, False) == 0x12301E


def copied_twin(host, mem64, st, size):
    """Plain Python (explain.ept_walk, the host's view) for resident and gather: every guest page with a leaf
    holding a page — present, emulated-A/D valid, or protected to no access — its bits and its bytes."""
    from engine.mmu import explain
    found = {}
    for page in range(size >> 12):
        steps, hpa, rwx, why = explain.ept_walk(mem64, st, page << 12)
        e = steps[-1]["entry"] if steps else 0
        leaf_level = steps[-1]["level"] if steps else 0
        if hpa is None and not (e & (E.ADDR | E.EMUL_V) and (leaf_level == 1 or e & E.EPT_PS)):
            continue
        size_at = 1 << (12 + 9 * (leaf_level - 1))
        at = (e & E.ADDR & ~(size_at - 1)) | ((page << 12) & (size_at - 1))
        found[page] = (e & ~(E.ADDR | E.EPT_PS), bytes(host[at:at + 0x1000]))
    return found


@pytest.mark.parametrize("flags", [E.F_HW_AD | E.F_SUPERPAGES, 0], ids=["superpages", "emulated-ad"])
def test_resident_and_gather_match_their_python_twin(flags):
    host, mem64, st, pool, segs = fresh(flags)
    for page in range(512):                                  # a full region: promoted where superpages are on
        access(mem64, st, pool, segs, 0x200000 + page * 0x1000, E.WRITE)
    for gpa in (0x3000, 0x5000, 0x1FF000):
        access(mem64, st, pool, segs, gpa, E.READ)
    host[SEG + 0x3000:SEG + 0x3008] = 7
    host[SEG + 0x2FF000:SEG + 0x2FF010] = 9
    E.change(mem64, st, pool, 0x5000, 0x1000, 0, False)      # protected to no access: still holds its page
    twin = copied_twin(host, mem64, st, 4 << 20)
    out = np.zeros(1024, np.uint64)
    n = E.resident(mem64, st, 0, 4 << 20, out)
    assert sorted(out[:n].tolist()) == sorted(twin) and n == 515
    pages = out[:n].copy()
    bits, data = np.zeros(n, np.uint64), np.zeros((n, 0x1000), np.uint8)
    assert E.gather(host, mem64, st, pages, bits, data) == n
    for i, page in enumerate(pages.tolist()):
        assert (int(bits[i]), data[i].tobytes()) == twin[page], hex(page)
    assert E.resident(mem64, st, 0, 4 << 20, np.zeros(3, np.uint64)) == n    # counts past a small `out`
