"""The policy: what happens to one parsed message, as a pure function.

`decide(parse, session, config, now)` returns one `Verdict`; the engine carries it out
(identity look-ups, script steps, notes). The order of the rules is the product's safety
contract:

1. emergency -> emergency script, page, priority clinical handoff: in any state, at any hour
2. conversation already with a person -> relay to the open ticket (every message reaches
   the agent, repeats included)
3. the same text again within the duplicate window -> not processed twice
4. clinical (the safety screen, or a clinical contact reason outside a question) -> clinical
   lane; stops any identity check or script
5. a request for a person -> honoured at once
6. upset wording or repeat contacts about the same thing -> patient experience / supervisor
7. an identity check or script in progress -> the message answers it
8. social messages, out of scope, then the contact reason's flow
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache

from bot.config.loader import Config
from bot.core.session import IdentityStatus, Session, SessionState
from bot.engine.answers import read_answer
from nlu.base import OUT_OF_SCOPE, ParseResult, SafetyLevel
from nlu.lexicon import PatternSet, normalise_patterns, sentences
from nlu.text import fold_words

SOCIAL = {"greeting": "greeting_reply", "thanks": "thanks_reply", "goodbye": "goodbye_reply"}
HUMAN_AGENT = "human_agent"
LANGUAGE_ASSISTANCE = "language_assistance"
FRONT_DESK = "front_desk"
CLINICAL = "clinical"
# Words naming a language the bot speaks, in a request for language help.
LANGUAGE_NAMES = {"es": ("spanish", "espanol", "castellano"), "en": ("english", "ingles")}
# Words that add nothing to an answer: "si, por favor" says no more than "si".
COURTESY = frozenset({"please", "pls", "thanks", "thank", "you", "ok", "okay", "por", "favor",
                      "gracias"})

# Session slots the policy reads (the engine writes them).
DUPLICATE_SLOT = "policy.last_message"
OUT_OF_SCOPE_SLOT = "policy.out_of_scope"
CONTACTS_SLOT = "policy.contacts"
IDENTITY_LEVEL_SLOT = "identity.level"


class Kind(StrEnum):
    EMERGENCY = "emergency"
    DUPLICATE = "duplicate_message"
    RELAY = "relay"
    CLINICAL = "clinical"
    HUMAN = "human_request"
    UPSET = "upset"
    IDENTITY_ANSWER = "identity_answer"
    SCRIPT_ANSWER = "script_answer"
    SOCIAL = "social"
    SWITCH_LANGUAGE = "switch_language"
    OUT_OF_SCOPE = "out_of_scope"
    HANDOFF = "routed"  # the contact reason's lane, no script
    VERIFY = "verify_identity"  # the flow needs an identity check first
    START_SCRIPT = "start_script"


@dataclass(frozen=True, slots=True)
class Verdict:
    kind: Kind
    intent: str
    lane: str | None = None
    reason: str = ""
    template: str = ""  # the patient-facing template for replies and handoffs
    language: str | None = None  # switch the conversation to this language
    supervisor_owns: bool = False


def message_fingerprint(text: str) -> str:
    """Identifies a repeated message (compared within one conversation; sealed at rest)."""
    return hashlib.sha256(" ".join(text.casefold().split()).encode()).hexdigest()[:24]


def is_duplicate(session: Session, text: str, now: datetime, window_seconds: int) -> bool:
    """The same text again within the window, unless the first one answered a question (a
    second "yes" may answer the next question)."""
    raw = session.slots.get(DUPLICATE_SLOT)
    if not raw or window_seconds <= 0:
        return False
    fingerprint, at, answered = raw.split("|")
    return (fingerprint == message_fingerprint(text) and answered == "0"
            and now - datetime.fromisoformat(at) <= timedelta(seconds=window_seconds))


def identity_level(session: Session, config: Config, now: datetime) -> str:
    """'none', 'basic', 'strong' or 'portal', honouring the verification's expiry."""
    if session.identity is not IdentityStatus.VERIFIED or not session.identity_verified_at:
        return "none"
    level = session.slots.get(IDENTITY_LEVEL_SLOT) or "portal"
    if level == "portal":
        return level  # the portal session itself expires; the pipeline re-applies it
    lasts = timedelta(minutes=config.policy.identity.verified_minutes)
    return level if now - session.identity_verified_at <= lasts else "none"


def satisfies(level: str, required: str) -> bool:
    if required == "none":
        return True
    if required == "basic":
        return level in ("basic", "strong", "portal")
    return level in ("strong", "portal")


@lru_cache(maxsize=8)
def _upset_patterns(en: tuple[str, ...], es: tuple[str, ...]) -> PatternSet[str]:
    entries = [(p, "en") for p in normalise_patterns(en)] + \
        [(p, "es") for p in normalise_patterns(es)]
    return PatternSet(entries)


def upset_wording(config: Config, text: str) -> bool:
    upset = config.policy.upset
    patterns = _upset_patterns(tuple(upset.en), tuple(upset.es))
    return any(patterns.search(tokens) for tokens in sentences(text))


def recent_contacts(session: Session, intent: str, now: datetime, hours: int) -> int:
    """How often this contact reason was raised in this conversation within `hours`."""
    contacts: dict[str, list[str]] = json.loads(session.slots.get(CONTACTS_SLOT) or "{}")
    since = now - timedelta(hours=hours)
    return sum(1 for at in contacts.get(intent, []) if datetime.fromisoformat(at) >= since)


def requested_language(parse: ParseResult, config: Config) -> str | None:
    text = parse.text.casefold().replace("ñ", "n")
    for language, names in LANGUAGE_NAMES.items():
        if language in config.messages and any(name in text for name in names):
            return language
    return parse.language if parse.language in config.messages else None


def answering_question(session: Session) -> bool:
    return session.state in (SessionState.AWAITING_IDENTITY, SessionState.IN_SCRIPT)


def answer_fits(parse: ParseResult, session: Session, config: Config) -> bool:
    """Whether the message is a valid answer to the question the bot is waiting on."""
    if session.state is SessionState.AWAITING_IDENTITY:
        if session.slots.get("identity.step") == "dob":
            return any(e.entity in ("date", "date_of_birth") for e in parse.entities)
        return any(c.isalpha() for c in parse.text)
    script = config.scripts.get(session.slots.get("script.id", ""))
    step = script.step(session.slots["script.step"]) if script else None
    if step is None or step.ask is None:
        return False
    fields = {k.removeprefix("field."): v for k, v in session.slots.items()
              if k.startswith("field.")}
    return read_answer(step.ask, parse.text, parse, fields,
                       scheduling=config.scheduling) is not None


def _expects_words(session: Session, config: Config) -> bool:
    """Whether the question takes free words (a name, a description) rather than a yes/no,
    a number, a date or a choice."""
    if session.state is SessionState.AWAITING_IDENTITY:
        return session.slots.get("identity.step") != "dob"
    script = config.scripts.get(session.slots.get("script.id", ""))
    step = script.step(session.slots["script.step"]) if script else None
    return step is None or step.ask is None or step.ask.kind in ("text", "medication",
                                                                  "pharmacy")


def _interrupts(parse: ParseResult, session: Session, config: Config) -> bool:
    """Mid-question, a new request interrupts when the message does not answer the question,
    or when it is a confident request of a few words (a bare "1", a date or, to a yes/no
    question, "si, por favor" says little)."""
    if parse.confidence < config.policy.interrupt_confidence:
        return False
    if not answer_fits(parse, session, config):
        return True
    words = parse.text.split()
    if not _expects_words(session, config):
        words = [w for w in re.findall(r"[a-z0-9]+", fold_words(parse.text))
                 if w not in COURTESY]
    return len(words) >= 3


def decide(parse: ParseResult, session: Session, config: Config, now: datetime) -> Verdict:
    intent = parse.intent
    if parse.safety is SafetyLevel.EMERGENCY:
        return Verdict(Kind.EMERGENCY, intent, CLINICAL, "emergency", "emergency_script")
    if session.state is SessionState.HANDED_OFF and session.open_ticket_id:
        return Verdict(Kind.RELAY, intent)
    if is_duplicate(session, parse.text, now, config.policy.duplicate_window_seconds):
        return Verdict(Kind.DUPLICATE, intent)
    clinical_reason = config.lane_of(intent) == CLINICAL and not answering_question(session)
    if parse.safety is SafetyLevel.CLINICAL or clinical_reason:
        return Verdict(Kind.CLINICAL, intent, CLINICAL, "clinical", "clinical_ack")
    confident = not answering_question(session) or _interrupts(parse, session, config)
    if intent == HUMAN_AGENT and confident:
        return Verdict(Kind.HUMAN, intent, config.lane_of(intent) or FRONT_DESK,
                       "person_requested", "human_ack")
    upset = config.policy.upset
    repeats = recent_contacts(session, intent, now, upset.repeat_window_hours) + 1
    if upset_wording(config, parse.text) or (
            confident and config.lane_of(intent) and repeats >= upset.repeat_contacts):
        supervisor = upset.route == "supervisor"
        upset_lane = (config.lane_of(intent) or FRONT_DESK) if supervisor else "patient_experience"
        if upset_lane not in config.queues:
            upset_lane = FRONT_DESK
        return Verdict(Kind.UPSET, intent, upset_lane, "upset_patient", "upset_ack",
                       supervisor_owns=supervisor)
    if session.state is SessionState.AWAITING_IDENTITY:
        return Verdict(Kind.IDENTITY_ANSWER, intent)
    if session.state is SessionState.IN_SCRIPT:
        return Verdict(Kind.SCRIPT_ANSWER, intent)
    if intent in SOCIAL:
        return Verdict(Kind.SOCIAL, intent, template=SOCIAL[intent])
    if intent == LANGUAGE_ASSISTANCE:
        language = requested_language(parse, config)
        if language:
            return Verdict(Kind.SWITCH_LANGUAGE, intent, template="greeting_reply",
                           language=language)
        return Verdict(Kind.HANDOFF, intent, config.lane_of(intent) or FRONT_DESK,
                       "interpreter_needed", "lane_ack")
    lane = config.lane_of(intent)
    if intent == OUT_OF_SCOPE or lane is None:
        count = int(session.slots.get(OUT_OF_SCOPE_SLOT) or 0) + 1
        if count >= config.policy.out_of_scope_handoff_after:
            return Verdict(Kind.HANDOFF, OUT_OF_SCOPE, FRONT_DESK, "not_understood_repeatedly",
                           "lane_ack")
        return Verdict(Kind.OUT_OF_SCOPE, OUT_OF_SCOPE, template="out_of_scope_reply")
    spec = config.intents[intent]
    if spec.script is None:
        return Verdict(Kind.HANDOFF, intent, lane, "routed_by_contact_reason", "lane_ack")
    if not satisfies(identity_level(session, config, now), spec.identity):
        return Verdict(Kind.VERIFY, intent, lane, "identity_check")
    return Verdict(Kind.START_SCRIPT, intent, lane, "script")
