"""Turn a visit's raw context into a small set of normalized string features.

The bandit learns one posterior per *segment*, so every feature here is deliberately
coarse: a handful of values each, always plain strings, and ``unknown`` whenever the
producer sent nothing usable. Contexts come from browsers and third-party producers, so
this module never trusts a type and never raises: wrong types, NaN, absurd numbers,
nested junk or a non-mapping context all degrade to ``unknown`` rather than dropping a
visit (and with it the reward signal) on the floor.

User agents are parsed with the maintained ``ua-parser`` rule set first; our own rules
(each with the UA strings that need it) only add what it does not answer: the form
factor, in-app browsers, iPads that ask for the desktop site, crawlers it does not mark.
The answer is memoized, because the same few hundred UA strings make most traffic.
Traffic sources follow GA4's default channel grouping (see ``channel``), memoized by the
fields they depend on. A segment reads a few features: ``extract_features`` computes only
the groups of features they belong to, with the functions ``extract_context`` uses for all.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from types import MappingProxyType
from urllib.parse import parse_qsl, urlsplit

import ua_parser
import ua_parser.regex

UNKNOWN = "unknown"
OTHER = "other"
YES = "yes"
NO = "no"

# fmt: off
FEATURES: tuple[str, ...] = (
    "device", "os", "browser", "app", "in_app", "is_bot",
    "source", "medium", "channel", "campaign_present",
    "country", "language", "hour_bucket", "weekday",
    "pages_bucket", "time_bucket", "visitor_type", "screen",
)

_YES_NO = frozenset({YES, NO, UNKNOWN})
_APP_NAMES = ("instagram", "facebook", "messenger", "tiktok", "snapchat", "linkedin",
              "pinterest", "twitter", "wechat", "line")
_CHANNEL_NAMES = (
    "direct", "cross_network", "paid_shopping", "paid_search", "paid_social", "paid_video",
    "display", "paid_other", "organic_shopping", "organic_social", "organic_video",
    "organic_search", "referral", "email", "affiliates", "audio", "sms", "mobile_push",
    "unassigned",
)
#: Closed vocabulary of every feature except the open-ended ``country`` and ``language``.
VOCABULARIES: Mapping[str, frozenset[str]] = MappingProxyType({
    # other: a TV, console, watch, VR headset, car or e-ink reader
    "device": frozenset({"mobile", "tablet", "desktop", "bot", OTHER, UNKNOWN}),
    "os": frozenset({"ios", "android", "windows", "macos", "linux", "chromeos", OTHER, UNKNOWN}),
    # an in-app browser is named after its app
    "browser": frozenset({"chrome", "safari", "firefox", "edge", "samsung", "opera", *_APP_NAMES,
                          OTHER, UNKNOWN}),
    "app": frozenset({*_APP_NAMES, "none", OTHER, UNKNOWN}),  # none: not in an app
    "in_app": _YES_NO,
    "is_bot": _YES_NO,
    "source": frozenset({"instagram", "facebook", "tiktok", "google", "bing", "twitter",
                         "linkedin", "youtube", "pinterest", "snapchat", "email", "direct",
                         "referral", OTHER, UNKNOWN}),
    "medium": frozenset({"paid", "social", "organic", "email", "referral", "direct", OTHER,
                         UNKNOWN}),
    "channel": frozenset({*_CHANNEL_NAMES, UNKNOWN}),  # GA4's default channel group
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
_UTM_MAX_CHARS = 256  # the visits schema's bound; keeps the memo cache small


_Alternatives = tuple[str | tuple[str, str], ...]
"""Alternatives of a token search in a lower-cased UA: a literal, or (a literal that every
match contains, a regular expression)."""
_Searches = tuple[tuple[str, Callable[[str], re.Match[str] | None] | None], ...]


def _any_of(alternatives: _Alternatives) -> _Searches:
    """The alternatives, ready for `_found`: searching for A|B|... is searching for each,
    and one big regex tries every alternative at every position of a 300-character UA
    (tens of microseconds), while a substring test rules most of them out at once."""
    return tuple(
        (item, None) if isinstance(item, str) else (item[0], re.compile(item[1]).search)
        for item in alternatives
    )


def _invert(groups: Mapping[str, str], sep: str | None = None) -> dict[str, str]:
    """{value: "alias alias ..."} -> {alias: value}; keeps the lookup tables readable."""
    return {alias: value for value, aliases in groups.items() for alias in aliases.split(sep)}


# fmt: off
_BROWSERS = _invert({
    "chrome": "Chrome|Chrome Mobile|Chrome Mobile iOS|Chrome Mobile WebView|Chromium|"
              "HeadlessChrome",
    "safari": "Safari|Mobile Safari|Mobile Safari UI/WKWebView",
    "firefox": "Firefox|Firefox Mobile|Firefox iOS|Firefox Focus",
    "edge": "Edge|Edge Mobile", "samsung": "Samsung Internet",
    "opera": "Opera|Opera Mobile|Opera Mini|Opera Touch|Opera GX",
}, "|")
_OSES = _invert({
    "ios": "iOS|iPadOS", "android": "Android", "windows": "Windows", "macos": "Mac OS X|Mac OS",
    "chromeos": "Chrome OS", "linux": "Linux|Ubuntu|Kubuntu|Xubuntu|Debian|Fedora|Mint|Red Hat|"
                                      "Gentoo|Arch Linux|openSUSE|SUSE|CentOS",
}, "|")
#: In-app browsers of the apps that carry most social traffic: a substring of the
#: lower-cased UA -> app, first match wins. ua-parser names most of these apps but not
#: all (it has no rule for LinkedIn's in-app browser), and the app is what the segment
#: needs, so the tokens are checked on every UA.
_APPS: tuple[tuple[str, str], ...] = (
    # "... Mobile/15E148 Instagram 329.0.3.29.108 (iPhone15,2; iOS 17_4; ...)" and
    # "... Mobile Safari/537.36 Instagram 415.0.0.36.76 Android (33/13; 480dpi; ...)"
    ("instagram", "instagram"),
    # Messenger before Facebook: "[FBAN/MessengerForiOS;...]", "[FB_IAB/MESSENGER;...]",
    # and the old Android app "[FBAN/Orca-Android;...]".
    ("fban/messengerforios", "messenger"), ("fb_iab/messenger", "messenger"),
    ("fban/orca-android", "messenger"),
    # "[FBAN/FBIOS;FBAV/452...]", "[FB_IAB/FB4A;FBAV/459...]", app UA "[FBAN/FB4A;...]"
    ("fban/", "facebook"), ("fb_iab/", "facebook"), ("fbav/", "facebook"),
    # TikTok (ByteDance): iOS "musical_ly_34.1.0 ... BytedanceWebview/d8a21c6", Android
    # "trill_340103 ... AppName/trill ... BytedanceWebview/...", "AppName/musical_ly"
    ("bytedancewebview", "tiktok"), ("musical_ly", "tiktok"), ("appname/trill", "tiktok"),
    ("trill_", "tiktok"),
    # "... Mobile/15E148 Snapchat/12.80.0.35 (like Safari/...)"; Android webviews likewise
    ("snapchat", "snapchat"),
    # "... Mobile/15E148 [LinkedInApp]/9.29.2336", Android "... LinkedInApp"
    ("linkedinapp", "linkedin"),
    # "[Pinterest/iOS]", "[Pinterest/Android]", "Pinterest for Android Tablet/4.3.1 (...)"
    ("pinterest", "pinterest"),
    # X/Twitter: iOS "... Twitter for iPhone/10.34" ("for iPad"), Android "... TwitterAndroid"
    ("twitter for ip", "twitter"), ("twitterandroid", "twitter"),
    # WeChat: "... MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN"
    ("micromessenger", "wechat"),
    # LINE: iOS "... Mobile/15A372 Safari Line/7.12.0", Android "... Safari/537.36 Line/6.4.1"
    (" line/", "line"),
)
# Embedded browsers of other apps: ua-parser names them, or Android marks its WebView "; wv)".
_OTHER_IN_APP = frozenset({"Chrome Mobile WebView", "Mobile Safari UI/WKWebView", "LINE",
                           "WeChat Browser", "KakaoTalk", "Twitter", "Weibo", "Snapchat",
                           "Google", "NAVER", "Baidu Box App", "DuckDuckGo Mobile"})
# Crawlers ua-parser's device rules do not mark "Spider" (checked before anything else,
# so a crawler on a phone UA such as Google-InspectionTool's is a bot, never a visitor).
_BOT_TOKENS = ("bot/", "bot;", "bot)", "bot ", "+http", "crawler", "spider", "headless",
               "curl/", "wget/", "python-", "python/", "go-http-client", "okhttp", "scrapy",
               "phantomjs", "lighthouse", "pagespeed", "gtmetrix", "pingdom", "uptimerobot",
               "google-inspectiontool", "googleother", "google-extended", "mediapartners-google",
               "adsbot-google", "feedfetcher", "google-read-aloud", "bingpreview", "slurp",
               "facebookexternalhit", "facebookcatalog", "meta-externalagent", "ia_archiver",
               "apache-httpclient", "libwww-perl", "node-fetch", "axios/", "ahc/",
               "httpclient", "validator", "scanner", "fetcher")
_BOT_FAMILIES = frozenset({"Python Requests", "Python aiohttp", "HTTPClient", "curl", "Wget",
                           "HeadlessChrome", "PhantomJS", "Apache-HttpClient", "Java",
                           "okhttp", "Go-http-client"})
_MOBILE_OSES = frozenset({"Windows Phone", "Windows Mobile", "Windows CE", "KaiOS",
                          "BlackBerry OS", "Symbian OS", "Symbian^3", "Symbian^3 Anna",
                          "Symbian^3 Belle", "Firefox OS", "Nokia Series 40",
                          "Nokia Series 30 Plus", "Bada", "BREW", "Brew MP", "MeeGo", "Maemo",
                          "Sailfish", "Ubuntu Touch", "Windows RT 8.1 Phone", "webOS"})
# Neither phone, tablet nor computer: TVs and set-top boxes, consoles, watches, VR headsets,
# cars, e-ink readers. ua-parser names most of them as device or OS families ...
_OTHER_DEVICE_FAMILIES = frozenset({"HbbTV", "NetCast.TV", "NetCast.Media", "Inettv", "Roku",
                                    "Chromecast", "GoogleTV", "AppleTV", "Apple Watch",
                                    "Quest", "Xbox", "Nintendo", "PlayStation", "WebTV",
                                    "Glass"})
_OTHER_OSES = frozenset({"WatchOS", "ATV OS X", "tvOS", "Roku", "GoogleTV", "WebTV", "Web0S",
                         "Chromecast Linux", "Chromecast Android", "Chromecast Fuchsia",
                         "Chromecast SmartSpeaker", "FireHbbTV", "Android TV", "Tizen TV",
                         "PlayStation", "Xbox", "Nintendo", "Kindle"})
# ... and these tokens catch the rest: "SMART-TV" (Samsung), "HbbTV/1.x", "CrKey" (Chromecast),
# "AppleTV", "Android TV"/"GoogleTV", "Web0S; Linux/SmartTV" (LG), "BRAVIA", "AFTB"/"AFTS"
# (Fire TV sticks), "PlayStation"/"Xbox"/"Nintendo", "OculusBrowser"/"Quest" (VR),
# "QtCarBrowser" (Tesla), "Kindle/3.0" (e-ink Kindle; Kindle Fire tablets say "Silk"),
# "POV_TV-HDMI-210"/"Droid TV C2" (Android TV sticks), "Dreamcast", "Glass 1" (Google Glass).
_OTHER_DEVICE: _Alternatives = (
    ("tv", r"smart-?tv"), "hbbtv", "netcast", "googletv", ("tv", r"android ?tv"), "crkey",
    "appletv", "apple tv", ("web0s", r"\bweb0s"), "bravia", ("aft", r"\baft[a-z]{1,3}\b"),
    "roku", "playstation", "xbox", "nintendo", "oculusbrowser", ("quest ", r"\bquest \d"),
    "qtcarbrowser", ("kindle/", r"kindle/\d"), ("watch", r"\bwatch\d?,"), "watchos",
    ("dtv", r"\bdtv\b"), ("tv build", r"\btv build\b"), ("stb", r"\bstb\b"), "tv-hdmi",
    "droid tv", "dreamcast", ("glass ", r"\bglass \d"),
)
# Tablet evidence in the UA or in ua-parser's device family/model. Each alternative is
# a token that only tablets send: "iPad"; "Tablet" (Firefox for Android tablets
# "Android 13; Tablet; rv:125.0", "Pinterest for Android Tablet/...", "FBID/tablet" of
# Facebook on iPad); Kindle Fire ("Silk/", models "KF..."); BlackBerry "PlayBook";
# Samsung Galaxy Tab/Note tablets "GT-P...", "SM-T...", "SM-P...", "SM-X...",
# "GT-N5100"/"GT-N8000"; Sony "SGP..."/"SGPT12" tablets; Huawei "MediaPad"; Asus "MeMO Pad",
# "Transformer Pad/Prime"; Lenovo "TB-X505F"/"IdeaTab"/"Yoga Tab"; Google "Nexus 7/9/10",
# "Pixel C", "Pixel Tablet"; Motorola "Xoom" ("MZ601"); "SmartPad"; the "MID" (Mobile
# Internet Device) models of white-label tablets ("MID7036", "SC-71MID"); B&N "Nook";
# "HTC Flyer"; Android 3.x ("Honeycomb" shipped on tablets only); and model names
# ending in "Tab" or "Tab 7" ("NetTAB", "LIFETAB_E10312", "FreeTAB 2096", "Lemon_Tab_LT29"),
# or "Pad" ("OnePAD 725", "ViewPad 4", "CnM-TOUCHPAD 7", "MI PAD") — but not Coolpad's
# phones ("Coolpad 7295"). Old tablets' browsers often sent "Mobile", so this goes first.
_TABLET: _Alternatives = (
    "ipad", "tablet", ("silk/", r"\bsilk/"), ("kf", r"\bkf[a-z]{2,4}\b"), "kindle fire",
    "playbook", ("gt-p", r"\bgt-p\d"), ("sm-", r"\bsm-[tpx]\d"), ("gt-n", r"\bgt-n(?:51|80)\d"),
    ("sgp", r"\bsgpt?\d"), "mediapad", ("memo", r"memo ?pad"), "smartpad",
    ("tb", r"\btb-?[x\d]\d"), "ideatab", "yoga tab", ("nexus", r"nexus[ _](?:7|9|10)\b"),
    ("pixel ", r"pixel (?:c|tablet)\b"), ("transformer ", r"\btransformer (?:pad|prime|tf)"),
    "xoom", ("mz60", r"\bmz60\d"), ("nook", r"\bnook\b"), ("flyer", r"htc[ _/]flyer"),
    ("android 3.", r"android 3\.\d"), ("mid", r"\bmid ?\d"), ("mid", r"mid\b"), "galaxy tab",
    ("tab", r"\btab ?\d"), ("tab", r"\w+tab\b"), ("tab", r"(?:^|[\s_-])tab(?:[\s_\d-]|$)"),
    ("pad", r"(?<!cool)pad(?:[\s_\d-]|\b)"),
)
#: A text is searched for _TABLET only when it holds one of these: every alternative
#: contains one ("kindle fire" too: the first Kindle Fire's UA says nothing else, not
#: "Silk/" nor "KF...", and its browser sent "Mobile").
_TABLET_HINTS = ("ipad", "tab", "pad", "silk/", "kf", "kindle fire", "playbook", "gt-", "sm-",
                 "sgp", "tb", "nexus", "pixel", "transformer", "xoom", "mz60", "mid", "nook",
                 "flyer", "android 3.")
# Android in-app UAs that state the screen: Instagram "(33/13; 480dpi; 1080x2340; ...)",
# Facebook's app UA "FBDM/{density=2.625,width=1080,height=2201}". Smallest width >= 600
# dp is Android's own definition of a tablet (the "sw600dp" resource qualifier).
_INSTAGRAM_SCREEN_RE = re.compile(r"; (\d{2,4})dpi; (\d{3,5})x(\d{3,5})")
_FACEBOOK_SCREEN_RE = re.compile(r"fbdm/\{density=(\d+(?:\.\d+)?),width=(\d+),height=(\d+)")
# A Macintosh UA is an iPad asking for the desktop site (iPadOS' default in Safari) when it
# carries a token macOS browsers never send: the iOS browsers' "CriOS/", "FxiOS/",
# "EdgiOS/", "OPiOS/", the Google app's "GSA/", or a WKWebView's "Mobile/15E148", e.g.
# "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) ... Version/17.0 EdgiOS/124.0 Mobile/15E148
# Safari/605.1.15". Plain desktop-mode Safari is identical to Mac Safari; producers can
# tell those apart only with navigator.maxTouchPoints (context field max_touch_points).
_IPAD_AS_MAC: _Alternatives = (
    "crios/", "fxios/", "edgios/", "opios/", ("gsa/", r"\bgsa/"), ("mobile/", r"mobile/\w+"),
    "ipad",
)
# Phones whose OS ua-parser reports as a desktop one or not at all: Windows CE/Mobile
# ("MSIE 6.0; Windows CE; IEMobile 7.11"), J2ME feature phones ("Profile/MIDP-2.0
# Configuration/CLDC-1.1"), WAP browsers ("UP.Browser/6.1", "Obigo", "NetFront").
_PHONE: _Alternatives = (
    "windows ce", "iemobile", ("midp", r"\bmidp"), ("cldc", r"\bcldc"), "up.browser", "obigo",
    "netfront", ("wap", r"\bwap"),
)
_OTHER_DESKTOP_OSES = frozenset({"FreeBSD", "OpenBSD", "NetBSD", "BSD", "Solaris", "Mandriva"})
_SAFARI_LIKE: _Alternatives = (
    "safari/", "firefox/", "opera", "presto/", ("version/", r"\bversion/"),
)
# fmt: on
_OTHER_DEVICE_ANY = _any_of(_OTHER_DEVICE)
_TABLET_ANY = _any_of(_TABLET)
_IPAD_AS_MAC_ANY = _any_of(_IPAD_AS_MAC)
_PHONE_ANY = _any_of(_PHONE)
_SAFARI_LIKE_ANY = _any_of(_SAFARI_LIKE)

#: (device, os, browser, app, in_app, is_bot) of one UA.
UserAgentFeatures = tuple[str, str, str, str, str, str]
_UNKNOWN_UA: UserAgentFeatures = (UNKNOWN,) * 6


@cache
def _ua_parser() -> ua_parser.Parser:
    """ua-parser's default parser (the Rust regex resolver, the same rules) without its
    own cache: `_classify_user_agent` memoizes whole answers, so a second cache under it
    would only add a lookup and an insertion to every UA it has not seen."""
    return ua_parser.Parser(ua_parser.regex.Resolver(ua_parser.load_lazy_builtins()))


@lru_cache(maxsize=8192)
def _classify_user_agent(ua: str) -> UserAgentFeatures:
    """Map one (truncated) UA string to (device, os, browser, app, in_app, is_bot).

    Cached because parsing costs tens of microseconds while a cache hit costs well
    under one, and UA strings are heavily repeated across visits.
    """
    try:
        result = _ua_parser().parse(ua)
    except Exception:  # e.g. the Rust backend rejects lone surrogates
        return _UNKNOWN_UA
    low = ua.lower()
    ua_family = result.user_agent.family if result.user_agent else ""
    os_family = result.os.family if result.os else ""
    device = result.device
    dev_family = device.family if device else ""
    model = f"{dev_family} {device.model or ''}".lower() if device else ""

    app = next((name for token, name in _APPS if token in low), "")
    in_app = bool(app) or ua_family in _OTHER_IN_APP or "; wv)" in low
    browser = app or _BROWSERS.get(ua_family) or (OTHER if ua_family else UNKNOWN)
    os_name = _OSES.get(os_family) or (OTHER if os_family else UNKNOWN)
    if not os_family and ("fban/fb4a" in low or "fban/orca-android" in low):
        os_name = "android"  # Facebook's Android app UA names no OS: "[FBAN/FB4A;...;FBSV/14;]"
    is_bot = (
        dev_family == "Spider"
        or ua_family in _BOT_FAMILIES
        or "bot" in ua_family.lower()
        or any(t in low for t in _BOT_TOKENS)
    )
    if is_bot:
        device_class = "bot"
    elif "macintosh" in low and _found(_IPAD_AS_MAC_ANY, low):
        device_class, os_name = "tablet", "ios"
    else:
        device_class = _device_class(os_name, os_family, dev_family, model, low)
    return (
        device_class,
        os_name,
        browser,
        app or (OTHER if in_app else "none"),
        YES if in_app else NO,
        YES if is_bot else NO,
    )


def _found(alternatives: _Searches, text: str) -> bool:
    """Whether any of the alternatives occurs in `text` (see `_any_of`)."""
    for literal, search in alternatives:
        if literal in text and (search is None or search(text) is not None):
            return True
    return False


def _tablet_token(text: str) -> bool:
    return any(hint in text for hint in _TABLET_HINTS) and _found(_TABLET_ANY, text)


def _smallest_width_dp(low: str) -> float | None:
    """The screen's smallest width in dp when an in-app UA states the screen."""
    match = _INSTAGRAM_SCREEN_RE.search(low)
    if match:
        dpi, width, height = (float(g) for g in match.groups())
        return min(width, height) * 160 / dpi if dpi else None
    match = _FACEBOOK_SCREEN_RE.search(low)
    if match:
        density, width, height = (float(g) for g in match.groups())
        return min(width, height) / density if density else None
    return None


def _device_class(os_name: str, os_family: str, dev_family: str, model: str, low: str) -> str:
    """Form factor from ua-parser's OS and device answers plus the tokens they ignore.

    ua-parser reports devices, not form factors, so the order below does the rest:
    non-handheld devices, a screen size stated by the app, tablet tokens and models,
    then Google's convention that Android phones' browsers send "Mobile" and tablets'
    do not — which holds for browsers only: app UAs ("Dalvik/2.1.0 (Linux; U; Android
    13; ...)", "Instagram 415.0 Android (...)", "WhatsApp/2.23 Android/13 ...") never
    send "Mobile" whatever the device, so an Android app UA with no tablet evidence is
    a phone (most Android devices are).
    """
    if (
        dev_family in _OTHER_DEVICE_FAMILIES
        or dev_family.startswith(("PlayStation", "Nintendo", "Xbox", "HbbTV"))
        or os_family in _OTHER_OSES
    ):
        return OTHER
    if _found(_OTHER_DEVICE_ANY, low):
        return OTHER
    width = _smallest_width_dp(low)
    if width is not None:
        return "tablet" if width >= 600 else "mobile"
    tablet = dev_family == "iPad" or _tablet_token(model) or _tablet_token(low)
    if tablet and "windows nt" not in low:  # "Tablet PC 2.0" in desktop IE's UA is no tablet
        return "tablet"
    if (
        dev_family in ("iPhone", "iPod")
        or os_family in _MOBILE_OSES
        or "phone" in model
        or _found(_PHONE_ANY, low)
    ):
        return "mobile"
    if os_name == "android":
        if "mobile" in low or not _found(_SAFARI_LIKE_ANY, low):
            return "mobile"
        return "tablet"
    if os_name == "ios":
        return "mobile"  # an iPad says "iPad" (above), an iPhone or iPod is the rest
    # macOS apps: "Reader Notifier/5 CFNetwork/596.3.3 Darwin/12.3.0 (x86_64) (MacBookPro7,1)"
    if model.startswith("mac") or "(macbook" in low or "(macmini" in low:
        return "desktop"
    if _device_known(dev_family):
        return "mobile"  # a phone: ua-parser knows its maker and model, whatever its OS says
    if os_name in ("windows", "macos", "linux", "chromeos") or dev_family == "Mac":
        return "desktop"
    if os_family in _OTHER_DESKTOP_OSES or "x11;" in low:
        return "desktop"
    return UNKNOWN


def _device_known(dev_family: str) -> bool:
    return bool(dev_family) and dev_family not in ("Other", "Generic Desktop")


# --- traffic source -------------------------------------------------------------------
#
# Channels are GA4's default channel group, rule for rule and in its order
# (https://support.google.com/analytics/answer/9756891, "[GA4] Default channel group").
# GA4 classifies the session's source and medium: from the UTM tags when the landing
# URL has them, else from the referrer (a search engine gives medium "organic", any
# other site "referral"), else "(direct)" / "(none)". Google Ads' auto-tagging (gclid)
# overrides manual UTM tags, as in GA4's default property settings.

# fmt: off
#: Source names, sites and android-app:// package names -> (source, GA4 site category).
#: The categories stand in for GA4's lists of search, social, video and shopping sites;
#: a host matches by its registrable domain (ccTLDs fold to .com: google.co.uk -> google).
_SITES: dict[str, tuple[str, str]] = {
    name: (source, category)
    for (source, category), names in {
        ("instagram", "social"): "instagram ig insta instagram.com com.instagram.android",
        ("instagram", "shopping"): "igshopping",
        ("facebook", "social"): "facebook fb meta messenger facebook.com fb.com fb.me m.me "
                                "messenger.com com.facebook.katana com.facebook.orca "
                                "com.facebook.lite",
        ("tiktok", "social"): "tiktok tt tiktok.com com.zhiliaoapp.musically "
                              "com.ss.android.ugc.trill",
        ("twitter", "social"): "twitter x t.co twitter.com x.com com.twitter.android",
        ("linkedin", "social"): "linkedin li linkedin.com lnkd.in com.linkedin.android",
        ("pinterest", "social"): "pinterest pinterest.com pin.it com.pinterest",
        ("snapchat", "social"): "snapchat snap snapchat.com com.snapchat.android",
        ("youtube", "video"): "youtube yt youtube.com youtu.be com.google.android.youtube",
        ("google", "search"): "google adwords googleads gads google.com "
                              "com.google.android.googlequicksearchbox",
        ("bing", "search"): "bing microsoft msn bing.com",
        ("email", ""): "email e-mail e_mail newsletter mailchimp klaviyo sendgrid brevo "
                       " mail.google.com outlook.live.com outlook.office.com "
                       "outlook.office365.com mail.yahoo.com com.google.android.gm "
                       "com.microsoft.office.outlook",
        (OTHER, "search"): "duckduckgo yahoo yandex baidu ecosia naver duckduckgo.com "
                           "yahoo.com yandex.com yandex.ru ya.ru baidu.com ecosia.org "
                           "naver.com search.brave.com startpage.com qwant.com seznam.cz "
                           "so.com sogou.com ask.com",
        (OTHER, "social"): "reddit whatsapp telegram threads vk quora discord wechat line "
                           "reddit.com threads.net whatsapp.com wa.me t.me "
                           "vk.com quora.com discord.com tumblr.com mastodon.social "
                           "bsky.app weibo.com com.reddit.frontpage com.whatsapp "
                           "org.telegram.messenger com.tencent.mm jp.naver.line.android",
        (OTHER, "video"): "vimeo twitch dailymotion vimeo.com twitch.tv dailymotion.com",
        (OTHER, "shopping"): "amazon ebay etsy shopping amazon.com ebay.com etsy.com "
                             "walmart.com aliexpress.com shopping.google.com",
        ("direct", ""): "direct (direct)",
    }.items()
    for name in names.split()
}
#: Click ids that ad platforms append to the landing URL -> (source, medium) they imply.
#: fbclid is added by Meta to every outbound link, organic or paid, so it says where
#: the visitor came from, not that the click was paid.
_CLICK_IDS: dict[str, tuple[str, str]] = {
    "gclid": ("google", "cpc"), "gbraid": ("google", "cpc"), "wbraid": ("google", "cpc"),
    "msclkid": ("bing", "cpc"),  # Microsoft Advertising auto-tagging
    "ttclid": ("tiktok", "cpc"), "twclid": ("twitter", "cpc"), "li_fat_id": ("linkedin", "cpc"),
    "sccid": ("snapchat", "cpc"), "epik": ("pinterest", "cpc"),
    "fbclid": ("facebook", "referral"),
}
_GOOGLE_CLICK_IDS = frozenset({"gclid", "gbraid", "wbraid"})  # these override UTM tags
#: The coarse ``medium`` feature of each channel.
_CHANNEL_MEDIUM = {
    "direct": "direct", "referral": "referral", "email": "email", "organic_search": "organic",
    "organic_social": "social", "organic_video": "social",
} | dict.fromkeys(("cross_network", "paid_shopping", "paid_search", "paid_social",
                   "paid_video", "display", "paid_other"), "paid")
# fmt: on
_PAID_MEDIUM_RE = re.compile(r"^(.*cp.*|ppc|retargeting|paid.*)$")
_SHOP_CAMPAIGN_RE = re.compile(r"^(.*(([^a-df-z]|^)shop|shopping).*)$")
_DISPLAY_MEDIA = frozenset({"display", "banner", "expandable", "interstitial", "cpm"})
_SOCIAL_MEDIA = frozenset(
    {"social", "social-network", "social-media", "sm", "social network", "social media"}
)
_EMAIL_NAMES = frozenset({"email", "e-mail", "e_mail", "e mail"})
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-_")
_TRACKED_PARAMS = frozenset({"utm_source", "utm_medium", "utm_campaign", *_CLICK_IDS})
_PARAM_HINTS = ("utm_", "clid", "clkid", "braid", "sccid", "li_fat_id", "epik")  # in every one


@lru_cache(maxsize=4096)
def _classify_host(host: str) -> tuple[str, str] | None:
    """(source, category) of a referrer host or package name; None when unlisted.

    Cached because hosts repeat a lot. Raises nothing; a malformed host is None too.
    """
    if "." not in host or not set(host) <= _HOST_CHARS:
        return None
    labels = host.strip(".").split(".")
    if len(labels) >= 2 and len(labels[-1]) == 2:  # google.co.uk, google.de, google.com.co
        tail = 2 if len(labels) >= 3 and labels[-2] in ("co", "com", "org", "net") else 1
        candidates = [labels, [*labels[:-tail], "com"]]
    else:
        candidates = [labels]
    for parts in candidates:
        for i in range(len(parts) - 1):
            hit = _SITES.get(".".join(parts[i:]))
            if hit:
                return hit
    return None


def _classify_source(value: str) -> tuple[str, str]:
    """(source, category) of a utm_source value: a name ("ig", "facebook_ads") or a host."""
    return _classify_source_cached(value[:_UTM_MAX_CHARS])


@lru_cache(maxsize=4096)
def _classify_source_cached(value: str) -> tuple[str, str]:
    norm = value.lower()
    hit = _SITES.get(norm) or _SITES.get(norm.replace("-", "_").replace(" ", "_"))
    if hit is None and "." in norm:
        hit = _classify_host(_host(norm))
    if hit is None:  # the leading word: "facebook_ads", "google-cpc", "ig story"
        first = norm.replace("-", "_").replace(" ", "_").replace(".", "_").split("_", 1)[0]
        hit = _SITES.get(first)
    return hit or (OTHER, "")


def channel(source: str, category: str, medium: str, campaign: str) -> str:
    """GA4's default channel group of a session's source, medium and campaign name.

    ``source`` is the raw source (utm_source, or the referrer's host), ``category`` its
    site category ("search", "social", "video", "shopping" or ""), ``medium`` the raw
    medium; all three compared case-insensitively, as GA4 does.
    """
    source, medium, campaign = source.lower(), medium.lower(), campaign.lower()
    paid = bool(_PAID_MEDIUM_RE.match(medium))
    shopping = category == "shopping" or bool(_SHOP_CAMPAIGN_RE.match(campaign))
    if source == "(direct)" and medium in ("(none)", "(not set)", ""):
        return "direct"
    if "cross-network" in campaign:
        return "cross_network"
    if paid:
        if shopping:
            return "paid_shopping"
        if category in ("search", "social", "video"):
            return f"paid_{category}"
    if medium in _DISPLAY_MEDIA:
        return "display"
    if paid:
        return "paid_other"
    if shopping:
        return "organic_shopping"
    if category == "social" or medium in _SOCIAL_MEDIA:
        return "organic_social"
    if category == "video" or "video" in medium:
        return "organic_video"
    if category == "search" or medium == "organic":
        return "organic_search"
    if medium in ("referral", "app", "link"):
        return "referral"
    if source in _EMAIL_NAMES or medium in _EMAIL_NAMES:
        return "email"
    if medium == "affiliate":
        return "affiliates"
    if medium == "audio":
        return "audio"
    if source == "sms" or medium == "sms":
        return "sms"
    if medium.endswith("push") or "mobile" in medium or "notification" in medium:
        return "mobile_push"
    if source == "firebase":
        return "mobile_push"
    return "unassigned"


def _landing_params(ctx: Mapping[str, object]) -> tuple[tuple[str, str], ...]:
    """The UTM tags and click ids of the landing URL's query (lower-cased names, first
    occurrence of each), as (name, value) pairs."""
    url = _text(ctx, "landing_url")
    if not url or "?" not in url:
        return ()  # most visits: no landing URL, or one without a query
    query = url.partition("?")[2].partition("#")[0]
    if not query or not any(hint in query.lower() for hint in _PARAM_HINTS):
        return ()  # most landing URLs carry no tag: skip parsing them
    try:
        pairs = parse_qsl(query, keep_blank_values=False)
    except ValueError:
        return ()
    params: dict[str, str] = {}
    for key, value in pairs:
        name = key.lower()
        if name in _TRACKED_PARAMS and name not in params:
            params[name] = value.strip()[:_TEXT_MAX_CHARS]
    return tuple(params.items())


def _classify_traffic(ctx: Mapping[str, object]) -> tuple[str, str, str]:
    """(source, medium, channel) of a visit: `_traffic` of the fields it depends on."""
    referrer = _get(ctx, "referrer")
    return _traffic(
        _landing_params(ctx),
        _text(ctx, "utm_source"),
        _text(ctx, "utm_medium"),
        _text(ctx, "utm_campaign"),
        _referrer_host(referrer[:_TEXT_MAX_CHARS].strip() if isinstance(referrer, str) else None),
    )


NO_HOST = "(no host)"
"""The `_referrer_host` of a referrer that is not empty but names no host ("/path",
"not a url"): no site has that name ("." and the characters of host names it has not)."""


def _referrer_host(referrer: str | None) -> str | None:
    """What the traffic source reads of a stripped referrer, and so what it is memoized by:
    None when not captured, ``""`` when empty (direct), else its host (`NO_HOST` if none).

    The referrer's path and query never matter, and keying the memo by the whole URL made
    every page of a site a new entry."""
    if not referrer:
        return referrer
    return _host(referrer) or NO_HOST


@lru_cache(maxsize=2048)
def _traffic(
    landing_params: tuple[tuple[str, str], ...],
    utm_source_field: str | None,
    utm_medium_field: str | None,
    utm_campaign_field: str | None,
    referrer_host: str | None,
) -> tuple[str, str, str]:
    """(source, medium, channel) from the landing URL's tags and click ids, the utm_*
    fields (``""`` absent, ``None`` not a string) and the referrer's `_referrer_host`
    (``None`` when the referrer is absent or not a string, ``""`` when it is empty).

    Cached: the same few combinations of tags and referrer hosts make most traffic.

    Precedence, as in GA4: Google's click ids, then UTM tags (the context's utm_* fields,
    else those of ``landing_url``), then other click ids, then the referrer. Only an
    empty referrer string (what ``document.referrer`` is for typed-in URLs, bookmarks
    and apps that send none) means "direct"; a null or missing referrer means the
    producer did not capture it, so the visit's source is ``unknown`` as the visits
    schema documents, unless tags or click ids say where it came from.
    """
    params = dict(landing_params)
    utm_source, utm_medium, campaign = (  # a field wins; a blank or absent one falls back
        value if value != "" else params.get(name, "")
        for name, value in (
            ("utm_source", utm_source_field),
            ("utm_medium", utm_medium_field),
            ("utm_campaign", utm_campaign_field),
        )
    )
    click = next((name for name in _CLICK_IDS if params.get(name)), None)
    if click in _GOOGLE_CLICK_IDS or (click and not (utm_source or utm_medium)):
        source, medium = _CLICK_IDS[click]
        name, category = _classify_source(source)
        if click == "fbclid":  # Meta's click id: Instagram's or Facebook's, the referrer says
            referred = _classify_host(referrer_host or "")
            name = referred[0] if referred and referred[1] == "social" else name
        return name, *_medium_and_channel(source, category, medium, campaign or "")
    if utm_source is None or utm_medium is None:  # a tag of the wrong type
        name = UNKNOWN if utm_source is None else _classify_source(utm_source)[0]
        return name, UNKNOWN, UNKNOWN
    if utm_source or utm_medium:
        name, category = _classify_source(utm_source) if utm_source else ("", "")
        name = name or _referrer_source(referrer_host)[0]
        if name == "direct" and utm_source.lower() not in ("direct", "(direct)"):
            name = OTHER
        raw_source = "(direct)" if name == "direct" else utm_source
        if name == "email":
            raw_source = "email"  # newsletter tools' names: GA4's "source = email" rule
        return name, *_medium_and_channel(raw_source, category, utm_medium, campaign or "")
    name, raw_source, category = _referrer_source(referrer_host)
    if name in (UNKNOWN, "direct"):
        return name, name, name
    # GA4 gives a search engine's visits medium "organic" and other sites' "referral"; a
    # webmail host is a link in an email, so here its medium is "email" (GA4: referral).
    medium = {"search": "organic"}.get(category, "email" if name == "email" else "referral")
    return name, *_medium_and_channel(raw_source, category, medium, campaign or "")


def _medium_and_channel(source: str, category: str, medium: str, campaign: str) -> tuple[str, str]:
    group = channel(source, category, medium, campaign)
    return _CHANNEL_MEDIUM.get(group, OTHER), group


def _referrer_source(host: str | None) -> tuple[str, str, str]:
    """(source, raw source, category) from the referrer's `_referrer_host` (None: not
    captured); ``direct`` for an empty referrer."""
    if host is None:
        return UNKNOWN, "", ""
    if not host:
        return "direct", "(direct)", ""
    if "." not in host or not set(host) <= _HOST_CHARS:
        return UNKNOWN, "", ""
    hit = _classify_host(host)
    if hit is None:
        return "referral", host, ""
    name, category = hit
    return name, ("email" if name == "email" else host), category


# "scheme://host" or "//host" then its path, query, fragment or nothing, with a host of
# the characters of host names only: urlsplit's hostname is that host lower-cased (no
# user, port, brackets or characters it removes or normalizes), at a fraction of its cost.
_PLAIN_HOST_RE = re.compile(r"(?:[a-zA-Z][a-zA-Z0-9+.-]*:)?//([a-zA-Z0-9._-]*)(?:[/?#]|\Z)")


def _host(url: str) -> str:
    if "://" not in url and not url.startswith("//"):
        url = "//" + url  # bare "www.google.com/search"
    plain = _PLAIN_HOST_RE.match(url)
    if plain is not None:
        return plain[1].lower()
    try:
        return (urlsplit(url).hostname or "").lower()
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
    try:  # `_get`, inlined: a visit reads five to ten fields
        value = ctx.get(key)
    except Exception:
        return ""
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


# --- feature groups -------------------------------------------------------------------
#
# Each group computes the features that share their inputs (one UA parse gives six), so
# that `extract_features` computes only the groups a segment needs, and `extract_context`
# all of them, with the same functions.

_Group = Callable[[Mapping[str, object], object], tuple[str, ...]]


def _user_agent_features(raw: Mapping[str, object], occurred_at: object) -> tuple[str, ...]:
    """device, os, browser, app, in_app, is_bot."""
    ua = _text(raw, "user_agent")
    if not ua:
        return _UNKNOWN_UA
    features = _classify_user_agent(ua[:_UA_MAX_CHARS])
    if features[0] == "desktop" and features[1] == "macos":
        touch_points = _integer(_get(raw, "max_touch_points"), 0, 1_000)
        if (touch_points or 0) > 1:  # an iPad asking for the desktop site (Macs say 0)
            return ("tablet", "ios", *features[2:])
    return features


def _traffic_features(raw: Mapping[str, object], occurred_at: object) -> tuple[str, ...]:
    """source, medium, channel."""
    return _classify_traffic(raw)


def _campaign_features(raw: Mapping[str, object], occurred_at: object) -> tuple[str, ...]:
    """campaign_present."""
    campaign = _text(raw, "utm_campaign")
    return (UNKNOWN if campaign is None else YES if campaign else NO,)


def _country_features(raw: Mapping[str, object], occurred_at: object) -> tuple[str, ...]:
    """country."""
    return (_country(_text(raw, "country")),)


def _language_features(raw: Mapping[str, object], occurred_at: object) -> tuple[str, ...]:
    """language."""
    return (_language(_text(raw, "language")),)


def _time_features(raw: Mapping[str, object], occurred_at: object) -> tuple[str, ...]:
    """hour_bucket, weekday."""
    hour, weekday = _local_time(raw, occurred_at)
    return (
        _bucket(hour, (6, 12, 18), ("night", "morning", "afternoon", "evening")),
        UNKNOWN if weekday is None else "weekend" if weekday >= 5 else "weekday",
    )


def _session_features(raw: Mapping[str, object], occurred_at: object) -> tuple[str, ...]:
    """pages_bucket, time_bucket, visitor_type."""
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
    return (
        _bucket(pages, (2, 4, 8), ("1", "2-3", "4-7", "8+")),
        _bucket(seconds, (10, 60, 300), ("<10s", "10-60s", "1-5m", "5m+")),
        visitor,
    )


def _screen_features(raw: Mapping[str, object], occurred_at: object) -> tuple[str, ...]:
    """screen."""
    width = _number(_get(raw, "screen_width"), 1, 32_768)
    return (_bucket(width, (768, 1280), ("small", "medium", "large")),)


#: (feature names, the group computing them), in the order of FEATURES.
FEATURE_GROUPS: tuple[tuple[tuple[str, ...], _Group], ...] = (
    (("device", "os", "browser", "app", "in_app", "is_bot"), _user_agent_features),
    (("source", "medium", "channel"), _traffic_features),
    (("campaign_present",), _campaign_features),
    (("country",), _country_features),
    (("language",), _language_features),
    (("hour_bucket", "weekday"), _time_features),
    (("pages_bucket", "time_bucket", "visitor_type"), _session_features),
    (("screen",), _screen_features),
)


_Plan = tuple[tuple[_Group, tuple[tuple[str, int], ...]], ...]


@lru_cache(maxsize=256)
def _plan(names: tuple[str, ...]) -> _Plan:
    """The groups that compute `names`, each with (name, index in its values) to keep."""
    unknown = set(names) - set(FEATURES)
    if unknown:
        msg = f"unknown context feature(s) {sorted(unknown)}; valid features: {FEATURES}"
        raise ValueError(msg)
    return tuple(
        (group, tuple((name, i) for i, name in enumerate(group_names) if name in names))
        for group_names, group in FEATURE_GROUPS
        if not set(group_names).isdisjoint(names)
    )


# --- public API -------------------------------------------------------------------------


def extract_features(
    raw: Mapping[str, object] | object,
    occurred_at: datetime | None = None,
    names: tuple[str, ...] = FEATURES,
) -> dict[str, str]:
    """The features in ``names`` (of ``FEATURES``, in its order) of a raw visit context,
    as ``extract_context`` gives them, computing only the groups they belong to.

    Raises ValueError for a name not in ``FEATURES``; never for a context.
    """
    plan = _plan(names)
    features: dict[str, str] = {}
    if type(raw) is not dict and not isinstance(raw, Mapping):  # a dict skips the ABC check
        for _, picks in plan:
            for name, _ in picks:
                features[name] = UNKNOWN
        return features
    for group, picks in plan:
        values = group(raw, occurred_at)
        for name, index in picks:
            features[name] = values[index]
    return features


def extract_context(
    raw: Mapping[str, object] | object, occurred_at: datetime | None = None
) -> dict[str, str]:
    """Normalize a raw visit context into one string value per name in ``FEATURES``.

    ``occurred_at`` is when the visit happened (naive datetimes are taken as UTC); it is
    an argument rather than "now" so the function stays pure and replayable. Never
    raises: anything unusable becomes ``UNKNOWN``.
    """
    return extract_features(raw, occurred_at, FEATURES)
