"""vmmctl run: a script drives the shell guest through piped stdin and reads its console and stats."""
import os
import shutil
import subprocess
import sys

from click.testing import CliRunner

from tests.guests.linux_images import linux_images
from webhyve.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHELL = os.path.join(ROOT, "guests", "build", "shell.elf")


def vmmctl(*args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "webhyve.cli", *args], input=stdin, capture_output=True,
                          cwd=ROOT, timeout=120)


def test_piped_session_with_stats():
    """Typed lines reach the guest, its answers reach stdout, the stop reason and bhyve stats follow."""
    done = vmmctl("run", SHELL, "--stats", "--timeout", "60", stdin=b"echo piped ok\nhalt\n")
    out, err = done.stdout.decode(), done.stderr.decode()
    assert "piped ok" in out and "halting" in out
    assert "vcpu0 stats:" in out and "number of times in/out was intercepted" in out
    assert "all vCPUs halted with interrupts disabled" in err
    assert done.returncode == 0


def test_bad_image_is_one_clear_line(tmp_path):
    """A file that is no guest image: the loader's message naming the file, non-zero status."""
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x01" * 2048)
    done = vmmctl("run", str(junk))
    assert done.returncode != 0
    assert "junk.img" in done.stderr.decode() and "Traceback" not in done.stderr.decode()


def test_a_file_name_against_the_name_rule_still_boots(tmp_path):
    """`vmmctl run` names the VM after the file, made to follow the name rule (this one has a space and an ü)."""
    image = tmp_path / ("ünï shell %s.elf" % ("x" * 80))
    shutil.copy(SHELL, image)
    done = vmmctl("run", str(image), "--timeout", "60", stdin=b"halt\n")
    assert done.returncode == 0, done.stderr.decode()
    assert "VM _n__shell_%s stopped" % ("x" * 54) in done.stderr.decode()


def test_names_against_the_rule_are_refused_before_reaching_the_server():
    """--vm, VM arguments and snapshot names are checked here by the engine's rule: status 2, one line, and no
    request (the server URL answers nothing)."""
    env = {"WEBHYVE_URL": "http://127.0.0.1:9", "WEBHYVE_TOKEN": "unused"}
    for args in (["--vm=ünï", "--get-stats"], ["--vm=sh", "--checkpoint=a b"], ["console", "x" * 65],
                 ["snapshot", "save", "sh", "ünï"], ["snapshot", "restore", "ok", "--as", "no way"]):
        result = CliRunner(mix_stderr=False).invoke(main, args, env=env)
        assert result.exit_code == 2, (args, result.stderr)
        assert "ASCII letters, digits, '-' and '_', 1 to 64 characters" in result.stderr
        assert "cannot reach" not in result.stderr


def test_too_many_vcpus_is_one_clear_line():
    """More vCPUs than the engine models: its reason on one line, non-zero status, no VM run."""
    from engine.tunables import VM_MAXCPU
    done = vmmctl("run", SHELL, "--cpus", str(VM_MAXCPU + 1))
    err = done.stderr.decode()
    assert done.returncode != 0 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "%d vCPUs requested; webhyve models at most %d (xAPIC IDs are 8 bits" % (VM_MAXCPU + 1, VM_MAXCPU) in err


def test_linux_kernel_takes_an_initrd():
    """`--initrd` goes with a Linux bzImage: too little memory for the kernel, or an initrd beside a multiboot
    kernel, is one line naming the file; with both right the kernel runs until --timeout powers it off."""
    vmlinuz, initrd = (str(path) for path in linux_images())
    small = vmmctl("run", vmlinuz, "--initrd", initrd, "--mem", "32")
    assert small.returncode == 1 and "Traceback" not in small.stderr.decode()
    assert "vmlinuz: guest memory of 32 MiB is too small for this kernel" in small.stderr.decode()
    wrong = vmmctl("run", SHELL, "--initrd", initrd)
    assert wrong.returncode == 1
    assert ("shell.elf: an initrd goes only with a Linux kernel (bzImage or vmlinux); this is a multiboot image"
            in wrong.stderr.decode())
    booted = vmmctl("run", vmlinuz, "--initrd", initrd, "--mem", "256", "--cmdline", "console=ttyS0", "--timeout", "3")
    assert booted.returncode == 0 and "VM vmlinuz stopped: powered off" in booted.stderr.decode(), booted.stderr


def test_pci_slots_as_bhyve_takes_them(tmp_path):
    """`-s slot,virtio-blk,image` and `-s slot,virtio-net,switch0`: the shell guest's lspci finds the disk at 00:03.0
    as a virtio 1.x block device (1af4:1042, class 010000) and the NIC at 00:04.0 (1af4:1041, class 020000); a bad
    -s is one line naming it, non-zero status, before anything runs."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    done = vmmctl("run", SHELL, "-s", "3,virtio-blk,%s" % disk, "-s", "4,virtio-net,switch0", "--timeout", "60",
                  stdin=b"lspci\nhalt\n")
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "00:00.0 1275:1275 class 060000" in out and "00:03.0 1af4:1042 class 010000" in out, out
    assert "00:04.0 1af4:1041 class 020000" in out, out
    for bad, says in (("3,virtio-blk,%s" % (tmp_path / "none.img"), "no image file"),
                      ("3,virtio-net,tap0", "'tap0' is not a switch name"),
                      ("3,e1000,switch0", "unknown emulation 'e1000'"),
                      ("0,virtio-blk,%s" % disk, "slot 00:00.0 is already taken by hostbridge"),
                      ("3:9,virtio-blk,%s" % disk, "function '9' is not 0-7")):
        failed = CliRunner(mix_stderr=False).invoke(main, ["run", SHELL, "-s", bad])
        assert failed.exit_code == 1 and failed.exception.__class__ is SystemExit, failed.exception
        assert says in failed.stderr and len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    twice = CliRunner(mix_stderr=False).invoke(main, ["run", SHELL, "-s", "3,virtio-blk,%s" % disk,
                                                      "-s", "3,virtio-blk,%s,ro" % disk])
    assert twice.exit_code == 1 and "slot 00:03.0 is already taken" in twice.stderr
