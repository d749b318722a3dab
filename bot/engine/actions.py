"""Built-in actions that approved scripts may call, by name.

Each action reads and writes the conversation's collected fields (`ActionContext.fields`)
and returns an outcome name the script maps to its next step. Fields starting with `_` are
working data (offered times, the selected appointment) and never shown or put in notes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, time
from zoneinfo import ZoneInfo

from bot.config.loader import Config
from bot.core.errors import PatientbotError
from bot.engine.answers import OPTIONS_FIELD
from bot.engine.coverage import Coverage
from bot.engine.knowledge import KnowledgeBase
from bot.engine.scheduling import Booking, Scheduler, Slot

OPTIONS_ARE_PHI = "_options_phi"  # the listed options are the patient's own appointments
SELECTED_FIELD = "_selected"  # the booking an appointment script works on


@dataclass(slots=True)
class ActionContext:
    config: Config
    language: str
    now: datetime
    patient_id: str | None
    fields: dict[str, str]
    request_text: str = ""  # the message that started the script
    extra: dict[str, str] = field(default_factory=dict)  # {team}, {window}, {organisation}
    # PHI reads, writes and disclosures for the audit log: (action, booking id or count).
    audit: list[tuple[str, str]] = field(default_factory=list)

    def values(self) -> dict[str, str]:
        """What `{name}` placeholders may show: collected fields and engine values."""
        shown = {k: v for k, v in self.fields.items() if not k.startswith("_")}
        return {**shown, **self.extra}


Action = Callable[[ActionContext], Awaitable[str]]


class ActionError(PatientbotError):
    """An action could not run (no verified patient, unknown action): the engine hands off."""


class Actions:
    """The registry scripts call into; the names are the scripts' contract."""

    def __init__(self, config: Config, scheduler: Scheduler, coverage: Coverage,
                 knowledge: KnowledgeBase) -> None:
        self._config = config
        self._scheduler = scheduler
        self._coverage = coverage
        self._knowledge = knowledge
        self._zone = ZoneInfo(config.scheduling.timezone or config.app.timezone)
        self._registry: dict[str, Action] = {
            "scheduling.check_visit_type": self._check_visit_type,
            "scheduling.offer_slots": self._offer_slots,
            "scheduling.book": self._book,
            "scheduling.list_appointments": self._list_appointments,
            "scheduling.select_appointment": self._select_appointment,
            "scheduling.cancel": self._cancel,
            "scheduling.reschedule": self._reschedule,
            "scheduling.describe_appointment": self._describe_appointment,
            "knowledge.answer": self._knowledge_answer,
        }

    @property
    def names(self) -> list[str]:
        return sorted(self._registry)

    async def run(self, name: str, ctx: ActionContext) -> str:
        action = self._registry.get(name)
        if action is None:
            raise ActionError(f"unknown action {name!r}")
        return await action(ctx)

    # --- helpers ---------------------------------------------------------------------------
    def _when(self, at: datetime, language: str) -> str:
        return self._coverage.format_when(at.astimezone(self._zone), language)

    def _describe(self, ctx: ActionContext, visit_type: str, provider: str, location: str,
                  start: datetime) -> None:
        """Fill the display fields of one appointment from approved scheduling text."""
        scheduling = self._config.scheduling
        visit = scheduling.visit_types[visit_type]
        place = scheduling.locations[location]
        ctx.fields.update({
            "visit_type": visit_type,
            "visit_type_name": visit.name.get(ctx.language),
            "appointment": f"{self._when(start, ctx.language)}, "
                           f"{scheduling.providers[provider].name}",
            "location_name": place.name.get(ctx.language),
            "address": place.address.get(ctx.language),
            "preparation": visit.preparation.get(ctx.language),
            "next_steps": visit.next_steps.get(ctx.language),
        })

    def _patient(self, ctx: ActionContext) -> str:
        if not ctx.patient_id:
            raise ActionError("appointment actions need a verified patient")
        return ctx.patient_id

    def _chosen_slot(self, ctx: ActionContext) -> Slot | None:
        options = json.loads(ctx.fields.get(OPTIONS_FIELD) or "[]")
        index = int(ctx.fields.get("choice", "-1"))
        if not 0 <= index < len(options):
            return None
        data = options[index]
        return Slot(data["provider"], data["visit_type"], datetime.fromisoformat(data["start"]),
                    datetime.fromisoformat(data["end"]), data["location"])

    def _list_options(self, ctx: ActionContext, items: list[tuple[str, dict[str, str]]], *,
                      patients_own: bool) -> None:
        ctx.fields[OPTIONS_FIELD] = json.dumps([data for _, data in items])
        ctx.fields[OPTIONS_ARE_PHI] = "1" if patients_own else "0"
        ctx.fields["options"] = "\n".join(f"{n}) {label}" for n, (label, _) in
                                          enumerate(items, 1))

    def _selected(self, ctx: ActionContext) -> dict[str, str]:
        selected = ctx.fields.get(SELECTED_FIELD)
        if not selected:
            raise ActionError("no appointment selected")
        return json.loads(selected)

    # --- scheduling ------------------------------------------------------------------------
    async def _check_visit_type(self, ctx: ActionContext) -> str:
        visit = self._config.scheduling.visit_types[ctx.fields["visit_type"]]
        return "review_required" if visit.review_required else "bookable"

    async def _offer_slots(self, ctx: ActionContext) -> str:
        after = None
        if ctx.fields.get("preferred_date"):
            day = datetime.fromisoformat(ctx.fields["preferred_date"]).date()
            after = datetime.combine(day, time(0), self._zone)
        slots = await self._scheduler.open_slots(
            ctx.fields["visit_type"], now=ctx.now, after=after,
            limit=self._config.scheduling.booking.offer)
        if not slots:
            return "none"
        providers = self._config.scheduling.providers
        self._list_options(ctx, [
            (f"{self._when(s.start, ctx.language)}, {providers[s.provider].name}",
             {"provider": s.provider, "visit_type": s.visit_type, "start": s.start.isoformat(),
              "end": s.end.isoformat(), "location": s.location}) for s in slots],
            patients_own=False)
        return "offered"

    async def _book(self, ctx: ActionContext) -> str:
        slot = self._chosen_slot(ctx)
        booking = await self._scheduler.book(self._patient(ctx), slot, now=ctx.now) \
            if slot else None
        if booking is None:
            ctx.fields.pop("choice", None)
            return "taken"
        self._describe(ctx, booking.visit_type, booking.provider, booking.location,
                       booking.start)
        ctx.fields["booking_ref"] = booking.id
        ctx.audit.append(("appointment.booked", booking.id))
        return "booked"

    def _select(self, ctx: ActionContext, booking: dict[str, str]) -> None:
        ctx.fields[SELECTED_FIELD] = json.dumps(booking)
        self._describe(ctx, booking["visit_type"], booking["provider"], booking["location"],
                       datetime.fromisoformat(booking["start"]))

    async def _list_appointments(self, ctx: ActionContext) -> str:
        bookings = await self._scheduler.appointments(self._patient(ctx), now=ctx.now)
        ctx.audit.append(("appointment.read", str(len(bookings))))
        if not bookings:
            return "none"
        items = [(self._booking_label(b, ctx.language), _booking_data(b)) for b in bookings]
        self._list_options(ctx, items, patients_own=True)
        if len(bookings) == 1:
            self._select(ctx, items[0][1])
            return "one"
        return "many"

    def _booking_label(self, booking: Booking, language: str) -> str:
        visit = self._config.scheduling.visit_types[booking.visit_type]
        return f"{visit.name.get(language)}, {self._when(booking.start, language)}"

    async def _select_appointment(self, ctx: ActionContext) -> str:
        options = json.loads(ctx.fields.get(OPTIONS_FIELD) or "[]")
        index = int(ctx.fields.get("appointment_choice", "-1"))
        if not 0 <= index < len(options):
            raise ActionError("no appointment chosen")
        self._select(ctx, options[index])
        return "selected"

    async def _cancel(self, ctx: ActionContext) -> str:
        booking = self._selected(ctx)
        notice = self._config.scheduling.booking.cancel_notice_hours * 3600
        if (datetime.fromisoformat(booking["start"]) - ctx.now).total_seconds() < notice:
            return "too_late"
        done = await self._scheduler.cancel(self._patient(ctx), booking["id"], now=ctx.now)
        if done:
            ctx.audit.append(("appointment.cancelled", booking["id"]))
        return "cancelled" if done else "failed"

    async def _reschedule(self, ctx: ActionContext) -> str:
        booking = self._selected(ctx)
        slot = self._chosen_slot(ctx)
        moved = await self._scheduler.reschedule(self._patient(ctx), booking["id"], slot,
                                                 now=ctx.now) if slot else None
        if moved is None:
            ctx.fields.pop("choice", None)
            return "taken"
        self._select(ctx, _booking_data(moved))
        ctx.fields["booking_ref"] = moved.id
        ctx.audit.append(("appointment.rescheduled", moved.id))
        return "rescheduled"

    async def _describe_appointment(self, ctx: ActionContext) -> str:
        selected = self._selected(ctx)
        self._select(ctx, selected)
        ctx.audit.append(("appointment.disclosed", selected["id"]))
        return "ok"

    # --- knowledge -------------------------------------------------------------------------
    async def _knowledge_answer(self, ctx: ActionContext) -> str:
        entry = self._knowledge.find(ctx.request_text)
        if entry is None:
            return "no_match"
        ctx.fields["answer"] = entry.answer.get(ctx.language)
        ctx.fields["_knowledge_id"] = entry.id
        return "answered"


def _booking_data(booking: Booking) -> dict[str, str]:
    return {"id": booking.id, "provider": booking.provider, "visit_type": booking.visit_type,
            "start": booking.start.isoformat(), "location": booking.location}
