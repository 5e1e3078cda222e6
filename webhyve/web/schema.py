"""Field types and schemas for what clients send: each field checks its type and range and says what is wrong.

One set of types serves both interfaces: api_schema.py declares every REST route's path, query and body
with them, event_schema.py every Socket.IO event's payload. The rules are the JSON ones, strictly: a
boolean is not an integer, 1.5 and 1.0 are not integers, text is valid Unicode (no lone surrogates, so
it encodes to UTF-8), a name follows engine/names.py's rule. A field that is wrong, missing or unknown
is a SchemaError whose message names the field and the problem.
"""
import json
import re

from engine.door.tables import names

from ..sessions.errors import ApiError

MISSING = object()
DECIMAL = re.compile(r"-?[0-9]{1,20}")                # ASCII digits only: int() also takes "٣" and "1_0"


class SchemaError(ApiError):
    """A request whose content is malformed: always a 400."""

    def __init__(self, message):
        super().__init__(400, message)


def shown(value):
    """A value as the client sent it, short: JSON where it has a JSON form."""
    if isinstance(value, bool):
        return "%s (a boolean)" % json.dumps(value)
    if isinstance(value, (bytes, bytearray)):
        return "%d bytes" % len(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Invalid(ValueError):
    """A value a field refuses: what the field must be, and optionally what is wrong with this one."""

    def __init__(self, kind, detail=None):
        super().__init__(kind)
        self.kind, self.detail = kind, detail


class Field:
    """A field's rule. `default` is used when the field is absent (MISSING: the field is required);
    `nullable` lets JSON null stand for the default."""
    kind = "a value"

    def __init__(self, default=MISSING, nullable=False):
        self.default, self.nullable = default, nullable

    @property
    def required(self):
        return self.default is MISSING

    def check(self, value):
        """The clean value, or Invalid saying what the field must be."""
        raise NotImplementedError

    def from_text(self, text):
        """The clean value from text (a query string, a multipart form field)."""
        return self.check(text)

    def schema(self):
        """The JSON Schema of the values check() takes (openapi.py), without default and nullable."""
        return {}


class Int(Field):
    def __init__(self, low, high, **kwargs):
        super().__init__(**kwargs)
        self.low, self.high = low, high
        self.kind = "an integer from %d to %d" % (low, high)

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, int) or not self.low <= value <= self.high:
            raise Invalid(self.kind)
        return value

    def from_text(self, text):
        if not DECIMAL.fullmatch(text.strip()):
            raise Invalid(self.kind)
        return self.check(int(text.strip()))

    def schema(self):
        return {"type": "integer", "minimum": self.low, "maximum": self.high}


class Bool(Field):
    kind = "true or false"
    WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}

    def check(self, value):
        if not isinstance(value, bool):
            raise Invalid(self.kind)
        return value

    def from_text(self, text):
        try:
            return self.WORDS[text.strip().lower()]
        except KeyError:
            raise Invalid("true or false (or 1/0, yes/no, on/off in a form)") from None

    def schema(self):
        return {"type": "boolean"}


class Text(Field):
    def __init__(self, min_len=0, max_len=4096, choices=None, **kwargs):
        super().__init__(**kwargs)
        self.min_len, self.max_len, self.choices = min_len, max_len, choices
        self.kind = "one of %s" % ", ".join(choices) if choices else "text of %d to %d characters" % (min_len, max_len)

    def check(self, value):
        if not isinstance(value, str):
            raise Invalid(self.kind)
        unicode_text(value)
        if self.choices is not None and value not in self.choices:
            raise Invalid(self.kind)
        if not self.min_len <= len(value) <= self.max_len:
            raise Invalid(self.kind, "it has %d" % len(value))
        return value

    def schema(self):
        if self.choices is not None:
            return {"type": "string", "enum": list(self.choices)}
        return {"type": "string", "minLength": self.min_len, "maxLength": self.max_len}


def unicode_text(value):
    """Invalid when `value` cannot be UTF-8: a lone surrogate, as JSON's "\\ud800" gives."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as problem:
        raise Invalid("valid Unicode text", "character %d is a lone surrogate, which UTF-8 cannot encode"
                      % problem.start) from None


class Name(Field):
    """A name by engine/names.py's rule; `what` says whose name in messages."""

    def __init__(self, what="VM name", **kwargs):
        super().__init__(**kwargs)
        self.what = what
        self.kind = "a %s of %s" % (what, names.RULE)

    def check(self, value):
        if not isinstance(value, str):
            raise Invalid(self.kind)
        wrong = names.problem(value)
        if wrong:
            raise Invalid(self.kind, "it " + wrong)
        return value

    def schema(self):
        return {"type": "string", "pattern": "^%s$" % names.PATTERN, "description": self.kind}


class Address(Field):
    """An address or register value: an integer 0..2^64-1, or text like "0x1000" or "4096"."""
    kind = "an address like 0x1000 (an integer 0 to 2^64-1 or its text)"

    def check(self, value):
        if isinstance(value, str):
            return self.from_text(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise Invalid(self.kind)
        return value

    def from_text(self, text):
        unicode_text(text)
        try:
            value = int(text.strip(), 0) if text.strip().isascii() else -1
        except ValueError:
            value = -1
        if not 0 <= value < 1 << 64:
            raise Invalid(self.kind)
        return value

    def schema(self):
        return {"oneOf": [{"type": "integer", "minimum": 0, "maximum": (1 << 64) - 1},
                          {"type": "string", "pattern": r"^\s*(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+|0|[1-9][0-9]*)\s*$"}],
                "description": self.kind}


class Setting(Field):
    """A tunable's new value: an integer, or text the tunable parses ("1", "off", "auto", "0x10")."""
    kind = "an integer or text such as \"1\", \"off\" or \"auto\""

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise Invalid(self.kind)
        if isinstance(value, str):
            unicode_text(value)
            if len(value) > 64:
                raise Invalid(self.kind + " of at most 64 characters")
        return value

    def schema(self):
        return {"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 64}], "description": self.kind}


class TextList(Field):
    """A list of up to `max_items` texts, each `item` (a Text); in a form, the lines of one text field (blank lines
    left out), as a textarea sends them. bhyve's repeated -s arguments come as one such list."""

    def __init__(self, item, max_items, **kwargs):
        super().__init__(**kwargs)
        self.item, self.max_items = item, max_items
        self.kind = "a list of at most %d texts, each %s" % (max_items, item.kind)

    def check(self, value):
        if not isinstance(value, list) or len(value) > self.max_items:
            raise Invalid(self.kind, "it has %d" % len(value) if isinstance(value, list) else None)
        for n, item in enumerate(value):
            try:
                self.item.check(item)
            except Invalid as problem:
                raise Invalid(self.kind, "item %d is %s%s" % (n, shown(item), ": " + problem.detail
                                                              if problem.detail else "")) from None
        return list(value)

    def from_text(self, text):
        unicode_text(text)
        return self.check([line.strip() for line in text.splitlines() if line.strip()])

    def schema(self):
        return {"type": "array", "items": self.item.schema(), "maxItems": self.max_items}


class Typed(Field):
    """Console input: text (sent as UTF-8) or bytes, `min_len` to `max_len` long."""

    def __init__(self, min_len, max_len, **kwargs):
        super().__init__(**kwargs)
        self.min_len, self.max_len = min_len, max_len
        self.kind = "text or bytes, %d to %d long" % (min_len, max_len)

    def check(self, value):
        if isinstance(value, str):
            unicode_text(value)
        elif not isinstance(value, bytes):
            raise Invalid(self.kind)
        if not self.min_len <= len(value) <= self.max_len:
            raise Invalid(self.kind, "it has %d" % len(value))
        return value

    def schema(self):
        return {"type": "string", "minLength": self.min_len, "maxLength": self.max_len}


def json_schema(field):
    """A field's JSON Schema with its default, and null allowed where it stands for the default."""
    out = field.schema()
    if field.nullable:
        out = {"anyOf": [out, {"type": "null"}]}
    if not field.required:
        out["default"] = field.default
    return out


class Schema:
    """The fields of one object (a JSON body, a query string, an event's payload). Unknown fields are
    refused: a misspelt optional field would otherwise be ignored without a word."""

    def __init__(self, **fields):
        self.fields = fields

    def check(self, payload, where, from_text=False):
        """The clean object, defaults filled in; SchemaError naming `where`, the field and the problem."""
        if not isinstance(payload, dict):
            raise SchemaError("%s: send a JSON object%s, not %s" % (where, self.example(), shown(payload)))
        unknown = [k for k in payload if k not in self.fields]
        if unknown:
            raise SchemaError("%s: unknown field %s (%s)" % (where, repr(unknown[0])[:40], self.takes()))
        clean = {}
        for key, field in self.fields.items():
            value = payload.get(key, MISSING)
            if value is MISSING or (value is None and field.nullable):
                if field.required:
                    raise SchemaError("%s: field %r is missing (%s)" % (where, key, self.takes()))
                clean[key] = field.default
                continue
            try:
                clean[key] = field.from_text(value) if from_text and isinstance(value, str) else field.check(value)
            except Invalid as problem:
                raise SchemaError("%s: field %r must be %s, not %s%s" % (
                    where, key, problem.kind, shown(value), ": " + problem.detail if problem.detail else "")) from None
        return clean

    def takes(self):
        if not self.fields:
            return "it takes no fields"
        return "it takes " + ", ".join(k if f.required else k + "?" for k, f in self.fields.items())

    def example(self):
        return " such as {%s}" % ", ".join('"%s": …' % k for k, f in self.fields.items() if f.required) \
            if any(f.required for f in self.fields.values()) else ""


NOTHING = Schema()
