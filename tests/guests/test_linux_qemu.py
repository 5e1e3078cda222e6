"""The Linux guest boots under real QEMU (TCG) to our /init marker and powers off: the images are right, and this
is the reference the webhyve boot is compared against (shared/reference/linux.md)."""
import shutil
import subprocess
import time

import pytest

from tests.guests.linux_images import INIT_DONE, INIT_UP, kernel_release, linux_images

QEMU = "qemu-system-x86_64"
HANG = 180          # seconds: a deadline for a hung boot, not a speed claim (QEMU takes about 5-10 s here)


def qemu_boot(append, mem_mb=256, cpus=1):
    """Run QEMU with the serial console on stdout until it exits; returns (exit status, console bytes)."""
    if shutil.which(QEMU) is None:
        pytest.skip("%s not installed: `make deps` installs qemu-system-x86" % QEMU)
    vmlinuz, initrd = linux_images()
    args = [QEMU, "-accel", "tcg", "-m", str(mem_mb), "-smp", str(cpus), "-nographic", "-no-reboot", "-nic", "none",
            "-kernel", str(vmlinuz), "-initrd", str(initrd), "-append", append]
    started = time.monotonic()
    try:
        done = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=HANG)
    except subprocess.TimeoutExpired as hung:
        raise AssertionError("QEMU did not power off within %d s; console tail: %r"
                             % (HANG, (hung.stdout or b"")[-2000:])) from None
    print("QEMU boot to poweroff: %.1f s wall" % (time.monotonic() - started))
    return done.returncode, done.stdout


def test_qemu_boots_the_kernel_and_initramfs_to_init_and_powers_off():
    status, console = qemu_boot('console=ttyS0 panic=-1 whrun="echo answer=$((6*7)); cat /proc/cmdline"')
    tail = console[-3000:]
    assert status == 0, tail
    assert b"Linux version " + kernel_release().encode() in console, tail
    assert b"Run /init as init process" in console, tail
    assert INIT_UP + b" on " + kernel_release().encode() + b", 1 CPU(s)" in console, tail
    assert b"answer=42" in console, tail                   # the whrun= commands ran, in order, before poweroff
    assert console.index(b"answer=42") < console.index(INIT_DONE) < console.index(b"reboot: Power down"), tail
