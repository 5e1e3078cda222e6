"""The one name rule: ASCII letters, digits, '-' and '_', 1 to 64 characters, for every VM the engine creates."""
import pytest

from engine import ConfigError, Hypervisor, names


@pytest.mark.parametrize("name", ["a", "demo", "vm-1_b", "A" * 64, "0", "-", "_"])
def test_names_by_the_rule_are_taken(name):
    assert names.problem(name) is None and names.check(name) == name


@pytest.mark.parametrize("name, problem", [
    ("", "is empty"),
    ("a" * 65, "65 characters long, more than 64"),
    ("ünï", "has 'ü'"),
    ("٣", "has '٣'"),                     # an Arabic-Indic digit: str.isalnum() says yes, the rule says no
    ("two words", "has ' '"),
    ("dot.ted", "has '.'"),
    ("new\nline", "has '\\n'"),
    ("x\ud800", "has '\\ud800'"),
    (["a"], "must be text, not list"),
    (None, "must be text, not NoneType"),
])
def test_names_against_the_rule_are_refused_with_the_problem_and_the_rule(name, problem):
    with pytest.raises(ConfigError) as refused:
        names.check(name, "snapshot name")
    message = str(refused.value)
    assert message.startswith("snapshot name ") and problem in message and names.RULE in message


def test_the_engine_creates_no_vm_with_a_name_against_the_rule():
    """Before the rule, create_vm took any Unicode alphanumeric of any length (str.isalnum)."""
    hv = Hypervisor(host_mem_mb=64)
    for bad in ("ünï", "x" * 300, "٣"):
        with pytest.raises(ConfigError, match="ASCII letters"):
            hv.create_vm(bad, mem_mb=2)
    assert hv.vms == {}
    assert hv.create_vm("x" * 64, mem_mb=2).name == "x" * 64


@pytest.mark.parametrize("path, name", [
    ("guests/build/shell.elf", "shell"),
    ("/tmp/my disk.img", "my_disk"),
    ("ünï.bin", "_n_"),
    ("/srv/%s.elf" % ("k" * 100), "k" * 64),
    (".hidden", "vm"),
])
def test_a_name_made_from_a_file_follows_the_rule(path, name):
    assert names.from_file(path) == name and names.problem(name) is None
