"""Time intervals on a fixed clock: fields, time zones, and the two daylight-saving changes of 2026
(America/New_York springs forward on 8 March, Europe/London falls back on 25 October)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from services.notify.config import NotifyConfig, load
from services.notify.routing import muted_by, notify_now, route
from services.notify.time_intervals import (
    TimeInterval,
    active,
    any_active,
    parse_day_of_month_range,
    parse_location,
    parse_month_range,
    parse_time_of_day,
    parse_weekday_range,
    parse_year_range,
)
from tests import notify_standins

NEW_YORK = ZoneInfo("America/New_York")
LONDON = ZoneInfo("Europe/London")
GOOD = Path(__file__).parent / "notify_files" / "good" / "notifications.yaml"


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def minutes_active(interval: TimeInterval, start: datetime, end: datetime) -> int:
    count, at = 0, start
    while at < end:
        count += active(interval, at)
        at += timedelta(minutes=1)
    return count


# --- the file's spelling ---------------------------------------------------------------------


def test_parsing() -> None:
    assert parse_time_of_day("00:00") == 0 and parse_time_of_day("09:30") == 570 and parse_time_of_day("24:00") == 1440
    assert parse_weekday_range("Monday:FRIDAY") == (1, 5) and parse_weekday_range("sunday") == (0, 0)
    assert parse_day_of_month_range("-7:-1") == (-7, -1) and parse_day_of_month_range(15) == (15, 15)
    assert parse_day_of_month_range("25:-1") == (25, -1)
    assert parse_month_range("january:march") == (1, 3) and parse_month_range(12) == (12, 12) and parse_month_range("2:4") == (2, 4)
    assert parse_year_range("2026:2027") == (2026, 2027) and parse_year_range(2026) == (2026, 2026)
    assert parse_location("UTC") is not None
    for bad in ("9:00", "24:30", "12:60", 900, ""):
        with pytest.raises(ValueError, match="is not a time of day"):
            parse_time_of_day(bad)


# --- the fields ---------------------------------------------------------------------------------


def test_times_are_half_open_and_24_00_ends_the_day() -> None:
    evening = TimeInterval(times=((17 * 60, 24 * 60),))
    assert not active(evening, utc("2026-06-01T16:59:59"))
    assert active(evening, utc("2026-06-01T17:00"))
    assert active(evening, utc("2026-06-01T23:59:59"))
    assert not active(evening, utc("2026-06-02T00:00"))
    morning = TimeInterval(times=((0, 9 * 60),))
    assert active(morning, utc("2026-06-02T00:00")) and not active(morning, utc("2026-06-02T09:00"))


def test_every_field_must_hold_and_any_entry_will_do() -> None:
    weekday_mornings = TimeInterval(times=((9 * 60, 12 * 60),), weekdays=((1, 5),))
    assert active(weekday_mornings, utc("2026-06-05T10:00"))  # a Friday
    assert not active(weekday_mornings, utc("2026-06-06T10:00"))  # a Saturday
    assert not active(weekday_mornings, utc("2026-06-05T13:00"))
    saturdays = TimeInterval(weekdays=((6, 6),))
    assert any_active([weekday_mornings, saturdays], utc("2026-06-06T10:00"))
    assert not any_active([], utc("2026-06-06T10:00"))
    assert active(TimeInterval(), utc("2026-06-06T10:00"))  # no fields: always


def test_days_of_month_count_from_the_end_and_clamp_to_the_month() -> None:
    last_day = TimeInterval(days_of_month=((-1, -1),))
    assert active(last_day, utc("2026-02-28T12:00")) and not active(last_day, utc("2026-02-27T12:00"))
    assert active(last_day, utc("2028-02-29T12:00")) and not active(last_day, utc("2028-02-28T12:00"))  # a leap year
    last_week = TimeInterval(days_of_month=((-7, -1),))
    assert active(last_week, utc("2026-04-24T00:00")) and not active(last_week, utc("2026-04-23T23:59"))
    late = TimeInterval(days_of_month=((25, -1),))
    assert active(late, utc("2026-01-31T00:00")) and not active(late, utc("2026-01-24T00:00"))
    the_31st = TimeInterval(days_of_month=((31, 31),))
    assert not any(active(the_31st, utc(f"2026-04-{day:02d}T12:00")) for day in range(1, 31))  # April has 30 days
    assert active(the_31st, utc("2026-05-31T12:00"))
    # -31:-28 in a 28-day February: clamped to the month, it is the 1st only (Alertmanager's reading).
    clamped = TimeInterval(days_of_month=((-31, -28),))
    assert active(clamped, utc("2026-02-01T12:00")) and not active(clamped, utc("2026-02-02T12:00"))


def test_months_and_years() -> None:
    winter_2026 = TimeInterval(months=((1, 2), (12, 12)), years=((2026, 2026),))
    assert active(winter_2026, utc("2026-01-15T00:00")) and active(winter_2026, utc("2026-12-31T23:59"))
    assert not active(winter_2026, utc("2026-03-01T00:00")) and not active(winter_2026, utc("2027-01-15T00:00"))


def test_fields_are_read_in_the_intervals_zone() -> None:
    weekend_london = TimeInterval(weekdays=((6, 6), (0, 0)), location=LONDON)
    friday_night = utc("2026-06-05T23:30")  # a Friday in UTC, Saturday 00:30 in London (BST)
    assert active(weekend_london, friday_night)
    assert not active(TimeInterval(weekdays=((6, 6), (0, 0))), friday_night)  # UTC: still Friday
    # The same instant, given in another offset, is the same instant.
    assert active(weekend_london, friday_night.astimezone(timezone(timedelta(hours=-7))))
    # The last day of the month, in Tokyo, is earlier in UTC.
    tokyo_month_end = TimeInterval(days_of_month=((-1, -1),), location=ZoneInfo("Asia/Tokyo"))
    assert active(tokyo_month_end, utc("2026-06-29T15:00")) and not active(tokyo_month_end, utc("2026-06-30T15:00"))


def test_an_instant_needs_a_time_zone() -> None:
    with pytest.raises(ValueError, match="give a datetime with a time zone"):
        active(TimeInterval(), datetime(2026, 6, 1, 12, 0))


# --- daylight saving -----------------------------------------------------------------------------

BUSINESS_NY = TimeInterval(times=((9 * 60, 17 * 60),), weekdays=((1, 5),), location=NEW_YORK)
BUSINESS_LONDON = TimeInterval(times=((9 * 60, 17 * 60),), weekdays=((1, 5),), location=LONDON)


def test_new_york_springs_forward_on_8_march_2026() -> None:
    # 13:30 UTC is 08:30 EST (UTC-5) before the change and 09:30 EDT (UTC-4) after it.
    assert not active(BUSINESS_NY, utc("2026-03-06T13:30"))  # Friday before
    assert active(BUSINESS_NY, utc("2026-03-09T13:30"))  # Monday after
    # Business hours end at 17:00 local: 22:00 UTC before, 21:00 UTC after.
    assert active(BUSINESS_NY, utc("2026-03-06T21:59")) and not active(BUSINESS_NY, utc("2026-03-09T21:00"))
    # The hour that does not exist: 02:00-03:00 local never holds on the day of the change...
    gap = TimeInterval(times=((2 * 60, 3 * 60),), location=NEW_YORK)
    day = utc("2026-03-08T05:00")  # local midnight (EST)
    assert minutes_active(gap, day, day + timedelta(hours=23)) == 0
    assert not active(gap, utc("2026-03-08T06:59")) and not active(gap, utc("2026-03-08T07:00"))  # 01:59 EST, 03:00 EDT
    # ...and the local day is 23 hours long: a whole-day interval holds 23 hours of real time.
    sunday = TimeInterval(weekdays=((0, 0),), location=NEW_YORK)
    assert minutes_active(sunday, day - timedelta(hours=2), day + timedelta(hours=26)) == 23 * 60
    # The day after, the hour exists again.
    assert active(gap, utc("2026-03-09T06:30"))  # 02:30 EDT


def test_london_falls_back_on_25_october_2026() -> None:
    # 08:30 UTC is 09:30 BST (UTC+1) on the Friday before, 08:30 GMT on the Monday after.
    assert active(BUSINESS_LONDON, utc("2026-10-23T08:30"))
    assert not active(BUSINESS_LONDON, utc("2026-10-26T08:30"))
    assert active(BUSINESS_LONDON, utc("2026-10-26T09:00"))
    # 01:00-02:00 local happens twice: 00:00-01:00 UTC (BST) and 01:00-02:00 UTC (GMT).
    repeated = TimeInterval(times=((60, 120),), location=LONDON)
    assert minutes_active(repeated, utc("2026-10-24T23:00"), utc("2026-10-25T23:00")) == 120
    assert active(repeated, utc("2026-10-25T00:30")) and active(repeated, utc("2026-10-25T01:30"))
    assert not active(repeated, utc("2026-10-25T02:00"))
    # The local day is 25 hours long.
    sunday = TimeInterval(weekdays=((0, 0),), location=LONDON)
    assert minutes_active(sunday, utc("2026-10-24T20:00"), utc("2026-10-26T04:00")) == 25 * 60


# --- routes muted and active at those times --------------------------------------------------------


@pytest.fixture
def config(monkeypatch: pytest.MonkeyPatch) -> NotifyConfig:
    notify_standins.register(monkeypatch)
    return load(GOOD)


def test_on_call_is_paged_only_outside_new_york_business_hours(config: NotifyConfig) -> None:
    [pager] = route(config, {"severity": "critical", "rule": "fire"})
    assert pager.receiver == "oncall-pagerduty"
    intervals = config.time_intervals
    # The same UTC time of day, either side of the change: 08:30 EST is outside, 09:30 EDT inside.
    assert notify_now(pager, intervals, utc("2026-03-06T13:30"))
    assert muted_by(pager, intervals, utc("2026-03-09T13:30")) == "outside outside-business-hours"
    assert notify_now(pager, intervals, utc("2026-03-08T15:00"))  # a Sunday: the weekend entry
    assert notify_now(pager, intervals, utc("2026-03-09T21:30"))  # 17:30 EDT


def test_qa_is_mailed_only_on_london_weekdays(config: NotifyConfig) -> None:
    [qa] = route(config, {"rule": "qa-dead-air"})
    intervals = config.time_intervals
    assert notify_now(qa, intervals, utc("2026-10-23T22:30"))  # Friday 23:30 BST
    assert muted_by(qa, intervals, utc("2026-10-23T23:30")) == "muted by weekends"  # Saturday 00:30 BST
    assert not notify_now(qa, intervals, utc("2026-10-25T23:30"))  # Sunday 23:30 GMT
    assert notify_now(qa, intervals, utc("2026-10-26T00:00"))  # Monday 00:00 GMT
