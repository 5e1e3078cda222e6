"""The field types: what each takes from JSON and from text, and that anything else is an Invalid naming the rule."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from webhyve.web.schema import Address, Bool, Int, Invalid, Name, Schema, SchemaError, Setting, Text, Typed

FIELDS = [Int(1, 4096), Int(0, 63), Bool(), Text(1, 64), Text(choices=("a", "b")), Name(), Address(), Setting(),
          Typed(1, 16)]
anything = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text() | st.binary(max_size=4)
                        | st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(), kids, max_size=3),
                        max_leaves=6)


@pytest.mark.parametrize("field", FIELDS, ids=lambda f: type(f).__name__)
@settings(max_examples=200, deadline=None, database=None)
@given(value=anything, text=st.text() | st.from_regex(r"\s*-*[0-9_xob٣²]{0,25}\s*", fullmatch=True))
def test_a_field_answers_a_value_or_invalid_and_nothing_else(field, value, text):
    """Any JSON value to check() and any text to from_text(): a clean value the field takes again, or Invalid."""
    for attempt in (lambda: field.check(value), lambda: field.from_text(text)):
        try:
            clean = attempt()
        except Invalid as problem:
            assert problem.kind
        else:
            assert field.check(clean) == clean


@pytest.mark.parametrize("field, text, value", [
    (Int(-5, 4096), "64", 64), (Int(-5, 5), " -5 ", -5), (Bool(), "Off", False), (Bool(), "1", True),
    (Address(), "0x1000", 0x1000), (Address(), "4096", 4096), (Address(), "0o10", 8),
])
def test_text_that_fields_take(field, text, value):
    assert field.from_text(text) == value


@pytest.mark.parametrize("field, text", [
    (Int(1, 10), "--5"), (Int(1, 10), "٣"), (Int(1, 10), "1_0"), (Int(1, 10), "1.0"), (Int(1, 10), "²"),
    (Bool(), "maybe"), (Address(), "\uff11"), (Address(), "0x1" + "0" * 16), (Address(), "-1"),
])
def test_text_that_fields_refuse(field, text):
    with pytest.raises(Invalid):
        field.from_text(text)


def test_json_values_that_look_right_but_are_not():
    """A boolean is not an integer, a float is not one even when whole, a pair of surrogates is not text."""
    for field, value in [(Int(0, 9), True), (Int(0, 9), 1.0), (Bool(), 1), (Text(0, 9), "a\ud800"), (Address(), False),
                         (Setting(), True), (Typed(1, 9), 7), (Name(), "ü")]:
        with pytest.raises(Invalid):
            field.check(value)


def test_schema_messages_name_where_the_field_and_the_problem():
    schema = Schema(vm=Name(), since=Int(0, 9, default=None, nullable=True))
    assert schema.check({"vm": "sh", "since": None}, "here") == {"vm": "sh", "since": None}
    for payload, message in [
        ({"vm": "sh", "since": True}, "here: field 'since' must be an integer from 0 to 9, not true (a boolean)"),
        ({"since": 1}, "here: field 'vm' is missing (it takes vm, since?)"),
        ({"vm": "sh", "x": 1}, "here: unknown field 'x' (it takes vm, since?)"),
        ({"vm": "a b"}, "here: field 'vm' must be a VM name of ASCII letters, digits, '-' and '_', 1 to 64 "
                        "characters, not \"a b\": it has ' ', which is not allowed"),
        ([], "here: send a JSON object such as {\"vm\": …}, not a list"),
    ]:
        with pytest.raises(SchemaError) as refused:
            schema.check(payload, "here")
        assert refused.value.message == message and refused.value.status == 400
