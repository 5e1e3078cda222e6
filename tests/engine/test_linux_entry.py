"""A Linux bzImage entered by the engine: the 64-bit entry state a crafted kernel reads back, reset and snapshots with
an initrd, and Debian's kernel getting as far as its decompressor reading our command line."""
import time

import pytest

from engine import Hypervisor
from tests.engine.conftest import assemble
from tests.engine.loaders.bzimage import crafted
from tests.guests.linux_images import linux_images

BOOT_PARAMS = 0x10000
# At the 64-bit entry: what boot_params says about the loader, the command line and the initrd, into registers.
ENTRY = """
        movzx eax, byte ptr [rsi + 0x210]     # type_of_loader
        mov ebx, [rsi + 0x228]                # cmd_line_ptr
        mov ecx, [rbx]                        # the command line's first 4 bytes
        mov edx, [rsi + 0x218]                # ramdisk_image
        mov edx, [rdx]                        # the initrd's first 4 bytes
        mov r8, cs
        mov r9, ss
        pushfq
        pop r10
        cli
        hlt
"""


@pytest.fixture
def kernel(tmp_path):
    return crafted(entry_code=assemble(ENTRY, tmp_path, base=0x1000200))


def entered(vm):
    assert vm.wait(states=("suspended",), timeout=30) == "suspended"
    assert vm.suspend_reason == "halt", vm.suspend_message
    return vm.registers()


def test_the_entry_state_is_the_64_bit_boot_protocol(hv, kernel):
    """Long mode at load + 0x200, RSI = boot_params, CS = __BOOT_CS, SS = __BOOT_DS, IF clear; boot_params points at
    the command line and the initrd. With two vCPUs the other waits for INIT-SIPI in real mode, as firmware left it."""
    vm = hv.create_vm("crafted", mem_mb=64, cpus=2)
    vm.load(kernel, "k", cmdline="cons", initrd=b"INIT" * 100)
    vm.start()
    regs = entered(vm)
    assert regs["efer"] & 0x500 == 0x500 and regs["rsi"] == BOOT_PARAMS
    assert (regs["rax"], regs["rcx"], regs["rdx"]) == (0xFF, int.from_bytes(b"cons", "little"),
                                                       int.from_bytes(b"INIT", "little"))
    assert (regs["r8"], regs["r9"]) == (0x10, 0x18) and not regs["r10"] & (1 << 9)
    assert vm.vcpus[1].in_real_mode() and vm.vcpus[1].waiting_sipi


def test_reset_loads_the_initrd_again(hv, kernel):
    """A reset boots the same kernel with the same initrd and command line."""
    vm = hv.create_vm("crafted", mem_mb=64)
    vm.load(kernel, "k", cmdline="cons", initrd=b"INIT" * 100)
    vm.start()
    entered(vm)
    vm.reset()
    regs = entered(vm)
    assert (regs["rcx"], regs["rdx"]) == (int.from_bytes(b"cons", "little"), int.from_bytes(b"INIT", "little"))


def test_a_snapshot_holds_the_initrd_and_the_restored_vm_resets_with_it(hv, kernel, tmp_path):
    """The snapshot carries the initrd beside the kernel: a VM restored on another host boots with both at reset."""
    vm = hv.create_vm("crafted", mem_mb=64)
    vm.load(kernel, "k", cmdline="cons", initrd=b"INIT" * 100)
    vm.start()
    entered(vm)
    vm.snapshot(tmp_path / "linux.snap")
    copy = Hypervisor(host_mem_mb=256).restore_vm(tmp_path / "linux.snap")
    assert copy.initrd == b"INIT" * 100
    copy.reset()
    regs = entered(copy)
    assert (regs["rcx"], regs["rdx"]) == (int.from_bytes(b"cons", "little"), int.from_bytes(b"INIT", "little"))
    copy.destroy()


def test_debian_kernel_reaches_its_decompressor_reading_our_command_line(hv):
    """Debian's kernel starts at its 64-bit entry under the engine, and its decompressor finds earlyprintk in the
    command line boot_params points at: it programs COM1's divisor for 115200 baud (DLL 1)."""
    vmlinuz, initrd = linux_images()
    vm = hv.create_vm("linux", mem_mb=256)
    vm.load(vmlinuz.read_bytes(), "vmlinuz", cmdline="console=ttyS0 earlyprintk=serial,ttyS0,115200",
            initrd=initrd.read_bytes())
    vm.start()
    deadline = time.monotonic() + 120                           # for a hang, not a speed claim
    while vm.com1.dll != 1:
        assert vm.state != "suspended", vm.suspend_message
        assert time.monotonic() < deadline, "the decompressor never programmed COM1"
        vm.wait(states=("suspended",), timeout=0.05)
    vm.poweroff()
