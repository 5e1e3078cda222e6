"""Two VMs on one modeled host CPU: a guest spinning on its UART does not keep the CPU from a newcomer."""
from engine import Hypervisor
from tests.engine.conftest import guest, wait_for


def test_second_vm_boots_while_the_first_polls_its_uart():
    """With poll=1 the shell waits at its prompt by polling COM1's line status (port I/O handled without leaving
    the entry); on a one-CPU host the second shell's vCPU 0 shares host CPU 0 with it and still gets to its prompt."""
    hv = Hypervisor(host_mem_mb=256, ncpu=1)
    first = hv.create_vm("first", mem_mb=32)
    first.load(guest("shell.elf"), "shell.elf", cmdline="poll=1")
    first.start()
    wait_for(first, b"webhyve> ")
    second = hv.create_vm("second", mem_mb=32)
    assert second.vcpus[0].hostcpu is first.vcpus[0].hostcpu
    second.load(guest("shell.elf"), "shell.elf")
    second.start()
    wait_for(second, b"webhyve> ", timeout=20)
    first.console.send_input(b"echo first still here\r")
    wait_for(first, b"first still here")
    for vm in (first, second):
        vm.poweroff()


def test_vcpus_spread_over_host_cpus_across_vms(hv):
    """The modeled scheduler places each new vCPU on the least loaded host CPU."""
    a, b = hv.create_vm("a", mem_mb=8), hv.create_vm("b", mem_mb=8, cpus=2)
    assert [v.hostcpu.index for v in a.vcpus + b.vcpus] == [0, 1, 0]


def test_a_vcpu_looked_at_without_pause_still_gets_its_turns(hv, tmp_path):
    """Three counting vCPUs take turns on host CPU 0 while another thread reads vCPU 0's registers as fast as it
    can (a panel polling it): each read runs during vCPU 0's turn, and vCPU 0 keeps counting. Before, every
    visit cost vCPU 0 its turn and it stood still for as long as the reads went on."""
    import time
    from tests.engine.conftest import assemble
    vm = hv.create_vm("looked-at", mem_mb=8, cpus=3)
    vm.load(assemble("xor eax, eax\n1: inc rax\n pause\n jmp 1b", tmp_path), "g.bin", kind="flat64")
    for vcpu in vm.vcpus:
        vcpu.pin(0)
    vm.start(all_vcpus=True)
    first = vm.vcpus[0].registers()["rax"]
    deadline = time.monotonic() + 20                      # for a hang, not a speed claim
    seen = [first]
    while len(set(seen)) < 20 and time.monotonic() < deadline:
        seen.append(vm.vcpus[0].registers()["rax"])
    assert len(set(seen)) >= 20, "vcpu0 stood still at RAX=%d for %d reads" % (seen[-1], len(seen))
    while not all(v.registers()["rax"] > 0 for v in vm.vcpus):         # and the others count too
        assert time.monotonic() < deadline, "a vCPU never got a turn"
    vm.poweroff()
