"""The ACPI tables through Intel's own tools (Debian's acpica-tools, the ACPICA code Linux's ACPI runs on): `iasl -d`
decompiles each table without a complaint and shows the entries we put there, iasl's compiler builds the same RSDP
bytes from its field list, and `acpiexec` loads the tables and evaluates \\_S5."""
import re
import shutil
import subprocess

import pytest

from engine.loaders import acpi_tables as A

IASL, ACPIEXEC = "iasl", "acpiexec"
# The RSDP in iasl's data table language (the form bhyve's old acpi.c compiled its RSDP from).
RSDP_SOURCE = """\
[0008]                          Signature : "RSD PTR "
[0001]                           Checksum : 00
[0006]                             Oem ID : "WEBHYV"
[0001]                           Revision : 02
[0004]                       RSDT Address : %08X
[0004]                             Length : 00000024
[0008]                       XSDT Address : %016X
[0001]                  Extended Checksum : 00
[0003]                           Reserved : 000000
"""


@pytest.fixture(scope="module")
def tools():
    for tool in (IASL, ACPIEXEC):
        assert shutil.which(tool), "%s not found: `make deps` installs Debian's acpica-tools" % tool


def written(tmp_path, ncpus):
    """{signature: .dat file} of the tables for `ncpus` vCPUs."""
    files = {}
    for name, (_, data) in A.tables(range(ncpus)).items():
        files[name] = tmp_path / ("%s.dat" % name.lower())
        files[name].write_bytes(data)
    return files


def decompiled(path):
    """iasl -d's output for one table: the .dsl text, after checking iasl itself said nothing but its banner."""
    run = subprocess.run([IASL, "-d", str(path)], capture_output=True, text=True, cwd=path.parent, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not re.search(r"error|warning|invalid", run.stdout + run.stderr, re.I), run.stdout + run.stderr
    text = path.with_suffix(".dsl").read_text()
    assert "/****" not in text and "Incorrect" not in text, text            # iasl's notes on a damaged table
    return text


def fields(text):
    """[(field name, value)] of an iasl data table dump ("[Offset Dec Len]  Name : Value")."""
    return re.findall(r"^\[[0-9A-F]+h \d+ +\d+\] +(.+?) : (.*)$", text, re.M)


@pytest.mark.parametrize("ncpus", [1, 4])
def test_iasl_decompiles_every_table_cleanly(tools, tmp_path, ncpus):
    """FACP, APIC, FACS, RSDT, XSDT and the DSDT each decompile with no error, warning or checksum note."""
    for name, path in written(tmp_path, ncpus).items():
        if name != "RSDP":                                        # iasl -d reads only tables with a header
            decompiled(path)


def test_iasl_reads_the_madt_entries(tools, tmp_path):
    """The MADT as iasl prints it: a Processor Local APIC per vCPU, the I/O APIC, two overrides, the NMI."""
    dump = fields(decompiled(written(tmp_path, 4)["APIC"]))
    kinds = [value for name, value in dump if name == "Subtable Type"]
    assert kinds == ["00 [Processor Local APIC]"] * 4 + ["01 [I/O APIC]"] + ["02 [Interrupt Source Override]"] * 2 \
        + ["04 [Local APIC NMI]"]
    assert [value for name, value in dump if name == "Local Apic ID"] == ["00", "01", "02", "03"]
    assert ("Address", "FEC00000") in dump and ("I/O Apic ID", "00") in dump
    assert [value for name, value in dump if name == "Interrupt"] == ["00000000", "00000002", "00000009"]
    assert ("Interrupt Input LINT", "01") in dump


def test_iasl_reads_the_fadt(tools, tmp_path):
    """The FADT as iasl prints it: the fixed hardware blocks, the SCI, the reset register and its value."""
    text = decompiled(written(tmp_path, 1)["FACP"])
    dump = dict(fields(text))
    assert dump["Revision"] == "06" and dump["FADT Minor Revision"] == "05"
    assert dump["SCI Interrupt"] == "0009" and dump["SMI Command Port"] == "00000000"
    assert dump["PM1A Event Block Address"] == "00000400" and dump["PM1A Control Block Address"] == "00000404"
    assert dump["PM Timer Block Address"] == "00000408" and dump["Value to cause reset"] == "06"
    for flag in ("Reset Register Supported (V2) : 1", "32-bit PM Timer (V1) : 1",
                 "8042 Present on ports 60/64 (V2) : 1", "Hardware Reduced (V5) : 0"):
        assert re.search(re.escape(flag), re.sub(r" +", " ", text)), flag
    assert re.search(r"Reset Register : \[Generic Address Structure\]\n.*Space ID : 01 \[SystemIO\]\n"
                     r".*Bit Width : 08\n.*Bit Offset : 00\n.*Encoded Access Width : 01 \[Byte Access:8\]\n"
                     r".*Address : 0000000000000CF9", text)


def test_iasl_decompiles_the_dsdt_to_s5(tools, tmp_path):
    """The DSDT decompiles to ASL holding Name (_S5, Package (0x02) {0x05, Zero})."""
    text = decompiled(written(tmp_path, 1)["DSDT"])
    assert 'DefinitionBlock ("", "DSDT", 2, "WEBHYV", "WHDSDT  ", 0x00000001)' in text
    assert re.search(r"Name \(_S5, Package \(0x02\)[^{]*\{\s*0x05,\s*Zero\s*\}\)", text), text


def test_iasl_compiles_the_same_rsdp(tools, tmp_path):
    """iasl -d cannot read an RSDP file, but its compiler builds one from a field list and fills in both
    checksums: the bytes are ours."""
    at = {name: address for name, (address, _) in A.tables([0]).items()}
    source = tmp_path / "rsdp.asl"
    source.write_text(RSDP_SOURCE % (at["RSDT"], at["XSDT"]))
    run = subprocess.run([IASL, str(source)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert "0 Errors, 0 Warnings" in run.stdout, run.stdout + run.stderr
    assert (tmp_path / "rsdp.aml").read_bytes() == A.tables([0])["RSDP"][1]


def test_acpiexec_loads_the_tables_and_evaluates_s5(tools, tmp_path):
    """ACPICA's acpiexec takes the FADT, MADT, FACS and DSDT, loads the DSDT's namespace and evaluates \\_S5 to the
    package `poweroff` reads: SLP_TYPa 5, SLP_TYPb 0."""
    files = written(tmp_path, 2)
    run = subprocess.run([ACPIEXEC, "-b", "evaluate \\_S5"] + [str(files[n]) for n in ("DSDT", "FACP", "APIC", "FACS")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    out = run.stdout + run.stderr
    assert "1 ACPI AML tables successfully acquired and loaded" in out, out
    assert re.search(r"FACP 0x[0-9A-F]+ 000114 \(v06 WEBHYV WHFACP", out), out
    assert re.search(r"\[Package\] Contains 2 Elements:\s+\[Integer\] = 0+5\s+\[Integer\] = 0+\s", out), out


def test_iasl_decompiles_the_pci_root_bridge(tools, tmp_path):
    """A VM with PCI devices: \\_SB.PCI0 with EisaId PNP0A03, bus 0, the I/O ports around 0xCF8-0xCFF, the 32-bit
    memory window the BARs live in, and a _PRT of 124 entries routing slot s's INTx pin p to GSI 16 + (s+p-1) % 8;
    acpiexec loads it and evaluates _PRT."""
    dsdt = A.tables([0], pci=True)["DSDT"][1]
    path = tmp_path / "pci-dsdt.dat"
    path.write_bytes(dsdt)
    text = decompiled(path)
    assert 'Name (_HID, EisaId ("PNP0A03")' in text and "Device (PCI0)" in text and "Scope (\\_SB)" in text
    compact = re.sub(r"\s+", " ", text)
    for window in ("0x0000, // Range Minimum 0x0000, // Range Maximum", "0x0000, // Range Minimum 0x0CF7,",
                   "0x0D00, // Range Minimum 0xFFFF,", "0xC0000000, // Range Minimum 0xC003FFFF,"):
        assert window in compact, window
    assert "Name (_PRT, Package (0x7C)" in text
    assert "Package (0x04) { 0x0003FFFF, Zero, Zero, 0x13 }" in compact        # slot 3 INTA# → GSI 19
    assert "Package (0x04) { 0x001FFFFF, 0x03, Zero, 0x12 }" in compact        # slot 31 INTD# → GSI 18
    files = written(tmp_path, 1)
    files["DSDT"].write_bytes(dsdt)
    run = subprocess.run([ACPIEXEC, "-b", "evaluate \\_SB.PCI0._PRT"] + [str(files[n]) for n in ("DSDT", "FACP", "APIC", "FACS")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    out = run.stdout + run.stderr
    assert "[Package] Contains 124 Elements" in out, out[-3000:]
