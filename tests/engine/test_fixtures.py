"""The guest fixtures end a guest that misbehaves and fail the test with a message; they never hang or pass it on."""
import pytest

SPIN = "1: jmp 1b"                     # a guest that never stops


def test_flat64_ends_a_guest_that_never_stops_and_fails(flat64, hv):
    """Before, flat64 ignored vm.wait's answer: the test went on with a running guest, which ran on after it."""
    with pytest.raises(pytest.fail.Exception, match="VM 'spinner' did not stop within 1s .*powered off"):
        flat64(SPIN, timeout=1, name="spinner")
    vm = hv.vm("spinner")
    assert vm.state == "suspended" and vm.suspend_reason == "poweroff"


def test_boot_guest_ends_a_guest_that_never_stops_and_fails(boot_guest, hv):
    with pytest.raises(pytest.fail.Exception, match="VM 'shell' did not stop within 1s"):
        boot_guest("shell.elf", timeout=1)
    assert hv.vm("shell").suspend_reason == "poweroff"


def test_boot_guest_ends_a_guest_that_never_gets_ready_and_fails(boot_guest, hv):
    with pytest.raises(pytest.fail.Exception, match="VM 'shell' did not print b'never printed' within 1s"):
        boot_guest("shell.elf", typed=b"help\r", ready=b"never printed", timeout=1)
    assert hv.vm("shell").suspend_reason == "poweroff"

