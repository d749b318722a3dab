"""Building blocks every config model shares: the strict frozen base model, identifiers,
time zones, localised text, callback windows and weekly hour ranges."""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    Field,
)

from bot.core.models import ConfigModel

LaneName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]


Identifier = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


_RANGE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


_WINDOW = re.compile(r"^(\d{1,3}) (business )?(hour|day)s?$")


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None
    return name


TimeZoneName = Annotated[str, AfterValidator(check_timezone)]


class LocalText(ConfigModel):
    """A patient-facing text in every shipped language. `{name}` placeholders are filled from
    the conversation's collected fields and the engine's values (team, window, ...)."""

    en: str = Field(min_length=1)
    es: str = Field(min_length=1)

    def get(self, language: str) -> str:
        return self.es if language == "es" else self.en


def _check_window(value: str) -> str:
    if not _WINDOW.match(value.strip()):
        raise ValueError("expected a window such as '4 business hours', '1 business day' "
                         "or '2 hours'")
    return value.strip()


CallbackWindowText = Annotated[str, AfterValidator(_check_window)]


def parse_window(value: str) -> tuple[int, bool, str]:
    """'2 business days' -> (2, True, 'day')."""
    match = _WINDOW.match(value)
    if not match:
        raise ValueError(f"bad callback window {value!r}")
    return int(match.group(1)), bool(match.group(2)), match.group(3)


def _check_ranges(value: str) -> str:
    value = value.strip()
    if value == "closed":
        return value
    for part in value.split(","):
        match = _RANGE.match(part.strip())
        if not match:
            raise ValueError("expected 'closed' or ranges such as '08:00-12:00, 13:00-17:00'")
        start = time(int(match.group(1)), int(match.group(2)))
        end_hour = int(match.group(3))
        if (end_hour, int(match.group(4))) <= (start.hour, start.minute) or (
                end_hour == 24 and match.group(4) != "00"):
            raise ValueError(f"range {part.strip()!r} ends before it starts")
    return value


DayHours = Annotated[str, AfterValidator(_check_ranges)]


def parse_ranges(value: str) -> list[tuple[time, time | None]]:
    """'08:00-12:00, 13:00-24:00' -> [(08:00, 12:00), (13:00, None)] (None = midnight)."""
    if value == "closed":
        return []
    ranges = []
    for part in value.split(","):
        match = _RANGE.match(part.strip())
        assert match  # validated at load
        end = None if match.group(3) == "24" else time(int(match.group(3)), int(match.group(4)))
        ranges.append((time(int(match.group(1)), int(match.group(2))), end))
    return ranges


class Week(ConfigModel):
    """Hours per weekday: 'closed' or ranges such as '08:00-12:00, 13:00-17:00'."""

    monday: DayHours = "closed"
    tuesday: DayHours = "closed"
    wednesday: DayHours = "closed"
    thursday: DayHours = "closed"
    friday: DayHours = "closed"
    saturday: DayHours = "closed"
    sunday: DayHours = "closed"

    def day(self, weekday: int) -> str:
        return getattr(self, WEEKDAYS[weekday])
