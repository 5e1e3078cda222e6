"""VPIDs allocated as bhyve's vpid_alloc does (sys/amd64/vmm/intel/vmx.c): unique across every VM of the host,
from hw.vmm.maxcpu + 1 up; vcpuid + 1 once the 0xffff - maxcpu unique ones are used up (counted in
hw.vmm.vmx.vpid_alloc_failed); given back when the VM is destroyed."""
import pytest

from engine import Hypervisor
from engine.vmx.vpid import VPID_MAX, VpidPool, vpid_alloc, vpid_free
from tests.engine.conftest import assemble, stopped


def vpids(vm):
    return [v.vpid for v in vm.vcpus]


@pytest.fixture
def host():
    hv = Hypervisor(host_mem_mb=256)
    yield hv
    for vm in list(hv.vms.values()):
        vm.poweroff()


def test_every_vcpu_of_every_vm_has_its_own(host):
    """maxcpu is 16: the unique VPIDs start at 17 (1-16 are the overflow namespace, 0 the host's)."""
    a = host.create_vm("a", cpus=2)
    b = host.create_vm("b", cpus=3)
    assert vpids(a) == [17, 18] and vpids(b) == [19, 20, 21]
    assert [int(v.vmcs["VPID"]) for v in a.vcpus + b.vcpus] == [17, 18, 19, 20, 21]


def test_destroy_gives_them_back_and_the_lowest_is_taken_next(host):
    host.create_vm("a", cpus=2)
    host.create_vm("b", cpus=1)
    host.destroy_vm("a")
    assert vpids(host.create_vm("c", cpus=3)) == [17, 18, 20]


def test_an_exhausted_pool_falls_back_to_vcpuid_plus_one(host):
    """With no unique VPID left, vpid_alloc returns vcpuid + 1 and counts the failure; those VPIDs are not the
    allocator's, so destroying the VM frees nothing."""
    pool = host.vpids
    taken = []
    while pool.available():
        taken.append(pool.alloc())
    assert len(taken) == VPID_MAX - 16 and taken[-1] == VPID_MAX
    vm = host.create_vm("late", cpus=2)
    assert vpids(vm) == [1, 2] and pool.alloc_failed == 2
    host.destroy_vm("late")
    assert pool.available() == 0
    pool.free(40)
    assert vpids(host.create_vm("next", cpus=2)) == [40, 2] and pool.alloc_failed == 3


def test_reset_allocates_again(host, tmp_path):
    vm = host.create_vm("r", cpus=1)
    vm.load(assemble("cli\nhlt", tmp_path), "g.bin", kind="flat64")
    vm.start()
    stopped(vm, 30)
    before = vpids(vm)
    vm.reset()
    stopped(vm, 30)
    assert vpids(vm) == before and host.vpids.available() == VPID_MAX - 16 - 1


def test_the_tlb_model_tags_a_guests_translations_with_its_vpid(host, tmp_path):
    host.create_vm("first", cpus=1)
    vm = host.create_vm("g", mem_mb=16)
    vm.load(assemble("mov rax, 0x400000\nmov rbx, [rax]\ncli\nhlt", tmp_path), "g.bin", kind="flat64")
    vm.start()
    stopped(vm, 30)
    tlb = vm.vcpus[0].visit(lambda v: v.read_tlb())
    assert tlb["vpid"] == 18 and tlb["entries"] > 0 and {e["vpid"] for e in tlb["contents"]} == {18}


def test_the_pool_is_unr():
    """alloc_unr: lowest free first, -1 when empty; free_unr of a number not allocated is refused; vpid_free leaves
    the overflow namespace [0, maxcpu] alone."""
    pool = VpidPool(5, 8)
    assert [pool.alloc() for _ in range(5)] == [5, 6, 7, 8, -1]
    vpid_free(pool, 6, 4)
    vpid_free(pool, 3, 4)                      # overflow VPID: nothing to give back
    assert pool.alloc() == 6 and vpid_alloc(pool, 2) == 3 and pool.alloc_failed == 1
    with pytest.raises(ValueError):
        pool.free(3)
    with pytest.raises(ValueError):
        vpid_free(pool, 0x10000, 4)
