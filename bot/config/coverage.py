"""config/coverage.yml: opening hours, holidays and the after-hours rules."""

from __future__ import annotations

from datetime import date

from pydantic import Field

from bot.config.base import Identifier, TimeZoneName, Week
from bot.core.models import ConfigModel


class WeeklyHours(Week):
    """Opening hours of a schedule in its own time zone; holidays close it all day."""

    timezone: TimeZoneName | None = None  # default: app.yml timezone
    observe_holidays: bool = True


class HolidayRules(ConfigModel):
    """Public holidays from the `holidays` package, plus the organisation's own changes."""

    country: str | None = Field("US", pattern=r"^[A-Z]{2}$")
    subdivision: str | None = None
    closed: dict[date, str] = {}  # extra closure days (name for staff)
    open: list[date] = []  # package holidays the organisation works anyway


class CoverageFile(ConfigModel):
    """config/coverage.yml."""

    holidays: HolidayRules = HolidayRules()
    schedules: dict[Identifier, WeeklyHours]
