"""Event contracts: the JSON Schemas in ``schemas/`` and a fast decoder for the hot path.

The schema files are the single source of truth, shared with outside producers. This
module compiles each one with fastjsonschema once, and turns every failure into a reason
code plus a sentence a person can act on, so nothing bad reaches the agents and every
rejected message can go to the dead-letter topic with an explanation.

The contracts read once per visit (visits, decisions, exposures, conversions:
`FAST_CONTRACTS`) first meet a faster check built from the same schema (`fast_acceptor`): it
may only say "valid" when fastjsonschema would, and anything it does not accept goes to
fastjsonschema, whose answer (and reason) is final.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import fastjsonschema
import orjson

__all__ = [
    "CONTRACTS", "DEAD_LETTER_PAYLOAD_BYTES", "MAX_EVENT_BYTES", "RFC3339_PATTERN", "SCHEMA_DIR",
    "RejectReason", "Rejected", "dead_letter_record", "decode_event", "decode_event_timed",
    "fast_acceptor", "format_timestamp", "load_schema", "parse_timestamp", "validate",
]  # fmt: skip


def _schema_dir() -> Path:
    """`schemas/` as package data: `streams/schemas` links to the repo's top-level folder in a
    checkout, and is a copy of it in a built wheel (pyproject.toml's package-data)."""
    found = resources.files("streams") / "schemas"
    if not isinstance(found, Path):  # pragma: no cover - only a zipped install gets here
        msg = f"streams must be installed as files, not zipped: cannot read {found}"
        raise RuntimeError(msg)
    return found


SCHEMA_DIR: Final = _schema_dir()
CONTRACTS: Final = (
    "visits", "exposures", "conversions", "experiments",
    "decisions", "allocations", "insights", "deadletter",
)  # fmt: skip
MAX_EVENT_BYTES: Final = 65_536  # default limit for one input event
DEAD_LETTER_PAYLOAD_BYTES: Final = 65_536  # original bytes kept in a dead letter
_DETAIL_MAX: Final = 2048  # deadletter.schema.json: detail maxLength
_KEY_MAX: Final = 1024  # deadletter.schema.json: key maxLength
# Same as $defs/timestamp/pattern in every schema (a test keeps them equal).
RFC3339_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
_RFC3339 = re.compile(RFC3339_PATTERN.replace("$", r"\Z"))


class RejectReason(StrEnum):
    """Why a message went to the dead-letter topic (the deadletter ``reason`` enum)."""

    OVERSIZED = "oversized"
    INVALID_UTF8 = "invalid_utf8"
    MALFORMED_JSON = "malformed_json"
    NOT_AN_OBJECT = "not_an_object"
    SCHEMA_VIOLATION = "schema_violation"
    FUTURE_TIMESTAMP = "future_timestamp"
    UNKNOWN_EXPERIMENT = "unknown_experiment"
    EXPERIMENT_NOT_RUNNING = "experiment_not_running"
    UNKNOWN_VARIANT = "unknown_variant"
    DUPLICATE_EVENT = "duplicate_event"
    UNATTRIBUTABLE = "unattributable"
    INVALID_SEGMENT_KEY = "invalid_segment_key"
    CONTRADICTS_DECISION = "contradicts_decision"
    UNKNOWN_DECISION = "unknown_decision"
    PROCESSING_ERROR = "processing_error"


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message that must not be processed: a reason code and a human-actionable sentence."""

    reason: RejectReason
    detail: str


# ---------------------------------------------------------------- loading


def _no_remote_refs(uri: str) -> Any:
    msg = f"schemas must be self-contained; refusing to fetch remote $ref {uri!r}"
    raise ValueError(msg)


@cache
def load_schema(contract: str, schema_dir: Path | None = None) -> Mapping[str, Any]:
    """Parse ``<schema_dir>/<contract>.schema.json`` once; treat the result as read-only."""
    if contract not in CONTRACTS:
        msg = f"unknown contract {contract!r}; expected one of {', '.join(CONTRACTS)}"
        raise ValueError(msg)
    path = (schema_dir or SCHEMA_DIR) / f"{contract}.schema.json"
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


@cache
def _validator(contract: str, schema_dir: Path | None) -> Callable[[Any], Any]:
    # Compiling generates Python source; do it once per contract, lazily.
    handlers = dict.fromkeys(("http", "https", "file"), _no_remote_refs)
    schema = dict(load_schema(contract, schema_dir))
    return fastjsonschema.compile(schema, handlers=handlers, use_default=False)


# ---------------------------------------------------------------- fast acceptance

Acceptor = Callable[[Any], bool]
_ANNOTATIONS: Final = frozenset({"$schema", "$id", "$comment", "$defs", "title", "description",
                                 "examples"})  # fmt: skip
_KEYWORDS: Final = frozenset({"type", "enum", "minLength", "maxLength", "pattern", "format",
                              "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum",
                              "properties", "required", "additionalProperties"})  # fmt: skip
_TIME_OF_DAY: Final = re.compile(
    r"T(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?"
    r"(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])\Z"
)
FAST_CONTRACTS: Final = ("visits", "exposures", "conversions", "decisions")
"""Contracts whose documents meet `fast_acceptor` before fastjsonschema: those read once per
visit (a visit, its decision, its exposure and its conversion)."""


class UnsupportedSchema(ValueError):
    """A schema uses a keyword `fast_acceptor` does not implement."""


def _is_date_time(text: str) -> bool:
    """A subset of fastjsonschema's "date-time" format: a YYYY-MM-DD date that exists
    (year 1 on), a time of day without leap second, an offset within +-23:59."""
    if _TIME_OF_DAY.match(text, 10) is None:
        return False
    try:
        date.fromisoformat(text[:10])
    except ValueError:
        return False
    return text[4] == text[7] == "-"


def _acceptor(node: Mapping[str, Any], root: Mapping[str, Any]) -> Acceptor:
    if "$ref" in node:
        ref = str(node["$ref"])
        if not ref.startswith("#/$defs/") or set(node) - _ANNOTATIONS - {"$ref"}:
            msg = f"$ref {ref!r} with constraints beside it, or not to #/$defs/"
            raise UnsupportedSchema(msg)
        return _acceptor(root["$defs"][ref.removeprefix("#/$defs/")], root)
    if unsupported := set(node) - _ANNOTATIONS - _KEYWORDS:
        msg = f"keywords {sorted(unsupported)} are not implemented"
        raise UnsupportedSchema(msg)
    if "enum" in node:
        return _enum_acceptor(node)
    types = node.get("type")
    names = [types] if isinstance(types, str) else list(types or ())
    nullable = "null" in names
    names = [n for n in names if n != "null"]
    if len(names) != 1:
        msg = f"type {types!r}: one type (or it and null) is implemented"
        raise UnsupportedSchema(msg)
    if names[0] == "string":
        return _string_acceptor(node, nullable)
    if names[0] in ("integer", "number", "boolean"):
        # Exact types, stricter than the schema (an integral float is an integer there):
        # whatever this refuses goes to fastjsonschema anyway.
        kinds = {"integer": (int,), "number": (int, float), "boolean": (bool,)}[names[0]]
        low = node.get("minimum", -math.inf)
        high = node.get("maximum", math.inf)
        above = node.get("exclusiveMinimum", -math.inf)
        below = node.get("exclusiveMaximum", math.inf)
        if above != -math.inf or below != math.inf:

            def accept_number(value: Any) -> bool:
                if type(value) not in kinds:
                    return nullable and value is None
                return low <= value <= high and above < value < below

            return accept_number
        if nullable:
            return lambda value: value is None or (type(value) in kinds and low <= value <= high)
        return lambda value: type(value) in kinds and low <= value <= high
    if names[0] == "object":
        return _object_acceptor(node, root, nullable)
    msg = f"type {types!r} is not implemented"
    raise UnsupportedSchema(msg)


def _enum_acceptor(node: Mapping[str, Any]) -> Acceptor:
    """An enum of strings alone (no type or a string type beside it, nothing else)."""
    values = node["enum"]
    if set(node) - _ANNOTATIONS - {"enum", "type"} or node.get("type", "string") != "string":
        msg = "enum with constraints other than type string is not implemented"
        raise UnsupportedSchema(msg)
    if not all(type(v) is str for v in values):
        msg = f"enum {values!r}: only enums of strings are implemented"
        raise UnsupportedSchema(msg)
    allowed = frozenset(values)
    return lambda value: type(value) is str and value in allowed


def _string_acceptor(node: Mapping[str, Any], nullable: bool) -> Acceptor:
    low, high = node.get("minLength", 0), node.get("maxLength", math.inf)
    pattern, form = node.get("pattern"), node.get("format")
    if form not in (None, "date-time"):
        msg = f"format {form!r} is not implemented"
        raise UnsupportedSchema(msg)
    if pattern is not None and (not pattern.endswith("$") or "$" in pattern[:-1]):
        msg = f"pattern {pattern!r}: only patterns anchored by one final $ are implemented"
        raise UnsupportedSchema(msg)
    # fastjsonschema's own reading of a pattern: `search`, with the final $ as \Z
    search = re.compile(pattern[:-1] + r"\Z").search if pattern is not None else None
    dated = form == "date-time"
    if search is None and not dated and low == 0:  # most strings: a type and a length
        if nullable:
            return lambda value: value is None or (type(value) is str and len(value) <= high)
        return lambda value: type(value) is str and len(value) <= high

    if not dated:  # ids: a pattern or a minimum length, tested on every field of a visit

        def accept_text(value: Any) -> bool:
            if type(value) is not str:
                return nullable and value is None
            return low <= len(value) <= high and (search is None or search(value) is not None)

        return accept_text

    def accept(value: Any) -> bool:
        if type(value) is not str:
            return nullable and value is None
        return (
            low <= len(value) <= high
            and (search is None or search(value) is not None)
            and _is_date_time(value)
        )

    return accept


def _object_acceptor(node: Mapping[str, Any], root: Mapping[str, Any], nullable: bool) -> Acceptor:
    properties = {k: _acceptor(v, root) for k, v in node.get("properties", {}).items()}
    required = frozenset(node.get("required", ()))
    extra = node.get("additionalProperties", True)
    if not isinstance(extra, bool):
        msg = "additionalProperties other than true or false is not implemented"
        raise UnsupportedSchema(msg)
    closed = extra is False

    def accept(value: Any) -> bool:
        if type(value) is not dict:
            return nullable and value is None
        if required and not value.keys() >= required:
            return False
        for key, item in value.items():
            check = properties.get(key)
            if check is None:
                if closed:  # a key the schema does not name, where it allows none
                    return False
            elif not check(item):
                return False
        return True

    return accept


@cache
def fast_acceptor(contract: str) -> Acceptor:
    """A check of a document against the contract's schema that only says True for a
    document fastjsonschema accepts (stricter where that is simpler: exact JSON types, no
    leap seconds); several times faster than it. Raises UnsupportedSchema if the schema
    uses a keyword it does not implement."""
    schema = load_schema(contract)
    return _acceptor(schema, schema)


# ---------------------------------------------------------------- timestamps


def parse_timestamp(s: str) -> datetime:
    """Parse an RFC 3339 timestamp that carries a timezone into an aware UTC datetime."""
    if _RFC3339.match(s):
        try:
            return _parse_checked(s)
        except (ValueError, OverflowError):
            pass  # e.g. Feb 30, a leap second, or out of datetime's range
    msg = f"{s!r} is not an RFC 3339 timestamp with a timezone (e.g. 2024-05-01T12:00:00Z)"
    raise ValueError(msg)


def _parse_checked(s: str) -> datetime:
    # The caller has matched RFC3339_PATTERN, so there is always an offset.
    return datetime.fromisoformat(s[:-1] + "+00:00" if s[-1] == "Z" else s).astimezone(UTC)


def format_timestamp(dt: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with millisecond precision and ``Z``."""
    if dt.tzinfo is not UTC:
        if dt.utcoffset() is None:
            msg = f"refusing to format naive datetime {dt!r}; attach a timezone"
            raise ValueError(msg)
        dt = dt.astimezone(UTC)
    # what isoformat(timespec="milliseconds") gives without its "+00:00", in half the time
    # (every decision formats one): the year is always 4 digits, 1 to 9999
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031 - f-strings are slower here
        dt.year, dt.month, dt.day, dt.hour, dt.minute, dt.second, dt.microsecond // 1000,
    )  # fmt: skip


# ---------------------------------------------------------------- explaining failures

_TYPE_NAMES: Final = {
    "string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
    "object": "an object", "array": "an array", "null": "null",
}  # fmt: skip
_RULE_TEXT: Final = {
    "enum": "must be one of {}",
    "const": "must be {}",
    "minLength": "must be at least {} characters long",
    "maxLength": "must be at most {} characters long",
    "minimum": "must be at least {}",
    "maximum": "must be at most {}",
    "exclusiveMinimum": "must be greater than {}",
    "exclusiveMaximum": "must be less than {}",
    "minItems": "must have at least {} items",
    "maxItems": "must have at most {} items",
    "uniqueItems": "must not contain duplicates",
    "minProperties": "must have at least {} entries",
    "maxProperties": "must have at most {} entries",
    "pattern": "must match the pattern {}",
}


def _show(value: Any) -> str:
    """A short rendering of an offending value (bounded: details end up in logs and topics)."""
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 80 else f"{text[:76]}...' ({len(value):,} characters)"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    n = len(value) if isinstance(value, list | dict) else 0
    if isinstance(value, list):
        return f"an array of {n} item{'' if n == 1 else 's'}"
    return f"an object with {n} entr{'y' if n == 1 else 'ies'}"


def _fields(names: list[str], parent: str) -> str:
    quoted = ", ".join(f"'{parent}.{n}'" if parent else f"'{n}'" for n in names)
    return f"field {quoted} is" if len(names) == 1 else f"fields {quoted} are"


def _explain(err: fastjsonschema.JsonSchemaValueException) -> str:
    """Turn fastjsonschema's error into a sentence naming the field, the rule and the value."""
    field = (err.name or "data")[4:].lstrip(".")
    rule, value = err.rule or "", err.value
    definition = err.definition if isinstance(err.definition, dict) else {}
    where = f"field '{field}'" if field else "the document"
    if rule == "required" and isinstance(value, dict):
        missing = [k for k in err.rule_definition or () if k not in value]
        return f"{_fields(missing, field)} required but missing"
    if rule == "additionalProperties" and isinstance(value, dict):
        known = definition.get("properties", {})
        extra = sorted(str(k) for k in value if k not in known)
        return f"{_fields(extra, field)} not allowed here; allowed: {', '.join(known)}"
    if definition.get("format") == "date-time":
        return f"{where} must be an RFC 3339 timestamp with a timezone, got {_show(value)}"
    if rule == "type":
        types = err.rule_definition
        names = types if isinstance(types, list) else [types]
        wanted = " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in names)
        return f"{where} must be {wanted}, got {_show(value)}"
    if rule == "propertyNames":
        keys = ", ".join(_show(k) for k in list(value)[:5]) if isinstance(value, dict) else ""
        hint = (err.rule_definition or {}).get("description", "")
        return f"{where} has an invalid key among {keys}; keys must be: {hint}"
    if rule in _RULE_TEXT:
        arg = err.rule_definition
        if rule in ("minLength", "minItems", "minProperties") and arg == 1:
            return f"{where} must not be empty"
        shown = ", ".join(map(_show, arg)) if rule == "enum" else str(arg)
        sentence = f"{where} {_RULE_TEXT[rule].format(shown)}, got {_show(value)}"
        hint = definition.get("description")
        return f"{sentence} ({hint})" if rule == "pattern" and hint else sentence
    return err.message.replace("data", where, 1)


# ---------------------------------------------------------------- validation


def _check(contract: str, doc: dict[str, Any], schema_dir: Path | None) -> Rejected | None:
    try:
        _validator(contract, schema_dir)(doc)
    except fastjsonschema.JsonSchemaValueException as err:
        return Rejected(RejectReason.SCHEMA_VIOLATION, _explain(err))
    except RecursionError:  # uniqueItems recurses into nested arrays before `items` checks
        return Rejected(RejectReason.SCHEMA_VIOLATION, "payload is nested too deeply to validate")
    if contract == "experiments":  # JSON Schema cannot say "variant_id values are unique"
        ids = [v["variant_id"] for v in doc["variants"]]
        if dupes := sorted({i for i in ids if ids.count(i) > 1}):
            return Rejected(
                RejectReason.SCHEMA_VIOLATION,
                f"field 'variants' repeats variant_id {', '.join(map(repr, dupes))}; "
                "each variant needs its own id",
            )
    return None


def validate(
    contract: str, doc: Mapping[str, Any], *, schema_dir: Path | None = None
) -> Rejected | None:
    """Check a document as it will look on the wire, typically just before publishing it.

    The orjson round trip makes numpy scalars and oversized ints fail here rather than in
    the producer, and NaN/infinity show up as the null they would be sent as.
    """
    try:
        wire = orjson.loads(orjson.dumps(doc if isinstance(doc, dict) else dict(doc)))
    except orjson.JSONEncodeError as err:
        return Rejected(RejectReason.SCHEMA_VIOLATION, f"document is not JSON-encodable: {err}")
    return _check(contract, wire, schema_dir)


def decode_event(
    contract: str,
    raw: bytes | None,
    *,
    max_bytes: int,
    now: datetime,
    max_future_skew: timedelta,
    schema_dir: Path | None = None,
) -> dict[str, Any] | Rejected:
    """Bytes from Kafka -> a valid document, or why not. Cheapest checks first; never raises.

    A None value (a tombstone) is rejected too: compacted-topic readers handle deletes
    before calling this.
    """
    decoded = decode_event_timed(
        contract,
        raw,
        max_bytes=max_bytes,
        now=now,
        max_future_skew=max_future_skew,
        schema_dir=schema_dir,
    )
    return decoded if isinstance(decoded, Rejected) else decoded[0]


def decode_event_timed(
    contract: str,
    raw: bytes | None,
    *,
    max_bytes: int,
    now: datetime,
    max_future_skew: timedelta,
    schema_dir: Path | None = None,
) -> tuple[dict[str, Any], datetime | None] | Rejected:
    """`decode_event`, and the document's ``occurred_at`` as an aware UTC datetime (None
    when it has no string ``occurred_at``): the future-skew check parses it anyway, and
    the decide path needs it. Where the schema makes it a ``timestamp`` (RFC3339_PATTERN,
    as in every contract), that is what `parse_timestamp` would give."""
    if not raw:
        return Rejected(RejectReason.MALFORMED_JSON, "message has no value; send a JSON object")
    if len(raw) > max_bytes:
        return Rejected(
            RejectReason.OVERSIZED,
            f"payload is {len(raw):,} bytes; the limit is {max_bytes:,} (MAX_EVENT_BYTES)",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return Rejected(
            RejectReason.INVALID_UTF8,
            f"payload is not valid UTF-8: byte 0x{raw[err.start]:02x} at position "
            f"{err.start:,} ({err.reason}); send UTF-8 encoded JSON",
        )
    try:
        doc = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        return Rejected(RejectReason.MALFORMED_JSON, f"payload is not valid JSON: {err}")
    if not isinstance(doc, dict):
        return Rejected(
            RejectReason.NOT_AN_OBJECT,
            f"payload is {_show(doc)}; a {contract} event must be a JSON object",
        )
    fast = schema_dir is None and contract in FAST_CONTRACTS and fast_acceptor(contract)(doc)
    if not fast and (rejected := _check(contract, doc, schema_dir)):
        return rejected
    occurred_at = doc.get("occurred_at")
    when = None
    if isinstance(occurred_at, str):
        try:
            when = _parse_checked(occurred_at)
        except (ValueError, OverflowError):
            return Rejected(
                RejectReason.SCHEMA_VIOLATION,
                "field 'occurred_at' must be an RFC 3339 timestamp with a timezone, "
                f"got {_show(occurred_at)}",
            )
        if when > now + max_future_skew:
            ahead = (when - now).total_seconds()
            return Rejected(
                RejectReason.FUTURE_TIMESTAMP,
                f"field 'occurred_at' is {ahead:,.0f} s in the future ({occurred_at}); at most "
                f"{max_future_skew.total_seconds():,.0f} s is tolerated; check the producer clock",
            )
    return doc, when


# ---------------------------------------------------------------- dead letters


def dead_letter_record(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    raw: bytes | None,
    rejected: Rejected,
    now: datetime,
) -> dict[str, Any]:
    """Build the deadletter document: the original bytes (bounded) plus reason and detail.

    Text that Postgres cannot store (U+0000) or that is not UTF-8 is kept as base64.
    """
    data = raw or b""
    kept = data[:DEAD_LETTER_PAYLOAD_BYTES]
    note = ""
    if len(kept) < len(data):
        note = f" (payload truncated to the first {len(kept):,} of {len(data):,} bytes)"
    detail = rejected.detail or rejected.reason.value
    if len(detail) + len(note) > _DETAIL_MAX:
        detail = detail[: _DETAIL_MAX - len(note) - 1] + "…"
    payload, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    with suppress(UnicodeDecodeError):
        data.decode("utf-8")  # is it text at all?
        if b"\x00" not in kept:  # "ignore" drops a character the truncation cut in half
            payload, encoding = kept.decode("utf-8", "ignore"), "utf-8"
    # The key is only for humans here: keep it printable, storable and bounded.
    key_text = None if key is None else key.decode("utf-8", "backslashreplace")
    return {
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "key": None if key_text is None else key_text.replace("\x00", "\\x00")[:_KEY_MAX],
        "payload": payload,
        "payload_encoding": encoding,
        "reason": rejected.reason.value,
        "detail": detail + note,
        "rejected_at": format_timestamp(now),
    }
