"""INIT resets a local APIC while its peers look its ID up for an IPI's destination: the ID never reads 0."""
import threading

import numpy as np
from numba import njit

from engine.io.lapic import regs as L


@njit(nogil=True)
def watch_id(regs, word, stop, rounds):
    """Read the ID word as another vCPU's IPI does, off the GIL, until told to stop: how often it was not `word`."""
    wrong = 0
    for _ in range(rounds):
        if regs[L.ID >> 2] != word:
            wrong += 1
        if stop[0]:
            break
    return wrong


def test_an_init_reset_never_shows_the_apic_id_as_zero(hv):
    """vCPU 3's APIC is reset 3,000 times while a thread off the GIL reads its ID register: the BSP's SIPI,
    sent right after the INIT, would go to nobody if the ID read 0 in between (seen: the smp guest on 16
    vCPUs under load lost a SIPI, or hung when the INIT itself was lost)."""
    vm = hv.create_vm("apics", mem_mb=8, cpus=4)
    lapic = vm.vcpus[3].lapic
    word = int(lapic.regs[L.ID >> 2])
    assert word == 3 << 24
    stop = np.zeros(1, np.uint8)
    watch_id(lapic.regs, word, stop, 1)                          # compiled before the race starts
    result = []
    watcher = threading.Thread(target=lambda: result.append(watch_id(lapic.regs, word, stop, 1 << 62)))
    watcher.start()
    for _ in range(3000):
        lapic.reset()
    stop[0] = 1
    watcher.join(30)
    assert result == [0]
