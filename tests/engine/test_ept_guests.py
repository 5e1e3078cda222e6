"""EPT and the TLB model seen from running guests: first touch, stale mappings, one INVEPT for many vCPUs."""
import time

import numpy as np

from engine import stats as S
from engine.mmu import ept as E
from engine.core import ctx as C
from engine.vmx import exits as X

from tests.engine.conftest import assemble

DATA, OUT = 0x400000, 0x401000


def qword(vm, gpa):
    return int.from_bytes(vm.memory_access.read(gpa, 8), "little")


def until(predicate, timeout=20):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_first_touch_faults_match_pages_touched_and_superpages_appear(flat64):
    """Touching 3 MiB from 4 MiB up: one nested fault per new page, the 2 MiB region at 4 MiB promoted."""
    vm = flat64("""
        mov rdi, 0x400000
        mov rcx, 768
    1:  mov qword ptr [rdi], rcx
        add rdi, 4096
        loop 1b
        cli
        hlt
    """, mem_mb=16)
    assert vm.suspend_reason == "halt"
    stats = vm.stats()
    touched = vm.pmap.stats()
    region = [m for m in vm.memmap() if m["name"] == "lowmem"][0]
    assert touched["superpages"] >= 1 and touched["promotions"] >= 1
    chain = vm.gpa_pmap(0x4A0000)
    assert chain[-1]["level"] == 2 and "PS" in chain[-1]["flags"] and "D" in chain[-1]["flags"]
    assert stats[S.EPT_FIRST_TOUCH] >= 768
    assert stats[S.VMEXIT_NESTED_FAULT] >= stats[S.EPT_FIRST_TOUCH]
    assert region["populated"] == touched["resident_pages"] and stats[S.VMM_MEM_RESIDENT] == region["populated"] * 4096
    assert vm.vcpus[0].vmcs["EXIT_REASON"] in (X.HLT,)


def test_memory_cap_suspends_the_guest_with_a_message(hv, tmp_path):
    vm = hv.create_vm("capped", mem_mb=16, mem_cap_mb=3)
    vm.load(assemble("""
        mov rdi, 0x400000
    1:  mov byte ptr [rdi], 1
        add rdi, 4096
        jmp 1b
    """, tmp_path), "g.bin", kind="flat64")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=20) == "suspended"
    assert vm.suspend_reason == "ept_violation" and "memory cap of 3 MiB" in vm.suspend_message
    assert vm.vcpus[0].vmcs["EXIT_REASON"] == X.EPT_VIOLATION
    assert vm.vcpus[0].vmcs["GUEST_PHYSICAL_ADDRESS"] >= 0x400000


GUEST_INVLPG = """
    mov rax, cr3
    movabs rdx, 0x000FFFFFFFFFF000
    and rax, rdx
    mov rax, [rax]
    and rax, rdx
    mov rax, [rax]
    and rax, rdx                      # the PD
    mov qword ptr [0x500000], 0x800003      # a page table: 0x600000 -> 0x800000
    mov qword ptr [rax + 24], 0x500003      # PD[3] (0x600000-0x7FFFFF) uses it
    mov rbx, cr3
    mov cr3, rbx
    mov qword ptr [0x800000], 0xAAAA
    mov qword ptr [0x801000], 0xBBBB
    mov rcx, [0x600000]
    mov [0x402000], rcx               # through the new table: 0xAAAA
    mov qword ptr [0x500000], 0x801003      # remap without telling the TLB
    mov rcx, [0x600000]
    mov [0x402008], rcx               # the TLB still says 0x800000: 0xAAAA
    invlpg [0x600000]
    mov rcx, [0x600000]
    mov [0x402010], rcx               # now 0xBBBB
    cli
    hlt
"""


def test_guest_tlb_keeps_a_stale_translation_until_invlpg(flat64):
    vm = flat64(GUEST_INVLPG, mem_mb=16)
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert [qword(vm, 0x402000 + 8 * i) for i in range(3)] == [0xAAAA, 0xAAAA, 0xBBBB]
    info = vm.vcpus[0].tlb_info()
    assert info["guest_flushes"] >= 2 and info["hits"] > 0 and info["walks"] > 0


SPIN_READER = """
1:  mov rax, [0x400000]
    mov [0x401000], rax
    pause
    jmp 1b
"""


def start_readers(hv, tmp_path, n, pin_to):
    vm = hv.create_vm("readers", mem_mb=16, cpus=n)
    vm.load(assemble(SPIN_READER, tmp_path), "g.bin", kind="flat64")
    vm.memory_access.write(DATA, (0x1111).to_bytes(8, "little"))
    for vcpu in vm.vcpus:
        vcpu.pin(pin_to)
    vm.start(all_vcpus=True)
    until(lambda: qword(vm, OUT) == 0x1111)
    # every vCPU has read the word: its TLB holds the translation the test then makes stale
    until(lambda: all(any(e["linear"] == DATA for e in v.tlb_info()["contents"]) for v in vm.vcpus))
    return vm


def totals(vm, stat):
    return sum(int(v.counters[stat]) for v in vm.vcpus)


def test_one_invept_serves_every_vcpu_sharing_a_host_cpu(hv, tmp_path):
    """bhyve keeps eptgen per host CPU in struct vmx: after a mapping change, 4 vCPUs on one host CPU cost
    one INVEPT, and 3 are saved; the guest then reads the new page."""
    vm = start_readers(hv, tmp_path, 4, pin_to=0)
    until(lambda: all(v.ctx[C.ENTRIES] > 1 for v in vm.vcpus))
    before, saved_before = totals(vm, S.VCPU_INVEPT), totals(vm, S.VCPU_INVEPT_SAVED)
    vm.replace_page(DATA, (0x2222).to_bytes(8, "little"))
    gen = int(vm.pmap.st[E.S_GEN])
    until(lambda: qword(vm, OUT) == 0x2222)
    until(lambda: all(int(v.ctx[C.VCPU_EPTGEN]) == gen for v in vm.vcpus))
    assert totals(vm, S.VCPU_INVEPT) - before == 1
    assert totals(vm, S.VCPU_INVEPT_SAVED) - saved_before == 3
    assert {v.hostcpu.index for v in vm.vcpus} == {0}
    vm.poweroff()


def test_a_skipped_invalidation_leaves_the_guest_on_the_stale_page(hv, tmp_path):
    """With hw.vmm.ept.skip_invalidation the EPT points at the new page but every vCPU keeps reading the
    old one through its TLB; the proper invalidation afterwards fixes it."""
    vm = start_readers(hv, tmp_path, 2, pin_to=1)
    hv.tunables.set("hw.vmm.ept.skip_invalidation", 1)
    new_page = vm.replace_page(DATA, (0x3333).to_bytes(8, "little"))
    assert vm.pmap.lookup(DATA) == new_page and qword(vm, DATA) == 0x3333
    entries = [v.ctx[C.ENTRIES] for v in vm.vcpus]
    until(lambda: all(v.ctx[C.ENTRIES] > e + 3 for v, e in zip(vm.vcpus, entries)))   # timeslices went by
    assert qword(vm, OUT) == 0x1111
    assert "invalidation was skipped" in vm.events[-1]
    hv.tunables.set("hw.vmm.ept.skip_invalidation", 0)
    vm.pmap_invalidate_ept("test")
    until(lambda: qword(vm, OUT) == 0x3333)
    vm.poweroff()


def test_views_translate_a_linear_address_through_both_walks(flat64):
    vm = flat64(GUEST_INVLPG, mem_mb=16)
    vcpu = vm.vcpus[0]
    t = vcpu.translate(0x600123)
    assert t["gpa"] == 0x801123 and t["hpa"] == vm.pmap.lookup(0x801123)
    stages = [s["stage"] for s in t["steps"]]
    assert stages.count("guest") == 4 and "ept" in stages
    assert vcpu.translate(0x40000000 * 3)["fault"].startswith("guest #PF")
    assert vm.gpa_pmap(0x900000)[-1]["flags"] == "not present"


def test_a_write_the_ept_forbids_exits_with_the_full_qualification(hv, tmp_path):
    vm = hv.create_vm("ro", mem_mb=16)
    vm.load(assemble("""
        mov rax, [0x400000]
        mov qword ptr [0x400008], 5
        cli
        hlt
    """, tmp_path), "g.bin", kind="flat64")
    vm.memory_access.write(DATA, b"x")
    vm.protect(DATA, 0x1000, "r")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=20) == "suspended"
    assert "write access denied by EPT (entry allows 'r')" in vm.suspend_message
    v = vm.vcpus[0].vmcs
    q = X.decode_ept_violation(v["EXIT_QUALIFICATION"])
    assert (v["EXIT_REASON"], v["GUEST_PHYSICAL_ADDRESS"], v["GUEST_LINEAR_ADDRESS"]) == (X.EPT_VIOLATION, DATA + 8, DATA + 8)
    assert q == {"access": "write", "readable": True, "writable": False, "executable": False, "gla_valid": True,
                 "translation": True, "paging_structure": False}


def test_readers_guest_shows_the_invalidation_on_its_console(hv):
    """The bundled readers guest: four vCPUs on one host CPU; vCPU 0 prints what the shared word holds."""
    from tests.engine.conftest import guest, wait_for
    vm = hv.create_vm("readers4", mem_mb=16, cpus=4)
    vm.load(guest("readers.bin"), "readers.bin", kind="flat64")
    for vcpu in vm.vcpus:
        vcpu.pin(0)
    vm.memory_access.write(DATA, (0x1111).to_bytes(8, "little"))
    after = vm.console.reader(from_start=False)
    vm.start(all_vcpus=True)
    wait_for(vm, b"vcpu0 sees 0x0000000000001111", reader=after)
    until(lambda: all(qword(vm, OUT + 8 * i) == 0x1111 for i in range(4)))
    before = totals(vm, S.VCPU_INVEPT)
    vm.replace_page(DATA, (0x2222).to_bytes(8, "little"))
    wait_for(vm, b"vcpu0 sees 0x0000000000002222", reader=after)
    until(lambda: all(qword(vm, OUT + 8 * i) == 0x2222 for i in range(4)))
    assert totals(vm, S.VCPU_INVEPT) - before == 1
    vm.poweroff()
