"""The JSON Schema files are the contract with outside producers: keep them valid,
documented, self-consistent, and in agreement with the validator the service runs."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import fastjsonschema
import jsonschema
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.contracts import (
    CONTRACTS,
    RFC3339_PATTERN,
    SCHEMA_DIR,
    RejectReason,
    load_schema,
    validate,
)

pytestmark = pytest.mark.unit

INPUTS = ("visits", "exposures", "conversions", "experiments")
FORMATS = jsonschema.FormatChecker()


@FORMATS.checks("date-time", raises=ValueError)
def _date_time(value: object) -> bool:
    """jsonschema skips date-time without the optional rfc3339-validator; check it here."""
    if not isinstance(value, str):
        return True
    return datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is not None


def schema(contract: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{contract}.schema.json").read_text(encoding="utf-8"))


def reference_validator(contract: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema(contract), format_checker=FORMATS)


def test_one_file_per_contract() -> None:
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.schema.json")) == sorted(
        f"{c}.schema.json" for c in CONTRACTS
    )


@pytest.mark.parametrize("contract", CONTRACTS)
def test_schema_is_valid_draft_2020_12(contract: str) -> None:
    s = schema(contract)
    jsonschema.Draft202012Validator.check_schema(s)
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert s["$id"] == f"https://bandit-stream.dev/schemas/{contract}.schema.json"
    assert s["title"] and s["description"]


@pytest.mark.parametrize("contract", CONTRACTS)
def test_schema_is_documented_and_closed(contract: str) -> None:
    s = schema(contract)
    assert s["type"] == "object"
    assert s["additionalProperties"] is False
    assert set(s["required"]) <= set(s["properties"])
    for name, prop in s["properties"].items():
        assert prop.get("description"), f"{contract}.{name} has no description"
    for name, definition in s.get("$defs", {}).items():
        assert definition.get("description"), f"{contract} $defs/{name} has no description"


@pytest.mark.parametrize("contract", CONTRACTS)
def test_examples_validate_with_both_validators(contract: str) -> None:
    s = schema(contract)
    compiled = fastjsonschema.compile(s, use_default=False)
    assert len(s["examples"]) >= 2
    for example in s["examples"]:
        reference_validator(contract).validate(example)
        assert compiled(example) == example
        assert validate(contract, example) is None


def test_shared_definitions_do_not_drift() -> None:
    seen: dict[str, Any] = {}
    for contract in CONTRACTS:
        for name, definition in schema(contract).get("$defs", {}).items():
            assert seen.setdefault(name, definition) == definition, f"$defs/{name} in {contract}"
    assert seen["timestamp"]["pattern"] == RFC3339_PATTERN


def test_enums_match_the_code() -> None:
    props = {c: schema(c)["properties"] for c in CONTRACTS}
    assert props["deadletter"]["reason"]["enum"] == [r.value for r in RejectReason]
    decision_sources = set(props["decisions"]["source"]["enum"])
    allocation_sources = set(props["allocations"]["source"]["enum"])
    assert decision_sources - allocation_sources == {"sticky", "holdout"}


def test_visit_context_is_open_and_every_known_field_is_nullable() -> None:
    context = schema("visits")["properties"]["context"]
    assert context["additionalProperties"] is True
    assert context["properties"]["session"]["additionalProperties"] is True
    fields = {**context["properties"], **context["properties"]["session"]["properties"]}
    for name, prop in fields.items():
        assert "null" in prop["type"], name


@pytest.mark.parametrize(
    "stamp",
    ["2024-05-01T12:00:00", "2024-05-01", "2024-05-01 12:00:00Z", "2024-05-01T12:00:00+0200",
     "2024-13-01T00:00:00Z", "2024-05-01t12:00:00z", "2024-05-01T12:00:00.Z"],
)  # fmt: skip
def test_both_validators_reject_timestamps_without_a_proper_timezone(stamp: str) -> None:
    doc = {**schema("conversions")["examples"][0], "occurred_at": stamp}
    assert not reference_validator("conversions").is_valid(doc)
    assert validate("conversions", doc) is not None


def test_schemas_are_loaded_once() -> None:
    assert load_schema("visits") is load_schema("visits")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)  # fmt: skip


@st.composite
def mutated_examples(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    contract = draw(st.sampled_from(CONTRACTS))
    doc = json.loads(json.dumps(draw(st.sampled_from(schema(contract)["examples"]))))
    target = doc
    if contract == "visits" and draw(st.booleans()):
        target = doc.setdefault("context", {})
    keys = sorted(target) + sorted(schema(contract)["properties"])
    key = draw(st.sampled_from(keys) | st.text(max_size=8))
    if draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = draw(JSON)
    return contract, doc


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_examples())
def test_whatever_the_service_accepts_the_reference_validator_accepts(
    case: tuple[str, dict[str, Any]],
) -> None:
    # One direction only: Python's `$` also matches before a final newline, so jsonschema
    # accepts "id\n" where fastjsonschema (and ECMA-262 validators) rightly refuse it.
    contract, doc = case
    doc = orjson.loads(orjson.dumps(doc))
    if validate(contract, doc) is None:
        reference_validator(contract).validate(doc)
