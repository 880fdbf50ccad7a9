"""Keep-warm windows: parsing and its errors, coverage on hand-worked weeks and DST days, and a property
test against an independent minute-by-minute scan of the zones' clocks."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioner import keep_warm
from provisioner.keep_warm import (
    DAY_NAMES,
    Window,
    WindowError,
    current_end,
    in_effect,
    next_change,
    parse_windows,
)

ALL_DAYS = list(DAY_NAMES)
MIN = timedelta(minutes=1)
TICK = timedelta(microseconds=1)


def win(days: str | list[str] | tuple[str, ...] = "Mon", start: str = "08:00", end: str = "18:00",
        tz: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"days": [days] if isinstance(days, str) else days, "start": start, "end": end}
    if tz is not None:
        item["timeZone"] = tz
    return item


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def refused(items: object, *parts: str) -> str:
    with pytest.raises(WindowError) as info:
        parse_windows(items)
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message
    return message


# --- parsing --------------------------------------------------------------------------------------


def test_parse_reads_every_field() -> None:
    windows = parse_windows([win(["Mon", "Fri", "Tue"], "08:05", "24:00", "Europe/Berlin"),
                             win("Sun", "22:00", "02:00")])
    assert windows == (Window(frozenset({0, 1, 4}), 485, 1440, "Europe/Berlin"),
                       Window(frozenset({6}), 1320, 120, "UTC"))


@pytest.mark.parametrize("items", [None, [], ()])
def test_parse_nothing_is_no_windows(items: object) -> None:
    assert parse_windows(items) == ()


def test_parse_accepts_sixteen_windows_and_the_extreme_times() -> None:
    extremes = [win("Mon", "00:00", "00:01"), win("Tue", "23:59", "24:00"), win("Wed", "00:00", "24:00")]
    windows = parse_windows(extremes * 5 + [win("Thu", "23:59", "00:01")])
    assert len(windows) == 16
    assert [(w.start_min, w.end_min) for w in windows[:3]] == [(0, 1), (1439, 1440), (0, 1440)]
    assert (windows[-1].start_min, windows[-1].end_min) == (1439, 1)


def test_parse_accepts_a_tuple_of_day_names_and_zones_with_signs_and_underscores() -> None:
    windows = parse_windows([win(("Sat", "Sun"), tz="Etc/GMT+5"),
                             win(tz="America/Argentina/Buenos_Aires"), win(tz="America/Port-au-Prince")])
    assert [w.time_zone for w in windows] == ["Etc/GMT+5", "America/Argentina/Buenos_Aires", "America/Port-au-Prince"]
    assert windows[0].days == frozenset({5, 6})


PARSE_ERRORS: list[tuple[object, tuple[str, ...]]] = [
    ("Mon 08:00-18:00", ("spec.keepWarm:", "expected a list", "'Mon 08:00-18:00'")),
    ({"days": ["Mon"]}, ("spec.keepWarm:", "expected a list", "'days'")),
    ([win()] * 17, ("spec.keepWarm:", "at most 16", "got 17")),
    ([win(), "Mon"], ("spec.keepWarm[1]:", "expected a mapping", "'Mon'")),
    ([{**win(), "timezone": "UTC"}], ("spec.keepWarm[0]:", "unknown field 'timezone'")),
    ([{"start": "08:00", "end": "18:00"}], ("spec.keepWarm[0].days:", "required")),
    ([{**win(), "days": "Mon"}], ("spec.keepWarm[0].days:", "expected a list", "'Mon'")),
    ([win([])], ("spec.keepWarm[0].days:", "at least one day", "[]")),
    ([win(["Mon", "Monday"])], ("spec.keepWarm[0].days[1]:", "expected one of Mon,", "'Monday'")),
    ([win(["mon"])], ("spec.keepWarm[0].days[0]:", "'mon'")),
    ([win(["Mon", "Tue", "Mon"])], ("spec.keepWarm[0].days[2]:", "duplicate day 'Mon'")),
    ([{"days": ["Mon"], "end": "18:00"}], ("spec.keepWarm[0].start:", "required")),
    ([win(start="25:00")], ("spec.keepWarm[0].start:", "expected HH:MM (00:00-23:59)", "'25:00'")),
    ([win(start="24:00")], ("spec.keepWarm[0].start:", "'24:00'")),
    ([win(start="08:60")], ("spec.keepWarm[0].start:", "'08:60'")),
    ([win(start="8:00")], ("spec.keepWarm[0].start:", "'8:00'")),
    ([win(start="08:00:00")], ("spec.keepWarm[0].start:", "'08:00:00'")),
    ([{**win(), "start": 800}], ("spec.keepWarm[0].start:", "got 800")),
    ([win(start="\uff10\uff18:00")], ("spec.keepWarm[0].start:", "'\uff10\uff18:00'")),
    ([{"days": ["Mon"], "start": "08:00"}], ("spec.keepWarm[0].end:", "required")),
    ([win(end="00:00")], ("spec.keepWarm[0].end:", "expected HH:MM (00:01-24:00)", "'00:00'")),
    ([win(end="24:01")], ("spec.keepWarm[0].end:", "'24:01'")),
    ([win(end="18:00\n")], ("spec.keepWarm[0].end:", "'18:00\\n'")),
    ([win(), win(start="08:00", end="08:00")], ("spec.keepWarm[1].end:", "other than start", "'08:00'")),
    ([{**win(), "timeZone": 1}], ("spec.keepWarm[0].timeZone:", "IANA time zone", "got 1")),
    ([{**win(), "timeZone": None}], ("spec.keepWarm[0].timeZone:", "got None")),
    ([win(tz="Europe/" + "A" * 58)], ("spec.keepWarm[0].timeZone:", "at most 64 characters", "'Europe/AAAA")),
    ([win(tz="Mars/Olympus_Mons")], ("spec.keepWarm[0].timeZone:", "unknown", "'Mars/Olympus_Mons'")),
    ([win(tz="America")], ("spec.keepWarm[0].timeZone:", "'America'")),  # a directory of the database
    ([win(tz="europe/berlin")], ("spec.keepWarm[0].timeZone:", "'europe/berlin'")),
    ([win(tz="")], ("spec.keepWarm[0].timeZone:", "got ''")),
]


@pytest.mark.parametrize(("items", "parts"), PARSE_ERRORS)
def test_parse_errors_name_the_field_and_the_value(items: object, parts: tuple[str, ...]) -> None:
    refused(items, *parts)


def test_parse_errors_use_the_given_path() -> None:
    with pytest.raises(WindowError, match=r"^project\.keepWarm\[0\]\.start: "):
        parse_windows([win(start="x")], "project.keepWarm")


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/localtime", "Europe/../../etc/passwd", "localtime",
                                  "posix/Europe/Berlin", "zone.tab", "Europe/Berlin/", "Europe//Berlin", "UTC\x00",
                                  "Europe\\Berlin"])
def test_time_zone_paths_are_refused_before_any_lookup(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []

    def spy(key: str) -> ZoneInfo:
        looked_up.append(key)
        return ZoneInfo(key)

    monkeypatch.setattr(keep_warm, "ZoneInfo", spy)
    refused([win(tz=name)], "spec.keepWarm[0].timeZone:", repr(name))
    assert looked_up == []
    parse_windows([win(tz="Europe/Berlin")])
    assert set(looked_up) == {"Europe/Berlin"}


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"days": frozenset()}, "Window.days"),
    ({"days": frozenset({7})}, "Window.days"),
    ({"days": frozenset({-1})}, "Window.days"),
    ({"start_min": -1}, "Window.start_min"),
    ({"start_min": 1440}, "Window.start_min"),
    ({"end_min": 0}, "Window.end_min"),
    ({"end_min": 1441}, "Window.end_min"),
    ({"end_min": 480}, "Window.end_min"),
    ({"time_zone": "Nowhere/Town"}, "Window.time_zone"),
    ({"time_zone": "../etc/passwd"}, "Window.time_zone"),
])
def test_window_checks_its_invariants(kwargs: dict[str, Any], field: str) -> None:
    fields: dict[str, Any] = {"days": frozenset({0}), "start_min": 480, "end_min": 1080, "time_zone": "UTC", **kwargs}
    with pytest.raises(WindowError, match=f"^{field}: "):
        Window(**fields)


@pytest.mark.parametrize(("item", "text"), [
    (win(ALL_DAYS[:5], tz="Europe/Berlin"), "Mon-Fri 08:00-18:00 Europe/Berlin"),
    (win(["Sun", "Sat"], "00:00", "24:00"), "Sat,Sun 00:00-24:00 UTC"),
    (win(["Fri", "Wed", "Mon"], "22:00", "02:05"), "Mon,Wed,Fri 22:00-02:05 UTC"),
    (win(["Mon", "Tue", "Wed", "Fri", "Sat", "Sun"]), "Mon-Wed,Fri-Sun 08:00-18:00 UTC"),
    (win(["Mon", "Tue", "Thu"]), "Mon,Tue,Thu 08:00-18:00 UTC"),
    (win(ALL_DAYS, "00:00", "00:01", "America/New_York"), "Mon-Sun 00:00-00:01 America/New_York"),
    (win("Sun", "23:59", "24:00"), "Sun 23:59-24:00 UTC"),
])
def test_str_is_compact(item: dict[str, Any], text: str) -> None:
    assert str(parse_windows([item])[0]) == text


# --- hand-worked weeks (2025-01-06 is a Monday) ---------------------------------------------------

WEEKDAYS = [win(ALL_DAYS[:5])]
FRI_NIGHT = [win("Fri", "22:00", "02:00")]
SUN_NIGHT = [win("Sun", "22:00", "02:00")]
TO_MIDNIGHT = [win("Mon", "20:00", "24:00")]
ACROSS_MIDNIGHT = [win("Mon", "20:00", "24:00"), win("Tue", "00:00", "06:00")]
TOUCHING = [win("Mon", "08:00", "12:00"), win("Mon", "12:00", "18:00")]
OVERLAPPING = [win("Mon", "12:00", "18:00"), win("Mon", "08:00", "14:00")]
CONTAINED = [win("Mon", "08:00", "18:00"), win("Mon", "10:00", "11:00")]
APART = [win("Mon", "08:00", "12:00"), win("Mon", "12:01", "18:00")]
BERLIN = [win(ALL_DAYS[:5], tz="Europe/Berlin")]  # CET, UTC+1, in January
KOLKATA = [win("Mon", "00:00", "01:00", "Asia/Kolkata")]  # UTC+5:30: Sunday evening in UTC
# Mon 08:00-12:00 Berlin = 07:00-11:00 UTC, touched by Mon 06:00-08:00 New York = 11:00-13:00 UTC (EST).
TWO_ZONES = [win("Mon", "08:00", "12:00", "Europe/Berlin"), win("Mon", "06:00", "08:00", "America/New_York")]

# (windows, now, in effect, next change, current end); times UTC.
CASES: list[tuple[str, list[dict[str, Any]], str, bool, str | None, str | None]] = [
    ("before", WEEKDAYS, "2025-01-06 07:59", False, "2025-01-06 08:00", None),
    ("at start", WEEKDAYS, "2025-01-06 08:00", True, "2025-01-06 18:00", "2025-01-06 18:00"),
    ("inside", WEEKDAYS, "2025-01-08 12:34:56.789", True, "2025-01-08 18:00", "2025-01-08 18:00"),
    ("last instant", WEEKDAYS, "2025-01-06 17:59:59.999999", True, "2025-01-06 18:00", "2025-01-06 18:00"),
    ("at end", WEEKDAYS, "2025-01-06 18:00", False, "2025-01-07 08:00", None),
    ("friday evening", WEEKDAYS, "2025-01-10 18:00", False, "2025-01-13 08:00", None),
    ("weekend", WEEKDAYS, "2025-01-11 12:00", False, "2025-01-13 08:00", None),
    ("sunday night", WEEKDAYS, "2025-01-12 23:59:59", False, "2025-01-13 08:00", None),
    ("fri night: thursday", FRI_NIGHT, "2025-01-09 23:00", False, "2025-01-10 22:00", None),
    ("fri night: friday", FRI_NIGHT, "2025-01-10 23:00", True, "2025-01-11 02:00", "2025-01-11 02:00"),
    ("fri night: saturday", FRI_NIGHT, "2025-01-11 01:59", True, "2025-01-11 02:00", "2025-01-11 02:00"),
    ("fri night: over", FRI_NIGHT, "2025-01-11 02:00", False, "2025-01-17 22:00", None),
    ("sun night: saturday", SUN_NIGHT, "2025-01-11 23:00", False, "2025-01-12 22:00", None),
    ("sun night: sunday", SUN_NIGHT, "2025-01-12 22:00", True, "2025-01-13 02:00", "2025-01-13 02:00"),
    ("sun night: monday", SUN_NIGHT, "2025-01-13 01:00", True, "2025-01-13 02:00", "2025-01-13 02:00"),
    ("sun night: over", SUN_NIGHT, "2025-01-13 02:00", False, "2025-01-19 22:00", None),
    ("24:00", TO_MIDNIGHT, "2025-01-06 23:59", True, "2025-01-07 00:00", "2025-01-07 00:00"),
    ("after 24:00", TO_MIDNIGHT, "2025-01-07 00:00", False, "2025-01-13 20:00", None),
    ("merged over midnight", ACROSS_MIDNIGHT, "2025-01-06 21:00", True, "2025-01-07 06:00", "2025-01-07 06:00"),
    ("touching: before", TOUCHING, "2025-01-06 07:00", False, "2025-01-06 08:00", None),
    ("touching: first", TOUCHING, "2025-01-06 10:00", True, "2025-01-06 18:00", "2025-01-06 18:00"),
    ("touching: at the seam", TOUCHING, "2025-01-06 12:00", True, "2025-01-06 18:00", "2025-01-06 18:00"),
    ("overlapping", OVERLAPPING, "2025-01-06 09:00", True, "2025-01-06 18:00", "2025-01-06 18:00"),
    ("contained", CONTAINED, "2025-01-06 10:30", True, "2025-01-06 18:00", "2025-01-06 18:00"),
    ("apart: first", APART, "2025-01-06 10:00", True, "2025-01-06 12:00", "2025-01-06 12:00"),
    ("apart: between", APART, "2025-01-06 12:00", False, "2025-01-06 12:01", None),
    ("berlin: before", BERLIN, "2025-01-06 06:59", False, "2025-01-06 07:00", None),
    ("berlin: inside", BERLIN, "2025-01-06 16:59", True, "2025-01-06 17:00", "2025-01-06 17:00"),
    ("berlin: friday", BERLIN, "2025-01-10 17:00", False, "2025-01-13 07:00", None),
    ("kolkata: sunday in utc", KOLKATA, "2025-01-12 18:30", True, "2025-01-12 19:30", "2025-01-12 19:30"),
    ("kolkata: before", KOLKATA, "2025-01-12 12:00", False, "2025-01-12 18:30", None),
    ("kolkata: monday in utc", KOLKATA, "2025-01-13 12:00", False, "2025-01-19 18:30", None),
    ("two zones merged", TWO_ZONES, "2025-01-06 08:00", True, "2025-01-06 13:00", "2025-01-06 13:00"),
    ("two zones: second", TWO_ZONES, "2025-01-06 11:00", True, "2025-01-06 13:00", "2025-01-06 13:00"),
    # In summer: Berlin 08:00-12:00 CEST = 06:00-10:00 UTC, New York 06:00-08:00 EDT = 10:00-12:00 UTC.
    ("two zones in summer", TWO_ZONES, "2025-07-07 06:00", True, "2025-07-07 12:00", "2025-07-07 12:00"),
    ("no windows", [], "2025-01-06 12:00", False, None, None),
]


@pytest.mark.parametrize(("windows", "now", "effect", "change", "end"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_hand_worked(windows: list[dict[str, Any]], now: str, effect: bool, change: str | None,
                     end: str | None) -> None:
    parsed = parse_windows(windows)
    moment = utc(now)
    assert in_effect(parsed, moment) is effect
    assert next_change(parsed, moment) == (utc(change) if change else None)
    assert current_end(parsed, moment) == (utc(end) if end else None)


def test_results_are_utc_whatever_the_zone_of_now() -> None:
    windows = parse_windows(BERLIN)
    now = datetime(2025, 1, 6, 9, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    change, end = next_change(windows, now), current_end(windows, now)
    assert change is not None and end is not None
    assert change.tzinfo is UTC and end.tzinfo is UTC
    assert change == end == utc("2025-01-06 17:00")
    assert in_effect(windows, now)


@pytest.mark.parametrize("function", [in_effect, next_change, current_end])
def test_now_must_be_aware(function: Any) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        function(parse_windows(WEEKDAYS), datetime(2025, 1, 6, 12))


@pytest.mark.parametrize("windows", [
    [win(ALL_DAYS, "00:00", "24:00")],
    [win(ALL_DAYS, "00:00", "24:00", "Europe/Berlin")],
    [win(ALL_DAYS, "00:00", "12:00", "America/New_York"), win(ALL_DAYS, "12:00", "24:00", "America/New_York")],
    [win(ALL_DAYS, "18:00", "18:01"), win(ALL_DAYS, "18:01", "18:00")],
    [win("Sun", "00:00", "24:00", "Asia/Kolkata"), win(ALL_DAYS[:6], "00:00", "24:00", "Asia/Kolkata")],
])
@pytest.mark.parametrize("now", ["2025-03-29 12:00", "2025-10-25 12:00", "2025-11-01 23:00", "2025-06-30 00:00"])
def test_continuous_coverage_never_changes(windows: list[dict[str, Any]], now: str) -> None:
    parsed = parse_windows(windows)
    assert in_effect(parsed, utc(now))
    assert next_change(parsed, utc(now)) is None
    assert current_end(parsed, utc(now)) is None


def test_coverage_unbroken_for_months_ends_when_the_offsets_change() -> None:
    # 00:00-17:00 UTC and 12:30-20:00 New York touch while New York is on EDT (16:30-24:00 UTC); on EST
    # (17:30-01:00 UTC) there is a gap from 17:00 UTC. The first EST day is Sun 2025-11-02.
    windows = parse_windows([win(ALL_DAYS, "00:00", "17:00"), win(ALL_DAYS, "12:30", "20:00", "America/New_York")])
    assert next_change(windows, utc("2025-06-01 12:00")) == utc("2025-11-02 17:00")
    assert current_end(windows, utc("2025-06-01 12:00")) == utc("2025-11-02 17:00")
    assert not in_effect(windows, utc("2025-11-02 17:00"))
    assert next_change(windows, utc("2025-11-02 17:00")) == utc("2025-11-02 17:30")
    assert next_change(windows, utc("2025-11-02 17:30")) == utc("2025-11-03 17:00")


# --- daylight saving time -------------------------------------------------------------------------
# Europe/Berlin: 2025-03-30 02:00 CET -> 03:00 CEST at 01:00 UTC; 2025-10-26 03:00 CEST -> 02:00 CET at
# 01:00 UTC. America/New_York: 2025-03-09 02:00 EST -> 03:00 EDT at 07:00 UTC; 2025-11-02 02:00 EDT ->
# 01:00 EST at 06:00 UTC.

DST: list[tuple[str, dict[str, Any], str, float]] = [
    ("berlin ordinary day", win("Sat", "00:00", "12:00", "Europe/Berlin"), "2025-03-28 23:00", 12),
    ("berlin spring day", win("Sun", "00:00", "12:00", "Europe/Berlin"), "2025-03-29 23:00", 11),
    ("berlin spring night", win("Sat", "22:00", "06:00", "Europe/Berlin"), "2025-03-29 21:00", 7),
    ("berlin spring office", win("Mon", "08:00", "18:00", "Europe/Berlin"), "2025-03-31 06:00", 10),
    ("berlin start in gap", win("Sun", "02:30", "04:00", "Europe/Berlin"), "2025-03-30 01:00", 1),
    ("berlin end in gap", win("Sun", "01:00", "02:30", "Europe/Berlin"), "2025-03-30 00:00", 1),
    ("berlin fall day", win("Sun", "00:00", "12:00", "Europe/Berlin"), "2025-10-25 22:00", 13),
    ("berlin fall night", win("Sat", "22:00", "06:00", "Europe/Berlin"), "2025-10-25 20:00", 9),
    ("berlin fall office", win("Sun", "08:00", "18:00", "Europe/Berlin"), "2025-10-26 07:00", 10),
    ("berlin start repeated", win("Sun", "02:30", "03:30", "Europe/Berlin"), "2025-10-26 00:30", 2),
    ("berlin end repeated", win("Sun", "01:00", "02:30", "Europe/Berlin"), "2025-10-25 23:00", 1.5),
    ("berlin both repeated", win("Sun", "02:15", "02:45", "Europe/Berlin"), "2025-10-26 00:15", 0.5),
    ("new york spring day", win("Sun", "00:00", "12:00", "America/New_York"), "2025-03-09 05:00", 11),
    ("new york spring night", win("Sat", "22:00", "06:00", "America/New_York"), "2025-03-09 03:00", 7),
    ("new york start in gap", win("Sun", "02:30", "03:30", "America/New_York"), "2025-03-09 07:00", 0.5),
    ("new york fall day", win("Sun", "00:00", "12:00", "America/New_York"), "2025-11-02 04:00", 13),
    ("new york fall night", win("Sat", "22:00", "06:00", "America/New_York"), "2025-11-02 02:00", 9),
    ("new york start repeated", win("Sun", "01:30", "02:00", "America/New_York"), "2025-11-02 05:30", 1.5),
    ("new york ordinary day", win("Sun", "00:00", "12:00", "America/New_York"), "2025-11-09 05:00", 12),
]


@pytest.mark.parametrize(("window", "start", "hours"), [c[1:] for c in DST], ids=[c[0] for c in DST])
def test_dst_days_last_their_real_hours(window: dict[str, Any], start: str, hours: float) -> None:
    windows = parse_windows([window])
    begins = utc(start)
    assert not in_effect(windows, begins - TICK)
    assert next_change(windows, begins - timedelta(hours=3)) == begins
    assert in_effect(windows, begins)
    assert current_end(windows, begins) == begins + timedelta(hours=hours)
    assert next_change(windows, begins) == begins + timedelta(hours=hours)
    assert not in_effect(windows, begins + timedelta(hours=hours))


def test_a_window_inside_the_spring_gap_is_empty_that_day() -> None:
    windows = parse_windows([win("Sun", "02:10", "02:50", "Europe/Berlin")])
    assert not any(in_effect(windows, utc("2025-03-30 00:00") + k * MIN) for k in range(180))
    assert next_change(windows, utc("2025-03-30 00:00")) == utc("2025-04-06 00:10")  # 02:10 CEST
    assert next_change(windows, utc("2025-03-22 00:00")) == utc("2025-03-23 01:10")  # 02:10 CET


# --- property: against the zones' clocks, minute by minute ----------------------------------------

# Zones with and without DST (Lord Howe shifts by 30 minutes), each with its transition days (Sundays).
TRANSITIONS = {
    "UTC": [], "Asia/Kolkata": [],
    "Europe/Berlin": [date(2025, 3, 30), date(2025, 10, 26), date(2026, 3, 29)],
    "America/New_York": [date(2025, 3, 9), date(2025, 11, 2), date(2026, 3, 8)],
    "Australia/Lord_Howe": [date(2025, 4, 6), date(2025, 10, 5), date(2026, 4, 5)],
}
ZONES = list(TRANSITIONS)
SCAN = timedelta(days=8)
# Local times in and around the transitions' gaps and repeated hours (01:00-03:00), or any time.
NEAR_TRANSITION = st.integers(60, 180)
BOUNDARY = st.one_of(st.sampled_from([0, 1439, 1440]), NEAR_TRANSITION, st.integers(0, 1440))


@st.composite
def scenarios(draw: st.DrawFn, near: bool) -> tuple[list[Window], datetime]:
    """1-3 windows, often touching, and a ``now``: anywhere in 2024-2029, or (``near``) shortly before a
    zone's DST transition, with a first window on that Sunday starting and ending in local 01:00-03:00."""
    zone = draw(st.sampled_from([z for z, days in TRANSITIONS.items() if days] if near else ZONES))
    windows: list[Window] = []
    for i in range(draw(st.integers(1, 3))):
        focus = near and i == 0
        days = frozenset(draw(st.sets(st.integers(0, 6), min_size=1)) | ({6} if focus else set()))
        minutes = NEAR_TRANSITION if focus else BOUNDARY
        start = draw(minutes) % 1440
        touching = draw(st.booleans())
        if windows and touching:  # starts where the previous one ends
            last = windows[-1]
            start = last.end_min % 1440
            shift = 1 if last.end_min <= last.start_min or last.end_min == 1440 else 0
            days = frozenset((d + shift) % 7 for d in last.days)
        end = draw(minutes.filter(lambda m: m > 0 and m != start))  # noqa: B023 (called at once)
        window_zone = zone if focus else draw(st.one_of(st.just(zone), st.sampled_from(ZONES)))
        windows.append(Window(days, start, end, window_zone))
    if near:
        day = draw(st.sampled_from(TRANSITIONS[zone]))
        # From the Friday before (UTC): every transition above is later, Lord Howe's on Saturday in UTC.
        now = datetime.combine(day - timedelta(days=2), time(), UTC) + timedelta(minutes=draw(st.integers(0, 3000)))
        now += timedelta(microseconds=draw(st.sampled_from([0, 1, 59_999_999])))
    else:
        now = draw(st.datetimes(datetime(2024, 1, 1), datetime(2029, 12, 31),
                                timezones=st.sampled_from([UTC, ZoneInfo("Asia/Tokyo")])))
    return windows, now


#: A Monday: clock readings count minutes from here, so (minutes // 1440) % 7 is the weekday.
EPOCH = datetime(2000, 1, 3)


def _covers(window: Window, shown: int) -> bool:
    """Whether ``window`` is in effect once its zone's clock has shown ``shown`` (minutes after EPOCH)."""
    end = window.end_min if window.end_min > window.start_min else window.end_min + 1440
    for day in (shown // 1440, shown // 1440 - 1):
        if day % 7 in window.days and day * 1440 + window.start_min <= shown < day * 1440 + end:
            return True
    return False


def _scan(windows: list[Window], first: datetime, minutes: int) -> list[bool]:
    """Coverage at ``first`` + k minutes: a boundary has passed once the zone's clock has shown its time
    (the highest reading so far decides, so the repeated hour of a fall-back starts nothing twice)."""
    zones = {w.time_zone: ZoneInfo(w.time_zone) for w in windows}

    def reading(moment: datetime, zone: ZoneInfo) -> int:
        return (moment.astimezone(zone).replace(tzinfo=None) - EPOCH) // MIN

    shown = {name: max(reading(first - k * MIN, zone) for k in range(240)) for name, zone in zones.items()}
    states = []
    for k in range(minutes):
        moment = first + k * MIN
        for name, zone in zones.items():
            shown[name] = max(shown[name], reading(moment, zone))
        states.append(any(_covers(w, shown[w.time_zone]) for w in windows))
    return states


@settings(max_examples=40, deadline=None)
@given(scenarios(near=False))
def test_matches_a_minute_by_minute_scan(scenario: tuple[list[Window], datetime]) -> None:
    check_against_scan(*scenario)


@settings(max_examples=40, deadline=None)
@given(scenarios(near=True))
def test_matches_a_minute_by_minute_scan_around_dst_transitions(scenario: tuple[list[Window], datetime]) -> None:
    check_against_scan(*scenario)


def check_against_scan(windows: list[Window], now: datetime) -> None:
    first = now.astimezone(UTC).replace(second=0, microsecond=0)
    states = _scan(windows, first, int(SCAN / MIN) + 1)
    effect = in_effect(windows, now)
    assert effect is states[0]
    flips = [k for k in range(1, len(states)) if states[k] is not states[k - 1]]
    change = next_change(windows, now)
    if flips:
        assert change == first + flips[0] * MIN
    else:
        assert change is None or change > first + SCAN
    if change is not None:
        assert change.tzinfo is UTC and change > now
        assert in_effect(windows, change) is not effect
        assert in_effect(windows, change - TICK) is effect
    assert current_end(windows, now) == (change if effect else None)
    # From each flip, the next one; in_effect at every flip, the minute before, and a stride in between.
    for k, later in pairwise(flips):
        assert next_change(windows, first + k * MIN) == first + later * MIN
        assert current_end(windows, first + k * MIN) == (first + later * MIN if states[k] else None)
    for k in {*flips, *(k - 1 for k in flips), *range(0, len(states), 97)}:
        assert in_effect(windows, first + k * MIN) is states[k], first + k * MIN
