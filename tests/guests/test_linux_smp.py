"""Debian's kernel on 4 vCPUs (on a 2-core host): every vCPU brought up by INIT-SIPI-SIPI from the MADT, `nproc`
says 4, IPIs flow between them (the kernel's reschedule and call-function interrupts, counted by the vLAPICs),
spinlocks contended across vCPUs are released (io/buslock.py: this boot hung in virt_spin_lock before), and a kernel
panic (sysrq's crash, with the default panic=0) stops the VM with reason "panic" and the kernel's own line, as its
console showed it (vm/panic.py), instead of spinning for ever."""
from engine import Hypervisor
from engine import stats as S
from tests.guests.linux_images import INIT_UP, kernel_release, linux_images

HANG = 900          # seconds: a deadline for a hung boot, not a speed claim
WHRUN = 'echo nproc=$(nproc); echo c > /proc/sysrq-trigger'


def test_four_vcpus_boot_and_a_panic_stops_the_vm_with_its_reason():
    kernel, initrd = linux_images("vmlinux")
    hv = Hypervisor(host_mem_mb=1024)
    vm = hv.create_vm("smp", mem_mb=256, cpus=4)
    vm.load(kernel.read_bytes(), "vmlinux", cmdline='console=ttyS0 whrun="%s"' % WHRUN, initrd=initrd.read_bytes())
    vm.start()
    try:
        state = vm.wait(states=("suspended",), timeout=HANG)
        console = vm.console.contents()
        tail = console[-3000:]
        assert state == "suspended", ("still %s after %d s" % (state, HANG), tail)
        assert vm.suspend_reason == "panic", (vm.suspend_reason, vm.suspend_message, tail)
        assert vm.suspend_message.endswith("Kernel panic - not syncing: sysrq triggered crash"), vm.suspend_message
        assert b"smpboot: Total of 4 processors activated" in console, tail
        assert INIT_UP + b" on " + kernel_release().encode() + b", 4 CPU(s)" in console, tail
        assert b"nproc=4" in console, tail
        for bad in (b"unchecked MSR access", b"Marking TSC unstable", b"TSC unstable", b"not responding"):
            assert bad not in console, (bad, tail)
        received = [int(v.counters[S.VLAPIC_IPI_RECV]) for v in vm.vcpus]
        # each AP got more than its INIT and two SIPIs, the BSP some: the kernel's own IPIs (wake-ups, shootdowns)
        assert received[0] > 0 and all(r > 3 for r in received[1:]), received
    finally:
        vm.destroy()
