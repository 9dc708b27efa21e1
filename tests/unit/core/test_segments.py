"""Unit tests for streams.core.segments: canonical, bounded segment keys."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.context import COUNTRY_CODES, FEATURES, OTHER, UNKNOWN, extract_context
from streams.core.segments import (
    ALL_SEGMENTS,
    DIMENSION_ALIASES,
    MAX_DIMENSIONS,
    SEGMENT_VOCABULARIES,
    TOP_COUNTRIES,
    TOP_LANGUAGES,
    fold_value,
    max_segments,
    parse_segment_key,
    segment_key,
    validate_dimensions,
)

pytestmark = pytest.mark.unit

MOBILE_INSTAGRAM = {"device": "mobile", "source": "instagram", "os": "ios", "country": "FR"}


# --- vocabularies ---------------------------------------------------------------------------


def test_every_feature_is_a_dimension_with_other_and_unknown() -> None:
    assert set(SEGMENT_VOCABULARIES) == set(FEATURES)
    for name, vocabulary in SEGMENT_VOCABULARIES.items():
        assert {OTHER, UNKNOWN} <= vocabulary, name


def test_no_separator_can_appear_in_names_or_values() -> None:
    for name, vocabulary in SEGMENT_VOCABULARIES.items():
        assert "|" not in name and ":" not in name
        assert all(v and "|" not in v and ":" not in v for v in vocabulary), name


def test_open_ended_features_have_bounded_allow_lists() -> None:
    assert len(set(TOP_COUNTRIES)) == len(TOP_COUNTRIES) == 30
    assert set(TOP_COUNTRIES) <= COUNTRY_CODES
    assert len(set(TOP_LANGUAGES)) == len(TOP_LANGUAGES) == 20
    assert all(len(lang) == 2 and lang.islower() for lang in TOP_LANGUAGES)


def test_aliases_point_at_real_features_and_do_not_shadow_them() -> None:
    assert set(DIMENSION_ALIASES.values()) <= set(FEATURES)
    assert not set(DIMENSION_ALIASES) & set(FEATURES)


# --- validate_dimensions ----------------------------------------------------------------------


def test_validate_sorts_dedupes_and_resolves_aliases() -> None:
    dims = ["source", " Device ", "device", "hour", "hour_bucket"]
    assert validate_dimensions(dims) == ("device", "hour_bucket", "source")
    assert validate_dimensions(()) == ()
    assert validate_dimensions(("os",)) == ("os",)


def test_unknown_dimension_message_lists_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown segment dimension") as excinfo:
        validate_dimensions(["device", "devise"])
    message = str(excinfo.value)
    assert "'devise'" in message
    assert all(name in message for name in FEATURES)


@pytest.mark.parametrize("dims", [[None], [3], [b"device"], [["device"]], [""]])
def test_non_string_or_empty_dimension_names_are_rejected(dims: list[object]) -> None:
    with pytest.raises(ValueError, match="unknown segment dimension"):
        validate_dimensions(dims)  # type: ignore[arg-type]


@pytest.mark.parametrize("dims", ["device", b"device", 42, None, {"device": 1}, {"device"}])
def test_non_sequence_dimensions_are_rejected(dims: object) -> None:
    with pytest.raises(ValueError, match="sequence of feature names"):
        validate_dimensions(dims)  # type: ignore[arg-type]


def test_at_most_max_dimensions() -> None:
    assert len(validate_dimensions(FEATURES[:MAX_DIMENSIONS])) == MAX_DIMENSIONS
    with pytest.raises(ValueError, match=f"at most {MAX_DIMENSIONS}"):
        validate_dimensions(FEATURES[: MAX_DIMENSIONS + 1])
    # duplicates and aliases do not count twice
    assert len(validate_dimensions(["hour", "hour_bucket", "device", "os", "source"])) == 4


# --- segment_key --------------------------------------------------------------------------


def test_key_is_sorted_name_value_pairs() -> None:
    assert segment_key(MOBILE_INSTAGRAM, ["source", "device"]) == "device:mobile|source:instagram"


def test_no_dimensions_is_the_all_segment() -> None:
    assert segment_key(MOBILE_INSTAGRAM, []) == ALL_SEGMENTS == "all"


def test_dimension_order_duplicates_and_aliases_are_irrelevant() -> None:
    expected = segment_key(MOBILE_INSTAGRAM, ("device", "os", "source"))
    assert segment_key(MOBILE_INSTAGRAM, ["source", "os", "device"]) == expected
    assert segment_key(MOBILE_INSTAGRAM, ["os_family", "device_class", "source", "os"]) == expected


def test_unknown_dimension_raises() -> None:
    with pytest.raises(ValueError, match="unknown segment dimension"):
        segment_key(MOBILE_INSTAGRAM, ["device", "nope"])


@pytest.mark.parametrize(
    ("dimension", "value", "folded"),
    [
        ("device", "mobile", "mobile"),
        ("device", " Mobile ", "mobile"),
        ("device", "spaceship", OTHER),
        ("device", "a|b:c", OTHER),
        ("device", "", UNKNOWN),
        ("device", None, UNKNOWN),
        ("device", 3, UNKNOWN),
        ("country", "FR", "FR"),
        ("country", "fr", "FR"),
        ("country", "LU", OTHER),
        ("country", UNKNOWN, UNKNOWN),
        ("language", "en", "en"),
        ("language", "eo", OTHER),
        ("time_bucket", "<10s", "<10s"),
        ("source", OTHER, OTHER),
    ],
)
def test_fold_value(dimension: str, value: object, folded: str) -> None:
    assert fold_value(dimension, value) == folded
    key = segment_key({dimension: value}, [dimension])  # type: ignore[dict-item]
    assert key == f"{dimension}:{folded}"


def test_missing_features_are_unknown() -> None:
    assert segment_key({}, ["device", "country"]) == "country:unknown|device:unknown"
    assert segment_key(None, ["device"]) == "device:unknown"  # type: ignore[arg-type]


def test_key_from_an_extracted_context() -> None:
    raw = {"user_agent": "Mozilla/5.0 (compatible; Googlebot/2.1)", "country": "lu"}
    features = extract_context(raw, datetime(2024, 6, 8, 9, 0, tzinfo=UTC))
    key = segment_key(features, ["country", "device", "weekday"])
    assert key == "country:other|device:bot|weekday:weekend"


# --- parse_segment_key ------------------------------------------------------------------------


def test_parse_is_the_inverse_of_segment_key() -> None:
    key = segment_key(MOBILE_INSTAGRAM, ["source", "device", "country"])
    assert parse_segment_key(key) == {"country": "FR", "device": "mobile", "source": "instagram"}
    assert parse_segment_key(ALL_SEGMENTS) == {}


@pytest.mark.parametrize(
    "key",
    [
        "",
        "device",
        "device:",
        "device:mobile|",
        "|device:mobile",
        "device:mobile|device:mobile",
        "source:instagram|device:mobile",  # not sorted
        "device:spaceship",  # outside the vocabulary
        "device:Mobile",  # not canonical case
        "country:LU",  # folded value expected
        "hour:night",  # alias instead of the canonical name
        "nope:x",
        "device:mobile:extra",
        "a:1|b:2|c:3|d:4|e:5",
        "ALL",
    ],
)
def test_parse_rejects_non_canonical_keys(key: str) -> None:
    with pytest.raises(ValueError, match="segment key"):
        parse_segment_key(key)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        parse_segment_key(None)  # type: ignore[arg-type]


# --- max_segments -----------------------------------------------------------------------------


def test_max_segments_is_the_product_of_vocabulary_sizes() -> None:
    assert max_segments([]) == 1
    assert max_segments(["device"]) == len(SEGMENT_VOCABULARIES["device"])
    assert max_segments(["country", "device", "device_class"]) == (
        len(SEGMENT_VOCABULARIES["country"]) * len(SEGMENT_VOCABULARIES["device"])
    )
    assert max_segments(["country"]) == len(TOP_COUNTRIES) + 2
    with pytest.raises(ValueError, match="unknown segment dimension"):
        max_segments(["nope"])


def test_max_segments_is_bounded_for_any_allowed_configuration() -> None:
    sizes = sorted((len(v) for v in SEGMENT_VOCABULARIES.values()), reverse=True)
    assert math.prod(sizes[:MAX_DIMENSIONS]) < 1_000_000


# --- properties -------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
CONTEXT_FIELDS = st.sampled_from(
    ["user_agent", "referrer", "utm_source", "utm_medium", "country", "language", "session"]
)
CONTEXTS = JSON | st.dictionaries(CONTEXT_FIELDS | st.text(max_size=8), JSON | st.text())
DIMENSIONS = st.lists(st.sampled_from(FEATURES), unique=True, max_size=MAX_DIMENSIONS)
FEATURE_VALUES = st.text() | st.sampled_from(["mobile", "FR", "en", "a|b", "x:y", ""]) | JSON


def assert_canonical(key: str, dims: list[str]) -> dict[str, str]:
    parsed = parse_segment_key(key)
    assert list(parsed) == sorted(dims)
    for name, value in parsed.items():
        assert value in SEGMENT_VOCABULARIES[name]
        assert "|" not in value and ":" not in value
    if dims:
        assert key.count("|") == len(dims) - 1
        assert key.count(":") == len(dims)
    return parsed


@settings(max_examples=300, deadline=None)
@given(raw=CONTEXTS, dims=DIMENSIONS, data=st.data())
def test_keys_of_any_context_are_canonical(
    raw: object, dims: list[str], data: st.DataObject
) -> None:
    features = extract_context(raw)
    key = segment_key(features, dims)
    parsed = assert_canonical(key, dims)
    assert parsed == {name: fold_value(name, features[name]) for name in dims}
    shuffled = data.draw(st.permutations(dims))
    assert segment_key(features, shuffled) == key
    assert segment_key(features, [*shuffled, *dims]) == key
    assert segment_key(parsed, dims) == key


@settings(max_examples=300, deadline=None)
@given(
    features=st.dictionaries(st.sampled_from(FEATURES) | st.text(), FEATURE_VALUES), dims=DIMENSIONS
)
def test_keys_of_arbitrary_feature_values_are_canonical(
    features: dict[str, object], dims: list[str]
) -> None:
    key = segment_key(features, dims)  # type: ignore[arg-type]
    assert_canonical(key, dims)
    assert segment_key(features, list(reversed(dims))) == key  # type: ignore[arg-type]


def test_unhashable_and_repeated_feature_values_give_the_same_keys() -> None:
    dims = ("device", "source")
    assert segment_key({"device": ["mobile"], "source": {}}, dims) == (
        "device:unknown|source:unknown"
    )
    for _ in range(2):  # the second time from the cache
        assert segment_key({"device": " Mobile ", "source": 1}, dims) == (
            "device:mobile|source:unknown"
        )
        assert segment_key({"device": "mobile", "source": True}, dims) == (
            "device:mobile|source:unknown"
        )
