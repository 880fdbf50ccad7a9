"""Keep-warm windows (``spec.keepWarm``): when a project is kept running whatever its traffic (pure).

A :class:`Window` is weekly: it starts on each of its ``days`` at ``start`` local time and ends at
``end``, on the same day, or on the next day when ``end`` is earlier than ``start`` (Fri 22:00-02:00
ends Sat 02:00; "24:00" is the end of the start day). ``start`` and ``end`` are wall-clock times in
the window's IANA ``timeZone`` (default UTC), so 08:00-18:00 Europe/Berlin lasts 10 real hours in
winter and in summer.

Daylight saving time: every boundary is the **first instant at which the zone's clock shows that
local time or later**. Hence:

- a time skipped by a spring-forward gap takes effect at the instant the clock jumps (02:30 on the
  day Berlin jumps from 02:00 to 03:00 is 03:00 CEST = 01:00 UTC); a window lying wholly in the gap
  is empty that day;
- a time repeated by a fall-back takes its first occurrence (``fold=0``: 02:30 on the day Berlin
  goes back from 03:00 to 02:00 is 02:30 CEST = 00:30 UTC).

A window that day is then longer or shorter in real time (Sun 00:00-12:00 Europe/Berlin lasts 11
hours on the last Sunday of March, 13 on the last Sunday of October).

Windows that overlap or touch form one stretch of coverage: :func:`next_change` is when
:func:`in_effect` flips, never a boundary inside the stretch. Coverage unbroken for :data:`HORIZON`
(more than a year of time-zone rules, so every combination of offsets and weekdays recurs) is taken
as unbroken forever: :func:`next_change` and :func:`current_end` return ``None``. Instants are
timezone-aware; results are in UTC.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "DAY_NAMES",
    "HORIZON",
    "MAX_TIME_ZONE",
    "MAX_WINDOWS",
    "Window",
    "WindowError",
    "current_end",
    "in_effect",
    "next_change",
    "parse_windows",
]

#: Day names as written in ``days``; the index is :meth:`datetime.weekday` (0 = Monday).
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
MAX_WINDOWS = 16
MAX_TIME_ZONE = 64
DEFAULT_TIME_ZONE = "UTC"
#: Coverage unbroken this long counts as unbroken forever.
HORIZON = timedelta(days=400)

_DAY = 1440
_FIELDS = ("days", "start", "end", "timeZone")
_HHMM = re.compile(r"([0-9]{2}):([0-9]{2})")
#: IANA names: components starting with a capital, no dots. Refuses paths ("../etc", "/etc/x") before
#: any lookup, and the database's other files ("localtime" -> /etc/localtime, "posix/...", "zone.tab").
#: What a time zone name may look like (checked before any lookup; the CRD's schema uses it too).
TIME_ZONE_PATTERN = r"[A-Z][A-Za-z0-9_+-]*(?:/[A-Z][A-Za-z0-9_+-]*)*"
_TIME_ZONE = re.compile(TIME_ZONE_PATTERN)
#: An occurrence lasts at most a day of wall-clock time plus a DST shift: less than this.
_MAX_SPAN = timedelta(days=2)
_CHUNK = timedelta(days=7)
_TICK = timedelta(microseconds=1)


class WindowError(ValueError):
    """A bad keep-warm window: one line naming the field (``spec.keepWarm[1].start``) and the value."""


@dataclass(frozen=True, slots=True)
class Window:
    """A weekly window; ``start_min``/``end_min`` are minutes after local midnight (``end_min`` 1440 =
    24:00; ``end_min < start_min``: it ends the next day)."""

    days: frozenset[int]
    start_min: int
    end_min: int
    time_zone: str = DEFAULT_TIME_ZONE

    def __post_init__(self) -> None:
        if not self.days or not self.days <= frozenset(range(7)):
            raise WindowError(f"Window.days: expected 1-7 days in 0..6, got {sorted(self.days)}")
        if not 0 <= self.start_min < _DAY:
            raise WindowError(f"Window.start_min: expected 0..1439, got {self.start_min}")
        if not 0 < self.end_min <= _DAY or self.end_min == self.start_min:
            raise WindowError(f"Window.end_min: expected 1..1440 other than start_min, got {self.end_min}")
        problem = _time_zone_problem(self.time_zone)
        if problem:
            raise WindowError(f"Window.time_zone: {problem}")

    def __str__(self) -> str:
        """E.g. ``Mon-Fri 08:00-18:00 Europe/Berlin``."""
        return f"{_days_text(self.days)} {_hhmm(self.start_min)}-{_hhmm(self.end_min)} {self.time_zone}"


def parse_windows(items: object, path: str = "spec.keepWarm") -> tuple[Window, ...]:
    """The windows of ``spec.keepWarm`` as JSON gives them (``None``: none); :class:`WindowError` names
    the first bad field as ``{path}[i].field``."""
    if items is None:
        return ()
    if not isinstance(items, list | tuple):
        raise WindowError(f"{path}: expected a list of windows, got {_shown(items)}")
    if len(items) > MAX_WINDOWS:
        raise WindowError(f"{path}: expected at most {MAX_WINDOWS} windows, got {len(items)}")
    return tuple(_parse_window(item, f"{path}[{i}]") for i, item in enumerate(items))


def in_effect(windows: Sequence[Window], now: datetime) -> bool:
    """Whether a window covers ``now`` (aware; windows are half-open: in at start, out at end)."""
    now = _utc(now)
    return any(start <= now < end for start, end in _occurrences(windows, now - _MAX_SPAN, now + _TICK))


def current_end(windows: Sequence[Window], now: datetime) -> datetime | None:
    """When the coverage including ``now`` ends (overlapping or touching windows merged); ``None`` when
    no window is in effect, or when the coverage never ends."""
    now = _utc(now)
    run = _first_run(windows, now)
    return run[1] if run is not None and run[0] <= now else None


def next_change(windows: Sequence[Window], now: datetime) -> datetime | None:
    """The first instant after ``now`` at which :func:`in_effect` flips; ``None`` if it never does."""
    now = _utc(now)
    run = _first_run(windows, now)
    if run is None:
        return None
    return run[1] if run[0] <= now else run[0]


# --- parsing --------------------------------------------------------------------------------------


def _parse_window(item: object, path: str) -> Window:
    if not isinstance(item, Mapping):
        raise WindowError(f"{path}: expected a mapping with {', '.join(_FIELDS)}, got {_shown(item)}")
    for key in item:
        if key not in _FIELDS:
            raise WindowError(f"{path}: unknown field {key!r}, expected one of {', '.join(_FIELDS)}")
    days = _parse_days(item.get("days"), f"{path}.days")
    start = _parse_time(item.get("start"), f"{path}.start", end=False)
    end = _parse_time(item.get("end"), f"{path}.end", end=True)
    if start == end:
        raise WindowError(f"{path}.end: expected a time other than start, got {_hhmm(end)!r} "
                          "(a window of no length; 00:00 to 24:00 is the whole day)")
    zone = item.get("timeZone", DEFAULT_TIME_ZONE)
    problem = _time_zone_problem(zone)
    if problem:
        raise WindowError(f"{path}.timeZone: {problem}")
    assert isinstance(zone, str)
    return Window(days=days, start_min=start, end_min=end, time_zone=zone)


def _parse_days(value: object, path: str) -> frozenset[int]:
    if value is None:
        raise WindowError(f"{path}: required, a list of {', '.join(DAY_NAMES)}")
    if not isinstance(value, list | tuple):
        raise WindowError(f"{path}: expected a list of {', '.join(DAY_NAMES)}, got {_shown(value)}")
    if not value:
        raise WindowError(f"{path}: expected at least one day, got []")
    days: set[int] = set()
    for j, name in enumerate(value):
        if name not in DAY_NAMES:
            raise WindowError(f"{path}[{j}]: expected one of {', '.join(DAY_NAMES)}, got {_shown(name)}")
        day = DAY_NAMES.index(name)
        if day in days:
            raise WindowError(f"{path}[{j}]: duplicate day {name!r}")
        days.add(day)
    return frozenset(days)


def _parse_time(value: object, path: str, *, end: bool) -> int:
    """Minutes after midnight: 0..1439 for a start, 1..1440 ("24:00") for an end."""
    allowed = "00:01-24:00" if end else "00:00-23:59"
    if value is None:
        raise WindowError(f"{path}: required, HH:MM ({allowed})")
    match = _HHMM.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        minutes = int(match[1]) * 60 + int(match[2])
        if int(match[2]) < 60 and (0 < minutes <= _DAY if end else minutes < _DAY):
            return minutes
    raise WindowError(f"{path}: expected HH:MM ({allowed}), got {_shown(value)}")


def _time_zone_problem(name: object) -> str | None:
    """Why ``name`` is not a time zone this module accepts, or ``None``."""
    expected = "expected an IANA time zone name (e.g. Europe/Berlin)"
    if not isinstance(name, str):
        return f"{expected}, got {_shown(name)}"
    if len(name) > MAX_TIME_ZONE:
        return f"expected at most {MAX_TIME_ZONE} characters, got {_shown(name)}"
    if not _TIME_ZONE.fullmatch(name):
        return f"{expected}, got {_shown(name)}"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"{expected}, got {_shown(name)} (unknown to the time zone database)"
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _days_text(days: frozenset[int]) -> str:
    """Consecutive days as ranges: ``Mon-Fri``, ``Sat,Sun``, ``Mon,Wed-Fri``."""
    parts: list[str] = []
    ordered = sorted(days)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{DAY_NAMES[ordered[i]]}-{DAY_NAMES[ordered[j]]}")
        else:
            parts.extend(DAY_NAMES[d] for d in ordered[i:j + 1])
        i = j + 1
    return ",".join(parts)


# --- evaluation -----------------------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"now: expected a timezone-aware datetime, got {now!r}")
    return now.astimezone(UTC)


def _instant(day: date, minutes: int, zone: ZoneInfo) -> datetime:
    """The first instant (UTC) at which ``zone``'s clock shows ``minutes`` after midnight of ``day`` or
    later (``minutes`` may pass 1440: the next day)."""
    wall = datetime.combine(day, time()) + timedelta(minutes=minutes)
    first = wall.replace(tzinfo=zone).astimezone(UTC)  # fold=0: the first occurrence of a repeated time
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a spring-forward gap: the transition lies in (fold=1 reading, fold=0 reading]; find it.
    lo, hi = wall.replace(tzinfo=zone, fold=1).astimezone(UTC), first
    before = lo.astimezone(zone).utcoffset()
    while hi - lo > timedelta(seconds=1):
        mid = lo + timedelta(seconds=(hi - lo).total_seconds() // 2)
        if mid.astimezone(zone).utcoffset() == before:
            lo = mid
        else:
            hi = mid
    return hi


def _occurrences(windows: Sequence[Window], lo: datetime, hi: datetime) -> Iterator[tuple[datetime, datetime]]:
    """Every non-empty occurrence ``(start, end)`` of ``windows`` that starts in ``[lo, hi)``."""
    for window in windows:
        zone = ZoneInfo(window.time_zone)
        end_min = window.end_min if window.end_min > window.start_min else window.end_min + _DAY
        day = lo.astimezone(zone).date() - timedelta(days=2)
        last = hi.astimezone(zone).date() + timedelta(days=1)
        while day <= last:
            if day.weekday() in window.days:
                start = _instant(day, window.start_min, zone)
                if lo <= start < hi:
                    end = _instant(day, end_min, zone)
                    if end > start:
                        yield start, end
            day += timedelta(days=1)


def _first_run(windows: Sequence[Window], now: datetime) -> tuple[datetime, datetime | None] | None:
    """The first stretch of merged coverage that ends after ``now``: ``(start, end)``, ``end`` ``None``
    when it lasts past :data:`HORIZON`; ``None`` when there is none."""
    run: tuple[datetime, datetime] | None = None
    lo = now - _MAX_SPAN
    while lo < now + HORIZON:
        hi = lo + _CHUNK
        for start, end in sorted(_occurrences(windows, lo, hi)):
            if run is not None and start <= run[1]:
                run = (run[0], max(run[1], end))
                continue
            if run is not None and run[1] > now:
                return run
            run = (start, end)
        # Every later occurrence starts at hi or after: a run ending before hi is complete.
        if run is not None and now < run[1] < hi:
            return run
        lo = hi
    return (run[0], None) if run is not None and run[1] > now else None
