"""Typed models of the engine's config files: coverage, policy, scheduling, knowledge, scripts.

`bot.config` loads and cross-checks them with the rest of config/; this module only says
what a valid file looks like. Patient-facing text is always a `LocalText` (every shipped
language), so no reply is ever built from code.
"""

from __future__ import annotations

import re
from datetime import date, time
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalText(_Model):
    """A patient-facing text in every shipped language. `{name}` placeholders are filled from
    the conversation's collected fields and the engine's values (team, window, ...)."""

    en: str = Field(min_length=1)
    es: str = Field(min_length=1)

    def get(self, language: str) -> str:
        return self.es if language == "es" else self.en


# --- callback windows and hours ------------------------------------------------------------

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


class _Week(_Model):
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


class WeeklyHours(_Week):
    """Opening hours of a schedule in its own time zone; holidays close it all day."""

    timezone: TimeZoneName | None = None  # default: app.yml timezone
    observe_holidays: bool = True


class HolidayRules(_Model):
    """Public holidays from the `holidays` package, plus the organisation's own changes."""

    country: str | None = Field("US", pattern=r"^[A-Z]{2}$")
    subdivision: str | None = None
    closed: dict[date, str] = {}  # extra closure days (name for staff)
    open: list[date] = []  # package holidays the organisation works anyway


class CoverageFile(_Model):
    """config/coverage.yml."""

    holidays: HolidayRules = HolidayRules()
    schedules: dict[Identifier, WeeklyHours]


# --- policy --------------------------------------------------------------------------------

class IdentityPolicy(_Model):
    max_attempts: int = Field(3, ge=1, le=10)
    verified_minutes: int = Field(60, ge=1, le=24 * 60)  # how long verification lasts


class UpsetPolicy(_Model):
    """Upset-patient signals: wording (lexicon patterns, see safety.yml) or repeat contacts."""

    route: Literal["patient_experience", "supervisor"] = "patient_experience"
    repeat_contacts: int = Field(3, ge=2, le=20)  # same contact reason this often ...
    repeat_window_hours: int = Field(72, ge=1, le=24 * 30)  # ... within this window
    en: list[str] = []
    es: list[str] = []


class PolicyFile(_Model):
    """config/policy.yml: the rules the policy applies to every message."""

    identity: IdentityPolicy = IdentityPolicy()
    duplicate_window_seconds: int = Field(120, ge=0, le=3600)
    out_of_scope_handoff_after: int = Field(2, ge=1, le=10)
    # While the bot waits for an answer (identity, a script question), a message switches
    # to a new request (a person, a complaint) only at this intent confidence: a bare date
    # or number says little. Safety levels interrupt at any confidence.
    interrupt_confidence: float = Field(0.6, ge=0, le=1)
    upset: UpsetPolicy = UpsetPolicy()


# --- scheduling ----------------------------------------------------------------------------

class Location(_Model):
    name: LocalText
    address: LocalText
    phone: str = ""


class VisitType(_Model):
    name: LocalText
    minutes: int = Field(30, ge=5, le=480)
    # Review-required visit types are never booked by the bot: they go to the scheduling lane.
    review_required: bool = False
    location: Identifier
    preparation: LocalText
    next_steps: LocalText
    aliases: list[str] = []  # words patients use for it, any language


class Provider(_Model):
    name: str = Field(min_length=1)
    location: Identifier
    visit_types: list[Identifier]
    template: Identifier  # a slot template


class SlotTemplate(_Week):
    """Bookable hours per weekday; slots start every `slot_minutes`."""

    slot_minutes: int = Field(30, ge=5, le=240)
    schedule: Identifier | None = None  # coverage schedule whose holidays close the calendar


class BookingRules(_Model):
    horizon_days: int = Field(30, ge=1, le=365)
    min_notice_hours: int = Field(2, ge=0, le=24 * 14)
    offer: int = Field(3, ge=1, le=9)  # slots offered per prompt
    cancel_notice_hours: int = Field(24, ge=0, le=24 * 14)


class SchedulingFile(_Model):
    """config/scheduling.yml: locations, visit types, provider calendars, booking rules."""

    timezone: TimeZoneName | None = None  # default: app.yml timezone
    locations: dict[Identifier, Location]
    visit_types: dict[Identifier, VisitType]
    providers: dict[Identifier, Provider]
    templates: dict[Identifier, SlotTemplate]
    booking: BookingRules = BookingRules()

    @model_validator(mode="after")
    def _references(self) -> SchedulingFile:
        for name, visit in self.visit_types.items():
            if visit.location not in self.locations:
                raise ValueError(f"visit_types.{name}.location: unknown location "
                                 f"{visit.location!r}")
        for name, provider in self.providers.items():
            if provider.location not in self.locations:
                raise ValueError(f"providers.{name}.location: unknown location")
            if provider.template not in self.templates:
                raise ValueError(f"providers.{name}.template: unknown template "
                                 f"{provider.template!r}")
            for visit in provider.visit_types:
                if visit not in self.visit_types:
                    raise ValueError(f"providers.{name}.visit_types: unknown visit type "
                                     f"{visit!r}")
        return self


# --- knowledge base ------------------------------------------------------------------------

class KnowledgeEntry(_Model):
    """One approved care-navigation answer (where to go, hours, parking, ...). Never clinical."""

    id: Identifier
    owner: str = Field(min_length=1)
    approved: date
    keywords: dict[Literal["en", "es"], list[str]]
    answer: LocalText


class KnowledgeFile(_Model):
    """config/knowledge.yml."""

    knowledge: list[KnowledgeEntry]


# --- scripts -------------------------------------------------------------------------------

SlotKind = Literal["text", "yes_no", "number", "date", "visit_type", "option", "medication",
                   "pharmacy", "account", "phone", "email"]


class Ask(_Model):
    """Ask the patient for one field; re-prompt on an invalid answer, hand off after
    `max_attempts` invalid answers."""

    slot: Identifier
    kind: SlotKind = "text"
    prompt: LocalText
    reprompt: LocalText | None = None
    max_attempts: int = Field(2, ge=1, le=5)
    max_chars: int = Field(200, ge=1, le=2000)
    # Take the answer from the opening message when it gives one ("a flu shot next friday").
    # Default: on for visit_type, medication and pharmacy; off otherwise.
    prefill: bool | None = None


class Action(_Model):
    """Call a built-in action (see bot/actions.py); `outcomes` maps its result to a step."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_.]{0,63}$")
    outcomes: dict[str, str] = {}


class Branch(_Model):
    slot: Identifier
    cases: dict[str, str]
    default: str


class HandoffStep(_Model):
    """End the script with a handoff; the note lists the fields the script collected."""

    lane: Identifier | None = None  # default: the lane of the script's contact reason
    reason: Identifier
    unresolved: str = Field(min_length=1)  # for staff, never shown to patients
    say: LocalText | None = None  # default: the lane acknowledgement


class Step(_Model):
    id: Identifier
    next: str | None = None  # default: the following step
    ask: Ask | None = None
    say: LocalText | None = None
    action: Action | None = None
    branch: Branch | None = None
    handoff: HandoffStep | None = None
    end: LocalText | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Step:
        kinds = [k for k in ("ask", "say", "action", "branch", "handoff", "end")
                 if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"step {self.id!r} must have exactly one of ask, say, action, "
                             f"branch, handoff, end (has {', '.join(kinds) or 'none'})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("ask", "say", "action", "branch", "handoff", "end")
                    if getattr(self, k) is not None)

    def targets(self) -> list[str]:
        found = [self.next] if self.next else []
        if self.action:
            found += list(self.action.outcomes.values())
        if self.branch:
            found += [*self.branch.cases.values(), self.branch.default]
        return found


class Script(_Model):
    """An approved script: versioned, owned, dated. Scripts contain no code."""

    id: Identifier
    version: int = Field(ge=1)
    owner: str = Field(min_length=1)
    approved: date
    description: str = ""
    steps: list[Step] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Script:
        ids = [step.id for step in self.steps]
        if len(set(ids)) != len(ids):
            raise ValueError("step ids must be unique")
        for step in self.steps:
            for target in step.targets():
                if target not in ids:
                    raise ValueError(f"step {step.id!r} goes to unknown step {target!r}")
        last = self.steps[-1]
        if last.kind not in ("handoff", "end") and not last.targets():
            raise ValueError(f"the last step {last.id!r} must end the script (handoff or end) "
                             "or name its next step")
        return self

    def step(self, step_id: str) -> Step:
        return next(step for step in self.steps if step.id == step_id)

    def after(self, step: Step) -> Step | None:
        """The step that follows `step` when it names no other."""
        if step.next:
            return self.step(step.next)
        index = self.steps.index(step)
        return self.steps[index + 1] if index + 1 < len(self.steps) else None
