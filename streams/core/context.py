"""Turn a visit's raw context into a small set of normalized string features.

The bandit learns one posterior per *segment*, so every feature here is deliberately
coarse: a handful of values each, always plain strings, and ``unknown`` whenever the
producer sent nothing usable. Contexts come from browsers and third-party producers, so
this module never trusts a type and never raises: wrong types, NaN, absurd numbers,
nested junk or a non-mapping context all degrade to ``unknown`` rather than dropping a
visit (and with it the reward signal) on the floor.

User agents are parsed with the maintained ``ua-parser`` rule set rather than our own
regexes; its answer is mapped onto our closed vocabularies and memoized, because the
same few hundred UA strings account for most traffic.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from urllib.parse import urlsplit

import ua_parser

UNKNOWN = "unknown"
OTHER = "other"
YES = "yes"
NO = "no"

# fmt: off
FEATURES: tuple[str, ...] = (
    "device", "os", "browser", "in_app", "is_bot",
    "source", "medium", "campaign_present",
    "country", "language", "hour_bucket", "weekday",
    "pages_bucket", "time_bucket", "visitor_type", "screen",
)

_YES_NO = frozenset({YES, NO, UNKNOWN})
#: Closed vocabulary of every feature except the open-ended ``country`` and ``language``.
VOCABULARIES: Mapping[str, frozenset[str]] = MappingProxyType({
    "device": frozenset({"mobile", "tablet", "desktop", "bot", UNKNOWN}),
    "os": frozenset({"ios", "android", "windows", "macos", "linux", "chromeos", OTHER, UNKNOWN}),
    "browser": frozenset({"chrome", "safari", "firefox", "edge", "samsung", "instagram",
                          "facebook", "tiktok", OTHER, UNKNOWN}),
    "in_app": _YES_NO,
    "is_bot": _YES_NO,
    "source": frozenset({"instagram", "facebook", "tiktok", "google", "bing", "twitter",
                         "linkedin", "youtube", "email", "direct", "referral", OTHER, UNKNOWN}),
    "medium": frozenset({"paid", "social", "organic", "email", "referral", "direct", OTHER,
                         UNKNOWN}),
    "campaign_present": _YES_NO,
    "hour_bucket": frozenset({"night", "morning", "afternoon", "evening", UNKNOWN}),
    "weekday": frozenset({"weekday", "weekend", UNKNOWN}),
    "pages_bucket": frozenset({"1", "2-3", "4-7", "8+", UNKNOWN}),
    "time_bucket": frozenset({"<10s", "10-60s", "1-5m", "5m+", UNKNOWN}),
    "visitor_type": frozenset({"new", "returning", UNKNOWN}),
    "screen": frozenset({"small", "medium", "large", UNKNOWN}),
})

#: ISO 3166-1 alpha-2 (as in tzdata's iso3166.tab) plus XK, which GeoIP vendors use.
_ISO_3166 = (
    "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO "
    "BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ "
    "DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP "
    "GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG "
    "KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML "
    "MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE "
    "PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL "
    "SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM "
    "US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK"
)
COUNTRY_CODES: frozenset[str] = frozenset(_ISO_3166.split())
# fmt: on

_UA_MAX_CHARS = 512  # bounds regex cost and cache memory; real UAs are ~100-300 chars
_TEXT_MAX_CHARS = 2048  # anything longer than this in a context is junk, not a URL
_ALL_UNKNOWN = MappingProxyType(dict.fromkeys(FEATURES, UNKNOWN))


def _invert(groups: Mapping[str, str], sep: str | None = None) -> dict[str, str]:
    """{value: "alias alias ..."} -> {alias: value}; keeps the lookup tables readable."""
    return {alias: value for value, aliases in groups.items() for alias in aliases.split(sep)}


# fmt: off
_BROWSERS = _invert({
    "chrome": "Chrome|Chrome Mobile|Chrome Mobile iOS|Chrome Mobile WebView|Chromium|"
              "HeadlessChrome",
    "safari": "Safari|Mobile Safari|Mobile Safari UI/WKWebView",
    "firefox": "Firefox|Firefox Mobile|Firefox iOS", "edge": "Edge|Edge Mobile",
    "samsung": "Samsung Internet", "instagram": "Instagram",
    "facebook": "Facebook|Facebook Messenger", "tiktok": "TikTok",
}, "|")
_OSES = _invert({
    "ios": "iOS", "android": "Android", "windows": "Windows", "macos": "Mac OS X|Mac OS",
    "chromeos": "Chrome OS", "linux": "Linux|Ubuntu|Kubuntu|Xubuntu|Debian|Fedora|Mint|Red Hat|"
                                      "Gentoo|Arch Linux|openSUSE|SUSE|CentOS",
}, "|")
# Fallback when ua-parser misses an in-app browser (its rules lag new app releases).
_IN_APP_TOKENS = (
    ("instagram", "instagram"), ("fban/", "facebook"), ("fbav/", "facebook"),
    ("fb_iab/", "facebook"), ("bytedancewebview", "tiktok"), ("musical_ly", "tiktok"),
)
# Apps whose embedded webviews ua-parser names but which have no browser value of their own.
_OTHER_IN_APP = frozenset({"Chrome Mobile WebView", "Mobile Safari UI/WKWebView", "LINE",
                           "WeChat Browser", "KakaoTalk", "Twitter", "Weibo", "Snapchat"})
_BOT_TOKENS = ("bot/", "bot;", "bot)", "+http", "crawler", "spider", "headless", "curl/",
               "wget/", "python-", "go-http-client", "okhttp", "scrapy", "phantomjs",
               "lighthouse", "facebookexternalhit")
_BOT_FAMILIES = frozenset({"Python Requests", "Python aiohttp", "HTTPClient", "curl", "Wget",
                           "HeadlessChrome", "PhantomJS"})
_MOBILE_OSES = frozenset({"Windows Phone", "Windows Mobile", "KaiOS", "BlackBerry OS",
                          "Symbian OS", "Firefox OS", "Nokia Series 40"})
# fmt: on


@lru_cache(maxsize=8192)
def _classify_user_agent(ua: str) -> tuple[str, str, str, str, str]:
    """Map one (truncated) UA string to (device, os, browser, in_app, is_bot).

    Cached because parsing costs ~0.1 ms while a cache hit costs well under a
    microsecond, and UA strings are heavily repeated across visits.
    """
    try:
        result = ua_parser.parse(ua)
    except Exception:  # e.g. the Rust backend rejects lone surrogates
        return UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN
    low = ua.lower()
    ua_family = result.user_agent.family if result.user_agent else ""
    os_family = result.os.family if result.os else ""
    dev_family = result.device.family if result.device else ""
    brand = (result.device.brand or "") if result.device else ""

    browser = _BROWSERS.get(ua_family, "")
    if browser not in ("instagram", "facebook", "tiktok"):
        browser = next((b for token, b in _IN_APP_TOKENS if token in low), browser)
    browser = browser or (OTHER if ua_family not in ("", "Other") else UNKNOWN)
    in_app = browser in ("instagram", "facebook", "tiktok") or ua_family in _OTHER_IN_APP

    os_name = _OSES.get(os_family) or (OTHER if os_family not in ("", "Other") else UNKNOWN)

    is_bot = (
        dev_family == "Spider"
        or ua_family in _BOT_FAMILIES
        or "bot" in ua_family.lower()
        or any(t in low for t in _BOT_TOKENS)
    )
    device = "bot" if is_bot else _device_class(os_name, os_family, dev_family, brand, low)
    return device, os_name, browser, YES if in_app else NO, YES if is_bot else NO


def _device_class(os_name: str, os_family: str, dev_family: str, brand: str, low: str) -> str:
    """Tablet vs mobile vs desktop from ua-parser's OS and device answers.

    ua-parser reports devices, not form factors. Android phones advertise "Mobile" in
    their UA and Android tablets do not (Google's documented convention), which is the
    one token we check ourselves.
    """
    fam, brand = dev_family.lower(), brand.lower()
    android_tablet = os_name == "android" and "mobile" not in low
    if fam == "ipad" or "tablet" in f"{fam} {brand} {os_family.lower()}" or android_tablet:
        return "tablet"
    if os_name in ("ios", "android") or os_family in _MOBILE_OSES or "phone" in fam:
        return "mobile"
    if os_name in ("windows", "macos", "linux", "chromeos"):
        return "desktop"
    return UNKNOWN


# --- traffic source -------------------------------------------------------------------

_SOCIAL = frozenset({"instagram", "facebook", "tiktok", "twitter", "linkedin", "youtube"})


# fmt: off
_SOURCE_ALIASES = _invert({
    "instagram": "instagram ig insta", "facebook": "facebook fb meta messenger",
    "tiktok": "tiktok tt", "google": "google adwords googleads gads",
    "bing": "bing microsoft", "twitter": "twitter x", "linkedin": "linkedin li",
    "youtube": "youtube yt", "direct": "direct (direct)",
    "email": "email e_mail mail newsletter mailchimp klaviyo sendgrid braze brevo",
})
_MEDIUM_ALIASES = _invert({
    "paid": "paid cpc ppc paidsocial paidsearch cpm cpv cpa display banner ads ad sponsored "
            "retargeting",
    "social": "social socialmedia sm influencer", "organic": "organic seo",
    "email": "email e_mail mail newsletter edm", "referral": "referral ref",
    "direct": "direct (none) none",
})
# Registrable domains (ccTLDs are folded to .com before a second lookup) and the package
# names that android-app:// referrers carry instead of a host.
_REFERRER_DOMAINS: dict[str, tuple[str, str]] = {
    domain: source_medium
    for source_medium, domains in {
        ("instagram", "social"): "instagram.com com.instagram.android",
        ("facebook", "social"): "facebook.com fb.com fb.me messenger.com com.facebook.katana",
        ("tiktok", "social"): "tiktok.com com.zhiliaoapp.musically com.ss.android.ugc.trill",
        ("twitter", "social"): "t.co twitter.com x.com com.twitter.android",
        ("linkedin", "social"): "linkedin.com lnkd.in com.linkedin.android",
        ("youtube", "social"): "youtube.com youtu.be com.google.android.youtube",
        ("google", "organic"): "google.com com.google.android.googlequicksearchbox",
        ("bing", "organic"): "bing.com",
        ("email", "email"): "mail.google.com outlook.live.com outlook.office.com "
                            "mail.yahoo.com com.google.android.gm",
        (OTHER, "organic"): "duckduckgo.com yahoo.com yandex.com baidu.com ecosia.org "
                            "naver.com search.brave.com",
        (OTHER, "social"): "pinterest.com reddit.com snapchat.com threads.net whatsapp.com "
                           "t.me vk.com",
    }.items()
    for domain in domains.split()
}
# fmt: on
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")


def _alias(text: str, aliases: Mapping[str, str]) -> str:
    """Whole-value alias first, then the leading word (``facebook_ads`` -> facebook)."""
    norm = text.lower().replace("-", "_").replace(" ", "_")
    return aliases.get(norm) or aliases.get(norm.split("_", 1)[0]) or OTHER


@lru_cache(maxsize=4096)
def _classify_host(host: str) -> tuple[str, str]:
    """(source, medium) for a referrer host; cached because hosts repeat a lot."""
    if "." not in host or not set(host) <= _HOST_CHARS:
        return UNKNOWN, UNKNOWN
    labels = host.strip(".").split(".")
    if len(labels) >= 2 and len(labels[-1]) == 2:  # google.co.uk, google.de, google.com.co
        tail = 2 if len(labels) >= 3 and labels[-2] in ("co", "com", "org", "net") else 1
        candidates = [labels, [*labels[:-tail], "com"]]
    else:
        candidates = [labels]
    for parts in candidates:
        for i in range(len(parts) - 1):
            hit = _REFERRER_DOMAINS.get(".".join(parts[i:]))
            if hit:
                return hit
    return "referral", "referral"


def _classify_traffic(ctx: Mapping[str, object]) -> tuple[str, str]:
    """UTM tags win over the referrer, as in every analytics tool.

    Only an empty referrer string (what ``document.referrer`` is for typed-in URLs and
    bookmarks) means "direct"; a null or missing referrer means the producer did not
    capture it, so the source is ``unknown`` as the visits schema documents.
    """
    utm_source, utm_medium = _text(ctx, "utm_source"), _text(ctx, "utm_medium")
    if utm_source:
        source = _classify_host(utm_source.lower())[0] if "." in utm_source else OTHER
        if source in (OTHER, UNKNOWN, "referral"):
            source = _alias(utm_source, _SOURCE_ALIASES)
        fallback_medium = "social" if source in _SOCIAL else OTHER
        fallback_medium = source if source in ("email", "direct") else fallback_medium
    elif utm_source is None:
        source = fallback_medium = UNKNOWN
    else:
        value = _get(ctx, "referrer")
        referrer = value[:_TEXT_MAX_CHARS].strip() if isinstance(value, str) else None
        if referrer is None:
            source = fallback_medium = UNKNOWN
        elif not referrer:
            source = fallback_medium = "direct"
        else:
            source, fallback_medium = _classify_host(_host(referrer))
    if utm_medium:
        return source, _alias(utm_medium, _MEDIUM_ALIASES)
    return source, UNKNOWN if utm_medium is None else fallback_medium


def _host(url: str) -> str:
    if "://" not in url and not url.startswith("//"):
        url = "//" + url  # bare "www.google.com/search"
    try:
        return urlsplit(url).hostname or ""
    except ValueError:  # e.g. an unbalanced "[" in the netloc
        return ""


# --- small, total parsers ---------------------------------------------------------------


def _get(ctx: Mapping[str, object], key: str) -> object:
    try:
        return ctx.get(key)
    except Exception:  # a hostile Mapping implementation must not take the visit down
        return None


def _text(ctx: Mapping[str, object], key: str) -> str | None:
    """Stripped text; ``""`` when absent/blank, ``None`` when present but not a string."""
    value = _get(ctx, key)
    if value is None:
        return ""
    return value[:_TEXT_MAX_CHARS].strip() if isinstance(value, str) else None


def _number(value: object, low: float, high: float) -> float | None:
    """A finite real in [low, high]; bools, NaN, infinities and huge ints give None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if low <= number <= high else None  # NaN fails both comparisons


def _integer(value: object, low: int, high: int) -> int | None:
    number = _number(value, low, high)
    return int(number) if number is not None and number.is_integer() else None


def _bucket(value: float | None, edges: tuple[float, ...], names: tuple[str, ...]) -> str:
    """names[i] for the first edge the value is below; the last name above all edges."""
    if value is None:
        return UNKNOWN
    return next((n for e, n in zip(edges, names, strict=False) if value < e), names[-1])


_LANGUAGE_FIXUPS = {"iw": "he", "in": "id", "ji": "yi", "und": UNKNOWN}  # old Java codes


def _language(text: str | None) -> str:
    first = (text or "")[:64].split(",", 1)[0].split(";", 1)[0].strip()
    primary = first.replace("_", "-").split("-", 1)[0].lower()
    if 2 <= len(primary) <= 3 and primary.isascii() and primary.isalpha():
        return _LANGUAGE_FIXUPS.get(primary, primary)
    return UNKNOWN


def _country(text: str | None) -> str:
    code = (text or "")[:8].upper()
    code = "GB" if code == "UK" else code
    return code if code in COUNTRY_CODES else UNKNOWN


def _local_time(ctx: Mapping[str, object], occurred_at: object) -> tuple[int | None, int | None]:
    """(local hour, local weekday 0=Monday) — local to the visitor, not to us.

    ``timezone_offset_minutes`` is minutes *east* of UTC (CET = +60; note that JS's
    ``getTimezoneOffset()`` has the opposite sign). Without it, the offset is inferred
    from ``local_hour`` so the weekday is still the visitor's.
    """
    hour = _integer(_get(ctx, "local_hour"), 0, 23)
    offset = _number(_get(ctx, "timezone_offset_minutes"), -840, 840)
    if not isinstance(occurred_at, datetime):
        return hour, None
    try:
        utc = occurred_at.astimezone(UTC) if occurred_at.tzinfo else occurred_at.replace(tzinfo=UTC)
        if offset is not None:
            local = utc + timedelta(minutes=offset)
        elif hour is not None:
            delta = (hour - utc.hour) % 24
            local = utc + timedelta(hours=delta - 24 if delta > 14 else delta)
        else:
            local = utc
    except (OverflowError, ValueError, TypeError):  # datetime.max shifted east, broken tzinfo, ...
        return hour, None
    return (local.hour if hour is None else hour), local.weekday()


# --- public API -------------------------------------------------------------------------


def extract_context(
    raw: Mapping[str, object] | object, occurred_at: datetime | None = None
) -> dict[str, str]:
    """Normalize a raw visit context into one string value per name in ``FEATURES``.

    ``occurred_at`` is when the visit happened (naive datetimes are taken as UTC); it is
    an argument rather than "now" so the function stays pure and replayable. Never
    raises: anything unusable becomes ``UNKNOWN``.
    """
    if not isinstance(raw, Mapping):
        return dict(_ALL_UNKNOWN)
    ua = _text(raw, "user_agent")
    if ua:
        device, os_name, browser, in_app, is_bot = _classify_user_agent(ua[:_UA_MAX_CHARS])
    else:
        device = os_name = browser = in_app = is_bot = UNKNOWN
    source, medium = _classify_traffic(raw)
    campaign = _text(raw, "utm_campaign")
    hour, weekday = _local_time(raw, occurred_at)
    session = _get(raw, "session")
    if not isinstance(session, Mapping):
        session = {}
    pages = _integer(_get(session, "pages_viewed"), 1, 1_000_000)
    seconds = _number(_get(session, "time_seconds"), 0, 31 * 86_400)
    returning = _get(session, "is_returning")
    visits = _integer(_get(session, "visit_count"), 1, 10_000_000)
    if returning is True or (visits or 0) > 1:
        visitor = "returning"
    elif returning is False or visits == 1:
        visitor = "new"
    else:
        visitor = UNKNOWN
    width = _number(_get(raw, "screen_width"), 1, 32_768)
    return {
        "device": device,
        "os": os_name,
        "browser": browser,
        "in_app": in_app,
        "is_bot": is_bot,
        "source": source,
        "medium": medium,
        "campaign_present": UNKNOWN if campaign is None else YES if campaign else NO,
        "country": _country(_text(raw, "country")),
        "language": _language(_text(raw, "language")),
        "hour_bucket": _bucket(hour, (6, 12, 18), ("night", "morning", "afternoon", "evening")),
        "weekday": UNKNOWN if weekday is None else "weekend" if weekday >= 5 else "weekday",
        "pages_bucket": _bucket(pages, (2, 4, 8), ("1", "2-3", "4-7", "8+")),
        "time_bucket": _bucket(seconds, (10, 60, 300), ("<10s", "10-60s", "1-5m", "5m+")),
        "visitor_type": visitor,
        "screen": _bucket(width, (768, 1280), ("small", "medium", "large")),
    }
