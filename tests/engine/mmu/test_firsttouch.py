"""Four vCPUs first-touching the same EPT tables at once lose nothing: the firsttouch guest, 50 rounds per
EPT configuration, each round a first touch again (the host unmaps the window between rounds)."""
import re
import time

import numpy as np
import pytest

from engine import Hypervisor

from tests.engine.conftest import guest, wait_for

CTRL = 0x3FF000                 # the guest's control block (guests/firsttouch.S)
BASE = 0x400000                 # the window the vCPUs touch
CPUS = 4
PAGES = 4000                    # per vCPU and round: a window of 16000 pages (62.5 MiB)
ROUNDS = 50                     # odd rounds interleaved, even rounds shared
WINDOW = CPUS * PAGES * 0x1000

CONFIGS = {
    "default": {},                                                  # hardware A/D, 2 MiB superpages
    "ad_emulation": {"hw.vmm.ept.use_hw_ad_bits": 0},               # bhyve's bits 52/53, R/W as A/D
    "4k_pages": {"hw.vmm.ept.use_superpages": 0},                   # page tables only, never promoted
}


def control(vm, **fields):
    names = ("round", "pages", "base", "ncpu", "arrive", "lost", "done", "bad", "stride", "spread")
    for name, value in fields.items():
        vm.memory_access.write(CTRL + 8 * names.index(name), np.uint64(value).tobytes())


def run_round(vm, reader, n):
    """Round n: interleaved (vCPU i writes pages i, 4+i, ...) when odd, shared (every vCPU writes every
    page) when even. Returns the cumulative count of pages found wrong."""
    if n % 2:
        control(vm, pages=PAGES, stride=CPUS, spread=1)
    else:
        control(vm, pages=CPUS * PAGES, stride=1, spread=0)
    control(vm, round=n)
    line = re.compile(rb"round %016x lost ([0-9a-f]{16})\r\n" % n)
    seen, deadline = b"", time.monotonic() + 60
    while not line.search(seen):
        assert vm.state != "suspended", "round %d: %s" % (n, vm.suspend_message)
        assert time.monotonic() < deadline, "round %d did not end; console: %r" % (n, seen[-200:])
        seen += reader.read(0.1)
    return int(line.search(seen).group(1), 16)


@pytest.mark.parametrize("config", CONFIGS)
def test_no_page_is_lost_when_vcpus_race_on_first_touch(config):
    """Each round every vCPU writes round << 40 | page << 4 | vcpu into its pages of the 16000-page window
    while the others fault on the same EPT tables (and, shared, on the same pages), then checks its
    neighbour's: no page may read back anything else, and every page is backed exactly once."""
    hv = Hypervisor(host_mem_mb=128, ncpu=CPUS, tunables=CONFIGS[config])
    vm = hv.create_vm("firsttouch", mem_mb=(BASE + WINDOW >> 20) + 1, cpus=CPUS)
    vm.load(guest("firsttouch.bin"), "firsttouch.bin", kind="flat64")
    control(vm, base=BASE, ncpu=CPUS)
    reader = vm.console.reader(from_start=False)
    vm.start(all_vcpus=True)
    wait_for(vm, b"firsttouch: ready", reader=reader)
    touched_before = vm.pmap.stats()["first_touch"]
    lost = 0
    for n in range(1, ROUNDS + 1):
        lost = run_round(vm, reader, n)
        assert lost == 0, "round %d: %d pages lost, the last at guest-physical %#x" % (
            n, lost, int.from_bytes(vm.memory_access.read(CTRL + 56, 8), "little"))
        vm.pause()
        vm.unmap(BASE, WINDOW)
        vm.resume()
    control(vm, round=(1 << 64) - 1)
    assert vm.wait(states=("suspended",), timeout=30) == "suspended" and vm.suspend_reason == "halt", \
        vm.suspend_message
    stats = vm.pmap.stats()
    assert stats["first_touch"] - touched_before == ROUNDS * CPUS * PAGES
    assert stats["resident_pages"] == touched_before        # the window's pages are all unmapped again
    if config == "default":
        assert stats["promotions"] >= ROUNDS * (WINDOW >> 21)
    vm.destroy()
