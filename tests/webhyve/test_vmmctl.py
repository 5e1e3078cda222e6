"""vmmctl against a real server: gunicorn on 127.0.0.1 with the shell guest as VM "demo", the CLI driven
in-process with click's CliRunner and, where the process boundary matters, as a subprocess."""
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest
import requests
from click.testing import CliRunner
from PIL import Image

from engine.core import vmcs as V
from tests.webhyve.conftest import LIVE, ready_or_fail, wait_for
from tests.webhyve.live import CONTROL, VIEWER, auth, free_port, start_server, stop_server
from webhyve.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ASCIINEMA = os.path.join(os.path.dirname(sys.executable), "asciinema")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    process, url = start_server(str(tmp_path_factory.mktemp("vmmctl-server")))
    yield url
    stop_server(process)


@pytest.fixture
def env(live, tmp_path):
    """The CLI's environment: the live server and the control token, and no config file of the user's."""
    return {"WEBHYVE_URL": live, "WEBHYVE_TOKEN": CONTROL, "XDG_CONFIG_HOME": str(tmp_path / "config")}


def cli(env, *args):
    result = CliRunner(mix_stderr=False).invoke(main, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def vmmctl(env, *args, stdin=b"", timeout=120):
    """The real command in its own process (what a user runs)."""
    return subprocess.run([sys.executable, "-m", "webhyve.cli", *args], input=stdin, capture_output=True, cwd=ROOT,
                          env=dict(os.environ, **env), timeout=timeout)


def rest(env, method, path, **kwargs):
    return requests.request(method, env["WEBHYVE_URL"] + path, headers=auth(CONTROL), timeout=30, **kwargs)


def console_text(env, vm):
    return rest(env, "GET", "/api/v1/vms/%s/console" % vm).json()["text"]


def one_line_error(done):
    err = done.stderr.decode() if isinstance(done.stderr, bytes) else done.stderr
    assert getattr(done, "returncode", getattr(done, "exit_code", 0)) != 0
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def fresh_vm(env, request):
    """A shell VM of this test's own, made with vmmctl --create, its prompt printed; destroyed afterwards."""
    name = re.sub(r"[^a-z0-9]", "", request.node.name.lower())[:24]
    created = cli(env, "--vm=" + name, "--create", "--guest=shell", "--set-mem=32")
    assert created.exit_code == 0, created.stderr
    ready_or_fail(lambda: "webhyve>" in console_text(env, name), "VM %r never printed its prompt" % name,
                  lambda: console_text(env, name), lambda: rest(env, "DELETE", "/api/v1/vms/" + name))
    yield name
    rest(env, "DELETE", "/api/v1/vms/" + name)


@pytest.fixture
def polling_vm(env, request):
    """A shell that spins on its UART (poll=1) instead of halting between keys: a vCPU that is always running."""
    name = "poll" + re.sub(r"[^a-z0-9]", "", request.node.name.lower())[:20]
    created = rest(env, "POST", "/api/v1/vms", json={"name": name, "guest": "shell", "cmdline": "poll=1", "mem_mb": 32})
    assert created.status_code == 201, created.text
    ready_or_fail(lambda: "webhyve>" in console_text(env, name), "VM %r never printed its prompt" % name,
                  lambda: console_text(env, name), lambda: rest(env, "DELETE", "/api/v1/vms/" + name))
    yield name
    rest(env, "DELETE", "/api/v1/vms/" + name)


def test_list_shows_the_servers_vms(env):
    out = cli(env, "list")
    assert out.exit_code == 0
    header, *rows = out.stdout.splitlines()
    assert header.split() == ["NAME", "STATE", "CPUS", "MEM", "EXITS", "IMAGE"]
    assert any(r.split()[0] == "demo" and r.split()[-1] == "shell.elf" for r in rows)


def test_get_stats_in_bhyvectls_format(env):
    out = cli(env, "--vm=demo", "--get-stats")
    assert out.exit_code == 0
    lines = out.stdout.splitlines()
    assert lines[0] == "vcpu0 stats:"
    rows = dict(re.fullmatch(r"(.{40,})\t(\d+)", line).groups() for line in lines[1:])
    assert int(rows["total number of vm exits".ljust(40)]) > 0
    assert int(rows["number of times in/out was intercepted".ljust(40)]) > 0


def test_register_set_and_get_on_a_paused_vm(env, fresh_vm):
    """--set-rbx on the paused VM, read back by vmmctl and by the REST registers panel; with the old value
    put back the guest runs on."""
    assert cli(env, "--vm=" + fresh_vm, "--pause").exit_code == 0
    original = cli(env, "--vm=" + fresh_vm, "--get-rbx").stdout.split()[1]
    out = cli(env, "--vm=" + fresh_vm, "--set-rbx=0x1234abcd", "--get-rbx", "--get-rip")
    assert out.exit_code == 0, out.stderr
    assert "rbx[0]\t\t0x000000001234abcd" in out.stdout.splitlines()
    panel = rest(env, "GET", "/api/v1/vms/%s/vcpus/0/registers" % fresh_vm).json()
    assert panel["registers"]["rbx"] == 0x1234ABCD
    assert "rip[0]\t\t0x%016x" % panel["registers"]["rip"] in out.stdout.splitlines()
    assert cli(env, "--vm=" + fresh_vm, "--set-rbx=" + original, "--resume").exit_code == 0
    rest(env, "POST", "/api/v1/vms/%s/console" % fresh_vm, json={"data": "echo still alive\r"})
    assert wait_for(lambda: "\nstill alive" in console_text(env, fresh_vm))


def test_setting_a_register_of_a_running_vm_is_refused(env):
    done = cli(env, "--vm=demo", "--set-rax=1")
    assert "pause it" in one_line_error(done)


def test_a_bad_value_changes_nothing(env):
    """--pause with an unparsable --set-rax: refused before the pause, the VM keeps running."""
    done = cli(env, "--vm=demo", "--pause", "--set-rax=twelve")
    assert "'twelve' is not a number" in one_line_error(done)
    assert rest(env, "GET", "/api/v1/vms/demo").json()["state"] in LIVE


def test_registers_of_a_running_vm_are_read_by_its_thread(env, polling_vm):
    """A spinning vCPU's registers come from a visit: it leaves the guest, its thread reads, it goes back in;
    no VM exit is counted for it."""
    exits = lambda: rest(env, "GET", "/api/v1/vms/%s/vcpus/0/stats" % polling_vm).json()["by_id"]["VMEXIT_EXTINT"]
    before = exits()
    done = cli(env, "--vm=" + polling_vm, "--get-r12", "--get-cr0", "--get-desc-cs")
    assert done.exit_code == 0 and done.stderr == "", done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["cr0[0]", "r12[0]", "cs desc[0]"]  # its order
    assert exits() == before
    assert rest(env, "GET", "/api/v1/vms/" + polling_vm).json()["state"] == "running"


def test_segment_descriptors_of_the_protected_mode_guest(env, fresh_vm):
    """The shell guest runs in flat 32-bit protected mode: CS is a 4 GiB code segment, GDTR its 3-entry GDT."""
    cli(env, "--vm=" + fresh_vm, "--pause")
    out = cli(env, "--vm=" + fresh_vm, "--get-desc-cs", "--get-desc-ds", "--get-desc-gdtr", "--get-cs")
    assert out.exit_code == 0, out.stderr
    cs = re.search(r"^cs desc\[0\]\t0x([0-9a-f]{16})/0x([0-9a-f]{8})/0x([0-9a-f]{8})$", out.stdout, re.M)
    assert cs and int(cs[2], 16) == 0xFFFFFFFF and int(cs[3], 16) & 0x9A == 0x9A     # present, code, readable
    ds = re.search(r"^ds desc\[0\]\t0x[0-9a-f]{16}/0xffffffff/0x([0-9a-f]{8})$", out.stdout, re.M)
    assert ds and int(ds[1], 16) & 0x9A == 0x92                                      # present, data, writable
    assert re.search(r"^gdtr\[0\]\t\t0x[0-9a-f]{16}/0x00000017$", out.stdout, re.M)      # bhyvectl's format
    assert re.search(r"^cs\[0\]\t\t0x0008$", out.stdout, re.M)


def test_get_all_on_a_paused_and_on_a_running_vm(env, polling_vm):
    """Paused or running: bhyvectl's getters once each, in its order, from the memory segments to the topology."""
    cli(env, "--vm=" + polling_vm, "--pause")
    out = cli(env, "--vm=" + polling_vm, "--get-all")
    assert out.exit_code == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0] == "ID  Length      Name" and lines[-1].startswith("cpu_topology:\tsockets=1,")
    labels = [line.split("\t")[0] for line in lines if "[0]" in line]
    assert len(labels) == len(set(labels))                       # each field once
    assert labels.index("efer[0]") < labels.index("rax[0]") < labels.index("gdtr[0]") < labels.index("cs[0]") \
        < labels.index("pinbased_ctls[0]") < labels.index("eptp[0]") < labels.index("exit_reason[0]")
    assert lines.count("pending:\tn/a") == 1 and "vcpu0 stats:" in lines and "suspended cpus:\t 0" in lines
    cli(env, "--vm=" + polling_vm, "--resume")
    running = cli(env, "--vm=" + polling_vm, "--get-all")
    assert running.exit_code == 0 and running.stderr == ""
    assert "suspended cpus:\t (none)" in running.stdout.splitlines()
    assert [line.split("\t")[0] for line in running.stdout.splitlines()] == [line.split("\t")[0] for line in lines]


def test_every_vmcs_field_has_a_getter_and_agrees_with_the_panel(env):
    options = ["--get-vmcs-" + f.name.lower().replace("_", "-") for f in V.FIELDS]
    out = cli(env, "--vm=demo", *options)
    assert out.exit_code == 0, out.stderr
    printed = [re.fullmatch(r"(\w+)\[0\]\t+(0x[0-9a-f]+)", line).groups() for line in out.stdout.splitlines()]
    assert len(printed) == len(options)
    panel = rest(env, "GET", "/api/v1/vms/demo/vcpus/0/vmcs").json()
    eptp = next(f["value"] for g in panel["groups"] for f in g["fields"] if f["name"] == "EPTP")
    assert int(dict(printed)["eptp"], 16) == eptp != 0
    alias = cli(env, "--vm=demo", "--get-eptp")
    assert alias.stdout == "eptp[0]\t\t0x%016x\n" % eptp


def test_get_msr_bitmap_prints_the_page_the_vmcs_points_at(env):
    """--get-msr-bitmap-address is the VMCS's MSR_BITMAP, a host page; --get-msr-bitmap reads that page as
    dump_intel_msr_pm does: the MSRs bhyve's vmx_init lets through, R for a read, W for a write."""
    out = cli(env, "--vm=demo", "--get-msr-bitmap-address", "--get-msr-bitmap")
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    address = re.fullmatch(r"msr_bitmap\[0\]\t\t0x([0-9a-f]+)", lines[0])
    assert address and int(address[1], 16) % 4096 == 0 and int(address[1], 16) != 0
    assert lines[1:] == ["MSR_TSC             [0]\t\tR-"] + \
        ["%-20s[0]\t\tRW" % name for name in ("MSR_EFER", "MSR_STAR", "MSR_LSTAR", "MSR_CSTAR", "MSR_SF_MASK",
                                             "MSR_FSBASE", "MSR_GSBASE", "MSR_KGSBASE", "MSR_SYSENTER_CS_MSR",
                                             "MSR_SYSENTER_ESP_MSR", "MSR_SYSENTER_EIP_MSR")]


def test_get_gpa_pmap_prints_the_ept_chain(env):
    """The kernel's load address is resident: a chain ending in a readable leaf, as the REST lookup shows."""
    out = cli(env, "--vm=demo", "--get-gpa-pmap=0x100000")
    assert out.exit_code == 0, out.stderr
    entries = rest(env, "GET", "/api/v1/vms/demo/ept/lookup", params={"gpa": 0x100000}).json()["value"]
    assert out.stdout == "gpa 0x100000:%s\n" % "".join(" %#x" % e["entry"] for e in entries)
    assert int(out.stdout.split()[-1], 16) & 1                       # the leaf allows reads


def test_get_memmap(env):
    out = cli(env, "--vm=demo", "--get-memmap")
    header, row = out.stdout.splitlines()
    assert header.split() == ["Address", "Length", "Segment", "Offset", "Prot", "Flags"]
    assert row.split() == ["0", "64MB", "lowmem", "0", "RWX"]


def test_run_is_one_vm_run_to_the_first_exit_to_userspace(env, polling_vm):
    """A shell spinning on its UART's line status register: --run returns at the first IN from COM1 (a userspace
    device in bhyve too), exactly one exit to userspace, dumped as dump_vm_run_exitcode does; the VM is paused
    again and the guest goes on correctly once resumed."""
    cli(env, "--vm=" + polling_vm, "--pause")
    stats = lambda: rest(env, "GET", "/api/v1/vms/%s/vcpus/0/stats" % polling_vm).json()["by_id"]
    before = stats()
    out = cli(env, "--vm=" + polling_vm, "--run")
    assert out.exit_code == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "vm exit[0]" and re.fullmatch(r"\trip\t\t0x[0-9a-f]{16}", lines[1])
    assert lines[2:] == ["\tinst_length\t1", "\treason\t\tINOUT", "\tdirection\tIN", "\tbytes\t\t1", "\tflags\t\t",
                         "\tport\t\t0x03fd", lines[8]], lines
    assert re.fullmatch(r"\teax\t\t0x[0-9a-f]{8}", lines[8])
    after = stats()
    assert after["VMEXIT_USERSPACE"] == before["VMEXIT_USERSPACE"] + 1
    assert after["VMEXIT_INOUT"] > before["VMEXIT_INOUT"]
    assert rest(env, "GET", "/api/v1/vms/" + polling_vm).json()["state"] == "paused"
    assert "--run steps a paused VM" in one_line_error(cli(env, "--vm=demo", "--run"))
    assert cli(env, "--vm=" + polling_vm, "--resume").exit_code == 0
    rest(env, "POST", "/api/v1/vms/%s/console" % polling_vm, json={"data": "echo stepped\r"})
    assert wait_for(lambda: "\nstepped" in console_text(env, polling_vm))


def test_getcap_and_setcap(env, fresh_vm):
    out = cli(env, "--vm=" + fresh_vm, "--getcap")
    assert len(out.stdout.splitlines()) == 11
    assert 'Capability "hlt_exit" is set on vcpu 0' in out.stdout
    assert 'Capability "bpt_exit" is not set on vcpu 0' in out.stdout
    assert cli(env, "--vm=" + fresh_vm, "--setcap=1", "--capname=bpt_exit").exit_code == 0
    out = cli(env, "--vm=" + fresh_vm, "--getcap", "--capname=bpt_exit", "--get-exception-bitmap")
    assert out.stdout.splitlines()[1] == 'Capability "bpt_exit" is set on vcpu 0'
    assert int(out.stdout.split()[1], 16) & (1 << 3)
    assert "not available" in one_line_error(cli(env, "--vm=" + fresh_vm, "--setcap=1", "--capname=rdtscp"))
    assert cli(env, "--vm=" + fresh_vm, "--setcap=1", "--capname=mtrap_exit").exit_code == 0    # vmx_setcap: MTF
    out = cli(env, "--vm=" + fresh_vm, "--getcap", "--capname=mtrap_exit", "--get-vmcs-procbased-ctls")
    assert out.stdout.splitlines()[1] == 'Capability "mtrap_exit" is set on vcpu 0'
    assert int(out.stdout.split()[1], 16) & (1 << 27)                                          # PROCBASED_MTF
    assert cli(env, "--vm=" + fresh_vm, "--setcap=0", "--capname=mtrap_exit").exit_code == 0


def test_intinfo_and_nmi(env, fresh_vm):
    out = cli(env, "--vm=demo", "--get-intinfo")
    assert out.stdout == "pending:\tn/a\ncurrent:\tn/a\n"
    assert cli(env, "--vm=" + fresh_vm, "--inject-nmi").exit_code == 0
    assert wait_for(lambda: "exception 2 at 0x" in console_text(env, fresh_vm))    # the shell's IDT took it
    stats = cli(env, "--vm=" + fresh_vm, "--get-stats").stdout
    assert re.search(r"number of NMIs delivered to vcpu\s+1$", stats, re.M)


def test_force_reset_and_poweroff(env, fresh_vm):
    assert cli(env, "--vm=" + fresh_vm, "--force-reset").exit_code == 0
    assert wait_for(lambda: console_text(env, fresh_vm).count("webhyve shell ready") == 2)
    assert cli(env, "--vm=" + fresh_vm, "--force-poweroff").exit_code == 0
    assert rest(env, "GET", "/api/v1/vms/" + fresh_vm).json()["suspend_reason"] == "poweroff"
    assert cli(env, "--vm=" + fresh_vm, "--destroy").exit_code == 0
    assert fresh_vm not in cli(env, "list").stdout


def test_sysctl_read_write_and_refusal(env):
    listed = cli(env, "sysctl").stdout.splitlines()
    tunables = rest(env, "GET", "/api/v1/tunables").json()["tunables"]
    assert listed == ["%s: %d" % (t["name"], t["value"]) for t in tunables]
    assert cli(env, "sysctl", "hw.vmm.halt_detection").stdout == "hw.vmm.halt_detection: 1\n"
    changed = cli(env, "sysctl", "hw.vmm.halt_detection=0")
    assert changed.exit_code == 0 and changed.stdout == "hw.vmm.halt_detection: 1 -> 0\n"
    assert cli(env, "sysctl", "hw.vmm.halt_detection").stdout == "hw.vmm.halt_detection: 0\n"
    assert "0..1" in one_line_error(cli(env, "sysctl", "hw.vmm.halt_detection=7"))
    assert cli(env, "sysctl", "hw.vmm.halt_detection").stdout == "hw.vmm.halt_detection: 0\n"
    cli(env, "sysctl", "hw.vmm.halt_detection=1")
    assert "unknown oid" in one_line_error(cli(env, "sysctl", "hw.vmm.no_such_thing"))
    described = dict(line.split(": ", 1) for line in cli(env, "sysctl", "-d").stdout.splitlines())
    for t in tunables:                   # -d says when bhyve and webhyve read each (issue 17 item 3)
        assert described[t["name"]].startswith(t["description"] + " ("), t["name"]
    assert described["hw.vmm.halt_detection"].endswith("(bhyve reads it only when vmm.ko loads; webhyve reads it "
                                                       "when a VM is created: running VMs keep their value)")
    assert "read-only: follows hw.vmm.l1d_flush" in described["hw.vmm.vmx.l1d_flush"]
    viewer = dict(env, WEBHYVE_TOKEN=VIEWER)
    assert "control token" in one_line_error(cli(viewer, "sysctl", "hw.vmm.halt_detection=0"))


def test_create_with_too_many_vcpus_is_refused(env):
    """--create --cpus beyond what the engine models: the engine's reason on one line; no VM."""
    from engine.tunables import VM_MAXCPU
    done = cli(env, "--vm=many", "--create", "--guest=shell", "--cpus=%d" % (VM_MAXCPU + 1))
    assert "webhyve models at most %d (xAPIC IDs are 8 bits" % VM_MAXCPU in one_line_error(done)
    assert "many" not in [v["name"] for v in rest(env, "GET", "/api/v1/vms").json()["vms"]]


def test_tasks_lists_the_log_newest_first(env, fresh_vm):
    """`vmmctl tasks VM`: the VM's create, then a refused pause of it with the server's error, newest first."""
    rest(env, "POST", "/api/v1/vms/%s/pause" % fresh_vm)
    refused = rest(env, "POST", "/api/v1/vms/%s/pause" % fresh_vm)
    assert refused.status_code == 409
    done = cli(env, "tasks", fresh_vm)
    assert done.exit_code == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split() == ["STARTED", "ENDED", "DURATION", "NODE", "WHO", "DESCRIPTION", "STATUS"]
    assert len(rows) == 3 and "pause VM %s" % fresh_vm in rows[0] and "create VM %s" % fresh_vm in rows[2]
    assert rows[0].endswith("error 409: " + refused.json()["error"]) and rows[1].endswith(" OK")
    assert re.search(r"\d\.\d{3}s  \S+ +control ", rows[2])
    assert len(cli(env, "tasks", "--limit", "1").stdout.splitlines()) == 2
    assert cli(env, "tasks", "bad name!").exit_code == 2          # the name rule, checked before asking


def test_screenshot_writes_a_png(env, tmp_path):
    path = tmp_path / "demo.png"
    assert cli(env, "screenshot", "demo", "-o", str(path)).exit_code == 0
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 200 and image.height > 100


def test_record_stops_on_ctrl_c_and_plays_with_asciinema(env, tmp_path):
    path = tmp_path / "demo.cast"
    rest(env, "POST", "/api/v1/vms/demo/console", json={"data": "echo before the recording\r"})
    proc = subprocess.Popen([sys.executable, "-m", "webhyve.cli", "record", "demo", "-o", str(path), "--seconds", "20"],
                            cwd=ROOT, env=dict(os.environ, **env), stderr=subprocess.PIPE)
    assert b"recording demo" in proc.stderr.readline()
    rest(env, "POST", "/api/v1/vms/demo/console", json={"data": "echo recorded words\r"})
    assert wait_for(lambda: "\nrecorded words\nwebhyve>" in console_text(env, "demo"))   # the line's CR LF too
    proc.send_signal(signal.SIGINT)                                   # Ctrl-C stops the recording
    assert proc.wait(30) == 0
    played = subprocess.run([ASCIINEMA, "cat", str(path)], capture_output=True, timeout=60)
    assert played.returncode == 0, played.stderr
    assert b"\r\nrecorded words\r\n" in played.stdout


def test_record_with_seconds(env, tmp_path):
    path = tmp_path / "short.cast"
    out = cli(env, "record", "demo", "-o", str(path), "--seconds", "0.5")
    assert out.exit_code == 0, out.stderr
    assert subprocess.run([ASCIINEMA, "cat", str(path)], capture_output=True, timeout=60).returncode == 0


def test_console_with_piped_stdin_gets_the_shells_help(env):
    done = vmmctl(env, "console", "demo", stdin=b"help\n")
    assert done.returncode == 0, done.stderr
    assert b"cpuid LEAF [SUB]" in done.stdout
    assert b"press Ctrl-] to detach" in done.stderr


def test_console_with_the_viewer_token_is_read_only(env):
    done = vmmctl(dict(env, WEBHYVE_TOKEN=VIEWER), "console", "demo", stdin=b"echo typed by a viewer\n")
    assert done.returncode == 0, done.stderr
    assert b"(read-only viewer)" in done.stderr and b"typing needs the control token" in done.stderr
    assert "typed by a viewer" not in console_text(env, "demo")


def test_console_on_a_terminal_detaches_with_ctrl_bracket(env):
    """On a pseudo-terminal: the escape is announced, typed keys reach the shell raw, Ctrl-] detaches."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "webhyve.cli", "console", "demo"], stdin=slave, stdout=slave,
                            stderr=slave, cwd=ROOT, env=dict(os.environ, **env))
    os.close(slave)
    try:
        seen = read_until(master, b"webhyve shell ready")
        assert seen.startswith(b"vmmctl: attached")                       # the banner first, on a line of its own,
        assert seen.index(b"to detach\r\n") < seen.index(b"webhyve")     # then the replayed history
        os.write(master, b"echo on a tty\r")
        seen += read_until(master, b"\non a tty")
        os.write(master, b"\x1d")
        assert proc.wait(30) == 0
        assert b"detached from demo (left with Ctrl-])" in seen + read_until(master, b"Ctrl-])")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def read_until(fd, text, timeout=30):
    seen, deadline = b"", time.monotonic() + timeout
    while text not in seen:
        assert time.monotonic() < deadline, "timed out waiting for %r; got %r" % (text, seen[-300:])
        if select.select([fd], [], [], 0.1)[0]:
            try:
                seen += os.read(fd, 4096)
            except OSError:                     # the other end closed: nothing more will come
                break
    return seen


def test_config_file_instead_of_the_environment(env, tmp_path):
    conf = tmp_path / "config" / "webhyve" / "vmmctl.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[server]\nurl = %s\ntoken = %s\n" % (env["WEBHYVE_URL"], CONTROL))
    out = cli({"WEBHYVE_URL": None, "WEBHYVE_TOKEN": None, "XDG_CONFIG_HOME": env["XDG_CONFIG_HOME"]}, "list")
    assert out.exit_code == 0, out.stderr
    assert "demo" in out.stdout


@pytest.mark.parametrize("case", ["no such VM", "wrong token", "server down", "unknown option", "no token"])
def test_errors_are_one_clear_line(env, case):
    args, env2, expect = ["--vm=demo", "--get-rip"], dict(env), None
    if case == "no such VM":
        args, expect = ["--vm=ghost", "--get-rip"], "no VM named 'ghost'"
    elif case == "wrong token":
        env2["WEBHYVE_TOKEN"], expect = "not-the-token", "refused the token"
    elif case == "server down":
        env2["WEBHYVE_URL"], expect = "http://127.0.0.1:%d" % free_port(), "cannot reach the webhyve server"
    elif case == "unknown option":
        args, expect = ["--vm=demo", "--get-no-such-register"], "No such option: --get-no-such-register"
    else:
        env2["WEBHYVE_TOKEN"], expect = "", "no token"
    done = vmmctl(env2, *args)
    assert expect in one_line_error(done)


def test_console_of_a_missing_vm(env):
    assert "no VM named 'ghost'" in one_line_error(vmmctl(env, "console", "ghost"))


def test_snapshots_saved_listed_restored_and_deleted_from_the_cli(env, fresh_vm):
    saved = cli(env, "snapshot", "save", fresh_vm, "cli-snap")
    assert saved.exit_code == 0 and "cli-snap:" in saved.stdout and "pages" in saved.stdout
    assert cli(env, "--vm=" + fresh_vm, "--checkpoint=cli-check").exit_code == 0
    listed = cli(env, "snapshot", "list").stdout
    assert re.search(r"cli-snap\s+%s\s+32M" % fresh_vm, listed) and "cli-check" in listed
    restored = cli(env, "snapshot", "restore", "cli-snap", "--as", "clicopy")
    assert restored.exit_code == 0 and restored.stdout.startswith("clicopy: restored from cli-snap")
    rest(env, "POST", "/api/v1/vms/clicopy/console", json={"data": "help\r"})
    assert wait_for(lambda: "cpuid" in console_text(env, "clicopy"))
    one_line_error(cli(env, "snapshot", "restore", "no-such-snapshot"))
    assert cli(env, "--vm=clicopy", "--suspend=cli-susp").exit_code == 0
    assert wait_for(lambda: rest(env, "GET", "/api/v1/vms/clicopy").json()["state"] == "suspended")
    for name in ("cli-snap", "cli-check", "cli-susp"):
        assert cli(env, "snapshot", "delete", name).exit_code == 0
    assert "cli-snap" not in cli(env, "snapshot", "list").stdout
    rest(env, "DELETE", "/api/v1/vms/clicopy")


def test_demo_runs_headless_and_writes_its_files(tmp_path):
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "vmmctl"), "demo", "demand-paging",
                           "-o", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 MiB superpages in place" in done.stdout
    assert {"demand-paging-checksum.png", "demand-paging-summary.txt", "demand-paging.cast"} <= set(os.listdir(tmp_path))
