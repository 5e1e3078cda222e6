"""The modeled CPUs as the guest sees them: CPUID.7.0:EDX and IA32_ARCH_CAPABILITIES, chosen at VM creation."""
import pytest

from engine import TunableError
from engine.cpu import profiles as P
from tests.engine.conftest import assemble

# Reads CPUID.7.0 into r8..r11, then IA32_ARCH_CAPABILITIES into r12 (a #GP without an IDT triple-faults).
PROBE = """
    mov eax, 7
    xor ecx, ecx
    cpuid
    mov r8, rdx
    mov r9, 0x1111
    mov ecx, 0x10a
    rdmsr
    shl rdx, 32
    or rax, rdx
    mov r12, rax
    mov r9, 0x2222
    cli
    hlt
"""


def boot(hv, tmp_path, profile):
    vm = hv.create_vm(profile, profile=profile)
    vm.load(assemble(PROBE, tmp_path), "probe.bin", kind="flat64")
    vm.start()
    vm.wait(states=("suspended",), timeout=30)
    return vm


@pytest.mark.parametrize("profile, flush_msr, caps", [
    ("skylake", True, 0),
    ("cascadelake", True, P.ARCH_CAP_RDCL_NO | P.ARCH_CAP_IBRS_ALL | P.ARCH_CAP_SKIP_L1DFL_VMENTRY),
])
def test_guest_reads_the_mitigation_bits(hv, tmp_path, profile, flush_msr, caps):
    """CPUID.7.0:EDX[28] (L1D_FLUSH) and [29] (ARCH_CAPABILITIES), and MSR 0x10A's value, per profile."""
    vm = boot(hv, tmp_path, profile)
    regs = vm.registers()
    assert vm.suspend_reason == "halt" and regs["r9"] == 0x2222
    assert bool(regs["r8"] >> 28 & 1) == flush_msr and regs["r8"] >> 29 & 1
    assert regs["r12"] == caps


def test_haswell_has_neither_flush_msr_nor_arch_capabilities(hv, tmp_path):
    """Haswell: EDX[28] clear, and RDMSR 0x10A raises #GP (here a triple fault: the probe has no IDT)."""
    vm = boot(hv, tmp_path, "haswell")
    regs = vm.registers()
    assert regs["r8"] >> 28 & 3 == 0 and regs["r9"] == 0x1111
    assert vm.suspend_reason == "triplefault"


def test_profiles_table():
    """Vulnerable without the MSR, vulnerable with it, and not vulnerable; an unknown name is refused."""
    assert not P.get("haswell").has_flush_cmd and P.get("haswell").l1tf_vulnerable
    assert P.get("skylake").has_flush_cmd and P.get("skylake").l1tf_vulnerable
    assert not P.get("cascadelake").l1tf_vulnerable
    assert P.get("cascadelake").arch_capabilities & P.ARCH_CAP_SKIP_L1DFL_VMENTRY
    with pytest.raises(Exception, match="unknown CPU profile 'k6'.*cascadelake"):
        P.get("k6")


def test_flush_tunables_aliases_and_auto(hv):
    """bhyve's newer hw.vmm.vmx.* names reach the same values; 'auto' (not set) is -1; out-of-range is refused."""
    t = hv.tunables
    assert t.get("hw.vmm.l1d_flush") == -1 and t.get("hw.vmm.l1d_flush_sw") == -1
    t.set("hw.vmm.vmx.l1d_flush", "0")
    assert t.get("hw.vmm.l1d_flush") == 0
    t.set("hw.vmm.l1d_flush", "auto")
    assert t.get("hw.vmm.vmx.l1d_flush") == -1
    t.set("hw.vmm.vmx.l1d_flush_sw", "on")
    assert t.get("hw.vmm.l1d_flush_sw") == 1
    with pytest.raises(TunableError, match="outside -1..1"):
        t.set("hw.vmm.l1d_flush", "2")
    t.set("hw.vmm.l1d_flush_sw", "unset")
    assert t.get("hw.vmm.l1d_flush_sw") == -1
    with pytest.raises(TunableError):
        t.set("hw.vmm.l1d_flush_sw", "2")


@pytest.mark.parametrize("profile, flush, method", [
    ("haswell", True, "software"), ("skylake", True, "msr"), ("cascadelake", False, "msr")])
def test_default_flush_follows_the_cpu(hv, profile, flush, method):
    """bhyve's defaults: on unless SKIP_L1DFL_VMENTRY; the MSR when CPUID.7.0:EDX[28], else software."""
    assert hv.l1d.effective(P.get(profile)) == (flush, method)
