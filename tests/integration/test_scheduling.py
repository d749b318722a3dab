"""EmbeddedScheduler over both stores (MemoryStore and RedisStore on real Redis).

The clock is fixed: Monday 2026-12-07 08:00 in New York, with the shipped calendars
(config/scheduling.yml): 2 hours' notice, a 30-day horizon, clinic days on a 30-minute grid.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from bot.config.base import parse_ranges
from bot.config.scheduling import SchedulingFile
from bot.core.crypto import KeyMaterial
from bot.engine.scheduling import Booking, EmbeddedScheduler, Slot
from bot.store.redis import RedisStore

pytestmark = pytest.mark.redis_store

CONFIG = Path(__file__).resolve().parents[2] / "config"
TZ = ZoneInfo("America/New_York")
NOW = datetime(2026, 12, 7, 8, 0, tzinfo=TZ)  # a Monday
LIMIT = 10_000  # "every slot"


def scheduling_file(**visit_changes: dict[str, Any]) -> SchedulingFile:
    """The shipped scheduling.yml, with changes to named visit types."""
    data = yaml.safe_load((CONFIG / "scheduling.yml").read_text())
    for name, changes in visit_changes.items():
        data["visit_types"][name].update(changes)
    return SchedulingFile.model_validate(data)


# The shipped 60-minute visit types are review-required; these tests let the bot book one.
BOOKABLE_NEW_PATIENT = {"new_patient": {"review_required": False}}


@pytest.fixture
def scheduler(store, keys: KeyMaterial) -> EmbeddedScheduler:
    return EmbeddedScheduler(scheduling_file(**BOOKABLE_NEW_PATIENT), None, store, keys.hasher,
                             default_timezone="America/New_York")


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=TZ)


def slot(visit_type: str, start: datetime, *, minutes: int, provider: str = "dr_patel",
         location: str = "main") -> Slot:
    return Slot(provider, visit_type, start, start + timedelta(minutes=minutes), location)


def physical(start: datetime, provider: str = "dr_patel") -> Slot:
    return slot("annual_physical", start, minutes=30, provider=provider)


def new_patient(start: datetime) -> Slot:
    return slot("new_patient", start, minutes=60)


def follow_up(start: datetime) -> Slot:
    return slot("follow_up", start, minutes=20)


def overlaps(a: Booking | Slot, b: Booking | Slot) -> bool:
    return a.provider == b.provider and a.start < b.end and b.start < a.end


# --- offering slots ----------------------------------------------------------------------

async def test_slots_are_on_the_grid_within_hours_notice_and_horizon(scheduler) -> None:
    cfg = scheduling_file()
    for visit_type, visit in cfg.visit_types.items():
        if visit.review_required:
            continue
        slots = await scheduler.open_slots(visit_type, now=NOW, limit=LIMIT)
        assert slots, visit_type
        assert [s.start for s in slots] == sorted(s.start for s in slots)
        for s in slots:
            provider = cfg.providers[s.provider]
            template = cfg.templates[provider.template]
            assert visit_type in provider.visit_types and s.location == provider.location
            assert s.end - s.start == timedelta(minutes=visit.minutes)
            assert s.start >= NOW + timedelta(hours=2)
            local = s.start.astimezone(TZ)
            assert local.date() <= NOW.date() + timedelta(days=30)
            fits = []
            for first, last in parse_ranges(template.day(local.weekday())):
                begin = datetime.combine(local.date(), first, TZ)
                end = datetime.combine(local.date(), last or time(23, 59, 59), TZ)
                on_grid = (s.start - begin) % timedelta(minutes=template.slot_minutes)
                fits.append(begin <= s.start and s.end <= end and not on_grid)
            assert any(fits), s
        assert max(s.start for s in slots).date() >= NOW.date() + timedelta(days=28)

    first = await scheduler.open_slots("annual_physical", now=NOW, limit=3)
    assert first == [physical(at(7, 10)), physical(at(7, 10), "dr_romero"),
                     physical(at(7, 10, 30))]


async def test_slots_page_with_after_and_filter_by_provider(scheduler) -> None:
    page = await scheduler.open_slots("annual_physical", now=NOW, limit=2, provider="dr_romero")
    assert page == [physical(at(7, 10), "dr_romero"), physical(at(7, 10, 30), "dr_romero")]
    later = await scheduler.open_slots("annual_physical", now=NOW, limit=2, provider="dr_romero",
                                       after=page[-1].start)
    assert [s.start for s in later] == [at(7, 11), at(7, 11, 30)]
    # A 60-minute visit must fit inside one range: 11:00 is the last start before lunch.
    morning = await scheduler.open_slots("new_patient", now=NOW, limit=3, provider="dr_patel")
    assert [s.start for s in morning] == [at(7, 10), at(7, 10, 30), at(7, 11)]
    assert [s.start for s in await scheduler.open_slots(
        "new_patient", now=NOW, limit=1, provider="dr_patel", after=at(7, 11))] == [at(7, 13)]


async def test_review_required_and_unknown_visit_types_are_never_offered(store, keys) -> None:
    shipped = EmbeddedScheduler(scheduling_file(), None, store, keys.hasher,
                                default_timezone="America/New_York")
    assert await shipped.open_slots("new_patient", now=NOW, limit=5) == []
    assert await shipped.open_slots("no_such_visit", now=NOW, limit=5) == []
    assert await shipped.open_slots("flu_shot", now=NOW, limit=5, provider="dr_patel") == []
    assert await shipped.book("MRN-1", new_patient(at(8, 10)), now=NOW) is None


async def test_invalid_slots_are_not_booked(scheduler) -> None:
    assert await scheduler.book("MRN-1", physical(at(7, 9)), now=NOW) is None  # too soon
    assert await scheduler.book("MRN-1", physical(at(7, 10, 10)), now=NOW) is None  # off grid
    assert await scheduler.book("MRN-1", physical(at(7, 12)), now=NOW) is None  # lunch
    assert await scheduler.book("MRN-1", physical(at(12, 10)), now=NOW) is None  # Saturday
    beyond = datetime(2027, 1, 7, 10, tzinfo=TZ)  # a Thursday 31 days ahead
    assert await scheduler.book("MRN-1", physical(beyond), now=NOW) is None
    assert await scheduler.book("MRN-1", physical(beyond - timedelta(days=1)), now=NOW)
    wrong_length = Slot("dr_patel", "annual_physical", at(8, 10), at(8, 11), "main")
    assert await scheduler.book("MRN-1", wrong_length, now=NOW) is None
    assert await scheduler.book("MRN-1", slot("flu_shot", at(8, 10), minutes=10), now=NOW) \
        is None  # dr_patel gives no flu shots
    assert await scheduler.appointments("MRN-1", now=NOW) != []


# --- booking -----------------------------------------------------------------------------

async def test_overlapping_visits_of_different_lengths_cannot_both_be_booked(scheduler) -> None:
    long = await scheduler.book("MRN-1", new_patient(at(8, 10)), now=NOW)  # 10:00-11:00
    assert long is not None
    assert await scheduler.book("MRN-2", physical(at(8, 10, 30)), now=NOW) is None
    assert await scheduler.book("MRN-2", follow_up(at(8, 10)), now=NOW) is None
    assert await scheduler.book("MRN-2", physical(at(8, 11)), now=NOW) is not None
    assert await scheduler.book("MRN-3", physical(at(8, 10, 30), "dr_romero"), now=NOW)

    short = await scheduler.book("MRN-4", physical(at(9, 10, 30)), now=NOW)
    assert short is not None
    assert await scheduler.book("MRN-5", new_patient(at(9, 10)), now=NOW) is None
    assert await scheduler.book("MRN-5", new_patient(at(9, 10, 30)), now=NOW) is None
    assert await scheduler.book("MRN-5", new_patient(at(9, 11)), now=NOW) is not None
    offered = await scheduler.open_slots("annual_physical", now=NOW, limit=LIMIT,
                                         provider="dr_patel")
    assert not any(overlaps(s, b) for s in offered for b in (long, short))
    assert physical(at(8, 9, 30)) in offered  # right before the long visit


async def test_book_appointments_cancel_round_trip(scheduler) -> None:
    later = await scheduler.book("MRN-1", physical(at(9, 13)), now=NOW)
    sooner = await scheduler.book("MRN-1", follow_up(at(8, 9, 30)), now=NOW)
    assert later and sooner
    assert sooner.patient_ref == later.patient_ref and "MRN-1" not in sooner.patient_ref
    assert sooner.status == "booked" and sooner.location == "main"
    assert await scheduler.appointments("MRN-1", now=NOW) == [sooner, later]
    assert await scheduler.appointments("MRN-2", now=NOW) == []
    # Past appointments are no longer listed.
    assert await scheduler.appointments("MRN-1", now=at(8, 12)) == [later]

    assert not await scheduler.cancel("MRN-2", later.id, now=NOW)  # not theirs
    assert not await scheduler.cancel("MRN-1", "unknown", now=NOW)
    assert not await scheduler.cancel("MRN-1", sooner.id, now=at(8, 9, 45))  # started
    assert await scheduler.cancel("MRN-1", later.id, now=NOW)
    assert not await scheduler.cancel("MRN-1", later.id, now=NOW)  # already cancelled
    assert await scheduler.appointments("MRN-1", now=NOW) == [sooner]

    # The cancelled time is bookable again, by anyone, also for an overlapping visit type.
    assert physical(at(9, 13)) in await scheduler.open_slots(
        "annual_physical", now=NOW, limit=LIMIT, provider="dr_patel")
    again = await scheduler.book("MRN-2", follow_up(at(9, 13)), now=NOW)
    assert again is not None
    assert await scheduler.appointments("MRN-2", now=NOW) == [again]


async def test_reschedule_moves_the_booking_and_frees_the_old_time(scheduler) -> None:
    old = await scheduler.book("MRN-1", physical(at(8, 10)), now=NOW)
    assert old is not None
    moved = await scheduler.reschedule("MRN-1", old.id, physical(at(10, 14)), now=NOW)
    assert moved is not None and moved.id != old.id and moved.start == at(10, 14)
    assert await scheduler.appointments("MRN-1", now=NOW) == [moved]
    assert not await scheduler.cancel("MRN-1", old.id, now=NOW)
    assert await scheduler.book("MRN-2", physical(at(8, 10)), now=NOW) is not None
    assert await scheduler.book("MRN-2", physical(at(10, 14)), now=NOW) is None
    assert await scheduler.reschedule("MRN-2", moved.id, physical(at(11, 10)), now=NOW) is None


async def test_reschedule_keeps_the_old_booking_when_the_new_time_is_taken(scheduler) -> None:
    mine = await scheduler.book("MRN-1", physical(at(8, 10)), now=NOW)
    theirs = await scheduler.book("MRN-2", follow_up(at(8, 11)), now=NOW)
    assert mine and theirs
    assert await scheduler.reschedule("MRN-1", mine.id, physical(at(8, 11)), now=NOW) is None
    assert await scheduler.reschedule("MRN-1", mine.id, physical(at(8, 12)), now=NOW) is None
    assert await scheduler.appointments("MRN-1", now=NOW) == [mine]
    assert await scheduler.book("MRN-3", follow_up(at(8, 10)), now=NOW) is None  # still held
    assert await scheduler.cancel("MRN-1", mine.id, now=NOW)


async def test_reschedule_by_less_than_the_visit_length(scheduler) -> None:
    old = await scheduler.book("MRN-1", new_patient(at(8, 10)), now=NOW)  # 10:00-11:00
    assert old is not None
    moved = await scheduler.reschedule("MRN-1", old.id, new_patient(at(8, 10, 30)), now=NOW)
    assert moved is not None  # 10:30-11:30 shares the 10:30 cell with the old booking
    assert await scheduler.book("MRN-2", physical(at(8, 10)), now=NOW) is not None
    assert await scheduler.book("MRN-2", physical(at(8, 10, 30)), now=NOW) is None
    assert await scheduler.book("MRN-2", physical(at(8, 11)), now=NOW) is None
    assert await scheduler.cancel("MRN-1", moved.id, now=NOW)
    assert await scheduler.book("MRN-3", physical(at(8, 10, 30)), now=NOW) is not None


# --- concurrency -------------------------------------------------------------------------

async def test_forty_patients_racing_for_one_slot_get_exactly_one_booking(scheduler) -> None:
    target = physical(at(8, 10))
    patients = [f"MRN-{n:04d}" for n in range(40)]
    results = await asyncio.gather(*(scheduler.book(p, target, now=NOW) for p in patients))
    won = [r for r in results if r is not None]
    assert len(won) == 1 and won[0].slot == target
    listed = await asyncio.gather(*(scheduler.appointments(p, now=NOW) for p in patients))
    assert [b for bookings in listed for b in bookings] == won
    assert target not in await scheduler.open_slots("annual_physical", now=NOW, limit=LIMIT)


async def test_racing_overlapping_visit_types_never_double_book(scheduler) -> None:
    candidates = [new_patient(at(8, 10)), new_patient(at(8, 10, 30)), new_patient(at(8, 11)),
                  physical(at(8, 10)), physical(at(8, 10, 30)), physical(at(8, 11)),
                  physical(at(8, 11, 30)), follow_up(at(8, 10)), follow_up(at(8, 11))]
    attempts = [(f"MRN-{n:04d}", candidates[n % len(candidates)]) for n in range(45)]
    results = await asyncio.gather(*(scheduler.book(p, s, now=NOW) for p, s in attempts))
    won = [r for r in results if r is not None]
    assert won
    assert not any(overlaps(a, b) for i, a in enumerate(won) for b in won[i + 1:])
    # Every loser lost to a winner that overlaps it.
    for (_, wanted), result in zip(attempts, results, strict=True):
        if result is None:
            assert any(overlaps(wanted, b) for b in won)
    listed = await asyncio.gather(*(scheduler.appointments(p, now=NOW) for p, _ in attempts))
    assert sorted(b.id for bookings in listed for b in bookings) == sorted(b.id for b in won)


async def test_one_patient_booking_ten_slots_in_parallel_keeps_them_all(scheduler) -> None:
    weekdays = (8, 9, 10, 11, 14)
    wanted = [physical(at(weekdays[n % 5], 10 + n // 5)) for n in range(10)]
    results = await asyncio.gather(*(scheduler.book("MRN-1", s, now=NOW) for s in wanted))
    assert all(results)
    listed = await scheduler.appointments("MRN-1", now=NOW)
    assert sorted(b.id for b in listed) == sorted(b.id for b in results if b)
    assert sorted(b.start for b in listed) == sorted(s.start for s in wanted)
    # Cancelling them all in parallel loses none either.
    cancelled = await asyncio.gather(*(scheduler.cancel("MRN-1", b.id, now=NOW)
                                       for b in listed))
    assert all(cancelled) and await scheduler.appointments("MRN-1", now=NOW) == []


# --- holidays and PHI --------------------------------------------------------------------

async def test_holidays_close_the_calendar(store, keys) -> None:
    coverage_module = pytest.importorskip("bot.engine.coverage")
    from bot.config.coverage import CoverageFile

    coverage_file = CoverageFile.model_validate(
        yaml.safe_load((CONFIG / "coverage.yml").read_text()))
    coverage = coverage_module.Coverage(coverage_file, "America/New_York")
    with_holidays = EmbeddedScheduler(scheduling_file(), coverage, store, keys.hasher,
                                      default_timezone="America/New_York")
    without = EmbeddedScheduler(scheduling_file(), None, store, keys.hasher,
                                default_timezone="America/New_York")
    closed = {date(2026, 12, 24), date(2026, 12, 25), date(2027, 1, 1)}
    days = {s.start.date() for s in await with_holidays.open_slots("annual_physical", now=NOW,
                                                                   limit=LIMIT)}
    assert not days & closed and date(2026, 12, 23) in days
    days = {s.start.date() for s in await without.open_slots("annual_physical", now=NOW,
                                                            limit=LIMIT)}
    assert closed <= days
    christmas_eve = physical(datetime(2026, 12, 24, 10, tzinfo=TZ))
    assert await with_holidays.book("MRN-1", christmas_eve, now=NOW) is None


async def test_no_key_name_or_stored_value_contains_the_patient_id(
        keys: KeyMaterial, redis_client, prefix: str) -> None:
    store = RedisStore(redis_client, keys.sealer, keys.hasher, prefix=prefix)
    scheduler = EmbeddedScheduler(scheduling_file(), None, store, keys.hasher,
                                  default_timezone="America/New_York")
    patient = "MRN-55501234"
    booking = await scheduler.book(patient, physical(at(8, 10)), now=NOW)
    assert booking is not None
    moved = await scheduler.reschedule(patient, booking.id, physical(at(9, 10)), now=NOW)
    assert moved is not None
    await scheduler.book(patient, follow_up(at(10, 10)), now=NOW)
    names = [key async for key in redis_client.scan_iter(match=f"{prefix}:*")]
    assert any(b":kv:slot:" in key for key in names)
    assert any(b":kv:appointments:" in key for key in names)
    for key in names:
        assert patient.encode() not in key
        if await redis_client.type(key) == b"string":
            assert patient.encode() not in await redis_client.get(key)
