"""The hw.vmm.* tunables as bhyve names and reads them: the L1D flush's loader tunables and read-only sysctls
(vmx_modinit in sys/amd64/vmm/intel/vmx.c), and which tunables bhyve reads only at boot."""
import itertools

import numpy as np
import pytest

from engine import Hypervisor
from engine import tunables as T
from engine.cpu import l1d
from engine.cpu import profiles as P

# vmx_modinit, for each modeled CPU and loader setting (None: not set): (guest_l1d_flush, guest_l1d_flush_sw),
# what `sysctl hw.vmm.vmx.l1d_flush hw.vmm.vmx.l1d_flush_sw` prints on that host
VMX_MODINIT = [
    ("haswell", None, None, (1, 1)),        # no IA32_FLUSH_CMD: the software flush, by default
    ("haswell", 0, None, (0, 0)),
    ("haswell", None, 0, (1, 0)),           # sw read (no MSR), set to 0: the MSR-load list names IA32_FLUSH_CMD
    ("skylake", None, None, (1, 0)),        # IA32_FLUSH_CMD: the MSR-load list
    ("skylake", None, 1, (1, 0)),           # hw.vmm.l1d_flush_sw is not read when the MSR exists
    ("skylake", 0, 1, (0, 0)),
    ("cascadelake", None, None, (0, 0)),    # SKIP_L1DFL_VMENTRY: no flush by default
    ("cascadelake", 1, None, (1, 0)),
    ("cascadelake", 1, 1, (1, 0)),
]


def cpu(name):
    p = P.get(name)
    return p.has_flush_cmd, bool(p.arch_capabilities & P.ARCH_CAP_SKIP_L1DFL_VMENTRY)


@pytest.mark.parametrize("profile,flush,sw,want", VMX_MODINIT)
def test_effective_values_follow_vmx_modinit(profile, flush, sw, want):
    unset = lambda v: T.AUTO if v is None else v
    assert T.effective_l1d(unset(flush), unset(sw), *cpu(profile)) == want
    hv = Hypervisor(host_mem_mb=64, tunables={k: v for k, v in (("hw.vmm.l1d_flush", flush),
                                                                ("hw.vmm.vmx.l1d_flush_sw", sw)) if v is not None})
    assert hv.tunables.effective_l1d(*cpu(profile)) == want
    assert hv.l1d.effective(P.get(profile)) == (bool(want[0]), "software" if want[1] else "msr")


def test_kernel_decision_is_the_twins():
    """l1d.flush_wanted (numba, read at every VM entry) against tunables.effective_l1d over every setting and
    CPU: the kernel flushes when guest_l1d_flush is 1, by software when guest_l1d_flush_sw is 1."""
    for flush, sw, cmd, skip in itertools.product((T.AUTO, 0, 1), (T.AUTO, 0, 1), (False, True), (False, True)):
        params = np.zeros(T.COUNT, np.int64)
        params[T.L1D_FLUSH], params[T.L1D_FLUSH_SW] = flush, sw
        got = l1d.flush_wanted(params.astype(np.uint64), np.uint64(l1d.CPUF_FLUSH_CMD if cmd else 0),
                               np.uint64(P.ARCH_CAP_SKIP_L1DFL_VMENTRY if skip else 0))
        assert tuple(int(x) for x in got) == T.effective_l1d(flush, sw, cmd, skip), (flush, sw, cmd, skip)


def test_read_only_sysctls_show_the_effective_values():
    """hw.vmm.vmx.l1d_flush and hw.vmm.vmx.l1d_flush_sw read 0 or 1, never -1, on the modeled host (haswell);
    writing either name sets the loader tunable behind it (webhyve's live change)."""
    hv = Hypervisor(host_mem_mb=64)
    rows = {r["name"]: r for r in hv.tunables.describe()}
    assert rows["hw.vmm.vmx.l1d_flush"]["value"] == 1 and rows["hw.vmm.vmx.l1d_flush_sw"]["value"] == 1
    assert rows["hw.vmm.vmx.l1d_flush"]["read_only"] and rows["hw.vmm.vmx.l1d_flush"]["set_by"] == "hw.vmm.l1d_flush"
    assert rows["hw.vmm.l1d_flush"]["value"] == -1 and not rows["hw.vmm.l1d_flush"]["read_only"]
    hv.tunables.set("hw.vmm.vmx.l1d_flush", 0)
    rows = {r["name"]: r for r in hv.tunables.describe()}
    assert (rows["hw.vmm.vmx.l1d_flush"]["value"], rows["hw.vmm.vmx.l1d_flush_sw"]["value"]) == (0, 0)
    assert hv.tunables.sysctl("hw.vmm.l1d_flush") is None          # a loader tunable, not a sysctl


# bhyve's declarations: CTLFLAG_RDTUN/CTLFLAG_RD sysctls and TUNABLE_INT_FETCH, read when vmm.ko loads
BHYVE_AT_BOOT = {
    "hw.vmm.halt_detection": "vmm.c SYSCTL_INT(..., CTLFLAG_RDTUN | CTLFLAG_NOFETCH, &halt_detection_enabled)",
    "hw.vmm.trace_guest_exceptions": "vmm.c CTLFLAG_RDTUN | CTLFLAG_NOFETCH",
    "hw.vmm.topology.cpuid_leaf_b": "x86.c CTLFLAG_RDTUN",
    "hw.vmm.maxcpu": "vmm.c CTLFLAG_RDTUN | CTLFLAG_NOFETCH",
    "hw.vmm.ept.use_superpages": "ept.c CTLFLAG_RDTUN", "hw.vmm.ept.use_hw_ad_bits": "ept.c CTLFLAG_RDTUN",
    "hw.vmm.ept.use_exec_only": "ept.c CTLFLAG_RDTUN",
    "hw.vmm.l1d_flush": "vmx.c TUNABLE_INT_FETCH in vmx_modinit", "hw.vmm.l1d_flush_sw": "vmx.c TUNABLE_INT_FETCH",
    "hw.vmm.vmx.cap.posted_interrupts": "vmx.c CTLFLAG_RDTUN | CTLFLAG_NOFETCH",
    "hw.vmm.vmx.cap.tpr_shadowing": "vmx.c CTLFLAG_RDTUN | CTLFLAG_NOFETCH, TUNABLE_INT_FETCH in vmx_modinit",
    "hw.vmm.vmx.cap.virtual_interrupt_delivery": "vmx.c CTLFLAG_RDTUN | CTLFLAG_NOFETCH, TUNABLE_INT_FETCH",
    "hw.vmm.vmx.posted_interrupt_vector": "vmx.c CTLFLAG_RD: pirvec, allocated in vmx_modinit",
    "hw.vmm.ipinum": "vmm.c CTLFLAG_RD: vmm_ipinum, allocated in vmm_init",
}
WEBHYVE_ONLY = {"hw.vmm.ept.skip_invalidation", "hw.vmm.l1d_sim", "hw.vmm.hlt_kernel_wait_us",
                "hw.vmm.vmx.check_guest_state"}


def test_which_tunables_bhyve_reads_only_at_boot():
    rows = {r["name"]: r for r in Hypervisor(host_mem_mb=64).tunables.describe() if not r["read_only"]}
    assert set(rows) == set(BHYVE_AT_BOOT) | WEBHYVE_ONLY
    assert {n for n, r in rows.items() if r["bhyve_boot"]} == set(BHYVE_AT_BOOT)
