"""When each team is staffed, and what that means for the promises made to patients.

Pure and deterministic: no clock, no I/O. Callers pass the moment they care about (always
timezone-aware) and get aware datetimes back in the schedule's own zone. Opening hours are
local wall-clock times, so every instant is computed in UTC from `zoneinfo` local times; that
keeps arithmetic right across DST changes, where two aware datetimes sharing a tzinfo would
otherwise be subtracted as naive wall-clock values.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import holidays

from bot.config.base import parse_ranges, parse_window
from bot.config.coverage import CoverageFile, WeeklyHours

if TYPE_CHECKING:
    from bot.config.loader import Config

# A schedule that stays shut this long is treated as never opening.
SEARCH_DAYS = 366

Ranges = list[tuple[time, time | None]]
Interval = tuple[datetime, datetime]  # [start, end) in UTC

_DAYS = {
    "en": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "es": ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo"),
}
_MONTHS = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
           "septiembre", "octubre", "noviembre", "diciembre"),
}


def _require_aware(at: datetime) -> None:
    """Naive datetimes are refused: guessing their zone would shift promises by hours."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("expected a timezone-aware datetime")


def _tidy(ranges: Ranges) -> Ranges:
    """Sort and merge a day's ranges, so openings come in time order and overlapping
    ranges are not counted twice as business time."""
    tidy: Ranges = []
    for start, end in sorted(ranges, key=lambda item: item[0]):
        if tidy and (tidy[-1][1] is None or start <= tidy[-1][1]):
            previous_start, previous_end = tidy[-1]
            tidy[-1] = (previous_start, _later(previous_end, end))
        else:
            tidy.append((start, end))
    return tidy


def _later(first: time | None, second: time | None) -> time | None:
    """The later of two range ends, where None is midnight at the end of the day."""
    return None if first is None or second is None else max(first, second)


class Coverage:
    """Opening hours, holidays and callback deadlines for the schedules in coverage.yml."""

    def __init__(self, coverage_file: CoverageFile, default_timezone: str) -> None:
        rules = coverage_file.holidays
        self._country = rules.country
        self._subdivision = rules.subdivision
        self._closed = dict(rules.closed)
        self._open = frozenset(rules.open)
        self._years: dict[int, dict[date, str]] = {}
        if self._country:
            try:  # fail at start-up, not at the first holiday lookup
                holidays.country_holidays(self._country, subdiv=self._subdivision, years=[])
            except NotImplementedError as err:
                raise ValueError(f"no public holidays for {self._country!r} "
                                 f"(subdivision {self._subdivision!r})") from err
        default_zone = ZoneInfo(default_timezone)
        self._hours: dict[str, WeeklyHours] = dict(coverage_file.schedules)
        self._zones: dict[str, ZoneInfo] = {
            name: ZoneInfo(hours.timezone) if hours.timezone else default_zone
            for name, hours in self._hours.items()
        }
        self._ranges: dict[str, tuple[Ranges, ...]] = {
            name: tuple(_tidy(parse_ranges(hours.day(weekday))) for weekday in range(7))
            for name, hours in self._hours.items()
        }

    @classmethod
    def from_config(cls, config: Config) -> Coverage:
        return cls(config.coverage, config.app.timezone)

    # --- public API ----------------------------------------------------------------------

    def is_open(self, schedule: str, at: datetime) -> bool:
        _require_aware(at)
        moment = at.astimezone(UTC)
        today = self._local_day(schedule, at)
        # Yesterday too, so that no opening that could still be running is missed.
        for day in (today - timedelta(days=1), today):
            for start, end in self._day_intervals(schedule, day):
                if start <= moment < end:
                    return True
        return False

    def holiday(self, schedule: str, day: date) -> str | None:
        """The holiday closing `schedule` on `day`; None if it does not observe holidays."""
        if not self._schedule(schedule).observe_holidays:
            return None
        return self._holidays(day.year).get(day)

    def next_open(self, schedule: str, at: datetime) -> datetime:
        """`at` if the schedule is open then, else the start of its next opening."""
        _require_aware(at)
        moment = at.astimezone(UTC)
        for start, end in self._intervals(schedule, self._local_day(schedule, at)):
            if end > moment:
                return self._local(schedule, max(start, moment))
        raise AssertionError("unreachable: _intervals raises when the schedule never opens")

    def callback_due(self, schedule: str, at: datetime, window: str) -> datetime:
        """When a callback promised at `at` within `window` is due.

        Plain hours are elapsed time and plain days calendar days; business hours count only
        open time; N business days end at the close of the N-th open day after `at`'s day.
        """
        _require_aware(at)
        amount, business, unit = parse_window(window.strip())
        if not business:
            if unit == "hour":
                return self._local(schedule, at.astimezone(UTC) + timedelta(hours=amount))
            # Same wall-clock time N days later (aware + timedelta is wall-clock arithmetic),
            # resolved through UTC in case it lands in a DST gap.
            later = at.astimezone(self._zone(schedule)) + timedelta(days=amount)
            return self._local(schedule, later.astimezone(UTC))
        if unit == "hour":
            return self._add_business_time(schedule, at, timedelta(hours=amount))
        return self._business_day_close(schedule, at, amount)

    def format_when(self, at: datetime, language: str) -> str:
        """`at` as patients read it, in `at`'s own zone (this class returns schedule-local
        times). Names are written out here so the output never depends on the host locale."""
        _require_aware(at)
        lang = language if language in _DAYS else "en"
        day_name = _DAYS[lang][at.weekday()]
        month = _MONTHS[lang][at.month - 1]
        if lang == "es":
            article = "la" if at.hour == 1 else "las"
            return f"el {day_name} {at.day} de {month} a {article} {at.hour}:{at.minute:02d}"
        hour = at.hour % 12 or 12
        suffix = "AM" if at.hour < 12 else "PM"
        return f"{day_name}, {month} {at.day} at {hour}:{at.minute:02d} {suffix}"

    # --- internals -----------------------------------------------------------------------

    def _schedule(self, schedule: str) -> WeeklyHours:
        try:
            return self._hours[schedule]
        except KeyError:
            raise ValueError(f"unknown schedule {schedule!r}") from None

    def _zone(self, schedule: str) -> ZoneInfo:
        self._schedule(schedule)
        return self._zones[schedule]

    def _local(self, schedule: str, moment: datetime) -> datetime:
        return moment.astimezone(self._zone(schedule))

    def _local_day(self, schedule: str, at: datetime) -> date:
        return at.astimezone(self._zone(schedule)).date()

    def _holidays(self, year: int) -> dict[date, str]:
        """Package holidays minus `open`, plus `closed` (closed wins: never promise a day
        nobody is in). Built once per year."""
        if year not in self._years:
            found: dict[date, str] = {}
            if self._country:
                calendar = holidays.country_holidays(self._country, subdiv=self._subdivision,
                                                     years=year)
                found = {day: name for day, name in calendar.items() if day not in self._open}
            found.update({day: name for day, name in self._closed.items() if day.year == year})
            self._years[year] = found
        return self._years[year]

    def _day_intervals(self, schedule: str, day: date) -> list[Interval]:
        """The openings of `day` (a local date) as UTC intervals; none on a holiday."""
        if self.holiday(schedule, day) is not None:
            return []
        zone = self._zone(schedule)
        intervals = []
        for start, end in self._ranges[schedule][day.weekday()]:
            # 24:00 is the next local midnight, so 00:00-24:00 days join up across midnight.
            end_at = (datetime.combine(day, end, zone) if end is not None
                      else datetime.combine(day + timedelta(days=1), time(0), zone))
            intervals.append((datetime.combine(day, start, zone).astimezone(UTC),
                              end_at.astimezone(UTC)))
        return intervals

    def _intervals(self, schedule: str, first_day: date) -> Iterator[Interval]:
        """Openings in time order from the day before `first_day` on, without end; raises
        ValueError once the schedule has stayed shut for SEARCH_DAYS days."""
        day = first_day - timedelta(days=1)
        shut = 0
        while shut <= SEARCH_DAYS:
            intervals = self._day_intervals(schedule, day)
            shut = 0 if intervals else shut + 1
            yield from intervals
            day += timedelta(days=1)
        raise ValueError(f"schedule {schedule!r} does not open within {SEARCH_DAYS} days")

    def _add_business_time(self, schedule: str, at: datetime, amount: timedelta) -> datetime:
        """Consume `amount` of open time from `at` on, skipping closed time and holidays."""
        moment = at.astimezone(UTC)
        remaining = amount
        for start, end in self._intervals(schedule, self._local_day(schedule, at)):
            if end <= moment:
                continue
            begin = max(start, moment)
            if remaining <= end - begin:
                return self._local(schedule, begin + remaining)
            remaining -= end - begin
        raise AssertionError("unreachable: _intervals raises when the schedule never opens")

    def _business_day_close(self, schedule: str, at: datetime, count: int) -> datetime:
        """The close of the `count`-th business day after `at`'s local day. With 0, the close
        of the current business day (or of the next one once today's is over)."""
        moment = at.astimezone(UTC)
        day = self._local_day(schedule, at) + timedelta(days=1 if count else 0)
        seen = shut = 0
        while shut <= SEARCH_DAYS:
            intervals = self._day_intervals(schedule, day)
            day += timedelta(days=1)
            if not intervals or intervals[-1][1] <= moment:
                shut += 1
                continue
            shut = 0
            seen += 1
            if seen >= count:
                return self._local(schedule, intervals[-1][1])
        raise ValueError(f"schedule {schedule!r} does not open within {SEARCH_DAYS} days")
