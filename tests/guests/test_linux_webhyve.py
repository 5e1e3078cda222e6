"""Debian's own kernel and our busybox initramfs boot under webhyve to /init, run user space and power off
through ACPI S5: the same check as the QEMU reference (test_linux_qemu.py), on our engine. The same boot has a
virtio-blk disk (bhyve's -s 3,virtio-blk,disk.img): an ext4 image the host built with mke2fs -d, which the guest
finds on the PCI bus, mounts through virtio-pci and MSI-X, reads, writes and unmounts; the host then checks the
file system with e2fsck -n and reads the guest's file with debugfs (docs/devices.md)."""
import subprocess

from engine import Hypervisor
from tests.guests.linux_images import INIT_DONE, INIT_UP, ext4_image, kernel_release, linux_images, tool

HANG = 900          # seconds: a deadline for a hung boot, not a speed claim (about 40-70 s here under load)
WHRUN = ('echo answer=$((6*7)); i=0; while [ $i -lt 50 ]; do /bin/true; i=$((i+1)); done; echo forks=$i; '
         'echo hello > /hello.txt && cat /hello.txt; '
         'for m in $(cat /lib/modules/order); do insmod /lib/modules/$m.ko; done; '
         'for d in /sys/bus/pci/devices/*; do echo pci=${d##*/}:$(cat $d/vendor):$(cat $d/device); done; '
         'mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && cat /mnt/from-host.txt && '
         'echo written by the guest > /mnt/guest.txt && sync && umount /mnt && echo disk=unmounted; '
         'grep virtio /proc/interrupts')


def test_webhyve_boots_debians_kernel_runs_user_space_and_powers_off(tmp_path):
    vmlinuz, initrd = linux_images()
    image = ext4_image(tmp_path)
    hv = Hypervisor(host_mem_mb=1024)
    vm = hv.create_vm("linux", mem_mb=256, cpus=1, slots=["3,virtio-blk,%s" % image])
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
        # the disk: on the bus as virtio 1.x (0x1af4:0x1042) next to the host bridge, its size, the host's file
        # read and the guest's written through MSI-X interrupts
        for line in (b"pci=0000:00:00.0:0x1275:0x1275", b"pci=0000:00:03.0:0x1af4:0x1042",
                     b"[vda] 16384 512-byte logical blocks", b"written by the host", b"disk=unmounted"):
            assert line in console, (line, tail)
        assert b"virtio0-req.0" in console and b"PCI-MSI" in console, tail
        assert b"EXT4-fs error" not in console and b"I/O error" not in console, tail
    finally:
        vm.destroy()
    check = subprocess.run([tool("e2fsck"), "-f", "-n", str(image)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    read = subprocess.run([tool("debugfs"), "-R", "cat /guest.txt", str(image)], capture_output=True, text=True,
                          timeout=60)
    assert read.stdout == "written by the guest\n", read.stdout + read.stderr
