"""Appointment booking: the `Scheduler` protocol and its embedded, Store-backed implementation.

The embedded scheduler keeps bookings in the Store, so every web and worker process shares
them. Time is claimed per provider in cells of the template grid (`slot_minutes`): a booking
claims every cell its visit overlaps with one atomic `Store.kv_create_all`, so two overlapping
bookings can never both succeed, even across processes. Each patient's own list of bookings
lives under a keyed hash of the patient id (never the id itself, in keys, locks or logs).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import structlog

from bot.config.base import parse_ranges
from bot.config.scheduling import SchedulingFile
from bot.core.crypto import Hasher
from bot.store import Store

log = structlog.get_logger("patientbot.scheduling")

BookingStatus = Literal["booked", "cancelled", "rescheduled"]

CELLS = "slot"  # namespace of claimed grid cells: "<provider>:<cell start epoch>"
LISTS = "appointments"  # namespace of each patient's bookings, by keyed hash
KEEP_AFTER = timedelta(days=1)  # how long cells and lists outlive the appointment


@dataclass(frozen=True, slots=True)
class Slot:
    """A bookable time of one provider for one visit type (aware datetimes, [start, end))."""

    provider: str
    visit_type: str
    start: datetime
    end: datetime
    location: str


@dataclass(frozen=True, slots=True)
class Booking:
    """A patient's appointment. `patient_ref` is a keyed hash, never the patient id."""

    id: str
    patient_ref: str
    provider: str
    visit_type: str
    start: datetime
    end: datetime
    location: str
    status: BookingStatus = "booked"

    @property
    def slot(self) -> Slot:
        return Slot(self.provider, self.visit_type, self.start, self.end, self.location)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "patient_ref": self.patient_ref, "provider": self.provider,
                "visit_type": self.visit_type, "start": self.start.isoformat(),
                "end": self.end.isoformat(), "location": self.location, "status": self.status}

    @classmethod
    def from_dict(cls, data: dict[str, Any], tz: ZoneInfo) -> Booking:
        return cls(id=data["id"], patient_ref=data["patient_ref"], provider=data["provider"],
                   visit_type=data["visit_type"],
                   start=datetime.fromisoformat(data["start"]).astimezone(tz),
                   end=datetime.fromisoformat(data["end"]).astimezone(tz),
                   location=data["location"], status=data["status"])


class Scheduler(Protocol):
    """Booking backend used by the scheduling scripts. Every method is safe to call from many
    tasks and processes at once; `now` is passed in so callers (and tests) own the clock.

    Review-required visit types are never offered or booked here (they go to the scheduling
    team). The late-cancellation rule (`booking.cancel_notice_hours`) is the caller's to
    apply, because a late request goes to a person rather than being refused.
    """

    async def open_slots(self, visit_type: str, *, now: datetime, after: datetime | None = None,
                         limit: int, provider: str | None = None) -> list[Slot]:
        """Up to `limit` free slots for `visit_type`, earliest first (ties by provider).

        Only slots starting at least `min_notice_hours` after `now`, on a day at most
        `horizon_days` after today, strictly after `after` when given (for "later times"),
        off holidays, and not overlapping any booking. Unknown or review-required visit
        types have no slots.
        """

    async def book(self, patient_id: str, slot: Slot, *, now: datetime) -> Booking | None:
        """Book `slot` for the patient. None when its time was taken meanwhile or the slot
        is no longer valid (not offered, too soon, past the horizon, holiday)."""

    async def appointments(self, patient_id: str, *, now: datetime) -> list[Booking]:
        """The patient's booked appointments that have not started yet, earliest first."""

    async def cancel(self, patient_id: str, booking_id: str, *, now: datetime) -> bool:
        """Cancel one of the patient's upcoming bookings and free its time. False when the
        booking is unknown, not the patient's, already cancelled or already started."""

    async def reschedule(self, patient_id: str, booking_id: str, slot: Slot, *,
                         now: datetime) -> Booking | None:
        """Move a booking: the new slot is booked first, then the old time is freed. None
        (and the old booking untouched) when the new time is taken or invalid, or the old
        booking cannot be cancelled."""


class HolidayCalendar(Protocol):
    """What the scheduler needs from `bot.engine.coverage.Coverage`."""

    def holiday(self, schedule: str, day: date) -> str | None:
        """The holiday's name when `schedule` is closed for a holiday on `day`."""


class EmbeddedScheduler:
    """Scheduler over config/scheduling.yml calendars, with bookings kept in the Store."""

    def __init__(self, scheduling: SchedulingFile, coverage: HolidayCalendar | None,
                 store: Store, hasher: Hasher, *, default_timezone: str) -> None:
        self._cfg = scheduling
        self._coverage = coverage
        self._store = store
        self._hasher = hasher
        self._tz = ZoneInfo(scheduling.timezone or default_timezone)

    # --- calendar -------------------------------------------------------------------------

    def _bookable(self, visit_type: str, provider: str) -> bool:
        visit = self._cfg.visit_types.get(visit_type)
        doc = self._cfg.providers.get(provider)
        return (visit is not None and not visit.review_required and doc is not None
                and visit_type in doc.visit_types)

    def _closed(self, provider: str, day: date) -> bool:
        template = self._cfg.templates[self._cfg.providers[provider].template]
        return (self._coverage is not None and template.schedule is not None
                and self._coverage.holiday(template.schedule, day) is not None)

    def _day_slots(self, provider: str, visit_type: str, day: date) -> list[Slot]:
        """Every slot of the provider's template on `day`: starts on the grid, and the whole
        visit fits inside one range. Bookings and notice are not considered here."""
        if not self._bookable(visit_type, provider) or self._closed(provider, day):
            return []
        doc = self._cfg.providers[provider]
        template = self._cfg.templates[doc.template]
        step = timedelta(minutes=template.slot_minutes)
        length = timedelta(minutes=self._cfg.visit_types[visit_type].minutes)
        slots = []
        for first, last in parse_ranges(template.day(day.weekday())):
            # Step in UTC so the grid stays exact on daylight-saving days.
            start = datetime.combine(day, first, self._tz).astimezone(UTC)
            end = (datetime.combine(day, last, self._tz) if last is not None else
                   datetime.combine(day + timedelta(days=1), time(0), self._tz))
            while start + length <= end:
                slots.append(Slot(provider, visit_type, start.astimezone(self._tz),
                                  (start + length).astimezone(self._tz), doc.location))
                start += step
        return slots

    def _cells(self, slot: Slot) -> list[str]:
        """Ids of the grid cells the visit overlaps (its start is on the grid)."""
        template = self._cfg.templates[self._cfg.providers[slot.provider].template]
        step = timedelta(minutes=template.slot_minutes)
        cells, cell = [], slot.start
        while cell < slot.end:
            cells.append(f"{slot.provider}:{int(cell.timestamp())}")
            cell += step
        return cells

    def _in_window(self, slot: Slot, now: datetime) -> bool:
        """Respects the minimum notice and the booking horizon."""
        today = now.astimezone(self._tz).date()
        last_day = today + timedelta(days=self._cfg.booking.horizon_days)
        return (slot.start >= now + timedelta(hours=self._cfg.booking.min_notice_hours)
                and slot.start.astimezone(self._tz).date() <= last_day)

    def _valid(self, slot: Slot, now: datetime) -> bool:
        if slot.provider not in self._cfg.providers or not self._in_window(slot, now):
            return False
        day = slot.start.astimezone(self._tz).date()
        return slot in self._day_slots(slot.provider, slot.visit_type, day)

    # --- storage --------------------------------------------------------------------------

    def _ref(self, patient_id: str) -> str:
        return self._hasher.digest(patient_id, purpose="appointments")

    async def _load(self, ref: str) -> list[Booking]:
        data = await self._store.kv_get(LISTS, ref)
        return [Booking.from_dict(item, self._tz) for item in (data or {}).get("bookings", [])]

    async def _save(self, ref: str, bookings: list[Booking], now: datetime) -> None:
        """Keep bookings until a while after they end; the list lives as long as its last."""
        kept = [b for b in bookings if b.end + KEEP_AFTER > now]
        if not kept:
            await self._store.kv_delete(LISTS, ref)
            return
        ttl = (max(b.end for b in kept) + KEEP_AFTER - now).total_seconds()
        await self._store.kv_set(LISTS, ref, {"bookings": [b.to_dict() for b in kept]}, ttl=ttl)

    async def _claim(self, cells: list[str], booking: Booking, now: datetime) -> bool:
        """All of the cells for `booking`, or none of them (False: some time is taken)."""
        value = {"booking": booking.id, "patient_ref": booking.patient_ref}
        ttl = (booking.end + KEEP_AFTER - now).total_seconds()
        return await self._store.kv_create_all(CELLS, cells, value, ttl=ttl)

    async def _free(self, cells: list[str], booking_id: str) -> None:
        """Free cells still held by `booking_id` (an expired cell may be someone else's)."""
        for cell in cells:
            held = await self._store.kv_get(CELLS, cell)
            if held is not None and held.get("booking") == booking_id:
                await self._store.kv_delete(CELLS, cell)

    async def _hand_over(self, cells: list[str], booking: Booking, now: datetime) -> None:
        """Point cells this patient already holds at `booking`."""
        value = {"booking": booking.id, "patient_ref": booking.patient_ref}
        ttl = (booking.end + KEEP_AFTER - now).total_seconds()
        for cell in cells:
            await self._store.kv_set(CELLS, cell, value, ttl=ttl)

    def _new_booking(self, ref: str, slot: Slot) -> Booking:
        return Booking(id=secrets.token_hex(8), patient_ref=ref, provider=slot.provider,
                       visit_type=slot.visit_type, start=slot.start, end=slot.end,
                       location=slot.location)

    # --- Scheduler --------------------------------------------------------------------------

    async def open_slots(self, visit_type: str, *, now: datetime, after: datetime | None = None,
                         limit: int, provider: str | None = None) -> list[Slot]:
        providers = [p for p in self._cfg.providers
                     if (provider is None or p == provider) and self._bookable(visit_type, p)]
        found: list[Slot] = []
        today = now.astimezone(self._tz).date()
        for offset in range(self._cfg.booking.horizon_days + 1):
            day = today + timedelta(days=offset)
            candidates = sorted((s for p in providers for s in self._day_slots(p, visit_type, day)
                                 if (after is None or s.start > after) and self._in_window(s, now)),
                                key=lambda s: (s.start, s.provider))
            # One round trip per day for every cell the day's candidates cover.
            taken = await self._store.kv_existing(
                CELLS, sorted({cell for slot in candidates for cell in self._cells(slot)}))
            for slot in candidates:
                if not taken.intersection(self._cells(slot)):
                    found.append(slot)
                    if len(found) >= limit:
                        return found
        return found

    async def book(self, patient_id: str, slot: Slot, *, now: datetime) -> Booking | None:
        if not self._valid(slot, now):
            return None
        ref = self._ref(patient_id)
        booking = self._new_booking(ref, slot)
        # The lock keeps one patient's concurrent changes from overwriting each other's list.
        async with self._store.lock(f"{LISTS}:{ref}"):
            cells = self._cells(slot)
            if not await self._claim(cells, booking, now):
                log.info("booking_refused", reason="taken", provider=slot.provider,
                         visit_type=slot.visit_type)
                return None
            try:
                await self._save(ref, [*await self._load(ref), booking], now)
            except BaseException:
                await self._free(cells, booking.id)  # do not leave time blocked by nobody
                raise
        log.info("booked", booking_id=booking.id, provider=slot.provider,
                 visit_type=slot.visit_type)
        return booking

    async def appointments(self, patient_id: str, *, now: datetime) -> list[Booking]:
        bookings = await self._load(self._ref(patient_id))
        return sorted((b for b in bookings if b.status == "booked" and b.start > now),
                      key=lambda b: (b.start, b.provider))

    async def cancel(self, patient_id: str, booking_id: str, *, now: datetime) -> bool:
        ref = self._ref(patient_id)
        async with self._store.lock(f"{LISTS}:{ref}"):
            bookings = await self._load(ref)
            old = _upcoming(bookings, booking_id, now)
            if old is None:
                return False
            await self._save(ref, _with(bookings, replace(old, status="cancelled")), now)
            await self._free(self._cells(old.slot), old.id)
        log.info("booking_cancelled", booking_id=booking_id)
        return True

    async def reschedule(self, patient_id: str, booking_id: str, slot: Slot, *,
                         now: datetime) -> Booking | None:
        if not self._valid(slot, now):
            return None
        ref = self._ref(patient_id)
        async with self._store.lock(f"{LISTS}:{ref}"):
            bookings = await self._load(ref)
            old = _upcoming(bookings, booking_id, now)
            if old is None:
                return None
            new = self._new_booking(ref, slot)
            old_cells, new_cells = self._cells(old.slot), self._cells(slot)
            # Cells the old booking already holds are handed over, not claimed again, so a
            # visit can move by less than its own length.
            shared = [c for c in new_cells if c in old_cells]
            fresh = [c for c in new_cells if c not in old_cells]
            if not await self._claim(fresh, new, now):
                log.info("reschedule_refused", reason="taken", booking_id=booking_id)
                return None
            try:
                await self._hand_over(shared, new, now)
                await self._save(ref, [*_with(bookings, replace(old, status="rescheduled")),
                                       new], now)
            except BaseException:
                # Leave the old booking as it was and free what the new one took.
                await self._hand_over(shared, old, now)
                await self._free(fresh, new.id)
                raise
            await self._free([c for c in old_cells if c not in new_cells], old.id)
        log.info("booking_rescheduled", booking_id=booking_id, new_booking_id=new.id)
        return new


def _upcoming(bookings: list[Booking], booking_id: str, now: datetime) -> Booking | None:
    """The booking if it is still booked and has not started."""
    return next((b for b in bookings
                 if b.id == booking_id and b.status == "booked" and b.start > now), None)


def _with(bookings: list[Booking], changed: Booking) -> list[Booking]:
    return [changed if b.id == changed.id else b for b in bookings]
