"""vmmctl against bhyvectl itself: every option name and every output format of usr.sbin/bhyvectl/bhyvectl.c, as
extracted once into data/bhyvectl_options.json (freebsd-src commit named there), checked against vmmctl's options,
its getters' output and its --run dump. No server: the getters print from a made-up vCPU state."""
import json
import os
import re

import pytest
from click.testing import CliRunner

from engine.vmx import exits as E
from webhyve.cli import bhyvectl as B
from webhyve.cli import main
from webhyve.cli.vmmctl import main as group

DATA = json.load(open(os.path.join(os.path.dirname(__file__), "data", "bhyvectl_options.json")))
OPTIONS = {o["name"]: o["argument"] for o in DATA["options"]}
PARAMS = {name[2:]: p for p in group.params for name in p.opts}
SPEC = {"%d": r"-?\d+", "%u": r"\d+", "%ld": r"-?\d+", "%hu": r"\d+", "%s": r".*", "%c": r".", "%#lx": r"(0|0x[0-9a-f]+)",
        "%#x": r"(0|0x[0-9a-f]+)", "%03d": r"\d{3,}", "%02x": r"[0-9a-f]{2,}", "%-40s": r".{40,}",
        "%-20s": r".{20,}"}


def pattern(c_format):
    """A C printf format as a regular expression for one printed line (fixed-width hex exact)."""
    parts = re.split(r"(%[-#0-9]*l?[dxusXhc]u?)", c_format.rstrip("\n"))
    out = ""
    for i, part in enumerate(parts):
        if i % 2 == 0:
            out += re.escape(part)
        elif part in SPEC:
            out += SPEC[part]
        else:
            width = re.fullmatch(r"%0(\d+)l?x", part)
            assert width, part
            out += "[0-9a-f]{%s}" % width[1]
    return out


class FakeSource:
    """What vmmctl's Sources gives the getters, made up: every register, VMCS field and descriptor nonzero."""

    def __init__(self, cpu=1):
        self.cpu, self.capname = cpu, None
        regs = {name: 0x1000 + i for i, name in enumerate(B.SETTABLE)}
        vmcs = {f.name: (0x10 + i) for i, f in enumerate(B.V.FIELDS)}
        vmcs["EXCEPTION_BITMAP"] = 0                               # %#lx prints a bare 0
        descs = {d: {"base": 0x1000 * i, "limit": 0xFFFF, "access": 0x93}
                 for i, d in enumerate(("ds", "es", "fs", "gs", "ss", "cs", "tr", "ldtr", "gdtr", "idtr"))}
        self.state = {"vcpu": cpu, "state": "paused", "registers": regs, "vmcs": vmcs, "descriptors": descs,
                      "intinfo": {"pending": 0, "current": E.interruption_info(14, E.TYPE_HWEXC, True) | 2 << 32},
                      "capabilities": {name: i % 2 for i, name in enumerate(B.CAPABILITIES)},
                      "msr_bitmap": [[0x10, True, False], [0x6E0, False, True], [0xC0000100, True, True]]}
        self.vm = {"cpus": 2}
        self.memmap = [{"gpa": 0, "size": 64 << 20, "name": "lowmem", "prot": "rwx"}]
        self.stats_text = "vcpu1 stats:\n%-40s\t%d\n" % ("total number of vm exits", 12)

    def cpus_in(self, wanted):
        return [i for i, st in enumerate(("running", "paused")) if wanted(st)]


def test_the_data_names_its_source():
    assert DATA["source"]["repository"] == "freebsd/freebsd-src"
    assert re.fullmatch(r"[0-9a-f]{40}", DATA["source"]["commit"])
    assert len(OPTIONS) == len(DATA["options"]) > 150


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_bhyvectl_option_is_vmmctls_or_refused_by_name(name):
    """Each of bhyvectl's options exists in vmmctl, taking an argument exactly when bhyvectl's does; the ones
    webhyve cannot carry out are refused with their reason."""
    assert name in PARAMS, "--%s is missing" % name
    if name not in ("vm", "cpu"):
        assert PARAMS[name].is_flag == (OPTIONS[name] == "none"), name
    if name in B.REFUSED:
        args = ["--vm=demo", "--%s%s" % (name, "" if OPTIONS[name] == "none" else "=1")]
        done = CliRunner(mix_stderr=False).invoke(main, args, env={"WEBHYVE_URL": "http://127.0.0.1:9"})
        assert done.exit_code == 2 and "--%s is refused: " % name in done.stderr and B.REFUSED[name] in done.stderr


def test_get_all_walks_bhyvectls_getters_once_in_its_order():
    printed = [option for option, _ in B.GET_ALL + list(B.TAIL)]
    assert len(printed) == len(set(printed))
    wanted = [entry["option"] for entry in DATA["get_all_order"] if entry["option"] not in B.REFUSED]
    assert printed == wanted


@pytest.mark.parametrize("entry", [e for e in DATA["get_all_order"] if e["option"] not in B.REFUSED
                                   and e["option"] not in ("get-memseg", "get-memmap", "get-active-cpus",
                                                           "get-suspended-cpus", "get-intinfo", "getcap", "get-stats")],
                         ids=lambda e: e["option"])
def test_each_getter_prints_bhyvectls_format(entry):
    getters = dict(B.GET_ALL + list(B.TAIL))
    lines = getters[entry["option"]](FakeSource())
    formats = [f.replace("%s[%d]", DATA["labels"][entry["option"]] + "[%d]") if entry["option"] in DATA["labels"]
               else f for f in entry["formats"]]
    if entry["option"] == "get-msr-bitmap":                         # one line per MSR let through
        formats = formats * len(lines)
    assert len(lines) == len(formats)
    for line, c_format in zip(lines, formats):
        assert re.fullmatch(pattern(c_format), line), (line, c_format)
        assert "[1]" in line or entry["option"] == "get-cpu-topology"      # the vCPU asked for


def test_the_values_and_bhyvectls_c_quirks():
    s, get = FakeSource(), dict(B.GET_ALL + list(B.TAIL))
    regs, vmcs = s.state["registers"], s.state["vmcs"]
    assert get["get-rflags"](s) == ["rflags[1]\t0x%016x" % regs["rflags"]]          # one tab, as bhyvectl
    assert get["get-exception-bitmap"](s) == ["exception_bitmap[1]\t0"]              # %#lx of 0
    assert get["get-desc-gdtr"](s) == ["gdtr[1]\t\t0x0000000000008000/0x0000ffff"]
    assert get["get-vmcs-vpid"](s) == ["vpid[1]\t\t0x%04x" % vmcs["VPID"]]
    assert get["get-vmcs-exit-inst-length"](s) == ["vmcs_exit_inst_length[1]\t0x%08x" % vmcs["EXIT_INSTRUCTION_LENGTH"]]
    assert get["get-vmcs-link"](s) == ["vmcs_pointer[1]\t0x%016x" % vmcs["LINK_POINTER"]]
    assert get["get-x2apic-state"](s) == ["x2apic_state[1]\t0"]
    assert get["get-msr-bitmap"](s) == ["MSR_TSC             [1]\t\tR-", "MSR       0x0006e0  [1]\t\t-W",
                                        "MSR_FSBASE          [1]\t\tRW"]      # msr_name(), %-20s
    assert get["get-active-cpus"](s) == ["active cpus:\t 0, 1"]
    assert get["get-suspended-cpus"](s) == ["suspended cpus:\t 1"]
    assert B.cpus_line("suspended cpus", []) == "suspended cpus:\t (none)"
    assert get["get-intinfo"](s) == ["pending:\tn/a", "current:\texception vector 14 errcode 0x2"]
    assert get["get-cpu-topology"](s) == ["cpu_topology:\tsockets=2, cores=1, threads=1, maxcpus=2"]
    assert B.memseg_lines(s.memmap) == ["ID  Length      Name", "0   64MB        lowmem"]
    assert B.memmap_lines(s.memmap)[1] == "0           64MB        lowmem      0           RWX   "
    assert B.gpa_pmap_line(0x1000, [{"entry": 0x2007}, {"entry": 0}]) == "gpa 0x1000: 0x2007 0"
    caps = get["getcap"](s)
    assert len(caps) == len(B.CAPABILITIES) and caps[1] == 'Capability "mtrap_exit" is set on vcpu 1'
    stats = next(e["formats"] for e in DATA["get_all_order"] if e["option"] == "get-stats")
    assert re.fullmatch(pattern(stats[1]), get["get-stats"](s)[1])


def test_run_dumps_as_dump_vm_run_exitcode():
    formats = DATA["dump_vm_run_exitcode"]
    q = E.io_qualification(0x3FD, 1, True, False, False, False)
    inout = B.run_dump(0, {"exit": {"reason": E.INOUT, "qualification": q, "length": 1, "rip": 0x1000F8},
                           "exitcode": DATA["vm_exitcode"]["VM_EXITCODE_INOUT"], "rax": 0x1260,
                           "instruction_error": 0})
    assert inout == ["vm exit[0]", "\trip\t\t0x00000000001000f8", "\tinst_length\t1", "\treason\t\tINOUT",
                     "\tdirection\tIN", "\tbytes\t\t1", "\tflags\t\t", "\tport\t\t0x03fd", "\teax\t\t0x00001260"]
    for line, c_format in zip(inout, formats["head"] + formats["VM_EXITCODE_INOUT"]):
        assert re.fullmatch(pattern(c_format), line)
    vmx = B.run_dump(2, {"exit": {"reason": E.EPT_MISCONFIG, "qualification": 0, "length": 3, "rip": 0x10},
                         "exitcode": DATA["vm_exitcode"]["VM_EXITCODE_VMX"], "rax": 0, "instruction_error": 0})
    assert vmx[4] == "\tstatus\t\t0" and vmx[5] == "\texit_reason\t0x00000031 (49)"
    for line, c_format in zip(vmx, formats["head"] + formats["VM_EXITCODE_VMX"]):
        assert re.fullmatch(pattern(c_format), line)
    vminsn = B.run_dump(0, {"exit": {"reason": E.VMCALL, "qualification": 0, "length": 3, "rip": 0x10},
                            "exitcode": DATA["vm_exitcode"]["VM_EXITCODE_VMINSN"], "rax": 0, "instruction_error": 0})
    assert vminsn[3:] == ["*** unknown vm run exitcode 22"]
    assert (B.EXITCODE_INOUT, B.EXITCODE_VMX, B.EXITCODE_INOUT_STR, B.EXITCODE_VMINSN) == tuple(
        DATA["vm_exitcode"]["VM_EXITCODE_" + n] for n in ("INOUT", "VMX", "INOUT_STR", "VMINSN"))


def test_set_mem_without_create_is_an_error():
    done = CliRunner(mix_stderr=False).invoke(main, ["--vm=demo", "--set-mem=128"],
                                              env={"WEBHYVE_URL": "http://127.0.0.1:9"})
    assert done.exit_code == 2 and "--set-mem" in done.stderr and "--create" in done.stderr
