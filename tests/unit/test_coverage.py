"""Coverage: opening hours, holidays, callback deadlines and patient-facing times.

Dates are in late 2026: Thanksgiving is Thursday 2026-11-26, Christmas Friday 2026-12-25,
and US daylight saving time ends on Sunday 2026-11-01 (02:00 EDT -> 01:00 EST).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from bot.config.coverage import CoverageFile
from bot.engine.coverage import Coverage

NY = ZoneInfo("America/New_York")
LA = ZoneInfo("America/Los_Angeles")
WEEKDAYS_8_TO_5 = {day: "08:00-17:00"
                   for day in ("monday", "tuesday", "wednesday", "thursday", "friday")}
ALL_WEEK = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def make(schedules: dict[str, dict[str, Any]] | None = None, *,
         holidays: dict[str, Any] | None = None,
         default_timezone: str = "America/New_York") -> Coverage:
    rules = {"country": "US", "subdivision": "MA",
             "closed": {date(2026, 12, 24): "Christmas Eve", date(2026, 12, 31): "New Year's Eve"}}
    rules.update(holidays or {})
    file = CoverageFile.model_validate(
        {"holidays": rules, "schedules": schedules or {"office": WEEKDAYS_8_TO_5}})
    return Coverage(file, default_timezone)


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NY)


@pytest.fixture
def office() -> Coverage:
    return make()


# --- open / closed -------------------------------------------------------------------------

def test_start_is_inclusive_and_end_exclusive(office: Coverage) -> None:
    assert not office.is_open("office", ny(2026, 12, 1, 7, 59))
    assert office.is_open("office", ny(2026, 12, 1, 8, 0))
    assert office.is_open("office", ny(2026, 12, 1, 16, 59, 59))
    assert not office.is_open("office", ny(2026, 12, 1, 17, 0))


def test_lunch_break_between_ranges_is_closed() -> None:
    coverage = make({"clinic": {"tuesday": "08:00-12:00, 13:00-17:00"}})
    assert coverage.is_open("clinic", ny(2026, 12, 1, 11, 59))
    assert not coverage.is_open("clinic", ny(2026, 12, 1, 12, 0))
    assert coverage.is_open("clinic", ny(2026, 12, 1, 13, 0))
    assert coverage.next_open("clinic", ny(2026, 12, 1, 12, 15)) == ny(2026, 12, 1, 13, 0)


def test_weekend_is_closed(office: Coverage) -> None:
    assert not office.is_open("office", ny(2026, 12, 5, 10, 0))  # Saturday
    assert not office.is_open("office", ny(2026, 12, 6, 10, 0))  # Sunday
    assert office.is_open("office", ny(2026, 12, 7, 10, 0))  # Monday


def test_public_holidays_close_the_whole_day(office: Coverage) -> None:
    assert not office.is_open("office", ny(2026, 11, 26, 10, 0))
    assert office.holiday("office", date(2026, 11, 26)) == "Thanksgiving Day"
    assert not office.is_open("office", ny(2026, 12, 25, 10, 0))
    assert office.holiday("office", date(2026, 12, 25)) == "Christmas Day"
    assert office.holiday("office", date(2026, 11, 25)) is None
    assert office.is_open("office", ny(2026, 11, 25, 10, 0))


def test_config_closed_day_is_a_holiday(office: Coverage) -> None:
    assert office.holiday("office", date(2026, 12, 24)) == "Christmas Eve"
    assert not office.is_open("office", ny(2026, 12, 24, 10, 0))  # a Thursday


def test_config_open_day_overrides_a_package_holiday() -> None:
    columbus_day = ny(2026, 10, 12, 10, 0)  # Monday
    assert not make().is_open("office", columbus_day)
    working = make(holidays={"open": [date(2026, 10, 12)]})
    assert working.holiday("office", date(2026, 10, 12)) is None
    assert working.is_open("office", columbus_day)
    assert not working.is_open("office", ny(2026, 11, 26, 10, 0))  # others still apply


def test_schedule_that_ignores_holidays_stays_open() -> None:
    coverage = make({"office": WEEKDAYS_8_TO_5,
                     "answering": {**WEEKDAYS_8_TO_5, "observe_holidays": False}})
    thanksgiving = ny(2026, 11, 26, 10, 0)
    assert coverage.is_open("answering", thanksgiving)
    assert coverage.holiday("answering", date(2026, 11, 26)) is None
    assert not coverage.is_open("office", thanksgiving)


def test_no_country_means_only_the_organisations_closures() -> None:
    coverage = make(holidays={"country": None})
    assert coverage.holiday("office", date(2026, 11, 26)) is None
    assert coverage.holiday("office", date(2026, 12, 24)) == "Christmas Eve"


# --- next_open -----------------------------------------------------------------------------

def test_next_open_is_now_when_open(office: Coverage) -> None:
    at = ny(2026, 12, 1, 9, 30)
    assert office.next_open("office", at) == at
    assert office.next_open("office", ny(2026, 12, 1, 8, 0)) == ny(2026, 12, 1, 8, 0)


def test_next_open_from_evening_is_next_morning(office: Coverage) -> None:
    assert office.next_open("office", ny(2026, 12, 1, 17, 0)) == ny(2026, 12, 2, 8, 0)
    assert office.next_open("office", ny(2026, 12, 1, 6, 0)) == ny(2026, 12, 1, 8, 0)


def test_next_open_from_weekend_is_monday(office: Coverage) -> None:
    assert office.next_open("office", ny(2026, 12, 4, 18, 0)) == ny(2026, 12, 7, 8, 0)
    assert office.next_open("office", ny(2026, 12, 6, 23, 0)) == ny(2026, 12, 7, 8, 0)


def test_next_open_skips_holidays(office: Coverage) -> None:
    assert office.next_open("office", ny(2026, 11, 25, 18, 0)) == ny(2026, 11, 27, 8, 0)
    # Dec 24 (closed), Dec 25 (Christmas) and the weekend.
    assert office.next_open("office", ny(2026, 12, 23, 18, 0)) == ny(2026, 12, 28, 8, 0)
    # Dec 31 (closed) and New Year's Day across the year boundary.
    assert office.next_open("office", ny(2026, 12, 30, 18, 0)) == ny(2027, 1, 4, 8, 0)


# --- callback windows ----------------------------------------------------------------------

def test_business_hours_skip_nights_weekends_and_holidays(office: Coverage) -> None:
    due = office.callback_due
    assert due("office", ny(2026, 12, 1, 9, 0), "4 business hours") == ny(2026, 12, 1, 13, 0)
    assert due("office", ny(2026, 12, 1, 13, 0), "4 business hours") == ny(2026, 12, 1, 17, 0)
    assert due("office", ny(2026, 12, 1, 15, 0), "4 business hours") == ny(2026, 12, 2, 10, 0)
    assert due("office", ny(2026, 12, 5, 10, 0), "4 business hours") == ny(2026, 12, 7, 12, 0)
    assert due("office", ny(2026, 11, 25, 16, 0), "4 business hours") == ny(2026, 11, 27, 11, 0)
    assert due("office", ny(2026, 12, 1, 9, 0), "1 business hour") == ny(2026, 12, 1, 10, 0)


def test_business_hours_across_the_dst_change() -> None:
    # Saturday night into Sunday morning; Sunday 00:00-06:00 lasts 7 real hours that night.
    coverage = make({"night": {"saturday": "20:00-24:00", "sunday": "00:00-06:00"}})
    due = coverage.callback_due("night", ny(2026, 10, 31, 22, 0), "8 business hours")
    assert due == datetime(2026, 11, 1, 10, 0, tzinfo=UTC)  # 2 h Saturday + 6 h Sunday
    assert (due.hour, due.minute) == (5, 0)
    assert due.utcoffset() == timedelta(hours=-5)
    # The whole Sunday opening is 7 hours, so 9 business hours still end at 06:00 EST.
    assert coverage.callback_due("night", ny(2026, 10, 31, 22, 0), "9 business hours") == ny(
        2026, 11, 1, 6, 0)


def test_business_hours_after_the_dst_change_use_the_new_offset(office: Coverage) -> None:
    due = office.callback_due("office", ny(2026, 10, 30, 16, 0), "2 business hours")
    assert due == ny(2026, 11, 2, 9, 0)
    assert due.utcoffset() == timedelta(hours=-5)


def test_business_days_end_at_the_close_of_the_nth_open_day() -> None:
    coverage = make({"office": {**WEEKDAYS_8_TO_5, "thursday": "08:00-12:00, 13:00-19:00"}})
    due = coverage.callback_due
    assert due("office", ny(2026, 11, 30, 10, 0), "1 business day") == ny(2026, 12, 1, 17, 0)
    assert due("office", ny(2026, 12, 4, 19, 0), "1 business day") == ny(2026, 12, 7, 17, 0)
    assert due("office", ny(2026, 12, 5, 11, 0), "1 business day") == ny(2026, 12, 7, 17, 0)
    # Thanksgiving is no business day: Friday is the first, Monday the second.
    assert due("office", ny(2026, 11, 25, 9, 0), "2 business days") == ny(2026, 11, 30, 17, 0)
    # The close is the end of the day's last range.
    assert due("office", ny(2026, 12, 2, 9, 0), "1 business day") == ny(2026, 12, 3, 19, 0)
    # "0 business days" is the close of the current business day, or of the next one.
    assert due("office", ny(2026, 12, 1, 10, 0), "0 business days") == ny(2026, 12, 1, 17, 0)
    assert due("office", ny(2026, 12, 1, 17, 0), "0 business days") == ny(2026, 12, 2, 17, 0)


def test_ranges_out_of_order_still_close_at_the_last_one() -> None:
    coverage = make({"clinic": {"monday": "13:00-17:00, 08:00-12:00",
                                "tuesday": "13:00-17:00, 08:00-12:00"}})
    assert coverage.callback_due("clinic", ny(2026, 11, 30, 9, 0), "1 business day") == ny(
        2026, 12, 1, 17, 0)
    assert coverage.callback_due("clinic", ny(2026, 11, 30, 11, 0), "3 business hours") == ny(
        2026, 11, 30, 15, 0)


def test_plain_windows_ignore_opening_hours(office: Coverage) -> None:
    friday = ny(2026, 12, 4, 16, 0)
    assert office.callback_due("office", friday, "2 hours") == ny(2026, 12, 4, 18, 0)
    assert office.callback_due("office", friday, "3 days") == ny(2026, 12, 7, 16, 0)
    assert office.callback_due("office", friday, " 1 day ") == ny(2026, 12, 5, 16, 0)


def test_plain_windows_across_the_dst_change(office: Coverage) -> None:
    # Hours are elapsed time: 00:30 EDT + 2 h is 01:30 EST (the second 01:30 that night).
    due = office.callback_due("office", ny(2026, 11, 1, 0, 30), "2 hours")
    assert due.astimezone(UTC) == datetime(2026, 11, 1, 6, 30, tzinfo=UTC)
    assert (due.hour, due.minute, due.utcoffset()) == (1, 30, timedelta(hours=-5))
    # Days are calendar days: same wall-clock time, 25 hours later.
    due = office.callback_due("office", ny(2026, 10, 31, 12, 0), "1 day")
    assert (due.day, due.hour) == (1, 12)
    assert due.astimezone(UTC) - ny(2026, 10, 31, 12, 0).astimezone(UTC) == timedelta(hours=25)


# --- around the clock ----------------------------------------------------------------------

def test_24_7_schedule_is_always_open_across_midnight() -> None:
    coverage = make({"on_call": {day: "00:00-24:00" for day in ALL_WEEK}
                     | {"observe_holidays": False}})
    for at in (ny(2026, 12, 5, 0, 0), ny(2026, 12, 5, 23, 59, 59), ny(2026, 12, 25, 12, 0)):
        assert coverage.is_open("on_call", at)
        assert coverage.next_open("on_call", at) == at
    due = coverage.callback_due("on_call", ny(2026, 12, 5, 23, 0), "4 business hours")
    assert due == ny(2026, 12, 6, 3, 0)
    due = coverage.callback_due("on_call", ny(2026, 11, 30, 10, 0), "1 business day")
    assert due == ny(2026, 12, 2, 0, 0)  # Tuesday's close is midnight


def test_24_7_business_hours_across_the_dst_change_are_elapsed_hours() -> None:
    coverage = make({"on_call": {day: "00:00-24:00" for day in ALL_WEEK}})
    at = ny(2026, 11, 1, 0, 30)  # 00:30 EDT
    due = coverage.callback_due("on_call", at, "4 business hours")
    assert due.astimezone(UTC) - at.astimezone(UTC) == timedelta(hours=4)
    assert (due.hour, due.minute) == (3, 30)  # only 3 wall-clock hours later


def test_range_ending_at_midnight_joins_the_next_morning() -> None:
    coverage = make({"late": {"friday": "18:00-24:00", "saturday": "00:00-06:00"}})
    assert coverage.is_open("late", ny(2026, 12, 4, 23, 59))
    assert coverage.is_open("late", ny(2026, 12, 5, 0, 0))
    assert not coverage.is_open("late", ny(2026, 12, 5, 6, 0))
    assert coverage.callback_due("late", ny(2026, 12, 4, 22, 0), "4 business hours") == ny(
        2026, 12, 5, 2, 0)
    assert coverage.next_open("late", ny(2026, 12, 5, 7, 0)) == ny(2026, 12, 11, 18, 0)


# --- refusals ------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda c, at: c.is_open("office", at),
    lambda c, at: c.next_open("office", at),
    lambda c, at: c.callback_due("office", at, "4 business hours"),
    lambda c, at: c.callback_due("office", at, "2 hours"),
    lambda c, at: c.format_when(at, "en"),
], ids=["is_open", "next_open", "business_hours", "plain_hours", "format_when"])
def test_naive_datetimes_are_refused(office: Coverage,
                                     call: Callable[[Coverage, datetime], object]) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        call(office, datetime(2026, 12, 1, 10, 0))


def test_a_schedule_that_never_opens_is_an_error_naming_it() -> None:
    coverage = make({"office": WEEKDAYS_8_TO_5, "ghost": {}})
    at = ny(2026, 12, 1, 10, 0)
    assert not coverage.is_open("ghost", at)
    with pytest.raises(ValueError, match="'ghost'"):
        coverage.next_open("ghost", at)
    with pytest.raises(ValueError, match="'ghost'"):
        coverage.callback_due("ghost", at, "4 business hours")
    with pytest.raises(ValueError, match="'ghost'"):
        coverage.callback_due("ghost", at, "1 business day")


def test_unknown_schedule_and_bad_window_are_refused(office: Coverage) -> None:
    with pytest.raises(ValueError, match="'nowhere'"):
        office.is_open("nowhere", ny(2026, 12, 1, 10, 0))
    with pytest.raises(ValueError, match="window"):
        office.callback_due("office", ny(2026, 12, 1, 10, 0), "soon")


def test_unknown_holiday_subdivision_fails_at_construction() -> None:
    with pytest.raises(ValueError, match="'US'"):
        make(holidays={"subdivision": "ZZ"})


# --- time zones ----------------------------------------------------------------------------

def test_schedule_zone_differs_from_the_default_zone() -> None:
    coverage = make({"office": WEEKDAYS_8_TO_5,
                     "west": {**WEEKDAYS_8_TO_5, "timezone": "America/Los_Angeles"}})
    at = ny(2026, 12, 1, 10, 0)  # 07:00 in Los Angeles
    assert coverage.is_open("office", at)
    assert not coverage.is_open("west", at)
    opens = coverage.next_open("west", at)
    assert opens == datetime(2026, 12, 1, 8, 0, tzinfo=LA) == ny(2026, 12, 1, 11, 0)
    assert opens.tzinfo == LA and opens.hour == 8
    assert coverage.is_open("west", ny(2026, 12, 1, 19, 59))  # 16:59 in Los Angeles
    assert not coverage.is_open("west", ny(2026, 12, 1, 20, 0))  # 17:00 in Los Angeles
    assert not coverage.is_open("office", ny(2026, 12, 1, 19, 59))


def test_results_are_in_the_schedules_zone_and_days_are_local() -> None:
    coverage = make({"office": WEEKDAYS_8_TO_5,
                     "west": {**WEEKDAYS_8_TO_5, "timezone": "America/Los_Angeles"}})
    at = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)  # Tuesday 21:00 NY, Tuesday 18:00 LA
    due = coverage.callback_due("west", at, "1 business day")
    assert due == datetime(2026, 12, 2, 17, 0, tzinfo=LA) and due.tzinfo == LA
    office_open = coverage.next_open("office", at)
    assert office_open == ny(2026, 12, 2, 8, 0) and office_open.tzinfo == NY


def test_default_zone_applies_to_schedules_without_one() -> None:
    coverage = make(default_timezone="America/Los_Angeles")
    assert coverage.next_open("office", ny(2026, 12, 1, 10, 0)) == datetime(
        2026, 12, 1, 8, 0, tzinfo=LA)


def test_from_config_uses_the_app_time_zone() -> None:
    file = CoverageFile.model_validate({"schedules": {"office": WEEKDAYS_8_TO_5}})
    config = SimpleNamespace(coverage=file, app=SimpleNamespace(timezone="America/Los_Angeles"))
    coverage = Coverage.from_config(config)  # type: ignore[arg-type]
    assert coverage.next_open("office", ny(2026, 12, 1, 10, 0)).tzinfo == LA


def test_shipped_coverage_file_closes_on_holidays() -> None:
    path = Path(__file__).resolve().parents[2] / "config" / "coverage.yml"
    file = CoverageFile.model_validate(yaml.safe_load(path.read_text()))
    coverage = Coverage(file, "America/New_York")
    assert coverage.holiday("office", date(2026, 12, 24)) == "Christmas Eve"
    assert coverage.next_open("pharmacy", ny(2026, 11, 25, 19, 0)) == ny(2026, 11, 27, 8, 0)
    assert coverage.callback_due("office", ny(2026, 12, 2, 10, 0), "1 business day") == ny(
        2026, 12, 3, 19, 0)


# --- format_when ---------------------------------------------------------------------------

@pytest.mark.parametrize(("at", "language", "expected"), [
    (ny(2026, 12, 1, 8, 0), "en", "Tuesday, December 1 at 8:00 AM"),
    (ny(2026, 11, 26, 13, 30), "en", "Thursday, November 26 at 1:30 PM"),
    (ny(2026, 12, 6, 0, 5), "en", "Sunday, December 6 at 12:05 AM"),
    (ny(2026, 12, 7, 12, 0), "en", "Monday, December 7 at 12:00 PM"),
    (ny(2026, 12, 1, 8, 0), "es", "el martes 1 de diciembre a las 8:00"),
    (ny(2026, 12, 2, 13, 45), "es", "el miércoles 2 de diciembre a las 13:45"),
    (ny(2026, 12, 5, 1, 5), "es", "el sábado 5 de diciembre a la 1:05"),
    (ny(2026, 12, 1, 8, 0), "fr", "Tuesday, December 1 at 8:00 AM"),
])
def test_format_when(at: datetime, language: str, expected: str) -> None:
    assert make().format_when(at, language) == expected


def test_format_when_uses_the_datetimes_own_zone(office: Coverage) -> None:
    at = datetime(2026, 12, 1, 16, 0, tzinfo=UTC)
    assert office.format_when(at.astimezone(LA), "en") == "Tuesday, December 1 at 8:00 AM"
    assert office.format_when(at.astimezone(NY), "es") == "el martes 1 de diciembre a las 11:00"
