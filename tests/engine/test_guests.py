"""The bundled guests boot under the engine and do what they print."""
import calendar
import re
import time

from engine import stats
from tests.guests.spin_reference import spin_checksum


def test_hello_prints_banner_on_com1_vga_and_debug_port(boot_guest):
    """hello: banner on the serial console, the VGA text screen and port 0xE9; multiboot magic seen."""
    vm, out = boot_guest("hello.elf")
    assert "Hello from webhyve!" in out and "multiboot magic ok" in out
    assert vm.vga.text()[0].startswith("Hello from webhyve!")
    assert vm.vga.cells()[0][0] == (ord("H"), 0x1F)
    assert b"Hello from webhyve!" in vm.debug_console.contents()
    assert vm.suspend_reason == "halt"


def test_shell_answers_commands(boot_guest):
    """shell: echo, bhyve's CPUID signature, an unknown MSR gives #GP, a known one reads."""
    vm, out = boot_guest("shell.elf", typed=b"echo hi there\rcpuid 40000000\rrdmsr 12345\rrdmsr 1b\rhalt\r",
                         ready=b"webhyve> ")
    assert "hi there" in out
    assert 'signature "bhyve bhyve "' in out
    assert "rdmsr 0x12345: #GP" in out
    assert "msr 0x1b = 0x00000000fee00900" in out
    counters = vm.vcpus[0].counters
    assert counters[stats.VMEXIT_CPUID] >= 1 and counters[stats.VMEXIT_RDMSR] >= 2


def test_shell_reads_the_rtc_lists_pci_and_reboots_through_the_8042(boot_guest):
    """shell: `date` reads the RTC through ports 0x70/0x71 and shows the host's UTC time; `lspci` scans bus 0
    through 0xCF8/0xCFC and finds only the host bridge; `reboot` pulses the 8042's reset line and the VM stops
    with reason "reset"."""
    before = time.time()
    vm, out = boot_guest("shell.elf", typed=b"date\rlspci\rreboot\r", ready=b"webhyve> ")
    after = time.time()
    shown = re.search(r"(\d{4})-(\d\d)-(\d\d) (\d\d):(\d\d):(\d\d) UTC", out)
    assert shown, out
    assert before - 2 <= calendar.timegm(tuple(int(g) for g in shown.groups())) <= after + 2
    assert re.findall(r"00:[0-9a-f]{2}\.\d .*", out) == ["00:00.0 1275:1275 class 060000\r"]
    assert "rebooting" in out and vm.suspend_reason == "reset"


def test_shell_line_editing(boot_guest):
    """shell: backspace erases, Ctrl-U kills the line."""
    vm, out = boot_guest("shell.elf", typed=b"echo abx\x7fc\recho gone\x15echo kept\rhalt\r", ready=b"webhyve> ")
    assert "\r\nabc\r\n" in out
    assert "\r\nkept\r\n" in out and "\r\ngone" not in out


def test_multiboot_info_as_the_guest_reads_it(boot_guest):
    """The guest reads back mem_lower/upper, the command line, the loader name and the memory map."""
    vm, out = boot_guest("shell.elf", cmdline="console=ttyS0 x=1", typed=b"mbinfo\rhalt\r", ready=b"webhyve> ",
                         mem_mb=32)
    assert "mem_lower=639" in out
    assert "mem_upper=%d" % (32 * 1024 - 1024) in out
    assert "cmdline=shell.elf console=ttyS0 x=1" in out
    assert "loader=webhyve" in out
    assert "mmap base=0x0000000000100000 len=0x0000000001f00000 type=1" in out


def test_spin_checksum_matches_python(boot_guest):
    """spin: the CPU-bound loop computes the same checksum as the plain-Python reference."""
    vm, out = boot_guest("spin.elf", cmdline="iters=300000")
    assert "spin: iters=300000 checksum=%#010x" % spin_checksum(300000) in out


def test_long_mode_switch_keeps_registers_readable(boot_guest):
    """longmode: a multiboot guest enters long mode itself; 64-bit registers read back exactly."""
    vm, out = boot_guest("longmode.elf")
    assert "long mode ok" in out
    regs = vm.registers()
    assert regs["rax"] == 0x1122334455667788 and regs["rbx"] == 0x8877665544332211
    assert regs["r8"] == 0xDEADBEEFCAFEF00D and regs["r15"] == 0x0123456789ABCDEF
    assert regs["efer"] & 0x500 == 0x500


def test_flat64_image_runs_in_long_mode(hv):
    """flat64: a flat image entered in long mode with the loader's identity paging."""
    from tests.engine.conftest import guest
    vm = hv.create_vm("f", mem_mb=64)
    vm.load(guest("flat64.bin"), "flat64.bin", kind="flat64")
    vm.start()
    vm.wait(states=("suspended",), timeout=30)
    assert b"flat64 ok" in vm.console.contents()
    assert vm.registers()["rax"] == 0x64


def test_bootsector_uses_bios_services(hv):
    """bootsec: INT 10h/12h/13h/1Ah/16h services, shown on the VGA screen and mirrored to serial."""
    from tests.engine.conftest import guest, wait_for
    vm = hv.create_vm("b", mem_mb=16)
    vm.load(guest("bootsec.img"), "bootsec.img")
    vm.start()
    wait_for(vm, b"press a key")
    vm.console.send_input(b"hi")
    wait_for(vm, b"hi")
    vm.console.send_input(b"q")
    vm.wait(states=("suspended",), timeout=30)
    out = vm.console.contents().decode()
    for line in ("bootsec: hello", "mem=639K", "sector 2 says hi", "lba ok", "ticks ok", "cursor=10,0", "bye"):
        assert line in out
    screen = vm.vga.text()
    assert screen[0].startswith("bootsec: hello")
    assert any(row.startswith("XXX") for row in screen)
    row = next(r for r, text in enumerate(screen) if text.startswith("XXX"))
    assert vm.vga.cells()[row][0] == (ord("X"), 0x4E)
