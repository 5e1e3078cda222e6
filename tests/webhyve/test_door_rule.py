"""webhyve/ enters the engine by its one door: it imports only engine.door and touches no engine internals."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOOR = "engine.door"
# What only the engine's own threads may hold (docs/engine.md, "Thread rules"): the Unicorn instance, the
# context block, the kernels' arrays, the vCPU and VM objects and the hypervisor behind the door.
INTERNAL_ATTRIBUTES = {"uc", "ctx", "counters", "pmap", "mailbox", "ring", "scratch", "hypervisor", "memory_access"}
INTERNAL_NAMES = {"Vcpu", "VM", "Hypervisor", "Uc"}      # as imported names; VM is also a schema field's name


def modules():
    return sorted((ROOT / "webhyve").rglob("*.py"))


def imported(node):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0:
        return [node.module] + ["%s.%s" % (node.module, alias.name) for alias in node.names]
    return []


def problems(path):
    """(line, what) for each way `path` reaches past the door."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        for name in imported(node):
            top = name.split(".")[0]
            outside = top == "engine" and name != "engine" and not (name + ".").startswith(DOOR + ".")
            if top == "numpy" or outside or (top == "engine" and name.split(".")[-1] in INTERNAL_NAMES):
                found.append((node.lineno, "imports %s" % name))
        if isinstance(node, ast.Attribute) and node.attr in INTERNAL_ATTRIBUTES:
            found.append((node.lineno, "uses .%s" % node.attr))
        if isinstance(node, ast.Subscript) and getattr(node.value, "attr", getattr(node.value, "id", None)) == "vcpus":
            found.append((node.lineno, "indexes vcpus[...]"))
    return found


def test_webhyve_imports_only_the_engines_door_and_holds_no_internals():
    report = ["%s:%d %s" % (path.relative_to(ROOT), line, what) for path in modules() for line, what in problems(path)]
    assert modules() and not report, "\n".join(report)


def test_the_rule_catches_what_it_forbids(tmp_path):
    """The checker itself: each forbidden form in a sample is reported."""
    sample = tmp_path / "sample.py"
    sample.write_text("import numpy\nfrom engine.vcpu import GPRS\nfrom engine import stats\n"
                      "x = vm.vcpus[0].uc\ny = vcpu.ctx[3]\nfrom engine.door import Host\n"
                      "from engine.door.vcpu_view import Vcpu\n")
    assert sorted(what for _, what in problems(sample)) == sorted([
        "imports numpy", "imports engine.vcpu", "imports engine.vcpu.GPRS", "imports engine.stats",
        "uses .uc", "indexes vcpus[...]", "uses .ctx", "imports engine.door.vcpu_view.Vcpu"])
