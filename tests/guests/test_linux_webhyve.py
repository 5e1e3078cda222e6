"""Debian's own kernel and our busybox initramfs boot under webhyve to /init, run user space and power off
through ACPI S5: the same check as the QEMU reference (test_linux_qemu.py), on our engine."""
from engine import Hypervisor
from tests.guests.linux_images import INIT_DONE, INIT_UP, kernel_release, linux_images

HANG = 900          # seconds: a deadline for a hung boot, not a speed claim (about 40-70 s here under load)
WHRUN = ('echo answer=$((6*7)); i=0; while [ $i -lt 50 ]; do /bin/true; i=$((i+1)); done; echo forks=$i; '
         'echo hello > /hello.txt && cat /hello.txt')


def test_webhyve_boots_debians_kernel_runs_user_space_and_powers_off():
    vmlinuz, initrd = linux_images()
    hv = Hypervisor(host_mem_mb=1024)
    vm = hv.create_vm("linux", mem_mb=256, cpus=1)
    vm.load(vmlinuz.read_bytes(), "vmlinuz", cmdline='console=ttyS0 panic=-1 whrun="%s"' % WHRUN,
            initrd=initrd.read_bytes())
    vm.start()
    try:
        state = vm.wait(states=("suspended",), timeout=HANG)
        console = vm.console.contents()
        tail = console[-3000:]
        assert state == "suspended", ("still %s after %d s" % (state, HANG), tail)
        assert (vm.suspend_reason, vm.suspend_message) == ("poweroff", "powered off"), (vm.suspend_message, tail)
        assert b"Linux version " + kernel_release().encode() in console, tail
        assert INIT_UP + b" on " + kernel_release().encode() + b", 1 CPU(s)" in console, tail
        for line in (b"answer=42", b"forks=50", b"hello"):              # shell arithmetic, fork+exec, a file in the root
            assert line in console, (line, tail)
        assert console.index(b"answer=42") < console.index(INIT_DONE) < console.index(b"reboot: Power down"), tail
        for bad in (b"unchecked MSR access", b"Kernel panic", b"Marking TSC unstable", b"TSC unstable"):
            assert bad not in console, (bad, tail)
    finally:
        vm.destroy()
