"""Time intervals, as Alertmanager has them: when a route is muted, or when it is active.

A named time interval is a list of :class:`TimeInterval`; it is active at an instant when any
of them is. A :class:`TimeInterval` is active when every field it sets holds (a field left
empty always holds):

- ``times``: ranges of wall-clock time ``[start, end)`` in minutes of the day (``24:00`` may end one);
- ``weekdays``: inclusive ranges, Sunday 0 to Saturday 6 (Alertmanager's numbering);
- ``days_of_month``: inclusive ranges, ``1`` to ``31`` or ``-1`` (the last day) to ``-31``;
- ``months``: inclusive ranges, 1 to 12; ``years``: inclusive ranges;
- ``location``: the IANA time zone all of the above are read in (default UTC).

Everything is read on the wall clock of ``location``: on the day summer time starts, an
interval ``02:00-03:00`` in America/New_York never holds (the clock jumps from 01:59 to
03:00), and on the day it ends, ``01:00-02:00`` in Europe/London holds for two hours of real
time. The ``parse_*`` functions read the file's spelling and raise ``ValueError`` with a
message for its author; :func:`active` is pure.
"""

from __future__ import annotations

import calendar
import difflib
import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo

#: Alertmanager's numbering: Sunday is 0.
WEEKDAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
MONTHS = (
    "january", "february", "march", "april", "may", "june",
    "july", "august", "september", "october", "november", "december",
)  # fmt: skip
MINUTES_PER_DAY = 24 * 60
_TIME = re.compile(r"^(?:([01][0-9]|2[0-3]):([0-5][0-9])|(24):(00))$")

Range = tuple[int, int]


@dataclass(frozen=True)
class TimeInterval:
    """One entry of a named time interval; every field holds the ranges it accepts."""

    times: tuple[Range, ...] = ()
    weekdays: tuple[Range, ...] = ()
    days_of_month: tuple[Range, ...] = ()
    months: tuple[Range, ...] = ()
    years: tuple[Range, ...] = ()
    location: tzinfo = field(default=UTC)


def active(interval: TimeInterval, at: datetime) -> bool:
    """Whether ``interval`` holds at the instant ``at`` (an aware datetime), read in its zone."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("a time interval is checked at an instant: give a datetime with a time zone")
    local = at.astimezone(interval.location)
    if interval.times:
        minute = local.hour * 60 + local.minute
        if not any(start <= minute < end for start, end in interval.times):
            return False
    if interval.weekdays:
        weekday = (local.weekday() + 1) % 7  # Python's Monday 0 -> Sunday 0
        if not any(lo <= weekday <= hi for lo, hi in interval.weekdays):
            return False
    if interval.days_of_month and not _day_of_month_holds(interval.days_of_month, local):
        return False
    if interval.months and not any(lo <= local.month <= hi for lo, hi in interval.months):
        return False
    return not interval.years or any(lo <= local.year <= hi for lo, hi in interval.years)


def any_active(intervals: Iterable[TimeInterval], at: datetime) -> bool:
    """A named time interval holds when any of its entries does."""
    return any(active(interval, at) for interval in intervals)


def _day_of_month_holds(ranges: tuple[Range, ...], local: datetime) -> bool:
    # Alertmanager's reading: a negative day counts from the end of this month, a range is
    # clamped to the month, and a range that starts after the month's last day never holds.
    days = calendar.monthrange(local.year, local.month)[1]
    for lo, hi in ranges:
        begin = days + lo + 1 if lo < 0 else lo
        end = days + hi + 1 if hi < 0 else hi
        if begin > days:
            continue
        if max(begin, 1) <= local.day <= min(end, days):
            return True
    return False


# --- the file's spelling -------------------------------------------------------------------


def parse_time_of_day(text: object) -> int:
    """``"09:30"`` -> 570 (minutes since midnight); ``"24:00"`` is 1440 (the end of the day)."""
    found = _TIME.match(text) if isinstance(text, str) else None
    if not found:
        raise ValueError(f"{text!r} is not a time of day HH:MM from 00:00 to 24:00")
    hours, minutes = (found.group(1), found.group(2)) if found.group(1) else (found.group(3), found.group(4))
    return int(hours) * 60 + int(minutes)


def check_time_range(start: int, end: int) -> Range:
    if start >= MINUTES_PER_DAY:
        raise ValueError("start_time 24:00 is the end of the day: a range starts at 23:59 at the latest")
    if start >= end:
        raise ValueError(
            f"start_time {_clock(start)} is not before end_time {_clock(end)} "
            "(a range across midnight is two ranges, e.g. 22:00-24:00 and 00:00-06:00)"
        )
    return (start, end)


def parse_weekday_range(text: object) -> Range:
    """``"monday"`` or ``"monday:friday"`` (inclusive; any case)."""
    lo, hi = _split(text, "weekday", "monday or monday:friday")
    first, last = _weekday(lo), _weekday(hi)
    if first > last:
        raise ValueError(
            f"{text!r}: {WEEKDAYS[first]} comes after {WEEKDAYS[last]} (weeks run sunday to saturday: "
            f"write {_days(first, 6)!r} and {_days(0, last)!r})"
        )
    return (first, last)


def parse_day_of_month_range(text: object) -> Range:
    """``"1"``, ``"1:15"``, ``"-1"`` (the last day), ``"-7:-1"`` (the last week), ``"25:-1"``."""
    lo, hi = _split(text, "day of the month", "1, 1:15, -1 or -7:-1")
    first, last = _int(lo, "day of the month"), _int(hi, "day of the month")
    for day in (first, last):
        if day == 0 or not -31 <= day <= 31:
            raise ValueError(f"{day} is not a day of the month (1 to 31, or -1 to -31 counting from the end)")
    if first < 0 < last:
        raise ValueError(f"{text!r}: a range from a day counted from the end cannot end on a day counted from the start")
    if (first > 0) == (last > 0) and first > last:
        raise ValueError(f"{text!r}: the first day comes after the last")
    return (first, last)


def parse_month_range(text: object) -> Range:
    """``"january"``, ``"january:march"``, ``"1:3"``, ``12``."""
    lo, hi = _split(text, "month", "january, january:march or 1:3")
    first, last = _month(lo), _month(hi)
    if first > last:
        raise ValueError(f"{text!r}: {MONTHS[first - 1]} comes after {MONTHS[last - 1]} (write two ranges)")
    return (first, last)


def parse_year_range(text: object) -> Range:
    """``"2026"`` or ``"2026:2027"``, ``2026``."""
    lo, hi = _split(text, "year", "2026 or 2026:2027")
    first, last = _int(lo, "year"), _int(hi, "year")
    if first < 1 or last < 1:
        raise ValueError(f"{min(first, last)} is not a year")
    if first > last:
        raise ValueError(f"{text!r}: the first year comes after the last")
    return (first, last)


def parse_location(name: str) -> tzinfo:
    """An IANA time zone name (``Europe/London``, ``America/New_York``, ``UTC``)."""
    if name == "Local":
        raise ValueError("'Local' depends on the machine: name the zone, e.g. Europe/London")
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        close = difflib.get_close_matches(name, sorted(zoneinfo.available_timezones()), n=1)
        hint = f", did you mean {close[0]!r}?" if close else " (an IANA name such as Europe/London or UTC)"
        raise ValueError(f"unknown time zone {name!r}{hint}") from exc


def _split(text: object, what: str, example: str) -> tuple[str, str]:
    if isinstance(text, bool) or not isinstance(text, str | int):
        raise ValueError(f"{text!r} is not a {what} or a range of them, like {example}")
    value = str(text).strip()
    lo, sep, hi = value.partition(":")
    if not lo or (sep and not hi) or ":" in hi:
        raise ValueError(f"{text!r} is not a {what} or a range of them, like {example}")
    return lo, hi if sep else lo


def _weekday(name: str) -> int:
    key = name.strip().lower()
    if key not in WEEKDAYS:
        close = difflib.get_close_matches(key, WEEKDAYS, n=1)
        hint = f", did you mean {close[0]!r}?" if close else f" ({', '.join(WEEKDAYS)})"
        raise ValueError(f"{name!r} is not a weekday{hint}")
    return WEEKDAYS.index(key)


def _month(name: str) -> int:
    key = name.strip().lower()
    if key in MONTHS:
        return MONTHS.index(key) + 1
    if re.fullmatch(r"[0-9]+", key) and 1 <= int(key) <= 12:
        return int(key)
    close = difflib.get_close_matches(key, MONTHS, n=1)
    hint = f", did you mean {close[0]!r}?" if close else " (january to december, or 1 to 12)"
    raise ValueError(f"{name!r} is not a month{hint}")


def _int(part: str, what: str) -> int:
    if not re.fullmatch(r"-?[0-9]+", part.strip()):
        raise ValueError(f"{part!r} is not a {what}")
    return int(part)


def _days(first: int, last: int) -> str:
    return WEEKDAYS[first] if first == last else f"{WEEKDAYS[first]}:{WEEKDAYS[last]}"


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
