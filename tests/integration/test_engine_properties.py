"""Properties of the engine with the real NLU, over generated conversation states and times.

- No message the safety screen marks clinical or emergency ever gets a script answer.
- Every handoff has an owner and a callback window (and a due time).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config.loader import Config, load_config
from bot.core.crypto import load_key_material
from bot.core.envelopes import ConversationKey, Inbound
from bot.core.session import IdentityStatus, Session, SessionState
from bot.engine.decision import Decision
from bot.engine.engine import FIELD, IDENTITY, SCRIPT, Engine
from bot.store.memory import MemoryStore
from nlu.base import SafetyLevel
from nlu.data import read_heldout
from nlu.service import NluService
from tests.conftest import CONFIG_DIR, key_env

START = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)  # a Monday, before opening in New York
SAFE_CODES = {"emergency", "clinical", "relay", "duplicate_message"}
SAMPLE_ANSWERS = {"visit_type": "flu_shot", "date": "2026-12-09", "option": "0", "yes_no": "yes",
                  "number": "3", "email": "a@example.org", "account": "88412345"}
SAMPLE_OPTION = {"id": "b1", "provider": "nurse_clinic", "visit_type": "flu_shot",
                 "start": "2026-12-21T09:00:00-05:00", "end": "2026-12-21T09:15:00-05:00",
                 "location": "main"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Engine, dict[str, list]]:
    config = load_config(CONFIG_DIR)
    keys = load_key_material(key_env(), tmp_path_factory.mktemp("keys"))
    store = MemoryStore(keys.sealer, keys.hasher)
    nlu = NluService.shared(config)
    engine = Engine.build(config, store=store, keys=keys, nlu=nlu)
    texts = [example.text for example in read_heldout(config.project_root / "nlu/data/test")]
    results = nlu.parse_batch(texts, now=START)
    by_safety: dict[str, list] = {"flagged": [], "any": texts}
    by_safety["flagged"] = [r.text for r in results if r.safety is not SafetyLevel.NONE]
    return config, engine, by_safety


@st.composite
def conversation(draw: st.DrawFn, config: Config) -> Session:
    session = Session(key=ConversationKey("sms", "prop"), sender="+16175550101",
                      language=draw(st.sampled_from(["en", "es"])))
    state = draw(st.sampled_from(list(SessionState)))
    session.state = state
    if draw(st.booleans()):
        session.identity = IdentityStatus.VERIFIED
        session.identity_verified_at = START
        session.patient_id = "P1001"
        session.slots["identity.level"] = draw(st.sampled_from(["basic", "strong", "portal"]))
    if state is SessionState.HANDED_OFF:
        session.open_ticket_id = "t-open"
    elif state is SessionState.AWAITING_IDENTITY:
        session.slots.update({IDENTITY + "step": draw(st.sampled_from(["name", "dob"])),
                              IDENTITY + "name": "Maria Lopez",
                              "pending.intent": "schedule_appointment",
                              "pending.text": "book a physical"})
    elif state is SessionState.IN_SCRIPT:
        scripts = sorted(name for name, script in config.scripts.items()
                         if any(step.ask for step in script.steps))
        script = config.scripts[draw(st.sampled_from(scripts))]
        asks = [step for step in script.steps if step.ask]
        waiting = draw(st.sampled_from(asks))
        # A state the runner can reach: every earlier question answered plausibly.
        # (and what earlier actions set: the options listed, the selected visit)
        fields = {FIELD + "_options": json.dumps([SAMPLE_OPTION]),
                  FIELD + "_selected": json.dumps(SAMPLE_OPTION), FIELD + "visit_type": "flu_shot",
                  FIELD + "visit_type_name": "flu shot", FIELD + "appointment": "Monday"}
        for step in asks[:asks.index(waiting)]:
            fields[FIELD + step.ask.slot] = SAMPLE_ANSWERS.get(step.ask.kind, "sample")
        session.slots.update({SCRIPT + "id": script.id, SCRIPT + "step": waiting.id,
                              SCRIPT + "attempts": "0",
                              SCRIPT + "intent": next(
                                  (i for i, s in config.intents.items() if s.script == script.id),
                                  "schedule_appointment"),
                              **fields})
    return session


async def decide_drawn(world, data: st.DataObject, pool: str) -> tuple[str, Session, Decision]:
    """Draw a message from `pool`, a conversation state and a time; decide."""
    config, engine, texts = world
    text = data.draw(st.sampled_from(texts[pool]))
    session = data.draw(conversation(config))
    at = START + timedelta(minutes=data.draw(st.integers(0, 14 * 24 * 60)))
    message = Inbound(channel="sms", sender="+16175550101", provider_message_id="p1",
                      text=text, received_at=at)
    return text, session, await engine.decide(message, session, now=at)


PROPERTY = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@PROPERTY
@given(data=st.data())
async def test_clinical_and_emergency_messages_never_get_a_script_answer(world, data) -> None:
    text, session, decision = await decide_drawn(world, data, "flagged")
    assert decision.code in SAFE_CODES, (text, session.state, decision.code)
    if decision.handoff:
        assert decision.handoff.lane == "clinical"
        assert decision.state is SessionState.HANDED_OFF


@PROPERTY
@given(data=st.data())
async def test_every_handoff_has_an_owner_and_a_callback_window(world, data) -> None:
    config = world[0]
    _, _, decision = await decide_drawn(world, data, "any")
    if decision.handoff:
        note = decision.handoff.note
        assert note.owner and note.callback_window and note.callback_due, decision.code
        assert decision.handoff.lane in config.queues
        assert decision.replies, "the patient is always told what happens next"
