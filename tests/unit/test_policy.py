"""The policy as a pure function: rule order, and properties over generated inputs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.config.loader import Config
from bot.core.envelopes import ConversationKey
from bot.core.session import IdentityStatus, Session, SessionState
from bot.engine.policy import (
    CONTACTS_SLOT,
    DUPLICATE_SLOT,
    OUT_OF_SCOPE_SLOT,
    Kind,
    decide,
    message_fingerprint,
)
from nlu.base import ParseResult, SafetyLevel

NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)
SCRIPT_ANSWERS = {Kind.SCRIPT_ANSWER, Kind.START_SCRIPT, Kind.IDENTITY_ANSWER, Kind.VERIFY,
                  Kind.SOCIAL, Kind.OUT_OF_SCOPE, Kind.SWITCH_LANGUAGE}


def parse(text: str = "I need to book a physical", intent: str = "schedule_appointment", *,
          confidence: float = 0.9, safety: SafetyLevel = SafetyLevel.NONE,
          language: str = "en") -> ParseResult:
    return ParseResult(text=text, intent=intent, confidence=confidence, safety=safety,
                       safety_cues=(), language=language, entities=(), lane=None)


def session(state: SessionState = SessionState.ACTIVE, **slots: str) -> Session:
    result = Session(key=ConversationKey("sms", "h1"), sender="+16175550101", state=state)
    result.slots.update(slots)
    if state is SessionState.HANDED_OFF:
        result.open_ticket_id = "t1"
    if state is SessionState.IN_SCRIPT:
        result.slots.update({"script.id": "schedule", "script.step": "preferred_date"})
    return result


def verified(level: str = "basic", at: datetime = NOW) -> Session:
    result = session()
    result.identity = IdentityStatus.VERIFIED
    result.identity_verified_at = at
    result.patient_id = "P1001"
    result.slots["identity.level"] = level
    return result


def test_emergency_wins_in_every_state(config: Config) -> None:
    for state in SessionState:
        verdict = decide(parse("my dad can't breathe", "symptom_report",
                               safety=SafetyLevel.EMERGENCY), session(state), config, NOW)
        assert verdict.kind is Kind.EMERGENCY
        assert verdict.lane == "clinical"


def test_clinical_stops_a_script_and_identity_check(config: Config) -> None:
    for state in (SessionState.IN_SCRIPT, SessionState.AWAITING_IDENTITY, SessionState.ACTIVE):
        verdict = decide(parse("also my knee is swollen", "schedule_appointment",
                               safety=SafetyLevel.CLINICAL), session(state), config, NOW)
        assert verdict.kind is Kind.CLINICAL and verdict.lane == "clinical"


def test_handed_off_conversations_relay_but_emergencies_still_page(config: Config) -> None:
    handed_off = session(SessionState.HANDED_OFF)
    assert decide(parse(), handed_off, config, NOW).kind is Kind.RELAY
    assert decide(parse("chest pain", safety=SafetyLevel.EMERGENCY), handed_off, config,
                  NOW).kind is Kind.EMERGENCY


def test_identity_is_required_before_a_script_that_needs_it(config: Config) -> None:
    assert decide(parse(), session(), config, NOW).kind is Kind.VERIFY
    assert decide(parse(), verified(), config, NOW).kind is Kind.START_SCRIPT
    # care navigation needs no identity check
    assert decide(parse("where do I park", "care_navigation"), session(), config,
                  NOW).kind is Kind.START_SCRIPT


def test_verification_expires(config: Config) -> None:
    lasts = timedelta(minutes=config.policy.identity.verified_minutes)
    assert decide(parse(), verified(at=NOW - lasts + timedelta(minutes=1)), config,
                  NOW).kind is Kind.START_SCRIPT
    assert decide(parse(), verified(at=NOW - lasts - timedelta(minutes=1)), config,
                  NOW).kind is Kind.VERIFY


def test_strong_identity_needs_more_than_name_and_birth_date(config: Config) -> None:
    records = parse("send my records to my new doctor", "records_request")
    assert decide(records, verified("basic"), config, NOW).kind is Kind.VERIFY
    assert decide(records, verified("strong"), config, NOW).kind is Kind.START_SCRIPT
    assert decide(records, verified("portal"), config, NOW).kind is Kind.START_SCRIPT


def test_a_request_for_a_person_is_honoured_at_once(config: Config) -> None:
    verdict = decide(parse("can I talk to a real person please", "human_agent"), session(),
                     config, NOW)
    assert verdict.kind is Kind.HUMAN and verdict.lane == "front_desk"


def test_mid_question_a_bare_answer_is_not_taken_for_a_new_request(config: Config) -> None:
    waiting = session(SessionState.IN_SCRIPT)
    waiting.slots.update({"script.step": "choose", "field._options": json.dumps([{}, {}])})
    # "1" misread as a request for a person at fair confidence: still an answer
    assert decide(parse("1", "human_agent", confidence=0.7), waiting, config,
                  NOW).kind is Kind.SCRIPT_ANSWER
    assert decide(parse("please let me talk to a person", "human_agent", confidence=0.9),
                  waiting, config, NOW).kind is Kind.HUMAN


def test_upset_wording_and_repeat_contacts_go_to_patient_experience(config: Config) -> None:
    verdict = decide(parse("This is the third time I'm asking about my bill",
                           "billing_question"), session(), config, NOW)
    assert verdict.kind is Kind.UPSET and verdict.lane == "patient_experience"
    contacts = json.dumps({"billing_question": [(NOW - timedelta(hours=5)).isoformat(),
                                                (NOW - timedelta(hours=1)).isoformat()]})
    assert decide(parse("question about my bill", "billing_question"),
                  session(**{CONTACTS_SLOT: contacts}), config, NOW).kind is Kind.UPSET
    old = json.dumps({"billing_question": [(NOW - timedelta(days=10)).isoformat(),
                                           (NOW - timedelta(days=9)).isoformat()]})
    assert decide(parse("question about my bill", "billing_question"),
                  session(**{CONTACTS_SLOT: old}), config, NOW).kind is Kind.VERIFY


def test_upset_route_to_supervisor_keeps_the_lane(config: Config) -> None:
    policy = config.policy.model_copy(update={"upset": config.policy.upset.model_copy(
        update={"route": "supervisor"})})
    supervised = config.model_copy(update={"policy": policy})
    verdict = decide(parse("I'm so frustrated, nobody answers about my refill",
                           "refill_request"), session(), supervised, NOW)
    assert verdict.kind is Kind.UPSET
    assert verdict.lane == "pharmacy" and verdict.supervisor_owns


def test_identical_messages_within_the_window_are_not_processed_twice(config: Config) -> None:
    text = "I need to book a physical"
    record = f"{message_fingerprint(text)}|{(NOW - timedelta(seconds=30)).isoformat()}|0"
    assert decide(parse(text), session(**{DUPLICATE_SLOT: record}), config,
                  NOW).kind is Kind.DUPLICATE
    later = NOW + timedelta(seconds=config.policy.duplicate_window_seconds + 1)
    assert decide(parse(text), session(**{DUPLICATE_SLOT: record}), config,
                  later).kind is not Kind.DUPLICATE
    # a repeated answer ("yes", "yes") may answer the next question
    answered = f"{message_fingerprint('yes')}|{NOW.isoformat()}|1"
    assert decide(parse("yes", "thanks"), session(**{DUPLICATE_SLOT: answered}), config,
                  NOW).kind is not Kind.DUPLICATE


def test_out_of_scope_is_explained_then_handed_to_front_desk(config: Config) -> None:
    unclear = parse("what's the weather on mars", "out_of_scope", confidence=0.2)
    assert decide(unclear, session(), config, NOW).kind is Kind.OUT_OF_SCOPE
    verdict = decide(unclear, session(**{OUT_OF_SCOPE_SLOT: "1"}), config, NOW)
    assert verdict.kind is Kind.HANDOFF and verdict.lane == "front_desk"


def test_language_help_switches_to_a_supported_language(config: Config) -> None:
    verdict = decide(parse("do you speak spanish?", "language_assistance"), session(), config,
                     NOW)
    assert verdict.kind is Kind.SWITCH_LANGUAGE and verdict.language == "es"
    verdict = decide(parse("do you have a Portuguese interpreter", "language_assistance",
                           language="pt"), session(), config, NOW)
    assert verdict.kind is Kind.HANDOFF and verdict.lane == "interpreter"


# --- properties --------------------------------------------------------------------------

@st.composite
def sessions(draw: st.DrawFn) -> Session:
    state = draw(st.sampled_from(list(SessionState)))
    result = session(state)
    if draw(st.booleans()):
        result.identity = IdentityStatus.VERIFIED
        result.identity_verified_at = NOW - timedelta(minutes=draw(st.integers(0, 500)))
        result.slots["identity.level"] = draw(st.sampled_from(["basic", "strong", "portal"]))
    if draw(st.booleans()):
        result.slots[OUT_OF_SCOPE_SLOT] = str(draw(st.integers(0, 5)))
    return result


def parses(config: Config, safety: st.SearchStrategy[SafetyLevel]) -> st.SearchStrategy:
    return st.builds(parse, text=st.text(min_size=1, max_size=80),
                     intent=st.sampled_from(sorted(config.intents)),
                     confidence=st.floats(0, 1), safety=safety,
                     language=st.sampled_from(["en", "es", "fr"]))


@pytest.fixture(scope="module")
def module_config() -> Config:
    from bot.config.loader import load_config
    from tests.conftest import CONFIG_DIR

    return load_config(CONFIG_DIR)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_clinical_or_emergency_never_gets_a_script_answer(module_config: Config,
                                                          data: st.DataObject) -> None:
    message = data.draw(parses(module_config, st.sampled_from(
        [SafetyLevel.CLINICAL, SafetyLevel.EMERGENCY])))
    conversation = data.draw(sessions())
    when = NOW + timedelta(hours=data.draw(st.integers(0, 24 * 14)))
    verdict = decide(message, conversation, module_config, when)
    assert verdict.kind not in SCRIPT_ANSWERS
    if message.safety is SafetyLevel.EMERGENCY:
        assert verdict.kind is Kind.EMERGENCY
    else:
        assert verdict.kind in (Kind.CLINICAL, Kind.RELAY)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(data=st.data())
def test_every_handoff_verdict_names_a_known_lane(module_config: Config,
                                                  data: st.DataObject) -> None:
    message = data.draw(parses(module_config, st.sampled_from(list(SafetyLevel))))
    verdict = decide(message, data.draw(sessions()), module_config, NOW)
    if verdict.kind in (Kind.EMERGENCY, Kind.CLINICAL, Kind.HUMAN, Kind.UPSET, Kind.HANDOFF,
                        Kind.VERIFY, Kind.START_SCRIPT):
        assert verdict.lane in module_config.queues
