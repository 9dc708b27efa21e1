"""Canonical segment keys: which slice of traffic a visit's posterior lives in.

An experiment names a few context features ("dimensions"); a visit's segment is the
values of those features. The key is what posteriors are stored and partitioned under,
so it must be *canonical* (same segment, same bytes: names sorted, fixed separators)
and *bounded*: every dimension has a closed vocabulary and anything outside it folds
into ``other``, so a producer sending junk can never mint new segments, and
``max_segments`` tells an operator up front how many posteriors an experiment can need.

Key format: ``name:value`` pairs sorted by name, joined by ``|``, e.g.
``device:mobile|source:instagram``; no dimensions gives the single key ``all``.
Vocabulary values never contain ``|`` or ``:``, which is what makes keys parseable.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache
from types import MappingProxyType

from streams.core.context import FEATURES, OTHER, UNKNOWN, VOCABULARIES

ALL_SEGMENTS = "all"
MAX_DIMENSIONS = 4  # 4 coarse features already give thousands of possible segments
PAIR_SEPARATOR = "|"
NAME_SEPARATOR = ":"

#: Countries common enough to deserve their own segment; the rest fold into ``other``.
TOP_COUNTRIES: tuple[str, ...] = (
    "US", "GB", "DE", "FR", "IN", "BR", "CA", "AU", "ES", "IT", "NL", "MX", "JP", "KR", "PL",
    "TR", "ID", "PH", "RU", "SE", "CH", "BE", "AT", "IE", "PT", "AR", "CO", "ZA", "NG", "SG",
)  # fmt: skip
#: Primary language subtags common enough to deserve their own segment.
TOP_LANGUAGES: tuple[str, ...] = (
    "en", "es", "pt", "fr", "de", "it", "nl", "pl", "ru", "tr",
    "ja", "ko", "zh", "ar", "hi", "id", "vi", "th", "sv", "uk",
)  # fmt: skip

_OPEN_ENDED: Mapping[str, tuple[str, ...]] = {"country": TOP_COUNTRIES, "language": TOP_LANGUAGES}
#: The closed value set of every dimension, as used in keys (always incl. other/unknown).
SEGMENT_VOCABULARIES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        name: frozenset(_OPEN_ENDED.get(name) or VOCABULARIES[name]) | {OTHER, UNKNOWN}
        for name in FEATURES
    }
)

#: Accepted spellings of dimension names in experiment configs -> canonical feature name.
DIMENSION_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "device_class": "device",
        "os_family": "os",
        "browser_family": "browser",
        "in_app_browser": "in_app",
        "bot": "is_bot",
        "traffic_source": "source",
        "traffic_medium": "medium",
        "campaign": "campaign_present",
        "lang": "language",
        "hour": "hour_bucket",
        "daypart": "hour_bucket",
        "day": "weekday",
        "pages": "pages_bucket",
        "time": "time_bucket",
        "time_on_site": "time_bucket",
        "visitor": "visitor_type",
        "screen_size": "screen",
    }
)


def validate_dimensions(dimensions: Sequence[str]) -> tuple[str, ...]:
    """Return the canonical dimension tuple: aliases resolved, deduplicated, sorted.

    Meant to run when an experiment is defined, so that a typo fails loudly there and
    not as a silently different segmentation at serving time.

    :raises ValueError: for a non-sequence, unknown names, or more than
        ``MAX_DIMENSIONS`` distinct dimensions.
    """
    if isinstance(dimensions, str | bytes) or not isinstance(dimensions, Sequence):
        msg = (
            f"dimensions must be a sequence of feature names, got {type(dimensions).__name__} "
            f"{dimensions!r:.80}"
        )
        raise ValueError(msg)
    names: set[str] = set()
    bad: list[str] = []
    for raw in dimensions:
        name = raw.strip().lower() if isinstance(raw, str) else ""
        name = DIMENSION_ALIASES.get(name, name)
        if name in SEGMENT_VOCABULARIES:
            names.add(name)
        else:
            bad.append(f"{raw!r:.40}")
    if bad:
        msg = (
            f"unknown segment dimension(s) {', '.join(bad)}; valid dimensions are: "
            f"{', '.join(FEATURES)} (aliases: {', '.join(sorted(DIMENSION_ALIASES))})"
        )
        raise ValueError(msg)
    if len(names) > MAX_DIMENSIONS:
        msg = (
            f"at most {MAX_DIMENSIONS} segment dimensions are allowed (each one multiplies "
            f"the number of posteriors to learn), got {len(names)}: {', '.join(sorted(names))}"
        )
        raise ValueError(msg)
    return tuple(sorted(names))


@lru_cache(maxsize=256)
def _validated_cached(dimensions: tuple[str, ...]) -> tuple[str, ...]:
    return validate_dimensions(dimensions)


def _validated(dimensions: Sequence[str]) -> tuple[str, ...]:
    """validate_dimensions, memoized for the hot path (a few configs, millions of visits)."""
    if isinstance(dimensions, tuple | list):
        try:
            return _validated_cached(tuple(dimensions))
        except TypeError:  # an unhashable element: let the uncached path report it
            pass
    return validate_dimensions(dimensions)


def fold_value(dimension: str, value: object) -> str:
    """Map a feature value onto the dimension's vocabulary (``other`` if outside it).

    Non-strings and blanks are ``unknown``. Case and surrounding spaces are forgiven so
    that hand-written features (e.g. in tests or backfills) land in the same segment.

    :raises KeyError: if ``dimension`` is not a canonical dimension name.
    """
    vocabulary = SEGMENT_VOCABULARIES[dimension]
    if not isinstance(value, str):
        return UNKNOWN
    if value in vocabulary:
        return value
    text = value.strip()
    for candidate in (text, text.lower(), text.upper()):
        if candidate in vocabulary:
            return candidate
    return OTHER if text else UNKNOWN


def segment_key(features: Mapping[str, str], dimensions: Sequence[str]) -> str:
    """The canonical key of the segment these features fall in, e.g.
    ``device:mobile|source:instagram``; ``all`` when there are no dimensions.

    The key depends only on the *set* of dimensions (order, duplicates and aliases are
    irrelevant). Missing features count as ``unknown``.

    :raises ValueError: if ``dimensions`` is invalid (see ``validate_dimensions``).
    """
    dims = _validated(dimensions)
    if not dims:
        return ALL_SEGMENTS
    if not isinstance(features, Mapping):
        features = {}
    values = tuple(features.get(name) for name in dims)
    try:
        return _cached_key(dims, values)
    except TypeError:  # an unhashable value (it folds to unknown): not cacheable
        return _key(dims, values)


def _key(dims: tuple[str, ...], values: tuple[object, ...]) -> str:
    return PAIR_SEPARATOR.join(
        f"{name}{NAME_SEPARATOR}{fold_value(name, value)}"
        for name, value in zip(dims, values, strict=True)
    )


@lru_cache(maxsize=4096)
def _cached_key(dims: tuple[str, ...], values: tuple[object, ...]) -> str:
    """`_key`, memoized: a handful of feature combinations make most visits."""
    return _key(dims, values)


def parse_segment_key(key: str) -> dict[str, str]:
    """Inverse of ``segment_key``: ``"device:mobile|os:ios"`` -> ``{"device": "mobile", ...}``.

    Only canonical keys are accepted, so a stored key that parses is guaranteed to be
    one ``segment_key`` would produce.

    :raises ValueError: for anything that is not a canonical segment key.
    """
    if not isinstance(key, str):
        msg = f"segment key must be a string, got {type(key).__name__}"
        raise ValueError(msg)
    if key == ALL_SEGMENTS:
        return {}
    parsed: dict[str, str] = {}
    for pair in key.split(PAIR_SEPARATOR):
        name, separator, value = pair.partition(NAME_SEPARATOR)
        if not separator or name in parsed:
            msg = f"malformed segment key {key!r:.200}: bad or repeated pair {pair!r:.60}"
            raise ValueError(msg)
        parsed[name] = value
    try:
        canonical = segment_key(parsed, tuple(parsed))
    except ValueError as exc:
        msg = f"invalid segment key {key!r:.200}: {exc}"
        raise ValueError(msg) from exc
    if canonical != key:
        msg = f"non-canonical segment key {key!r:.200}; the canonical form is {canonical!r}"
        raise ValueError(msg)
    return parsed


def max_segments(dimensions: Sequence[str]) -> int:
    """Upper bound on distinct segment keys for these dimensions (1 for none).

    The product of the vocabulary sizes: each segment carries its own posteriors per
    variant, so this is what an experiment costs in state and in data needed to learn.

    :raises ValueError: if ``dimensions`` is invalid (see ``validate_dimensions``).
    """
    return math.prod(len(SEGMENT_VOCABULARIES[name]) for name in _validated(dimensions))
