"""bhyvectl's capabilities are bits of each vCPU's VMCS controls, changed live, and the engine obeys them: HLT
exits only with HLT exiting, the monitor trap flag exits after every instruction while it is set."""
import time

import pytest

from engine import stats as S
from engine.cpu import profiles as P
from engine.door.vcpu_view import VcpuView
from engine.errors import StateError
from engine.vmx import controls as K
from engine.vmx import exits as E
from tests.engine.conftest import assemble
from tests.engine.test_halt_resume import GUEST as HALTER
from tests.engine.test_halt_resume import counts, interrupt_and_wait

COUNTER = 0x300000
SPINNER = """
    mov rbx, 0x300000
1:  inc qword ptr [rbx]
    jmp 1b
"""


def load(hv, tmp_path, src, name):
    vm = hv.create_vm(name, mem_mb=16)
    vm.load(assemble(src, tmp_path), "g.bin", kind="flat64")
    return vm


def until(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_a_new_vcpu_has_the_controls_vmx_vcpu_init_writes(hv, tmp_path):
    """vmx_vcpu_init's words for the haswell profile, plus what bhyve's userspace turns on for its vCPUs."""
    vm = load(hv, tmp_path, SPINNER, "fresh")
    caps = K.modinit(P.get("haswell").facts["vmx_msrs"])
    vcpu = vm.vcpus[0]
    v = vcpu.vmcs
    assert v["PIN_BASED_CTLS"] == caps.pinbased
    assert v["PRI_PROC_BASED_CTLS"] & ~K.PROCBASED_TSC_OFFSET == \
        caps.procbased | K.PROCBASED_HLT_EXITING | K.PROCBASED_PAUSE_EXITING
    assert v["SEC_PROC_BASED_CTLS"] == caps.procbased2 | K.PROCBASED2_UNRESTRICTED_GUEST
    assert (v["EXIT_CTLS"], v["CR0_MASK"], v["CR4_MASK"]) == (caps.exit, caps.cr0_mask, caps.cr4_mask)
    assert v["ENTRY_CTLS"] & ~K.VM_ENTRY_GUEST_LMA == caps.entry
    assert v["VIRTUAL_APIC"] == vcpu.lapic.hpa and v["VPID"] == vcpu.vpid != 0
    assert v["EXCEPTION_BITMAP"] == 1 << 18 and v["CR0_SHADOW"] == 0x60000010


def test_getcap_and_setcap_through_the_door_on_a_running_guest(hv, tmp_path):
    vm = load(hv, tmp_path, SPINNER, "caps")
    vm.start()
    view = VcpuView(vm.vcpus[0])
    got = view.bhyve_state()["capabilities"]
    assert {k: got[k] for k in K.CAPABILITIES} == {"hlt_exit": 1, "mtrap_exit": 0, "pause_exit": 1,
                                                    "unrestricted_guest": 1, "enable_invpcid": 0, "bpt_exit": 0}
    assert got["rdtscp"] is None
    assert view.set_capability("enable_invpcid", 1) == 1
    assert view.vmcs()["SEC_PROC_BASED_CTLS"] & K.PROCBASED2_ENABLE_INVPCID
    assert view.set_capability("pause_exit", 0) == 0
    assert not view.vmcs()["PRI_PROC_BASED_CTLS"] & K.PROCBASED_PAUSE_EXITING
    with pytest.raises(StateError, match="not available"):
        view.set_capability("rdpid", 1)


def test_without_hlt_exiting_a_hlt_halts_natively_and_no_exit_is_counted(hv, tmp_path):
    """The halter guest sleeps in HLT with interrupts on; each interrupt wakes it once. With hlt_exit cleared
    it still sleeps and wakes exactly as often, but VMEXIT_HLT never moves; set again, every HLT exits."""
    vm = load(hv, tmp_path, HALTER, "halter")
    vcpu = vm.vcpus[0]
    VcpuView(vcpu).set_capability("hlt_exit", 0)
    vm.start()
    assert vm.wait(states=("halted",), timeout=30) == "halted"
    for n in (1, 2, 3):
        interrupt_and_wait(vm, n)
    assert counts(vm) == (3, 3)
    assert vcpu.counters[S.VMEXIT_HLT] == 0
    VcpuView(vcpu).set_capability("hlt_exit", 1)
    interrupt_and_wait(vm, 4)
    assert counts(vm) == (4, 4)
    assert vcpu.counters[S.VMEXIT_HLT] >= 1
    assert E.HLT in [row["reason"] & 0xFFFF for row in VcpuView(vcpu).read("exit_log")["exit_log"]]


def guest_count(vm):
    return int.from_bytes(vm.memory_access.read(COUNTER, 8), "little")


def test_the_monitor_trap_flag_exits_after_every_instruction_while_it_is_set(hv, tmp_path):
    vm = load(hv, tmp_path, SPINNER, "mtf")
    vm.start()
    vcpu = vm.vcpus[0]
    view = VcpuView(vcpu)
    until(lambda: guest_count(vm) > 1000, "the guest counts")
    assert vcpu.counters[S.VMEXIT_MTRAP] == 0
    assert view.set_capability("mtrap_exit", 1) == 1
    until(lambda: vcpu.counters[S.VMEXIT_MTRAP] >= 300, "MTF exits")
    log = view.read("exit_log")["exit_log"]
    mtf = [row for row in log if row["reason"] == E.MTF]
    assert len(mtf) >= 8 and len({row["rip"] for row in mtf}) >= 2     # inc and jmp, one exit each
    start = guest_count(vm)
    until(lambda: guest_count(vm) >= start + 20, "the guest counts on under MTF")
    # two instructions per iteration (inc, jmp): each one exit
    assert view.set_capability("mtrap_exit", 0) == 0
    stopped = vcpu.counters[S.VMEXIT_MTRAP]
    start = guest_count(vm)
    until(lambda: guest_count(vm) > start + 100000, "the guest counts at full speed again")
    assert vcpu.counters[S.VMEXIT_MTRAP] == stopped


PAUSER = """
    mov ecx, 100
1:  pause
    .byte 0x66, 0xF3, 0x90          # a PAUSE with an operand-size prefix: 3 bytes
    cmp eax, eax
    .byte 0x75, 0xF4                # JNE -12, not taken: an F4 byte right before the next PAUSE
    pause
    dec ecx
    jnz 1b
    mov r8, 1
    cli
    hlt
"""


def pause_exits(vm):
    return [row for row in vm.vcpus[0].exit_log() if row["reason"] == E.PAUSE]


def test_with_pause_exiting_every_pause_exits(hv, tmp_path):
    """SDM 25.1.3: with "PAUSE exiting" set every PAUSE exits (40), its length counting its prefixes, RIP on it,
    whether or not the host CPU is shared; the guest goes on after each (bhyve's VM_EXITCODE_PAUSE continues), and
    an F4 byte before a PAUSE is not taken for a HLT. With pause_exit cleared, none exits."""
    vm = load(hv, tmp_path, PAUSER, "pauser")
    vm.start()
    assert vm.wait(states=("suspended",), timeout=60) == "suspended"
    assert vm.suspend_reason == "halt" and vm.registers()["r8"] == 1
    counters = vm.vcpus[0].counters
    assert counters[S.VMEXIT_PAUSE] == 300 and counters[S.VMEXIT_HLT] == 1
    rows = pause_exits(vm)[-3:]
    assert [row["length"] for row in rows] == [2, 3, 2]
    assert rows[1]["rip"] == rows[0]["rip"] + 2 and rows[2]["rip"] == rows[1]["rip"] + 3 + 2 + 2
    quiet = load(hv, tmp_path, PAUSER, "quiet")
    VcpuView(quiet.vcpus[0]).set_capability("pause_exit", 0)
    quiet.start()
    assert quiet.wait(states=("suspended",), timeout=60) == "suspended"
    assert quiet.registers()["r8"] == 1 and quiet.vcpus[0].counters[S.VMEXIT_PAUSE] == 0 and not pause_exits(quiet)
