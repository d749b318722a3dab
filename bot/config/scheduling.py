"""config/scheduling.yml: locations, visit types, provider calendars and booking rules."""

from __future__ import annotations

from pydantic import Field, model_validator

from bot.config.base import Identifier, LocalText, TimeZoneName, Week
from bot.core.models import ConfigModel


class Location(ConfigModel):
    name: LocalText
    address: LocalText
    phone: str = ""


class VisitType(ConfigModel):
    name: LocalText
    minutes: int = Field(30, ge=5, le=480)
    # Review-required visit types are never booked by the bot: they go to the scheduling lane.
    review_required: bool = False
    location: Identifier
    preparation: LocalText
    next_steps: LocalText
    aliases: list[str] = []  # words patients use for it, any language


class Provider(ConfigModel):
    name: str = Field(min_length=1)
    location: Identifier
    visit_types: list[Identifier]
    template: Identifier  # a slot template


class SlotTemplate(Week):
    """Bookable hours per weekday; slots start every `slot_minutes`."""

    slot_minutes: int = Field(30, ge=5, le=240)
    schedule: Identifier | None = None  # coverage schedule whose holidays close the calendar


class BookingRules(ConfigModel):
    horizon_days: int = Field(30, ge=1, le=365)
    min_notice_hours: int = Field(2, ge=0, le=24 * 14)
    offer: int = Field(3, ge=1, le=9)  # slots offered per prompt
    cancel_notice_hours: int = Field(24, ge=0, le=24 * 14)


class SchedulingFile(ConfigModel):
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
            for visit_name in provider.visit_types:
                if visit_name not in self.visit_types:
                    raise ValueError(f"providers.{name}.visit_types: unknown visit type "
                                     f"{visit_name!r}")
        return self
