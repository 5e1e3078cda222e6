"""The guest-state checks of VM entry (SDM 26.3.1) pass before every entry of the bundled guests, in real,
protected and long mode, at ring 0 and ring 3; a broken state fails the entry with exit reason 33, bit 31 set."""
import pytest

from engine import Hypervisor
from engine.cpu import profiles as P
from engine.vmx import entrycheck, segcache
from tests.engine.conftest import assemble, guest, stopped, wait_for

MSRS = P.get("haswell").facts["vmx_msrs"]
CHECKED = {"hw.vmm.vmx.check_guest_state": 1}


@pytest.fixture
def hv():
    hypervisor = Hypervisor(host_mem_mb=512, tunables=CHECKED)
    yield hypervisor
    for vm in list(hypervisor.vms.values()):
        vm.poweroff()


def no_entry_failure(vm):
    assert "VM-entry failure" not in (vm.suspend_message or ""), vm.suspend_message
    for vcpu in vm.vcpus:
        assert not vcpu.vmcs["EXIT_REASON"] & entrycheck.ENTRY_FAILURE


@pytest.mark.parametrize("name, cmdline, expect", [
    ("hello.elf", "", "Hello from webhyve!"),                   # multiboot: 32-bit protected mode
    ("longmode.elf", "", "long mode ok"),                        # switches to long mode itself
    ("usermode.elf", "syscalls=200 rounds=2 pages=8", "usermode"),   # ring 3, SYSCALL, page faults
    ("smp.elf", "work=20000", "smp"),                            # APs from INIT-SIPI-SIPI: real mode first
])
def test_the_bundled_guests_pass_every_entry_check(hv, name, cmdline, expect):
    vm = hv.create_vm(name.split(".")[0], mem_mb=32, cpus=2 if name == "smp.elf" else 1)
    vm.load(guest(name), name, cmdline=cmdline)
    vm.start()
    stopped(vm, 120)
    no_entry_failure(vm)
    assert vm.suspend_reason == "halt", vm.suspend_message
    assert expect in vm.console.contents().decode(errors="replace")


def test_a_real_mode_boot_sector_passes_every_entry_check(hv):
    vm = hv.create_vm("b", mem_mb=16)
    vm.load(guest("bootsec.img"), "bootsec.img")
    vm.start()
    wait_for(vm, b"press a key")
    vcpu = vm.vcpus[0]
    state = vcpu.visit(lambda v: v.read_vmcs(sync=True))
    # QEMU's real-mode CS is a read/write data type (3), which VM entry accepts with unrestricted guest
    assert state["GUEST_CS_ACCESS_RIGHTS"] & 0x9F in (0x93, 0x9B) and state["GUEST_CS_LIMIT"] == 0xFFFF
    assert state["GUEST_CS_BASE"] == state["GUEST_CS_SELECTOR"] << 4
    assert entrycheck.violations(state, MSRS) == []
    vm.console.send_input(b"q")
    stopped(vm, 30)
    no_entry_failure(vm)


SPIN = "1: jmp 1b\n"


def flat(hv, tmp_path, name="flat"):
    vm = hv.create_vm(name, mem_mb=16)
    vm.load(assemble(SPIN, tmp_path), "g.bin", kind="flat64")
    return vm


def test_segment_caches_land_in_the_vmcs_as_access_rights(hv, tmp_path):
    """A flat 64-bit guest: CS is a long-mode code segment (type 11, S, P, L), TR a busy TSS, the VMCS says so."""
    vm = flat(hv, tmp_path)
    state = vm.vcpus[0].read_vmcs(sync=True)
    cs = state["GUEST_CS_ACCESS_RIGHTS"]
    assert cs & 0x9F == 0x9B and cs & 1 << 13 and not cs & 1 << 16
    assert state["GUEST_TR_ACCESS_RIGHTS"] & 0x9F == 0x8B
    assert state["ENTRY_CTLS"] & 1 << 9                        # IA-32e mode guest, saved from EFER.LMA
    assert state["GUEST_CR0"] & 0x20 and state["GUEST_CR4"] & 0x2000    # NE and VMXE, fixed to 1 under VMX
    assert entrycheck.violations(state, MSRS) == []


@pytest.mark.parametrize("field, value, rule", [
    ("GUEST_CS_ACCESS_RIGHTS", 0x2091, "CS type"),               # a read-only data segment in CS
    ("GUEST_CR0", 0x80000020, "CR0.PG is set without CR0.PE"),
    ("GUEST_RFLAGS", 0x0, "RFLAGS"),                              # bit 1 must be 1
    ("GUEST_TR_ACCESS_RIGHTS", 0x10000, "TR is unusable"),
    ("GUEST_GDTR_LIMIT", 0x10000, "GDTR limit"),
    ("GUEST_ACTIVITY", 5, "activity state"),
    ("GUEST_IA32_EFER", 0x100, "LMA differs"),
])
def test_each_broken_rule_is_named(hv, tmp_path, field, value, rule):
    state = flat(hv, tmp_path).vcpus[0].read_vmcs(sync=True)
    state[field] = value
    assert any(rule in v for v in entrycheck.violations(state, MSRS))


def test_an_entry_into_a_broken_state_fails_with_reason_33(hv, tmp_path):
    """CS loaded with a data segment's cache: the entry fails, the guest never runs, the VM says why."""
    vm = flat(hv, tmp_path, "broken")
    uc = vm.vcpus[0].uc
    sel, base, limit, flags = segcache.caches(uc)[segcache.CS]
    segcache.load(uc, [(segcache.CS, sel, base, limit, (flags & ~0xF00) | 0x100)])     # type 1: data, read-only
    vm.start()
    stopped(vm, 30)
    assert "VM-entry failure due to invalid guest state" in vm.suspend_message and "CS type" in vm.suspend_message
    assert vm.vcpus[0].vmcs["EXIT_REASON"] == entrycheck.ENTRY_FAILURE | 33
