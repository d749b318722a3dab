"""Identity matching (embedded directory) and handoff routing (owners, hours, windows)."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from bot.config.loader import Config
from bot.core.crypto import KeyMaterial
from bot.core.tickets import Priority
from bot.engine.coverage import Coverage
from bot.engine.identity import EncryptedPatientDirectory
from bot.engine.routing import route, window_text

NEW_YORK = ZoneInfo("America/New_York")


def directory(config: Config, keys: KeyMaterial) -> EncryptedPatientDirectory:
    return EncryptedPatientDirectory(config.patients, keys.sealer, keys.hasher)


async def test_names_match_whatever_the_case_accents_and_spacing(config: Config,
                                                                 keys: KeyMaterial) -> None:
    patients = directory(config, keys)
    for name in ("Maria Lopez", "  maría   LÓPEZ ", "MARIA LOPEZ."):
        found = await patients.match(name, date(1984, 3, 12))
        assert found is not None and found.patient_id == "P1001"
    hoa = await patients.match("Nguyen Thi Hoa", date(1992, 7, 25))
    assert hoa is not None and hoa.patient_id == "P1003"
    assert await patients.match("James O Connor", date(1959, 11, 2)) is None  # not the name
    assert (await patients.match("James OConnor", date(1959, 11, 2))).patient_id == "P1002"


async def test_a_wrong_date_or_an_unknown_person_finds_nothing(config: Config,
                                                               keys: KeyMaterial) -> None:
    patients = directory(config, keys)
    assert await patients.match("Maria Lopez", date(1984, 12, 3)) is None
    assert await patients.match("Nobody Here", date(1984, 3, 12)) is None
    assert await patients.get("P9999") is None
    assert (await patients.get("P1001")).patient_id == "P1001"


async def test_records_are_held_sealed(config: Config, keys: KeyMaterial) -> None:
    patients = directory(config, keys)
    held = repr(vars(patients) if hasattr(patients, "__dict__") else
                {slot: getattr(patients, slot) for slot in patients.__slots__}).lower()
    for clear in ("maria", "lopez", "1984-03-12", "6175550101", "example.org"):
        assert clear not in held


async def test_strong_identity_compares_the_channel_address_with_the_record(
        config: Config, keys: KeyMaterial) -> None:
    maria = await directory(config, keys).match("Maria Lopez", date(1984, 3, 12))
    assert maria.owns_address("sms", "+1 (617) 555-0101")
    assert maria.owns_address("email", "Maria.Lopez@Example.org")
    assert not maria.owns_address("sms", "+16175550199")
    assert not maria.owns_address("telegram", "+16175550101")  # no address to compare


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=NEW_YORK)


def test_open_lanes_promise_their_window_and_name_owner_and_escalation(config: Config) -> None:
    coverage = Coverage.from_config(config)
    billing = route(config, coverage, "billing", now=at("2026-12-07T10:00"))
    queue = config.queues["billing"]
    assert (billing.owner, billing.escalation) == (queue.owner,
                                                   (queue.backup_owner, queue.supervisor))
    assert billing.window == queue.callback_window and not billing.after_hours
    assert billing.due > at("2026-12-07T10:00")


def test_after_hours_a_lane_waits_for_opening_or_passes_to_on_call(config: Config) -> None:
    coverage = Coverage.from_config(config)
    friday_night = at("2026-12-11T21:00")
    billing = route(config, coverage, "billing", now=friday_night)
    assert billing.after_hours and not billing.on_call
    assert billing.opens == at("2026-12-14T08:00")  # Monday morning
    clinical = route(config, coverage, "clinical", now=friday_night)
    assert clinical.on_call and clinical.owner == config.queues["clinical"].on_call_owner
    assert clinical.window == config.queues["clinical"].on_call_callback_window
    christmas = route(config, coverage, "scheduling", now=at("2026-12-25T10:00"))
    assert christmas.after_hours and christmas.opens == at("2026-12-28T08:00")


def test_emergencies_page_the_on_call_owner_at_any_hour(config: Config) -> None:
    coverage = Coverage.from_config(config)
    queue = config.queues["clinical"]
    for when in ("2026-12-07T10:00", "2026-12-12T03:00"):
        emergency = route(config, coverage, "clinical", now=at(when),
                          priority=Priority.EMERGENCY)
        assert emergency.page == queue.on_call_owner
        assert emergency.window == queue.on_call_callback_window


def test_supervisor_route_and_intent_overrides(config: Config) -> None:
    coverage = Coverage.from_config(config)
    upset = route(config, coverage, "pharmacy", now=at("2026-12-07T10:00"),
                  supervisor_owns=True)
    assert upset.owner == config.queues["pharmacy"].supervisor
    intents = {**config.intents, "billing_question": config.intents["billing_question"]
               .model_copy(update={"callback_window": "3 hours",
                                   "escalation_owner": "Revenue cycle lead"})}
    custom = config.model_copy(update={"intents": intents})
    billing = route(custom, coverage, "billing", now=at("2026-12-07T10:00"),
                    intent="billing_question")
    assert (billing.owner, billing.window) == ("Revenue cycle lead", "3 hours")


def test_callback_windows_read_naturally_in_both_languages(config: Config) -> None:
    assert window_text(config, "1 business day", "en") == "within 1 business day"
    assert window_text(config, "2 business days", "en") == "within 2 business days"
    assert window_text(config, "4 business hours", "es") == "en un plazo de 4 horas hábiles"
    assert window_text(config, "1 hours", "es") == "en un plazo de 1 hora"
