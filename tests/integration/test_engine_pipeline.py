"""The conversation engine in the real pipeline (workers, store, outbox, portal mailbox)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from bot.app.runtime import Runtime
from bot.config.loader import Config
from bot.config.settings import Settings
from bot.core.session import SessionState
from bot.core.tickets import Priority
from bot.engine.routing import window_text
from tests.conftest import run_workers_until
from tests.integration.test_pipeline import mailbox, portal_message, replies


@pytest.fixture
async def engine_runtime(config: Config, settings: Settings) -> AsyncIterator[Runtime]:
    runtime = Runtime.build(config, settings)  # the default decision step: the engine
    yield runtime
    await runtime.close()


async def send(runtime: Runtime, text: str, number: int, *, patient: str = "P1001") -> None:
    await runtime.ingress.submit(portal_message(text, client_id=f"t{number}", patient=patient))
    await run_workers_until(runtime, replies(number, runtime, patient), timeout=30)


def emergencies_counted() -> float:
    return REGISTRY.get_sample_value("patientbot_nlu_verdicts_total",
                                     {"safety": "emergency", "lane": "clinical"}) or 0.0


async def test_a_third_party_emergency_gets_the_script_and_an_emergency_ticket(
        engine_runtime: Runtime, config: Config) -> None:
    before = emergencies_counted()
    await send(engine_runtime, "my dad is slurring his words and his face looks droopy", 1)

    assert emergencies_counted() == before + 1
    # The emergency script comes first and alone: no introduction before it.
    assert await mailbox(engine_runtime) == [config.text("emergency_script", "en")]
    [ticket] = await engine_runtime.store.tickets_in_lane("clinical")
    assert ticket.priority is Priority.EMERGENCY and ticket.reason == "emergency"
    assert ticket.note.page == config.queues["clinical"].on_call_owner
    assert "safety emergency" in ticket.note.triage
    assert "slurring" not in ticket.note.triage  # codes only, never patient text


async def test_the_first_reply_introduces_the_bot_then_a_script_starts(
        engine_runtime: Runtime, config: Config) -> None:
    await send(engine_runtime, "hi there", 1, patient="P1002")
    await send(engine_runtime, "Can you send a copy of my medical records to my new doctor?", 2,
               patient="P1002")

    greeting, question = await mailbox(engine_runtime, "P1002")
    intro = config.text("bot_intro", "en").replace("{organisation}", config.app.organisation)
    assert greeting == f"{intro} {config.text('greeting_reply', 'en')}"
    assert question == config.scripts["records"].steps[0].ask.prompt.en
    session = await engine_runtime.store.get_session(
        engine_runtime.ingress.conversation_key("portal", "P1002"))
    assert session.state is SessionState.IN_SCRIPT  # the signed-in portal is strong identity
    assert await engine_runtime.store.tickets_in_lane("records") == []


async def test_spanish_clinical_message_is_answered_in_spanish_and_never_scripted(
        engine_runtime: Runtime, config: Config) -> None:
    await send(engine_runtime, "Hola, tengo fiebre y tos desde hace tres días, ¿qué hago?", 1,
               patient="P1003")

    [reply] = await mailbox(engine_runtime, "P1003")
    [ticket] = await engine_runtime.store.tickets_in_lane("clinical")
    assert ticket.reason == "clinical" and ticket.note.language == "es"
    assert window_text(config, ticket.note.callback_window, "es") in reply
    session = await engine_runtime.store.get_session(
        engine_runtime.ingress.conversation_key("portal", "P1003"))
    assert session.language == "es"


async def test_an_emergency_in_a_handed_off_conversation_still_pages_clinical(
        engine_runtime: Runtime, config: Config) -> None:
    await send(engine_runtime, "can I talk to a real person please", 1)
    await send(engine_runtime, "also I took the whole bottle of my sleeping pills", 2)

    [person] = await engine_runtime.store.tickets_in_lane("front_desk")
    [urgent] = await engine_runtime.store.tickets_in_lane("clinical")
    assert urgent.priority is Priority.EMERGENCY and person.id != urgent.id
    assert (await mailbox(engine_runtime))[-1] == config.text("emergency_script", "en")
    session = await engine_runtime.store.get_session(
        engine_runtime.ingress.conversation_key("portal", "P1001"))
    assert session.state is SessionState.HANDED_OFF and session.open_ticket_id == urgent.id


async def test_repeated_out_of_scope_messages_go_to_the_front_desk(
        engine_runtime: Runtime, config: Config) -> None:
    await send(engine_runtime, "who won the football game last night?", 1)
    assert await engine_runtime.store.tickets_in_lane("front_desk") == []
    await send(engine_runtime, "whats the best pizza place downtown", 2)

    assert config.text("out_of_scope_reply", "en") in (await mailbox(engine_runtime))[0]
    [ticket] = await engine_runtime.store.tickets_in_lane("front_desk")
    assert ticket.reason == "not_understood_repeatedly"


async def test_identity_checks_and_appointment_changes_are_audited(
        engine_runtime: Runtime) -> None:
    """An SMS patient verifies, books and then cancels: every PHI read and write is in the
    tamper-evident audit log, as codes and ids only."""
    from bot.core.envelopes import Inbound

    texts = ["I'd like to book a flu shot", "Maria Lopez", "03/12/1984", "next wednesday", "1"]
    for number, text in enumerate(texts, 1):
        entry = await engine_runtime.ingress.submit(Inbound(
            channel="sms", sender="+16175550101", provider_message_id=f"SMa{number}",
            text=text))
        await engine_runtime.pipeline.handle(entry)
    actions = [entry.event.action for entry in await engine_runtime.audit.entries()]
    assert "identity.verified" in actions
    assert "appointment.booked" in actions
    assert "script.completed" in actions
    assert (await engine_runtime.audit.verify()).ok
    for entry in await engine_runtime.audit.entries():
        assert "Maria" not in entry.event.ref and "1984" not in entry.event.ref
