"""Unit tests for streams.core.context: feature extraction from raw visit contexts."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.context import (
    COUNTRY_CODES,
    FEATURE_GROUPS,
    FEATURES,
    NO_HOST,
    OTHER,
    UNKNOWN,
    VOCABULARIES,
    _host,
    _referrer_host,
    _traffic,
    channel,
    extract_context,
    extract_features,
)

pytestmark = pytest.mark.unit

IPHONE_SAFARI = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
ANDROID_CHROME = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.6367.82 Mobile Safari/537.36"
)
INSTAGRAM_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 Instagram 329.0.3.29.108 (iPhone15,2; iOS 17_4; en_US; "
    "en; scale=3.00; 1179x2556; 590403458)"
)
INSTAGRAM_ANDROID = (
    "Mozilla/5.0 (Linux; Android 13; SM-S918B Build/TP1A.220624.014; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/124.0.6367.82 Mobile Safari/537.36 Instagram "
    "329.0.0.41.93 Android (33/13; 480dpi; 1080x2340; samsung; SM-S918B; dm3q; qcom; en_US; "
    "590403470)"
)
FACEBOOK_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 [FBAN/FBIOS;FBAV/452.0.0.39.110;FBBV/577463914;"
    "FBDV/iPhone14,5;FBMD/iPhone;FBSN/iOS;FBSV/17.3.1;FBSS/3;FBID/phone;FBLC/en_US;FBOP/5]"
)
FACEBOOK_ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; SM-G991B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/123.0.6312.118 Mobile Safari/537.36 "
    "[FB_IAB/FB4A;FBAV/459.0.0.54.108;]"
)
TIKTOK_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148 musical_ly_34.1.0 JsSdk/2.0 NetType/WIFI "
    "Channel/App Store ByteLocale/en Region/US WKWebView/1 BytedanceWebview/d8a21c6"
)
TIKTOK_ANDROID = (
    "Mozilla/5.0 (Linux; Android 12; SM-A525F Build/SP1A.210812.016; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/120.0.6099.230 Mobile Safari/537.36 trill_340103 "
    "JsSdk/1.0 NetType/WIFI Channel/googleplay AppName/trill app_version/34.1.3 "
    "BytedanceWebview/d8a21c6"
)
WINDOWS_EDGE = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36 Edg/124.0.2478.67"
)
MACOS_FIREFOX = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.4; rv:125.0) Gecko/20100101 Firefox/125.0"
)
IPAD_SAFARI = (
    "Mozilla/5.0 (iPad; CPU OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.4 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
GOOGLEBOT_SMARTPHONE = (
    "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/124.0.6367.118 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
    "+http://www.google.com/bot.html)"
)
SAMSUNG_INTERNET = (
    "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    "SamsungBrowser/24.0 Chrome/117.0.0.0 Mobile Safari/537.36"
)
ANDROID_TABLET = (
    "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
CHROMEBOOK = (
    "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
UBUNTU_FIREFOX = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"

# name -> (ua, device, os, browser, app, in_app, is_bot)
USER_AGENTS = {
    "iphone-safari": (IPHONE_SAFARI, "mobile", "ios", "safari", "none", "no", "no"),
    "android-chrome": (ANDROID_CHROME, "mobile", "android", "chrome", "none", "no", "no"),
    "instagram-ios": (INSTAGRAM_IOS, "mobile", "ios", "instagram", "instagram", "yes", "no"),
    "instagram-android": (
        INSTAGRAM_ANDROID,
        "mobile",
        "android",
        "instagram",
        "instagram",
        "yes",
        "no",
    ),
    "facebook-fban-ios": (FACEBOOK_IOS, "mobile", "ios", "facebook", "facebook", "yes", "no"),
    "facebook-android": (
        FACEBOOK_ANDROID,
        "mobile",
        "android",
        "facebook",
        "facebook",
        "yes",
        "no",
    ),
    "tiktok-ios": (TIKTOK_IOS, "mobile", "ios", "tiktok", "tiktok", "yes", "no"),
    "tiktok-android": (TIKTOK_ANDROID, "mobile", "android", "tiktok", "tiktok", "yes", "no"),
    "windows-edge": (WINDOWS_EDGE, "desktop", "windows", "edge", "none", "no", "no"),
    "macos-firefox": (MACOS_FIREFOX, "desktop", "macos", "firefox", "none", "no", "no"),
    "ipad": (IPAD_SAFARI, "tablet", "ios", "safari", "none", "no", "no"),
    "googlebot": (GOOGLEBOT, "bot", UNKNOWN, OTHER, "none", "no", "yes"),
    "googlebot-smartphone": (GOOGLEBOT_SMARTPHONE, "bot", "android", OTHER, "none", "no", "yes"),
    "samsung-internet": (SAMSUNG_INTERNET, "mobile", "android", "samsung", "none", "no", "no"),
    "android-tablet": (ANDROID_TABLET, "tablet", "android", "chrome", "none", "no", "no"),
    "chromebook": (CHROMEBOOK, "desktop", "chromeos", "chrome", "none", "no", "no"),
    "ubuntu-firefox": (UBUNTU_FIREFOX, "desktop", "linux", "firefox", "none", "no", "no"),
    "curl": ("curl/8.4.0", "bot", UNKNOWN, OTHER, "none", "no", "yes"),
    "unparseable": ("definitely not a browser", UNKNOWN, UNKNOWN, UNKNOWN, "none", "no", "no"),
}
#: name -> (ua, device, os, browser, app, in_app, is_bot): in-app browsers, iPads in desktop
#: mode, crawlers on phone UAs, TVs and consoles (tests/data/user_agents_hard.yaml).
HARD_USER_AGENTS = {
    case["name"]: (
        case["user_agent"], case["device"], case["os"], case["browser"], case["app"],
        case["in_app"], case["is_bot"],
    )
    for case in yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "data" / "user_agents_hard.yaml").read_text()
    )["cases"]
}  # fmt: skip
UA_FEATURES = ("device", "os", "browser", "app", "in_app", "is_bot")
LANGUAGE_RE = re.compile(r"[a-z]{2,3}")
FRIDAY = datetime(2024, 6, 7, 12, 0, tzinfo=UTC)


def ua_features(ua: object) -> tuple[str, ...]:
    features = extract_context({"user_agent": ua})
    return tuple(features[name] for name in UA_FEATURES)


def assert_in_vocabulary(features: Mapping[str, str]) -> None:
    assert tuple(features) == FEATURES
    for name, value in features.items():
        assert isinstance(value, str), name
        if name == "country":
            assert value == UNKNOWN or value in COUNTRY_CODES
        elif name == "language":
            assert value == UNKNOWN or LANGUAGE_RE.fullmatch(value), value
        else:
            assert value in VOCABULARIES[name], (name, value)


# --- shape ----------------------------------------------------------------------------


def test_feature_names_are_unique_and_between_15_and_20() -> None:
    assert len(set(FEATURES)) == len(FEATURES)
    assert 15 <= len(FEATURES) <= 20
    assert set(VOCABULARIES) == set(FEATURES) - {"country", "language"}


def test_every_vocabulary_has_unknown_and_no_separator_characters() -> None:
    for name, vocabulary in VOCABULARIES.items():
        assert UNKNOWN in vocabulary, name
        assert not any("|" in v or ":" in v for v in vocabulary), name
    assert len(COUNTRY_CODES) == 250  # 249 ISO 3166-1 codes + XK
    assert all(len(c) == 2 and c.isupper() for c in COUNTRY_CODES)


@pytest.mark.parametrize("raw", [None, [], "user_agent", 42, 3.5, object(), [("country", "US")]])
def test_a_non_mapping_context_is_all_unknown(raw: object) -> None:
    assert extract_context(raw, FRIDAY) == dict.fromkeys(FEATURES, UNKNOWN)


def test_an_empty_context_is_unknown_except_for_absent_campaign() -> None:
    expected = dict.fromkeys(FEATURES, UNKNOWN) | {"campaign_present": "no"}
    assert extract_context({}) == expected


def test_the_result_is_a_fresh_dict_each_time() -> None:
    first = extract_context(None)
    first["device"] = "mutated"
    assert extract_context(None)["device"] == UNKNOWN


# --- user agent -----------------------------------------------------------------------


@pytest.mark.parametrize(("ua", *UA_FEATURES), USER_AGENTS.values(), ids=USER_AGENTS.keys())
def test_user_agents(
    ua: str, device: str, os: str, browser: str, app: str, in_app: str, is_bot: str
) -> None:
    assert ua_features(ua) == (device, os, browser, app, in_app, is_bot)


@pytest.mark.parametrize(
    ("ua", *UA_FEATURES), HARD_USER_AGENTS.values(), ids=HARD_USER_AGENTS.keys()
)
def test_hard_user_agents(
    ua: str, device: str, os: str, browser: str, app: str, in_app: str, is_bot: str
) -> None:
    assert ua_features(ua) == (device, os, browser, app, in_app, is_bot)


@pytest.mark.parametrize(
    ("touch_points", "device", "os"),
    [(5, "tablet", "ios"), (0, "desktop", "macos"), (1, "desktop", "macos"),
     (None, "desktop", "macos"), ("5", "desktop", "macos"), (True, "desktop", "macos")],
)  # fmt: skip
def test_an_ipad_asking_for_the_desktop_site_is_told_by_its_touch_points(
    touch_points: object, device: str, os: str
) -> None:
    mac_safari = HARD_USER_AGENTS["mac-safari"][0]
    features = extract_context({"user_agent": mac_safari, "max_touch_points": touch_points})
    assert (features["device"], features["os"]) == (device, os)


def test_the_first_kindle_fire_is_a_tablet_though_its_ua_says_only_kindle_fire() -> None:
    # no "Silk/", no "KF..." model, and its browser sent "Mobile": was classed mobile
    first_kindle_fire = (
        "Mozilla/5.0 (Linux; U; Android 2.3.4; en-us; Kindle Fire Build/GINGERBREAD) "
        "AppleWebKit/533.1 (KHTML, like Gecko) Version/4.0 Mobile Safari/533.1"
    )
    assert ua_features(first_kindle_fire)[:2] == ("tablet", "android")
    e_ink_kindle = (
        "Mozilla/5.0 (X11; U; Linux armv7l like Android; en-us) AppleWebKit/531.2+ "
        "(KHTML, like Gecko) Version/5.0 Safari/533.2+ Kindle/3.0+"
    )
    assert ua_features(e_ink_kindle)[0] == OTHER


def test_touch_points_do_not_turn_a_windows_laptop_into_a_tablet() -> None:
    features = extract_context({"user_agent": WINDOWS_EDGE, "max_touch_points": 10})
    assert features["device"] == "desktop"


@pytest.mark.parametrize("ua", [None, "", "   ", 42, ["Mozilla"], {"ua": "x"}, b"Mozilla/5.0"])
def test_missing_or_non_string_user_agent_is_unknown(ua: object) -> None:
    assert ua_features(ua) == (UNKNOWN,) * 6


def test_user_agent_that_the_parser_rejects_is_unknown() -> None:
    assert ua_features("Mozilla/5.0 \ud800 (iPhone)") == (UNKNOWN,) * 6


def test_huge_user_agent_is_truncated_not_rejected() -> None:
    assert ua_features(IPHONE_SAFARI + "x" * 1_000_000) == ua_features(IPHONE_SAFARI)


def test_repeated_user_agent_gives_identical_features() -> None:
    assert extract_context({"user_agent": TIKTOK_IOS}) == extract_context(
        {"user_agent": TIKTOK_IOS}
    )


# --- traffic source -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("referrer", "source", "medium"),
    [
        ("https://l.instagram.com/?u=https%3A%2F%2Fshop.example", "instagram", "social"),
        ("https://www.instagram.com/", "instagram", "social"),
        ("https://m.facebook.com/", "facebook", "social"),
        ("https://lm.facebook.com/l.php?u=x", "facebook", "social"),
        ("https://www.tiktok.com/@shop", "tiktok", "social"),
        ("https://www.google.com/", "google", "organic"),
        ("https://www.google.co.uk/", "google", "organic"),
        ("https://www.google.de/search?q=x", "google", "organic"),
        ("https://www.google.com.br/", "google", "organic"),
        ("https://WWW.GOOGLE.FR:443/", "google", "organic"),
        ("https://www.bing.com/search?q=x", "bing", "organic"),
        ("https://t.co/AbC123", "twitter", "social"),
        ("https://x.com/someone/status/1", "twitter", "social"),
        ("https://www.linkedin.com/feed/", "linkedin", "social"),
        ("https://lnkd.in/abc", "linkedin", "social"),
        ("https://www.youtube.com/watch?v=1", "youtube", "social"),
        ("https://mail.google.com/mail/u/0/", "email", "email"),
        ("android-app://com.google.android.gm/", "email", "email"),
        ("android-app://com.google.android.googlequicksearchbox/", "google", "organic"),
        ("https://duckduckgo.com/", OTHER, "organic"),
        ("https://www.reddit.com/r/x", OTHER, "social"),
        ("https://blog.example.org/post", "referral", "referral"),
        ("www.google.com/search?q=x", "google", "organic"),
        ("", "direct", "direct"),
        ("  ", "direct", "direct"),
        (None, UNKNOWN, UNKNOWN),  # null means "not captured", not "no referrer"
        ("not a url", UNKNOWN, UNKNOWN),
        ("http://[::1", UNKNOWN, UNKNOWN),
        (12345, UNKNOWN, UNKNOWN),
        ({"host": "google.com"}, UNKNOWN, UNKNOWN),
    ],
)
def test_referrer_without_utm(referrer: object, source: str, medium: str) -> None:
    features = extract_context({"referrer": referrer})
    assert (features["source"], features["medium"]) == (source, medium)


@pytest.mark.parametrize(
    ("referrer", "key"),
    [
        (None, None),
        ("", ""),
        ("https://www.google.com/search?q=shoes&hl=de", "www.google.com"),
        ("HTTPS://WWW.Google.COM:443/x", "www.google.com"),
        ("https://user:pw@m.facebook.com/story.php?id=1", "m.facebook.com"),
        ("android-app://com.google.android.gm/", "com.google.android.gm"),
        ("www.bing.com/search?q=x", "www.bing.com"),
        ("/checkout?step=2", NO_HOST),  # a referrer, but no host: not direct
        ("https:///path", NO_HOST),
    ],
)
def test_the_traffic_memo_is_keyed_by_the_referrer_host(referrer: str | None, key: str) -> None:
    assert _referrer_host(referrer) == key


def test_pages_of_one_referrer_site_share_one_memo_entry() -> None:
    pages = [f"https://blog.memo-test.example/post/{i}?utm_x={i}#c" for i in range(5)]
    before = _traffic.cache_info()
    features = [extract_features({"referrer": page}, names=("source", "channel")) for page in pages]
    after = _traffic.cache_info()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 4)
    assert features == [{"source": "referral", "channel": "referral"}] * 5
    no_host = extract_context({"referrer": "/checkout"})
    assert (no_host["source"], no_host["channel"]) == (UNKNOWN, UNKNOWN)


def _urlsplit_host(url: str) -> str:
    """What `_host` gave before its fast path: urlsplit's hostname, always."""
    if "://" not in url and not url.startswith("//"):
        url = "//" + url
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


_URL_PIECES = (
    "https://", "http://", "//", "android-app://", "HTTPS://", "x y://", "1a://", "www.google.com",
    "WWW.Google.CO.UK", "user:pw@", ":8080", "/path", "?q=1", "#f", "[::1]", "[bad", "\t", "\n",
    "é", "localhost", ".", "-", "_", " ", "%2F", "@", "+", "\x00", "a:b",
)  # fmt: skip


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(_URL_PIECES) | st.text(max_size=3), min_size=1, max_size=6))
def test_the_host_of_a_url_is_urlsplits(pieces: list[str]) -> None:
    url = "".join(pieces)
    assert _host(url) == _urlsplit_host(url)


@pytest.mark.parametrize(
    ("utm_source", "utm_medium", "source", "medium"),
    [
        ("instagram", "paid_social", "instagram", "paid"),
        ("ig", "social", "instagram", "social"),
        ("IG", None, "instagram", "social"),
        ("facebook_ads", "cpc", "facebook", "paid"),
        ("fb", "Paid-Social", "facebook", "paid"),
        ("tiktok", "cpm", "tiktok", "paid"),
        ("google", "cpc", "google", "paid"),
        ("google", "organic", "google", "organic"),
        ("google", None, "google", "organic"),  # GA4: a search site is organic search
        ("bing", "ppc", "bing", "paid"),
        ("x", "social", "twitter", "social"),
        ("l.instagram.com", "referral", "instagram", "social"),  # GA4: social site first
        ("Newsletter", None, "email", "email"),
        ("klaviyo", "email", "email", "email"),
        ("linkedin", "sponsored", "linkedin", "social"),  # not GA4's paid medium pattern
        ("linkedin", "paid_social", "linkedin", "paid"),
        ("youtube", "video", "youtube", "social"),  # GA4: organic video
        ("partner-site", "affiliate", OTHER, OTHER),
        (42, "cpc", UNKNOWN, UNKNOWN),  # a tag of the wrong type: nothing can be trusted
        (None, "email", "twitter", "email"),  # source from the referrer, medium from UTM
        ("", "", "twitter", "social"),  # blank UTM tags are ignored
        ("instagram", ["cpc"], "instagram", UNKNOWN),
    ],
)
def test_utm_tags_win_over_the_referrer(
    utm_source: object, utm_medium: object, source: str, medium: str
) -> None:
    raw = {"utm_source": utm_source, "utm_medium": utm_medium, "referrer": "https://t.co/x"}
    features = extract_context(raw)
    assert (features["source"], features["medium"]) == (source, medium)


@pytest.mark.parametrize(
    ("raw", "source", "medium", "channel"),
    [
        # tags of the landing URL count when the context has no utm_* fields ...
        ({"landing_url": "https://s.example/?utm_source=ig&utm_medium=paid_social"},
         "instagram", "paid", "paid_social"),
        ({"landing_url": "https://s.example/p?UTM_SOURCE=newsletter#top"},
         "email", "email", "email"),
        ({"utm_source": "", "utm_medium": None,
          "landing_url": "https://s.example/?utm_source=tiktok&utm_medium=paid"},
         "tiktok", "paid", "paid_social"),  # blank or null fields fall back to the URL's tags
        # ... and the fields win over them
        ({"utm_source": "google", "utm_medium": "cpc",
          "landing_url": "https://s.example/?utm_source=bing&utm_medium=email"},
         "google", "paid", "paid_search"),
        # Google's click ids override UTM tags (GA4's default); the others do not
        ({"utm_source": "newsletter", "utm_medium": "email",
          "landing_url": "https://s.example/?gclid=Cj0K"}, "google", "paid", "paid_search"),
        ({"utm_source": "awin", "utm_medium": "affiliate",
          "landing_url": "https://s.example/?msclkid=1"}, OTHER, OTHER, "affiliates"),
        ({"referrer": "", "landing_url": "https://s.example/?ttclid=E.C"},
         "tiktok", "paid", "paid_social"),
        # fbclid says Meta, the referrer says which of its apps; not paid by itself
        ({"referrer": "https://l.instagram.com/", "landing_url": "https://s.example/?fbclid=Iw"},
         "instagram", "social", "organic_social"),
        ({"landing_url": "https://s.example/?fbclid=Iw"}, "facebook", "social", "organic_social"),
        # a blank click id, a landing URL of the wrong type or without a query is ignored
        ({"landing_url": "https://s.example/?gclid=", "referrer": ""},
         "direct", "direct", "direct"),
        ({"landing_url": 42, "referrer": ""}, "direct", "direct", "direct"),
        ({"landing_url": "https://s.example/", "referrer": None}, UNKNOWN, UNKNOWN, UNKNOWN),
        ({"landing_url": "http://[::1/?utm_source=google&utm_medium=cpc"},
         "google", "paid", "paid_search"),
        # direct needs the empty referrer the visits schema asks for
        ({"referrer": ""}, "direct", "direct", "direct"),
        ({}, UNKNOWN, UNKNOWN, UNKNOWN),
        ({"utm_source": "(direct)", "utm_medium": "(none)"}, "direct", "direct", "direct"),
    ],
)  # fmt: skip
def test_landing_url_click_ids_and_direct(
    raw: dict[str, object], source: str, medium: str, channel: str
) -> None:
    features = extract_context(raw)
    assert (features["source"], features["medium"], features["channel"]) == (
        source, medium, channel,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("source", "category", "medium", "campaign", "expected"),
    [
        ("(direct)", "", "(none)", "", "direct"),
        ("google", "search", "cpc", "pmax Cross-Network", "cross_network"),
        ("google", "search", "cpc", "shopping_de", "paid_shopping"),
        ("google", "search", "cpc", "workshop", "paid_search"),  # "workshop" is not "shop"
        ("google", "search", "cpc", "top-shop", "paid_shopping"),
        ("facebook", "social", "Paid_Social", "", "paid_social"),
        ("youtube", "video", "cpv", "", "paid_video"),
        ("google", "search", "display", "", "display"),
        ("x", "", "retargeting", "", "paid_other"),
        ("x", "shopping", "", "", "organic_shopping"),
        ("x", "", "Social Media", "", "organic_social"),
        ("x", "", "video", "", "organic_video"),
        ("x", "", "organic", "", "organic_search"),
        ("x", "", "link", "", "referral"),
        ("E-Mail", "", "", "", "email"),
        ("x", "", "affiliate", "", "affiliates"),
        ("x", "", "audio", "", "audio"),
        ("SMS", "", "", "", "sms"),
        ("x", "", "web-push", "", "mobile_push"),
        ("firebase", "", "", "", "mobile_push"),
        ("x", "", "print", "", "unassigned"),
    ],
)  # fmt: skip
def test_ga4_channel_rules_in_their_order(
    source: str, category: str, medium: str, campaign: str, expected: str
) -> None:
    assert channel(source, category, medium, campaign) == expected


@pytest.mark.parametrize(
    ("campaign", "expected"),
    [("summer_sale", "yes"), ("", "no"), ("   ", "no"), (None, "no"), (7, UNKNOWN)],
)
def test_campaign_present(campaign: object, expected: str) -> None:
    assert extract_context({"utm_campaign": campaign})["campaign_present"] == expected


# --- country and language ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("country", "expected"),
    [
        ("US", "US"), ("gb", "GB"), (" de ", "DE"), ("UK", "GB"), ("XK", "XK"),
        ("ZZ", UNKNOWN), ("EU", UNKNOWN), ("USA", UNKNOWN), ("", UNKNOWN), (None, UNKNOWN),
        (1, UNKNOWN), (["US"], UNKNOWN),
    ],
)  # fmt: skip
def test_country(country: object, expected: str) -> None:
    assert extract_context({"country": country})["country"] == expected


@pytest.mark.parametrize(
    ("language", "expected"),
    [
        ("en", "en"), ("en-US", "en"), ("pt_BR", "pt"), ("ZH-Hant-TW", "zh"),
        ("fr-CH, fr;q=0.9, en;q=0.8", "fr"), ("fil-PH", "fil"), ("iw", "he"), ("in-ID", "id"),
        ("*", UNKNOWN), ("und", UNKNOWN), ("english", UNKNOWN), ("e1", UNKNOWN),
        ("日本語", UNKNOWN), ("", UNKNOWN), (None, UNKNOWN), (5, UNKNOWN),
    ],
)  # fmt: skip
def test_language(language: object, expected: str) -> None:
    assert extract_context({"language": language})["language"] == expected


# --- time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local_hour", "bucket"),
    [(0, "night"), (5, "night"), (6, "morning"), (11, "morning"), (12, "afternoon"),
     (17, "afternoon"), (18, "evening"), (23, "evening"), (9.0, "morning")],
)  # fmt: skip
def test_hour_bucket_boundaries_from_local_hour(local_hour: float, bucket: str) -> None:
    assert extract_context({"local_hour": local_hour})["hour_bucket"] == bucket


@pytest.mark.parametrize("local_hour", [24, -1, 12.5, True, "12", math.nan, 10**100])
def test_invalid_local_hour_falls_back_to_occurred_at(local_hour: object) -> None:
    raw = {"local_hour": local_hour}
    assert extract_context(raw)["hour_bucket"] == UNKNOWN
    assert extract_context(raw, FRIDAY)["hour_bucket"] == "afternoon"  # 12:00 UTC


def test_without_any_time_information_hour_and_weekday_are_unknown() -> None:
    features = extract_context({"timezone_offset_minutes": 60})
    assert (features["hour_bucket"], features["weekday"]) == (UNKNOWN, UNKNOWN)


def test_utc_is_used_without_offset_or_local_hour() -> None:
    features = extract_context({}, datetime(2024, 6, 8, 19, 0, tzinfo=UTC))  # Saturday
    assert (features["hour_bucket"], features["weekday"]) == ("evening", "weekend")


def test_positive_offset_moves_into_the_next_day() -> None:
    # Friday 23:30 UTC is Saturday 01:30 in UTC+2
    raw = {"timezone_offset_minutes": 120}
    features = extract_context(raw, datetime(2024, 6, 7, 23, 30, tzinfo=UTC))
    assert (features["hour_bucket"], features["weekday"]) == ("night", "weekend")


def test_negative_offset_moves_into_the_previous_day() -> None:
    # Saturday 02:00 UTC is Friday 21:00 in UTC-5
    raw = {"timezone_offset_minutes": -300}
    features = extract_context(raw, datetime(2024, 6, 8, 2, 0, tzinfo=UTC))
    assert (features["hour_bucket"], features["weekday"]) == ("evening", "weekday")


def test_half_hour_offsets() -> None:
    # Sunday 18:45 UTC is Monday 00:15 in India (UTC+5:30)
    raw = {"timezone_offset_minutes": 330}
    features = extract_context(raw, datetime(2024, 6, 9, 18, 45, tzinfo=UTC))
    assert (features["hour_bucket"], features["weekday"]) == ("night", "weekday")


def test_local_hour_wins_over_offset_for_the_hour() -> None:
    raw = {"local_hour": 8, "timezone_offset_minutes": 0}
    features = extract_context(raw, datetime(2024, 6, 9, 20, 0, tzinfo=UTC))
    assert (features["hour_bucket"], features["weekday"]) == ("morning", "weekend")


@pytest.mark.parametrize(
    ("occurred_at", "local_hour", "weekday"),
    [
        (datetime(2024, 6, 9, 23, 0, tzinfo=UTC), 8, "weekday"),  # Sun 23:00 UTC = Mon in Tokyo
        (datetime(2024, 6, 10, 1, 0, tzinfo=UTC), 20, "weekend"),  # Mon 01:00 UTC = Sun in NYC
        (datetime(2024, 6, 7, 12, 0, tzinfo=UTC), 12, "weekday"),
    ],
)
def test_weekday_uses_the_offset_implied_by_local_hour(
    occurred_at: datetime, local_hour: int, weekday: str
) -> None:
    assert extract_context({"local_hour": local_hour}, occurred_at)["weekday"] == weekday


def test_aware_non_utc_occurred_at_is_converted() -> None:
    tokyo = timezone(timedelta(hours=9))
    # Saturday 08:00 in Tokyo is Friday 23:00 UTC
    features = extract_context({}, datetime(2024, 6, 8, 8, 0, tzinfo=tokyo))
    assert (features["hour_bucket"], features["weekday"]) == ("evening", "weekday")


def test_naive_occurred_at_is_taken_as_utc() -> None:
    naive = datetime(2024, 6, 8, 19, 0, tzinfo=UTC).replace(tzinfo=None)
    assert extract_context({}, naive) == extract_context({}, naive.replace(tzinfo=UTC))


@pytest.mark.parametrize("offset", [10_000, -10_000, math.inf, math.nan, "60", True, [60]])
def test_invalid_offset_is_ignored(offset: object) -> None:
    features = extract_context({"timezone_offset_minutes": offset}, FRIDAY)
    assert (features["hour_bucket"], features["weekday"]) == ("afternoon", "weekday")


def test_offset_overflowing_datetime_range_does_not_raise() -> None:
    raw = {"timezone_offset_minutes": 840}
    features = extract_context(raw, datetime.max.replace(tzinfo=UTC))
    assert features["weekday"] == UNKNOWN


def test_non_datetime_occurred_at_is_ignored() -> None:
    features = extract_context({"local_hour": 9}, "2024-06-07T12:00:00Z")  # type: ignore[arg-type]
    assert (features["hour_bucket"], features["weekday"]) == ("morning", UNKNOWN)


# --- session and screen -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pages", "bucket"),
    [(1, "1"), (2, "2-3"), (3, "2-3"), (4, "4-7"), (7, "4-7"), (8, "8+"), (500, "8+"),
     (3.0, "2-3"), (0, UNKNOWN), (-2, UNKNOWN), (2.5, UNKNOWN), (True, UNKNOWN),
     ("3", UNKNOWN), (10**30, UNKNOWN), (math.nan, UNKNOWN), (None, UNKNOWN)],
)  # fmt: skip
def test_pages_bucket(pages: object, bucket: str) -> None:
    assert extract_context({"session": {"pages_viewed": pages}})["pages_bucket"] == bucket


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [(0, "<10s"), (9.99, "<10s"), (10, "10-60s"), (59.9, "10-60s"), (60, "1-5m"),
     (299, "1-5m"), (300, "5m+"), (7200, "5m+"), (-1, UNKNOWN), (math.inf, UNKNOWN),
     (math.nan, UNKNOWN), (10**400, UNKNOWN), (1e12, UNKNOWN), ("30", UNKNOWN)],
)  # fmt: skip
def test_time_bucket(seconds: object, bucket: str) -> None:
    assert extract_context({"session": {"time_seconds": seconds}})["time_bucket"] == bucket


@pytest.mark.parametrize(
    ("session", "visitor_type"),
    [
        ({"is_returning": True}, "returning"),
        ({"is_returning": False}, "new"),
        ({"visit_count": 1}, "new"),
        ({"visit_count": 4}, "returning"),
        ({"is_returning": False, "visit_count": 4}, "returning"),
        ({"is_returning": "yes"}, UNKNOWN),
        ({"visit_count": 0}, UNKNOWN),
        ({}, UNKNOWN),
    ],
)
def test_visitor_type(session: dict[str, object], visitor_type: str) -> None:
    assert extract_context({"session": session})["visitor_type"] == visitor_type


@pytest.mark.parametrize("session", [None, "session", 3, ["pages_viewed", 3]])
def test_non_mapping_session_gives_unknown_session_features(session: object) -> None:
    features = extract_context({"session": session})
    names = ("pages_bucket", "time_bucket", "visitor_type")
    assert [features[n] for n in names] == [UNKNOWN] * 3


@pytest.mark.parametrize(
    ("width", "screen"),
    [(320, "small"), (767, "small"), (768, "medium"), (1279.5, "medium"), (1280, "large"),
     (3840, "large"), (0, UNKNOWN), (-5, UNKNOWN), (10**9, UNKNOWN), ("1024", UNKNOWN)],
)  # fmt: skip
def test_screen(width: object, screen: str) -> None:
    assert extract_context({"screen_width": width})["screen"] == screen


def test_a_full_instagram_visit() -> None:
    raw = {
        "user_agent": INSTAGRAM_IOS,
        "referrer": "https://l.instagram.com/",
        "utm_campaign": "spring",
        "country": "fr",
        "language": "fr-FR",
        "timezone_offset_minutes": 120,
        "screen_width": 393,
        "session": {"pages_viewed": 1, "time_seconds": 4.2, "is_returning": False},
        "extra_field": {"ignored": True},
    }
    assert extract_context(raw, datetime(2024, 6, 8, 17, 30, tzinfo=UTC)) == {
        "device": "mobile", "os": "ios", "browser": "instagram", "app": "instagram",
        "in_app": "yes", "is_bot": "no", "source": "instagram", "medium": "social",
        "channel": "organic_social", "campaign_present": "yes",
        "country": "FR", "language": "fr", "hour_bucket": "evening", "weekday": "weekend",
        "pages_bucket": "1", "time_bucket": "<10s", "visitor_type": "new", "screen": "small",
    }  # fmt: skip


class ExplodingMapping(Mapping[str, object]):
    """A Mapping whose every lookup fails, standing in for a hostile decoded payload."""

    def __getitem__(self, key: str) -> object:
        raise RuntimeError(key)

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("iter")

    def __len__(self) -> int:
        return 1


def test_a_mapping_that_raises_on_access_does_not_raise() -> None:
    assert_in_vocabulary(extract_context(ExplodingMapping(), FRIDAY))
    assert_in_vocabulary(extract_context({"session": ExplodingMapping()}, FRIDAY))


# --- properties ---------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = (
    "user_agent",
    "referrer",
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "country",
    "language",
    "timezone_offset_minutes",
    "local_hour",
    "screen_width",
    "session",
    "landing_url",
    "max_touch_points",
)
SESSION_FIELDS = ("pages_viewed", "time_seconds", "is_returning", "visit_count")
PLAUSIBLE_TEXT = st.sampled_from(
    [IPHONE_SAFARI, GOOGLEBOT, "https://l.instagram.com/", "https://www.google.co.uk/", "ig",
     "cpc", "US", "en-US,en;q=0.9", "", " ", "\ud800", "a|b:c", "x" * 3000,
     "https://s.example/?gclid=1&utm_source=ig&fbclid=2", "?utm_medium=%ff%fe", 5]
)  # fmt: skip
SESSION_VALUES = JSON | st.integers(-5, 50) | st.floats(-5, 500)
SESSIONS = st.fixed_dictionaries({}, optional=dict.fromkeys(SESSION_FIELDS, SESSION_VALUES))
FIELD_VALUES = JSON | PLAUSIBLE_TEXT | SESSIONS
CONTEXTS = JSON | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), FIELD_VALUES)
OCCURRED_AT = st.none() | st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=12))])
)


@settings(max_examples=400, deadline=None)
@given(raw=CONTEXTS, occurred_at=OCCURRED_AT)
def test_any_json_context_yields_every_feature_in_its_vocabulary(
    raw: object, occurred_at: datetime | None
) -> None:
    assert_in_vocabulary(extract_context(raw, occurred_at))


@settings(max_examples=200, deadline=None)
@given(raw=CONTEXTS, occurred_at=st.datetimes())
def test_naive_datetimes_never_raise(raw: object, occurred_at: datetime) -> None:
    assert_in_vocabulary(extract_context(raw, occurred_at))


# --- only the features a segment needs ----------------------------------------------------


def test_the_feature_groups_compute_every_feature_once_in_order() -> None:
    assert tuple(name for names, _ in FEATURE_GROUPS for name in names) == FEATURES


@settings(max_examples=400, deadline=None)
@given(raw=CONTEXTS, occurred_at=OCCURRED_AT, names=st.lists(st.sampled_from(FEATURES)))
def test_extract_features_is_extract_context_restricted_to_the_names(
    raw: object, occurred_at: datetime | None, names: list[str]
) -> None:
    everything = extract_context(raw, occurred_at)
    wanted = {name: everything[name] for name in FEATURES if name in names}
    assert extract_features(raw, occurred_at, tuple(names)) == wanted


def test_extract_features_of_the_same_context_twice_is_the_same() -> None:
    raw = {"user_agent": INSTAGRAM_IOS, "utm_source": "ig", "landing_url": "https://s.example/"}
    first = extract_features(raw, None, ("device", "source"))
    assert first == {"device": "mobile", "source": "instagram"}
    first["device"] = "mutated"  # a fresh dict each time, though the parts are cached
    assert extract_features(dict(raw), None, ("device", "source"))["device"] == "mobile"


def test_extract_features_refuses_a_name_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unknown context feature"):
        extract_features({}, None, ("device", "devise"))
