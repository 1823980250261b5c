"""The value types of catalogue keys, as pydantic annotated types with the catalogue's own messages.

Each type validates in one Python function (a ``PlainValidator``: no second pass by pydantic) and
declares its JSON Schema next to it, so the schema an editor completes from says what the loader
accepts. A failed check raises ``PydanticCustomError("catalog", ...)``; ``ctx["key"]`` names a sub-key
when a check of a whole mapping blames one of its keys.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, NoReturn

from pydantic import BeforeValidator, Field, PlainValidator, WithJsonSchema
from pydantic_core import PydanticCustomError

# Tag keys/values and free text that ends up in scripts: printable, no control characters.
SAFE_TEXT_RE = re.compile(r"^[^\x00-\x1f\x7f]*$")
MAX_TEXT = 1024


def fail(message: str, key: str | None = None) -> NoReturn:
    """Reject a value with the catalogue's message (``key``: the sub-key to blame, dotted)."""
    raise PydanticCustomError("catalog", "{message}", {"message": message, "key": key})


def check_text(value: Any, pattern: re.Pattern[str] | None = None, what: str = "") -> str:
    if not isinstance(value, str) or not value:
        fail(f"expected a non-empty string, got {type(value).__name__} {value!r}")
    if len(value) > MAX_TEXT or not SAFE_TEXT_RE.match(value):
        fail(f"must be at most {MAX_TEXT} characters without control characters")
    if pattern is not None and not pattern.match(value):
        fail(f"{value!r} is not {what or 'valid'} (expected {pattern.pattern})")
    return value


def Text(pattern: re.Pattern[str] | None = None, what: str = "") -> Any:  # noqa: N802 (a type factory)
    """A non-empty printable string (at most 1024 characters), matching ``pattern`` when given."""
    schema: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}
    if pattern is not None:
        schema["pattern"] = pattern.pattern
    return Annotated[str, PlainValidator(lambda v: check_text(v, pattern, what)), WithJsonSchema(schema)]


def check_int(value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(f"expected an integer, got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        fail(f"{value} is out of range {lo}..{hi}")
    return value


def Int(lo: int, hi: int) -> Any:  # noqa: N802
    return Annotated[int, PlainValidator(lambda v: check_int(v, lo, hi)),
                     WithJsonSchema({"type": "integer", "minimum": lo, "maximum": hi})]


def check_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        fail(f"expected true or false, got {value!r}")
    return value


Bool = Annotated[bool, PlainValidator(check_bool), WithJsonSchema({"type": "boolean"})]


def Choice(*choices: str) -> Any:  # noqa: N802
    def check(value: Any) -> str:
        if value not in choices:
            fail(f"expected one of {', '.join(choices)}, got {value!r}")
        return str(value)

    return Annotated[str, PlainValidator(check), WithJsonSchema({"enum": list(choices)})]


_DURATION_RE = re.compile(r"^(\d+)\s*(s|m|h)?$")
_UNIT = {"s": 1, "m": 60, "h": 3600, None: 60}
MAX_DURATION = 48 * 3600


def check_duration(value: Any) -> int:
    """Seconds, given as an integer (minutes) or a string like '45m', '2h', '90s'."""
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value * 60
    elif isinstance(value, str) and (m := _DURATION_RE.match(value.strip())):
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    else:
        fail(f"expected a duration (minutes, or like '45m', '2h'), got {value!r}")
    if not 1 <= seconds <= MAX_DURATION:
        fail(f"{value!r} is out of range (1 s .. 48 h)")
    return seconds


Duration = Annotated[int, PlainValidator(check_duration), WithJsonSchema({
    "anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_DURATION // 60, "description": "minutes"},
              {"type": "string", "pattern": _DURATION_RE.pattern, "description": "like 90s, 45m or 2h"}]})]


def check_list(value: Any, max_len: int) -> Any:
    if not isinstance(value, list):
        fail(f"expected a list, got {type(value).__name__}")
    if len(value) > max_len:
        fail(f"at most {max_len} items")
    return value


def List(item: Any, max_len: int = 1000) -> Any:  # noqa: N802
    """A YAML list of ``item`` (as a tuple); every bad item is reported with its index."""
    return Annotated[tuple[item, ...], BeforeValidator(lambda v: check_list(v, max_len)),
                     Field(json_schema_extra={"maxItems": max_len})]


def check_mapping(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        fail(f"expected a mapping, got {type(value).__name__}")
    for k in value:
        if not isinstance(k, str):
            fail("keys must be strings", str(k))
    return value


def check_cidr(value: Any) -> str:
    """An IPv4 network as AWS stores it. AWS masks host bits away (10.0.0.28/29 becomes 10.0.0.24/29), so
    a rule given with host bits would never match the group's rule again: refuse it and name the network."""
    text = check_text(value)
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        fail(f"{text!r} is not an IPv4 CIDR such as 10.0.0.0/8 ({exc})")
    if "/" not in text:
        fail(f"{text!r} has no prefix length: write {net} for one address")
    if str(net) != text:
        fail(f"{text!r} has host bits set; AWS would store it as {net}: write {net}")
    return text


Cidr = Annotated[str, PlainValidator(check_cidr),
                 WithJsonSchema({"type": "string", "format": "ipv4-network",
                                 "pattern": r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$"})]


def Pairs(key: Callable[[Any], str], value: Callable[[Any, str], str], schema: dict[str, Any]) -> Any:  # noqa: N802
    """A mapping kept as ordered (key, value) pairs; an error names the key that carries it."""
    def check(raw: Any) -> tuple[tuple[str, str], ...]:
        out = []
        for k, v in check_mapping(raw).items():
            try:
                out.append((key(k), value(v, k)))
            except PydanticCustomError as exc:
                fail(str(exc.context["message"] if exc.context else exc), k)
        return tuple(out)

    return Annotated[tuple[tuple[str, str], ...], PlainValidator(check), WithJsonSchema(schema)]
