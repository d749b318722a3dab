"""NLU triage in the real pipeline: every inbound message is read by the NLU and routed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from bot.config import Config
from bot.runtime import Runtime
from bot.session import SessionState
from bot.settings import Settings
from bot.triage import NluTriage
from handoff.tickets import Priority
from tests.conftest import run_workers_until
from tests.integration.test_pipeline import mailbox, portal_message, replies


@pytest.fixture
async def triage_runtime(config: Config, settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime.build(config, settings, decision_step=NluTriage)
    yield runtime
    await runtime.close()


async def send(runtime: Runtime, text: str, number: int, *, patient: str = "P1001") -> None:
    await runtime.ingress.submit(portal_message(text, client_id=f"t{number}", patient=patient))
    await run_workers_until(runtime, replies(number, runtime, patient), timeout=30)


def emergencies_counted() -> float:
    return REGISTRY.get_sample_value("patientbot_nlu_verdicts_total",
                                     {"safety": "emergency", "lane": "clinical"}) or 0.0


async def test_a_third_party_emergency_gets_the_script_and_an_urgent_clinical_handoff(
        triage_runtime: Runtime, config: Config) -> None:
    before = emergencies_counted()
    await send(triage_runtime, "my dad is slurring his words and his face looks droopy", 1)

    assert emergencies_counted() == before + 1
    assert await mailbox(triage_runtime) == [config.text("emergency_script", "en")]
    [ticket] = await triage_runtime.store.tickets_in_lane("clinical")
    assert ticket.priority is Priority.URGENT
    assert ticket.reason == "emergency"
    assert "safety emergency" in ticket.note.triage
    assert "slurring" not in ticket.note.triage  # codes only, never patient text


async def test_routine_requests_go_to_their_lane_and_social_messages_get_a_short_reply(
        triage_runtime: Runtime, config: Config) -> None:
    await send(triage_runtime, "hi there", 1, patient="P1002")
    await send(triage_runtime, "Can you send a copy of my medical records to my new doctor?", 2,
               patient="P1002")

    team = config.queues["records"].name_for_patients("en")
    assert await mailbox(triage_runtime, "P1002") == [
        config.text("greeting_reply", "en"),
        config.text("lane_ack", "en").replace("{team}", team)]
    [ticket] = await triage_runtime.store.tickets_in_lane("records")
    assert ticket.note.contact_reason == "records_request"
    assert ticket.priority is Priority.NORMAL


async def test_spanish_clinical_message_is_answered_in_spanish_and_never_scripted(
        triage_runtime: Runtime, config: Config) -> None:
    await send(triage_runtime, "Hola, tengo fiebre y tos desde hace tres días, ¿qué hago?", 1,
               patient="P1003")

    assert await mailbox(triage_runtime, "P1003") == [config.text("clinical_ack", "es")]
    [ticket] = await triage_runtime.store.tickets_in_lane("clinical")
    assert ticket.reason == "clinical"
    session = await triage_runtime.store.get_session(
        triage_runtime.ingress.conversation_key("portal", "P1003"))
    assert session.language == "es"


async def test_an_emergency_in_a_handed_off_conversation_still_pages_clinical(
        triage_runtime: Runtime, config: Config) -> None:
    await send(triage_runtime, "I have a question about my bill from October", 1)
    await send(triage_runtime, "also I took the whole bottle of my sleeping pills", 2)

    [billing] = await triage_runtime.store.tickets_in_lane("billing")
    [urgent] = await triage_runtime.store.tickets_in_lane("clinical")
    assert urgent.priority is Priority.URGENT and billing.id != urgent.id
    assert (await mailbox(triage_runtime))[-1] == config.text("emergency_script", "en")
    session = await triage_runtime.store.get_session(
        triage_runtime.ingress.conversation_key("portal", "P1001"))
    assert session.state is SessionState.HANDED_OFF and session.open_ticket_id == urgent.id


async def test_repeated_out_of_scope_messages_go_to_the_front_desk(
        triage_runtime: Runtime, config: Config) -> None:
    await send(triage_runtime, "who won the football game last night?", 1)
    assert await triage_runtime.store.tickets_in_lane("front_desk") == []
    await send(triage_runtime, "whats the best pizza place downtown", 2)

    assert (await mailbox(triage_runtime))[0] == config.text("out_of_scope_reply", "en")
    [ticket] = await triage_runtime.store.tickets_in_lane("front_desk")
    assert ticket.reason == "out_of_scope_handoff"
