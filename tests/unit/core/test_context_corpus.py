"""Accuracy of streams.core.context on labelled data the project did not write.

Device: the test files of uap-core (``tests/data/uap-core/``, Apache-2.0, see its README):
real UA strings, each labelled by uap-core's maintainers with a device family, brand and
model (``test_device.yaml``), an OS family (``test_os.yaml``) or a user-agent family
(``test_ua.yaml``). Our device class of each string is derived from those labels alone by
``device_label`` below, never from the classifier under test. Strings whose labels do not
decide the class (a device family "Other", an Android device from a maker of both phones
and tablets whose model name does not say which) are left out and counted.

Source: ``tests/data/traffic_cases.yaml``, visits written from the rules of GA4's default
channel group (https://support.google.com/analytics/answer/9756891), with the expected
source and channel of each.

Run ``python tests/unit/core/test_context_corpus.py`` for the tables.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.core.context import extract_context

pytestmark = pytest.mark.unit

DATA = Path(__file__).resolve().parents[2] / "data"
UAP = DATA / "uap-core"
DEVICE_TARGET = 0.97  # overall share of strings whose device class is right
CLASS_TARGET = 0.90  # and no class below this
SOURCE_TARGET = 0.99

# --- the label mapping: corpus labels -> device class ----------------------------------
#
# 1. uap-core labels crawlers with the device family "Spider"; in test_ua.yaml, a
#    user-agent family naming a bot, spider or crawler (or one of CRAWLER_FAMILIES)
#    is a bot too.
# 2. "other": TVs and set-top boxes, consoles, watches, VR headsets, cars, e-ink readers,
#    recognised by their family or brand (NON_HANDHELD).
# 3. "tablet": the family or model names a tablet (TABLET: iPad, "Tab", "Pad", "Tablet",
#    Kindle Fire, Nook, PlayBook, Xoom, Nexus 7/9/10, Galaxy Tab models GT-P/SM-T/SM-P/
#    SM-X and Note tablets GT-N5100/GT-N80xx, Sony SGP, Huawei MediaPad, "MID" models of
#    white-label "mobile internet devices"), the OS is a tablet OS (BlackBerry Tablet OS,
#    WeTab), or the model is one of a phone maker's tablet lines (TABLET_LINES).
# 4. "desktop": the family "Mac"; in test_os.yaml, a desktop OS (DESKTOP_OSES).
# 5. "mobile": iPhone, iPod, "Generic Smartphone" / "Generic Feature Phone", any device
#    of a maker in PHONE_MAKERS (brands whose devices in this corpus are phones unless
#    rule 3 says tablet), and every device of a phone-only OS (Symbian, Series 40, ...).
# 6. Anything else is unlabelled and left out.

NON_HANDHELD = re.compile(
    r"hbbtv|netcast|inettv|webtv|smart-?tv|googletv|google tv|android tv|droid tv|tv-hdmi|"
    r"\btv ?box\b|roku|chromecast|appletv|playstation|xbox|nintendo|wii|dreamcast|"
    r"apple watch|\bwatch\b|quest|\bglass\b|tesla|^kindle$",
    re.IGNORECASE,
)
TABLET = re.compile(
    r"ipad|tablet|\btab\b|tab[\s\d_-]|\w*tab\d|\w*(?<!cool)pad\b|\bpad[\s\d_]|kindle fire|\bnook\b|"
    r"bntv|playbook|xoom|nexus (?:7|9|10)\b|nexus_(?:7|9|10)\b|\bgt-p\d|\bsm-[tpx]\d|"
    r"\bgt-n(?:51|80)\d|\bsgp\d|mediapad|\bmid ?\d|mid\b",
    re.IGNORECASE,
)
_PHONE_MAKERS = (
    "Alcatel Amoi Apple Blu BlackBerry Celkon Coolpad DoCoMo Fly Gigabyte Gionee HTC "
    "Huawei Intex Karbonn Kyocera LG Micromax Motorola Nokia Oppo Pantech Panasonic Philips "
    "Samsung samsung Sharp Siemens Sony SonyEricsson Spice Sprint Xiaomi XiaoMi ZTE vivo "
    "OnePlus Meizu Realme Tecno Infinix Itel Xolo Lava Zopo Thl Doogee Ulefone Vertu "
    "Sagem Sendo Benq Mitsubishi Toshiba NEC Qmobilevn imobile"
)
PHONE_MAKERS = frozenset(_PHONE_MAKERS.split())
#: Tablet product lines of those phone makers whose model numbers do not say "tab" or
#: "pad" (from the makers' model numbering): Samsung Galaxy Tab and Note tablets beyond
#: GT-P/SM-T (carrier models SCH-I705/I800/I905/I915, SGH-I467/I497/I957/T779/T849/T859,
#: SHW-M180/M380/M480, SPH-P100, SC-01C/SC-01D/SC-01E), Sony Tablet S/P (SGPT1x), LG
#: Optimus Pad and G Pad (V9xx, V4xx/V5xx/V7xx), Micromax Funbook, Toshiba's Android
#: tablets (AT1xx-AT7xx), Acer Iconia (A100-A700, B1-), Asus Eee Pad / MeMO Pad / Fonepad
#: models (TF, ME1xx-ME3xx, K00x/K01x), HTC Flyer and Jetstream (P510e, P715a), ZTE V9
#: and Light Tab, Motorola Xoom (MZ60x), Lenovo IdeaPad/IdeaTab (A1-, K1, S2109, A2107).
TABLET_LINES = re.compile(
    r"\bsch-i(?:705|800|905|915)|\bsgh-(?:i467|i497|i957|t779|t849|t859)|\bshw-m[1345]80|"
    r"\bsph-p100|\bsc-01[cde]\b|\bsgpt\d|\blg-?v(?:9\d\d|[457]\d\d)|funbook|"
    r"^toshiba at\d|\bat\d{3}\b.*toshiba|toshiba.*\bat\d{2,3}\b|\bacer .*\b(?:a[1-7]\d\d|b1-)|"
    r"\bTF\d{3}|\bme[1-3]\d\d[a-z]{0,2}\b|\bk0[01][0-9a-z]\b|\bflyer\b|jetstream|"
    r"\bp510e\b|\bp715a\b|\bzte v9\b|light tab|\bmz60\d|ideapad|\bk1\b.*lenovo|"
    r"lenovo.*\b(?:a1-|k1\b|s2109|a2107)",
    re.IGNORECASE,
)
PHONE_OSES = frozenset(
    {"Symbian OS", "Symbian^3", "Symbian^3 Anna", "Symbian^3 Belle", "Nokia Series 40",
     "Nokia Series 30 Plus", "Windows Phone", "Windows Mobile", "BlackBerry OS", "BREW",
     "Brew MP", "Bada", "KaiOS", "Firefox OS", "MeeGo", "Maemo", "Sailfish"}
)  # fmt: skip
TABLET_OSES = frozenset({"BlackBerry Tablet OS", "WeTab"})
DESKTOP_OSES = frozenset(
    {"Windows", "Mac OS X", "Mac OS", "Linux", "Ubuntu", "Debian", "Gentoo", "Mandriva",
     "Red Hat", "Chrome OS", "FreeBSD", "OpenBSD", "NetBSD", "BSD", "Solaris"}
)  # fmt: skip
CRAWLER_FAMILIES = frozenset(
    {"Slurp", "Yahoo! Slurp", "Mediapartners-Google", "AdsBot-Google", "BingPreview",
     "Google-InspectionTool", "AppEngine-Google", "BUbiNG", "Diffbot", "Gigabot", "IRLbot"}
)  # fmt: skip


def device_label(
    family: str | None, brand: str | None, model: str | None, os_family: str | None = None
) -> str | None:
    """The device class that uap-core's labels of one string imply (None: undecided)."""
    family, brand, model = family or "", brand or "", model or ""
    names = f"{family} {model}"
    if family == "Spider":
        return "bot"
    if NON_HANDHELD.search(names) or NON_HANDHELD.search(brand):
        return "other"
    if TABLET.search(names) or os_family in TABLET_OSES:
        return "tablet"
    if brand in PHONE_MAKERS and TABLET_LINES.search(f"{brand} {names}"):
        return "tablet"
    if family == "Mac":
        return "desktop"
    if family in ("iPhone", "iPod") or family.startswith(("Generic Smartphone", "Generic Feat")):
        return "mobile"
    if brand in PHONE_MAKERS or os_family in PHONE_OSES:
        return "mobile"
    return None


def bot_family(family: str) -> bool:
    low = family.lower()
    return family in CRAWLER_FAMILIES or any(w in low for w in ("bot", "spider", "crawl"))


def _cases(name: str) -> list[dict[str, Any]]:
    with (UAP / name).open(encoding="utf-8") as handle:
        cases: list[dict[str, Any]] = yaml.load(handle, Loader=yaml.CSafeLoader)["test_cases"]
    return cases


@cache
def labelled_user_agents() -> tuple[tuple[tuple[str, str], ...], Counter[str]]:
    """((ua, expected device class), ...) and the count of strings left out, by reason."""
    os_labels = {c["user_agent_string"]: c["family"] for c in _cases("test_os.yaml")}
    labelled: dict[str, str] = {}
    left_out: Counter[str] = Counter()
    for case in _cases("test_device.yaml"):
        ua = case["user_agent_string"]
        label = device_label(case["family"], case["brand"], case["model"], os_labels.get(ua))
        if label is None and case["family"] == "Other" and os_labels.get(ua) in DESKTOP_OSES:
            label = "desktop"
        if label is None:
            left_out["device labels do not decide the class"] += 1
        else:
            labelled[ua] = label
    for ua, os_family in os_labels.items():
        if ua not in labelled and os_family in DESKTOP_OSES:
            labelled[ua] = "desktop"
    for case in _cases("test_ua.yaml"):
        ua = case["user_agent_string"]
        if ua not in labelled and bot_family(case["family"]):
            labelled[ua] = "bot"
    return tuple(labelled.items()), left_out


def device_report() -> tuple[dict[str, tuple[int, int]], list[tuple[str, str, str]]]:
    """{class: (right, total)} and the misclassified (ua, expected, got)."""
    tally: dict[str, list[int]] = {}
    wrong: list[tuple[str, str, str]] = []
    for ua, expected in labelled_user_agents()[0]:
        got = extract_context({"user_agent": ua})["device"]
        counts = tally.setdefault(expected, [0, 0])
        counts[0] += got == expected
        counts[1] += 1
        if got != expected:
            wrong.append((ua, expected, got))
    return {k: (v[0], v[1]) for k, v in sorted(tally.items())}, wrong


# --- traffic ----------------------------------------------------------------------------


def traffic_cases() -> list[dict[str, Any]]:
    with (DATA / "traffic_cases.yaml").open(encoding="utf-8") as handle:
        cases: list[dict[str, Any]] = yaml.safe_load(handle)["cases"]
    return cases


def traffic_report() -> tuple[dict[str, tuple[int, int]], list[tuple[str, str, str]]]:
    """{expected channel: (right, total)} and the misclassified (case, expected, got)."""
    tally: dict[str, list[int]] = {}
    wrong: list[tuple[str, str, str]] = []
    for case in traffic_cases():
        features = extract_context(case["context"])
        got = f"{features['source']}/{features['channel']}"
        expected = f"{case['source']}/{case['channel']}"
        counts = tally.setdefault(case["channel"], [0, 0])
        counts[0] += got == expected
        counts[1] += 1
        if got != expected:
            wrong.append((str(case["context"]), expected, got))
    return {k: (v[0], v[1]) for k, v in sorted(tally.items())}, wrong


def table(tally: dict[str, tuple[int, int]]) -> Iterator[str]:
    right = sum(r for r, _ in tally.values())
    total = sum(t for _, t in tally.values())
    yield f"{'class':<18} {'right':>6} {'total':>6} {'accuracy':>9}"
    for name, (r, t) in tally.items():
        yield f"{name:<18} {r:>6} {t:>6} {r / t:>9.4f}"
    yield f"{'all':<18} {right:>6} {total:>6} {right / total:>9.4f}"


# --- tests ------------------------------------------------------------------------------


def test_the_corpus_is_large_and_covers_every_class() -> None:
    labelled, _ = labelled_user_agents()
    classes = Counter(label for _, label in labelled)
    assert len(labelled) >= 1_000
    assert set(classes) == {"mobile", "tablet", "desktop", "bot", "other"}
    assert min(classes.values()) >= 50, classes


def test_device_class_accuracy() -> None:
    tally, wrong = device_report()
    right = sum(r for r, _ in tally.values())
    total = sum(t for _, t in tally.values())
    report = "\n".join([*table(tally), *(f"{e:>8} <- {g:<8} {ua}" for ua, e, g in wrong[:40])])
    assert right / total >= DEVICE_TARGET, report
    assert all(r / t >= CLASS_TARGET for r, t in tally.values()), report


def test_source_and_channel_accuracy() -> None:
    tally, wrong = traffic_report()
    right = sum(r for r, _ in tally.values())
    total = sum(t for _, t in tally.values())
    report = "\n".join([*table(tally), *(f"{e} <- {g}: {c}" for c, e, g in wrong)])
    assert total >= 100
    assert right / total >= SOURCE_TARGET, report


if __name__ == "__main__":
    device_tally, device_wrong = device_report()
    print("device class, uap-core test corpus")
    print("\n".join(table(device_tally)))
    print(f"left out: {dict(labelled_user_agents()[1])}")
    traffic_tally, traffic_wrong = traffic_report()
    print("\nsource/channel, tests/data/traffic_cases.yaml (by expected channel)")
    print("\n".join(table(traffic_tally)))
    for ua, expected, got in device_wrong + traffic_wrong:
        print(f"{expected:>10} <- {got:<10} {ua}")
