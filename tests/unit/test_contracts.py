"""decode_event is the gate every input event passes: it must say precisely why it rejects
something, and it must never raise, whatever bytes a producer sends."""

from __future__ import annotations

import base64
import json
import shutil
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.contracts import (
    CONTRACTS,
    DEAD_LETTER_PAYLOAD_BYTES,
    FAST_CONTRACTS,
    MAX_EVENT_BYTES,
    SCHEMA_DIR,
    Rejected,
    RejectReason,
    dead_letter_record,
    decode_event,
    decode_event_timed,
    fast_acceptor,
    format_timestamp,
    load_schema,
    parse_timestamp,
    validate,
)

pytestmark = pytest.mark.unit

NOW = datetime(2024, 5, 1, 14, 0, tzinfo=UTC)  # after every example
SKEW = timedelta(minutes=5)
VISIT: dict[str, Any] = load_schema("visits")["examples"][0]


def decode(
    payload: bytes | dict[str, Any] | None, contract: str = "visits", **kw: Any
) -> dict[str, Any] | Rejected:
    raw = orjson.dumps(payload) if isinstance(payload, dict) else payload
    kw = {"max_bytes": MAX_EVENT_BYTES, "now": NOW, "max_future_skew": SKEW, **kw}
    return decode_event(contract, raw, **kw)


def rejected(payload: bytes | dict[str, Any] | None, **kw: Any) -> Rejected:
    result = decode(payload, **kw)
    assert isinstance(result, Rejected), result
    return result


def visit(**changes: Any) -> dict[str, Any]:
    return {**VISIT, **changes}


# ---------------------------------------------------------------- accepting


@pytest.mark.parametrize("contract", ["visits", "exposures", "conversions", "experiments"])
def test_valid_examples_decode_unchanged(contract: str) -> None:
    for example in load_schema(contract)["examples"]:
        assert decode(example, contract) == example


def test_unknown_context_fields_and_nulls_are_accepted() -> None:
    doc = visit(context={"country": None, "session": None, "app_version": "3.2.1"})
    assert decode(doc) == doc


def test_timestamp_exactly_at_the_skew_limit_is_accepted() -> None:
    assert isinstance(decode(visit(occurred_at="2024-05-01T14:05:00Z")), dict)
    assert isinstance(decode(visit(occurred_at="2024-05-01T16:05:00+02:00")), dict)
    assert isinstance(decode(visit(occurred_at="2024-05-01T14:05:00.001Z")), Rejected)


# ---------------------------------------------------------------- rejecting


@pytest.mark.parametrize(
    ("payload", "reason", "words"),
    [
        (b"{" + b" " * MAX_EVENT_BYTES + b"}", RejectReason.OVERSIZED, ["65,538 bytes", "65,536"]),
        (b'{"event_id": "\xff"}', RejectReason.INVALID_UTF8, ["0xff", "position 14"]),
        (b'{"event_id": ', RejectReason.MALFORMED_JSON, ["not valid JSON", "line 1"]),
        (b"[1, 2]", RejectReason.NOT_AN_OBJECT, ["an array", "JSON object"]),
        (b"null", RejectReason.NOT_AN_OBJECT, ["null"]),
        (None, RejectReason.MALFORMED_JSON, ["no value"]),
        (b"", RejectReason.MALFORMED_JSON, ["no value"]),
        (
            {k: v for k, v in VISIT.items() if k != "visitor_id"},
            RejectReason.SCHEMA_VIOLATION,
            ["'visitor_id'", "required"],
        ),
        (visit(visitor_id=42), RejectReason.SCHEMA_VIOLATION, ["'visitor_id'", "a string", "42"]),
        (visit(visitor_id="has space"), RejectReason.SCHEMA_VIOLATION, ["'visitor_id'", "pattern"]),
        (visit(visitor_id=""), RejectReason.SCHEMA_VIOLATION, ["'visitor_id'", "empty"]),
        (visit(visitorId="x"), RejectReason.SCHEMA_VIOLATION, ["'visitorId'", "not allowed"]),
        (
            visit(occurred_at="2024-05-01T12:00:00"),
            RejectReason.SCHEMA_VIOLATION,
            ["'occurred_at'", "timezone", "'2024-05-01T12:00:00'"],
        ),
        (
            visit(occurred_at="2024-13-01"),
            RejectReason.SCHEMA_VIOLATION,
            ["field 'occurred_at' must be an RFC 3339 timestamp with a timezone, got '2024-13-01'"],
        ),
        (
            visit(occurred_at="2024-12-31T23:59:60Z"),  # a leap second: RFC 3339, not datetime
            RejectReason.SCHEMA_VIOLATION,
            ["'occurred_at'", "RFC 3339"],
        ),
        (
            visit(occurred_at="2024-05-01T14:20:00Z"),
            RejectReason.FUTURE_TIMESTAMP,
            ["'occurred_at'", "1,200 s in the future", "clock"],
        ),
        (
            visit(context={"session": {"pages_viewed": -1}}),
            RejectReason.SCHEMA_VIOLATION,
            ["'context.session.pages_viewed'", "at least 0", "-1"],
        ),
        (visit(context=[]), RejectReason.SCHEMA_VIOLATION, ["'context'", "an object"]),
        (
            visit(context={"local_hour": 24}),
            RejectReason.SCHEMA_VIOLATION,
            ["'context.local_hour'", "at most 23"],
        ),
    ],
)
def test_rejections_say_what_is_wrong(
    payload: bytes | dict[str, Any] | None, reason: RejectReason, words: list[str]
) -> None:
    result = rejected(payload)
    assert result.reason is reason
    for word in words:
        assert word in result.detail


def test_oversized_is_checked_before_parsing() -> None:
    assert rejected(b"\xff" * 100, max_bytes=10).reason is RejectReason.OVERSIZED


def test_many_missing_fields_are_all_named() -> None:
    detail = rejected({"event_id": "e"}).detail
    assert "fields 'experiment_id', 'visitor_id', 'occurred_at' are required" in detail


def test_long_values_are_shortened_in_the_detail() -> None:
    detail = rejected(visit(visitor_id="x" * 5000)).detail
    assert "5,000 characters" in detail
    assert len(detail) < 300


def test_experiment_variants_must_have_unique_ids() -> None:
    experiment = load_schema("experiments")["examples"][0]
    doc = {**experiment, "variants": [{"variant_id": "a"}, {"variant_id": "a", "name": "A"}]}
    result = rejected(doc, contract="experiments")
    assert result.reason is RejectReason.SCHEMA_VIOLATION
    assert "'variants'" in result.detail
    assert "'a'" in result.detail


def test_nested_field_paths_are_named() -> None:
    experiment = load_schema("experiments")["examples"][0]
    doc = {**experiment, "policy": {"name": "pooled", "floor": 0.5}}
    assert "'policy.floor' must be less than 0.5" in rejected(doc, contract="experiments").detail


def test_schema_dir_override(tmp_path: Path) -> None:
    shutil.copytree(SCHEMA_DIR, tmp_path, dirs_exist_ok=True)
    relaxed = json.loads((tmp_path / "visits.schema.json").read_text())
    relaxed["additionalProperties"] = True
    (tmp_path / "visits.schema.json").write_text(json.dumps(relaxed))
    doc = visit(extra="fine here")
    assert decode(doc, schema_dir=tmp_path) == doc
    assert isinstance(decode(doc), Rejected)


def test_unknown_contract_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown contract"):
        decode(VISIT, contract="visit")


# ---------------------------------------------------------------- validate (outputs)


@pytest.mark.parametrize("contract", CONTRACTS)
def test_validate_accepts_examples_and_read_only_mappings(contract: str) -> None:
    for example in load_schema(contract)["examples"]:
        assert validate(contract, MappingProxyType(example)) is None


def test_validate_checks_the_document_as_it_goes_on_the_wire() -> None:
    decision = load_schema("decisions")["examples"][0]
    nan = validate("decisions", {**decision, "propensity": float("nan")})
    assert nan is not None
    assert "'propensity'" in nan.detail
    too_big = validate("decisions", {**decision, "weights_version": 2**70})
    assert too_big is not None
    assert "JSON" in too_big.detail


def test_validate_names_the_bad_output_field() -> None:
    allocation = load_schema("allocations")["examples"][0]
    result = validate("allocations", {**allocation, "weights": {"control": 1.5}})
    assert result == Rejected(
        RejectReason.SCHEMA_VIOLATION, "field 'weights.control' must be at most 1, got 1.5"
    )


# ---------------------------------------------------------------- the fast check

# Values at and beyond every bound of the fast-checked schemas, of every JSON type.
EDGE_VALUES: list[Any] = (
    [None, True, False, 0, -1, 1, 23, 24, -840, 841, 1000, 1001, 100_000, 100_001,
     2**53 - 1, 2**53, 0.0, -0.0, 1.0, 23.0, 24.5, -0.5, 0.5, 1.0000001, 5e-324, 1e300,
     "", " ", "a", "a|b", "*", "\x7f", "segment", "Segment", "sticky ", "burn_in",
     "x" * 64, "x" * 65, "x" * 128, "x" * 129, "x" * 256, "x" * 257, "x" * 512, "x" * 513,
     "x" * 1024, "x" * 1025,
     "é", "id\n", "id ", "~!{}", "2024-05-01T12:00:00Z", "2024-05-01T12:00:00z",
     "2024-05-01t12:00:00Z", "2024-02-29T23:59:59.999999999+23:59", "2023-02-29T00:00:00Z",
     "2024-05-01T24:00:00Z", "2024-05-01T12:60:00Z", "2024-05-01T12:00:60Z",
     "2024-05-01T12:00:00+24:00", "2024-05-01T12:00:00+01:60", "2024-05-01T12:00:00+0100",
     "0000-01-01T00:00:00Z", "1900-02-29T00:00:00Z", "2000-02-29T00:00:00Z",
     "2024-05-01T12:00:00.Z", "2024-05-01T12:00:00.1234567890Z", "2024-05-01T12:00:00Z\n",
     "2024-05-01T12:00:00" + "0" * 21 + "Z", [], {}, [1], {"a": 1}]
)  # fmt: skip
EDGES = st.sampled_from(EDGE_VALUES)


def _reference(payload: dict[str, Any], contract: str = "visits") -> dict[str, Any] | Rejected:
    """decode_event with fastjsonschema alone (a schema_dir turns the fast check off)."""
    return decode(payload, contract, schema_dir=SCHEMA_DIR)


def _objects(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any] | None:
    """The object schema `node` stands for (through a $ref), or None if it is no object."""
    if "$ref" in node:
        node = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
    types = node.get("type")
    return node if types == "object" or (isinstance(types, list) and "object" in types) else None


@pytest.mark.parametrize("contract", FAST_CONTRACTS)
def test_the_fast_check_agrees_with_the_schema_on_every_edge_of_every_field(
    contract: str,
) -> None:
    schema = load_schema(contract)
    for example in schema["examples"]:
        for key in [*schema["properties"], "unknown"]:
            for value in EDGE_VALUES:
                doc = {**example, key: value}
                assert decode(doc, contract) == _reference(doc, contract), (key, value)
            doc = {k: v for k, v in example.items() if k != key}
            assert decode(doc, contract) == _reference(doc, contract), key


@settings(max_examples=1500)
@given(st.data())
@pytest.mark.parametrize("contract", FAST_CONTRACTS)
def test_the_fast_check_gives_the_same_answers_as_the_schema(
    contract: str, data: st.DataObject
) -> None:
    schema = load_schema(contract)
    doc = json.loads(json.dumps(data.draw(st.sampled_from(schema["examples"]))))
    # every object of the document the schema describes, with the property names it knows
    places, todo = [], [(doc, schema)]
    while todo:
        target, node = todo.pop()
        places.append((target, sorted(node.get("properties", {}))))
        for key, child in node.get("properties", {}).items():
            inner = _objects(child, dict(schema))
            if inner is not None and data.draw(st.booleans()):
                value = target.get(key)
                if not isinstance(value, dict):
                    value = target[key] = data.draw(st.none() | st.just({}))
                if value is not None:
                    todo.append((value, inner))
    for _ in range(data.draw(st.integers(1, 4))):
        target, known = data.draw(st.sampled_from(places))
        key = data.draw(st.sampled_from(known) | st.text(max_size=5)) if known else "x"
        if data.draw(st.booleans()) and key in target and not isinstance(target[key], dict):
            del target[key]
        else:
            target[key] = data.draw(EDGES | JSON)
    accepted = fast_acceptor(contract)(orjson.loads(orjson.dumps(doc)))
    assert decode(doc, contract) == _reference(doc, contract)
    if accepted:
        assert _reference(doc, contract) == doc


def test_the_fast_check_accepts_ordinary_visits_and_leaves_the_rest_to_the_schema() -> None:
    for contract in FAST_CONTRACTS:  # otherwise it would only cost time
        assert all(map(fast_acceptor(contract), load_schema(contract)["examples"])), contract
    accept = fast_acceptor("visits")
    for doc in [
        visit(visitor_id="has space"),
        visit(occurred_at="2024-12-31T23:59:60Z"),  # a leap second: valid RFC 3339
        visit(context={"local_hour": 9.0}),  # an integer to the schema, a float to JSON
        visit(context={"session": {"pages_viewed": -1}}),
        visit(extra=1),
    ]:
        assert not accept(doc)
        assert decode(doc) == _reference(doc)


# ---------------------------------------------------------------- timestamps


def test_parse_timestamp_returns_aware_utc() -> None:
    assert parse_timestamp("2024-05-01T12:00:00Z") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    parsed = parse_timestamp("2024-05-01T14:00:00.5+02:00")
    assert parsed == datetime(2024, 5, 1, 12, 0, 0, 500_000, tzinfo=UTC)
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    ["2024-05-01T12:00:00", "2024-05-01", "20240501T120000Z", "2024-02-30T00:00:00Z",
     "2024-05-01 12:00:00Z", "2024-05-01T12:00:00Z\n", "", "0001-01-01T00:00:00+01:00"],
)  # fmt: skip
def test_parse_timestamp_rejects_anything_but_rfc3339_with_offset(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_timestamp(text)


@settings(max_examples=300, deadline=None)
@given(st.datetimes(timezones=st.just(UTC)))
def test_format_timestamp_is_isoformat_in_milliseconds_with_z(dt: datetime) -> None:
    assert format_timestamp(dt) == dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_decode_event_timed_is_decode_event_and_the_parsed_occurred_at() -> None:
    kw: dict[str, Any] = {"max_bytes": MAX_EVENT_BYTES, "now": NOW, "max_future_skew": SKEW}
    for payload in (visit(), visit(occurred_at="2024-05-01T14:04:59.5+02:00")):
        raw = orjson.dumps(payload)
        doc, when = decode_event_timed("visits", raw, **kw)
        assert doc == decode_event("visits", raw, **kw)
        assert when == parse_timestamp(payload["occurred_at"]) and when.tzinfo is UTC
    experiment = load_schema("experiments")["examples"][0]
    assert decode_event_timed("experiments", orjson.dumps(experiment), **kw) == (experiment, None)
    bad = orjson.dumps(visit(occurred_at="2999-01-01T00:00:00Z"))
    assert decode_event_timed("visits", bad, **kw) == decode_event("visits", bad, **kw)


def test_format_timestamp_is_utc_millis_with_z() -> None:
    dt = datetime(2024, 5, 1, 14, 0, 0, 123_999, tzinfo=timezone(timedelta(hours=2)))
    assert format_timestamp(dt) == "2024-05-01T12:00:00.123Z"
    assert parse_timestamp(format_timestamp(NOW)) == NOW
    with pytest.raises(ValueError, match="naive"):
        format_timestamp(datetime(2024, 5, 1))  # noqa: DTZ001 - the point of the test


# ---------------------------------------------------------------- dead letters


def letter(raw: bytes | None, key: bytes | None = b"visitor-1", detail: str = "bad") -> dict:
    record = dead_letter_record(
        source_topic="visits",
        partition=2,
        offset=41,
        key=key,
        raw=raw,
        rejected=Rejected(RejectReason.SCHEMA_VIOLATION, detail),
        now=NOW,
    )
    assert validate("deadletter", record) is None
    return record


def test_dead_letter_keeps_text_as_text() -> None:
    record = letter(b'{"event_id": "\xc3\xa9"}')
    assert record["payload"] == '{"event_id": "é"}'
    assert record["payload_encoding"] == "utf-8"
    assert record["reason"] == "schema_violation"
    assert record["rejected_at"] == "2024-05-01T14:00:00.000Z"


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b'{"a": "\x00"}'])
def test_dead_letter_keeps_binary_and_nul_as_base64(raw: bytes) -> None:
    record = letter(raw, key=b"\xffk\x00")
    assert record["payload_encoding"] == "base64"
    assert base64.b64decode(record["payload"]) == raw
    assert record["key"] == "\\xffk\\x00"


@pytest.mark.parametrize("raw", [("é" * 40_000).encode(), b"\xff" * 70_000])
def test_dead_letter_truncates_and_says_so(raw: bytes) -> None:
    record = letter(raw, detail="x" * 5000)
    assert f"first {DEAD_LETTER_PAYLOAD_BYTES:,} of {len(raw):,} bytes" in record["detail"]
    assert len(record["detail"]) <= 2048


def test_dead_letter_for_a_missing_value_and_key() -> None:
    record = letter(None, key=None)
    assert record["payload"] == ""
    assert record["key"] is None


# ---------------------------------------------------------------- never raises

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)  # fmt: skip


def check_total(contract: str, raw: bytes, max_bytes: int = MAX_EVENT_BYTES) -> None:
    result = decode(raw, contract, max_bytes=max_bytes)
    if isinstance(result, Rejected):
        assert result.detail
        letter(raw)  # whatever we reject, we can dead-letter
    else:
        assert isinstance(result, dict)
        assert validate(contract, result) is None


@settings(max_examples=300)
@given(st.sampled_from(CONTRACTS), st.binary(max_size=2048), st.integers(0, 4096))
def test_arbitrary_bytes_never_raise(contract: str, raw: bytes, max_bytes: int) -> None:
    check_total(contract, raw, max_bytes)


@settings(max_examples=300)
@given(st.sampled_from(CONTRACTS), JSON)
def test_arbitrary_json_never_raise(contract: str, value: Any) -> None:
    check_total(contract, orjson.dumps(value))


@settings(max_examples=300)
@given(st.sampled_from(["visits", "exposures", "conversions", "experiments"]), st.data())
def test_almost_valid_events_never_raise(contract: str, data: st.DataObject) -> None:
    doc = json.loads(json.dumps(data.draw(st.sampled_from(load_schema(contract)["examples"]))))
    schema = load_schema(contract)["properties"]
    target, known = doc, sorted(schema)
    if contract == "visits" and data.draw(st.booleans()):
        target, known = doc.setdefault("context", {}), sorted(schema["context"]["properties"])
    key = data.draw(st.sampled_from(known) | st.text(max_size=10))
    target[key] = data.draw(JSON)
    check_total(contract, orjson.dumps(doc))


def test_deep_nesting_never_raises() -> None:
    nested = b"[" * 1000 + b"]" * 1000
    check_total("experiments", nested)
    # uniqueItems compares items recursively before `items` can reject them
    experiment = orjson.dumps(load_schema("experiments")["examples"][0])
    raw = experiment.replace(b'["country","device"]', b"[" + nested + b"," + nested + b"]")
    assert "nested too deeply" in rejected(raw, contract="experiments").detail
