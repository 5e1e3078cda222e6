"""The tables users read: VMCS fields, exit qualifications, stats, tunables, CPUID; and refusals."""
import random

import pytest

from engine import ConfigError, ImageError, TunableError, stats, tunables
from engine.core import vmcs
from engine.cpu import profiles
from engine.vmx import exits, hooks


def test_vmcs_fields_by_name_and_encoding():
    """Fields from bhyve's vmcs.h by name or SDM encoding, with width and group from the encoding."""
    for name, enc in (("GUEST_RIP", 0x681E), ("EXIT_REASON", 0x4402), ("EPTP", 0x201A), ("VPID", 0),
                      ("GUEST_INTERRUPTIBILITY", 0x4824), ("ENTRY_MSR_LOAD", 0x200A), ("HOST_RIP", 0x6C16),
                      ("GUEST_LINEAR_ADDRESS", 0x640A), ("PIR_DESC", 0x2016), ("GUEST_IA32_EFER", 0x2806)):
        assert vmcs.field(name).encoding == enc and vmcs.field(enc).name == name
    assert vmcs.field(0x80004402).name == "EXIT_REASON"           # VMCS_IDENT
    assert vmcs.field("EXIT_REASON").group == "exit information" and vmcs.field("EXIT_REASON").width == 32
    assert vmcs.field("GUEST_CS_SELECTOR").width == 16 and vmcs.field("EPTP").width == 64
    v = vmcs.Vmcs()
    v["GUEST_CS_SELECTOR"] = 0x12345
    assert v[0x0802] == 0x2345
    with pytest.raises(KeyError):
        vmcs.field("NO_SUCH_FIELD")


def test_io_qualification_kernel_matches_decoder():
    """The numba encoder and the Python decoder agree on random I/O exits (SDM Table 28-5)."""
    rng = random.Random(1)
    for _ in range(500):
        want = dict(port=rng.randrange(65536), size=rng.choice([1, 2, 4]), string=rng.random() < .5,
                    rep=rng.random() < .5, immediate=rng.random() < .5, **{"in": rng.random() < .5})
        q = exits.io_qualification(want["port"], want["size"], want["in"], want["string"], want["rep"], want["immediate"])
        assert exits.decode_io(int(q)) == want


def test_cpuid_kernel_matches_the_profile_table():
    """The in-kernel CPUID emulation answers from the profile, with the vCPU's APIC ID in leaf 1 and OSXSAVE
    (CPUID.1:ECX[27]) as CR4.OSXSAVE says."""
    p = profiles.get("haswell")
    table = p.cpuid_table().reshape(-1)
    for (leaf, sub), regs in p.cpuid.items():
        for cr4 in (0, profiles.CR4_OSXSAVE):
            got = hooks.emulate_cpuid(table, len(p.cpuid), leaf, 0 if sub == profiles.ANY else sub, 3, 1, cr4)
            want = list(regs)
            if leaf == 1:
                want[1] = (want[1] & 0x00FFFFFF) | 3 << 24
                want[2] |= profiles.CPUID1_ECX_OSXSAVE if cr4 else 0
            assert [int(x) for x in got] == want
    highest = list(p.cpuid[(0x16, profiles.ANY)])   # beyond the basic leaves: the highest one (SDM vol. 2A CPUID)
    assert [int(x) for x in hooks.emulate_cpuid(table, len(p.cpuid), 0x12345678, 0, 0, 1, 0)] == highest


def test_stats_print_like_bhyvectl():
    """--get-stats: a vcpuN header and bhyve's descriptions, arrays as desc[i]."""
    c = stats.new_counters()
    c[stats.VMEXIT_HLT] = 7
    text = stats.format_stats(1, c)
    assert text.splitlines()[0] == "vcpu1 stats:"
    assert "%-40s\t7" % "number of times hlt was intercepted" in text
    assert "lvts triggered[6]" in text and "Number of vpid invalidations saved" in text


def test_tunables_validate_and_describe():
    """hw.vmm.* tunables: defaults, boot-only flags, bad values refused with the range named."""
    t = tunables.Tunables()
    assert t.get("hw.vmm.halt_detection") == 1
    t.set("hw.vmm.halt_detection", "0")
    assert t.get("hw.vmm.halt_detection") == 0
    with pytest.raises(TunableError, match="outside 0..1"):
        t.set("hw.vmm.halt_detection", "5")
    with pytest.raises(TunableError, match="not a"):
        t.set("hw.vmm.maxcpu", "many")
    with pytest.raises(TunableError, match="unknown tunable"):
        t.set("hw.vmm.nope", 1)
    rows = {r["name"]: r for r in t.describe()}
    assert rows["hw.vmm.halt_detection"]["boot_only"] and rows["hw.vmm.halt_detection"]["default"] == 1
    assert (rows["hw.vmm.l1d_flush"]["minimum"], rows["hw.vmm.l1d_flush"]["maximum"]) == (-1, 1)    # the page's choices


def test_bad_images_and_memory_requests_are_refused(hv):
    """Bad images name the file and problem; memory the host cannot give is refused; other VMs unaffected."""
    vm = hv.create_vm("v", mem_mb=16)
    with pytest.raises(ImageError, match="junk.bin.*0x55AA|junk.bin.*multiboot"):
        vm.load(b"\x00" * 1024, "junk.bin")
    with pytest.raises(ImageError, match="short.img"):
        vm.load(b"\x00" * 100, "short.img")
    with pytest.raises(ConfigError, match="cannot give"):
        hv.create_vm("huge", mem_mb=100000)
    with pytest.raises(ConfigError, match="models at most"):
        hv.create_vm("many", cpus=1000)
    with pytest.raises(ConfigError, match="hw.vmm.maxcpu allows"):
        hv.create_vm("many", cpus=17)
    assert vm.state == "idle" and "huge" not in hv.vms
