"""bhyvectl's output formats as webhyve/bhyvectl.py prints them, from bhyvectl.c's printf formats."""
from engine.vmx import exits as E
from engine.core import vmcs as V
from webhyve.cli import bhyvectl as B


def test_intinfo_as_print_intinfo_prints_it():
    assert B.intinfo_text(0) == "n/a"
    assert B.intinfo_text(E.interruption_info(2, E.TYPE_NMI)) == "nmi vector 2"
    assert B.intinfo_text(E.interruption_info(0x30, E.TYPE_EXTINT)) == "extint vector 48"
    assert B.intinfo_text(E.interruption_info(0x80, E.TYPE_SWINTR)) == "swint vector 128"
    page_fault = E.interruption_info(14, E.TYPE_HWEXC, True) | 0x2 << 32
    assert B.intinfo_text(page_fault) == "exception vector 14 errcode 0x2"


def test_memmap_sizes_as_humanize_number():
    assert [B.humanize(n) for n in (64 << 20, 512 << 10, 4095, 1 << 30, (1 << 20) + 4096)] == \
        ["64MB", "512KB", "4095B", "1GB", "1028KB"]


def test_an_io_exit_dumps_as_inout():
    q = E.io_qualification(0x3FD, 1, True, False, False, False)
    lines = B.run_dump(0, {"exit": {"reason": E.INOUT, "name": "INOUT", "qualification": q, "length": 1,
                                    "rip": 0x1000F8}, "exitcode": B.EXITCODE_INOUT, "rax": 0x1260,
                        "instruction_error": 0})
    assert lines == ["vm exit[0]", "\trip\t\t0x00000000001000f8", "\tinst_length\t1", "\treason\t\tINOUT",
                     "\tdirection\tIN", "\tbytes\t\t1", "\tflags\t\t", "\tport\t\t0x03fd", "\teax\t\t0x00001260"]


def test_every_vmcs_field_has_one_getter_bhyvectls_first():
    """bhyvectl's getters in its order, then webhyve's --get-vmcs-FIELD for every field bhyvectl has none for."""
    options = [option for option, _ in B.GETTERS]
    assert len(options) == len(set(options))
    assert {B.vmcs_option(f) for f in V.FIELDS} <= set(options)
    assert options[:len(B.GET_ALL)] == [option for option, _ in B.GET_ALL]
