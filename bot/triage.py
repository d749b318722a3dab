"""NLU triage: the decision step that reads every inbound message with the NLU.

Until the conversation engine's scripts land, the bot resolves only social messages itself;
every request goes to the lane of its contact reason with a structured note. Safety first:
an emergency gets the emergency script and an urgent clinical handoff in any state,
including conversations already handed off; anything clinical goes to the clinical lane.
"""

from __future__ import annotations

from datetime import datetime

from bot import metrics
from bot.config import Config
from bot.decision import (
    NOTE_SUMMARY_CHARS,
    Decision,
    HandoffRequest,
    checks_done,
    relay_decision,
)
from bot.envelopes import Inbound
from bot.session import Session, SessionState
from handoff.tickets import HandoffNote, Priority
from nlu.base import OUT_OF_SCOPE, ParseResult, SafetyLevel
from nlu.service import NluService

SOCIAL_REPLIES = {"greeting": "greeting_reply", "thanks": "thanks_reply",
                  "goodbye": "goodbye_reply"}
OUT_OF_SCOPE_SLOT = "out_of_scope_count"
OUT_OF_SCOPE_HANDOFF_AFTER = 2  # the second unclear message in a row goes to a person
FRONT_DESK = "front_desk"


def triage_summary(result: ParseResult) -> str:
    """The NLU's verdict as codes for the handoff note (no patient text)."""
    parts = [f"intent {result.intent} ({result.confidence:.2f})",
             f"safety {result.safety.value}"]
    if result.safety_cues:
        parts.append("cues " + ", ".join(result.safety_cues))
    parts.append(f"language {result.language}")
    backend = result.backend + (" - configured classifier unreachable" if result.degraded
                                else "")
    parts.append(f"classifier {backend}")
    parts.extend(result.notes)
    return "; ".join(parts)


class NluTriage:
    def __init__(self, config: Config, *, nlu: NluService | None = None) -> None:
        self._config = config
        self._nlu = nlu or NluService.shared(config)

    @property
    def nlu(self) -> NluService:
        return self._nlu

    async def decide(self, inbound: Inbound, session: Session, *, now: datetime) -> Decision:
        result = await self._nlu.parse(inbound.text, now=now,
                                       conversation_language=session.language)
        metrics.NLU_VERDICTS.labels(safety=result.safety.value, lane=result.lane or "none").inc()
        language = result.language if result.language in self._config.messages \
            else session.language
        if result.safety is SafetyLevel.EMERGENCY:
            return self._handoff(inbound, session, result, language, code="emergency",
                                 lane="clinical", reply="emergency_script",
                                 priority=Priority.URGENT,
                                 action="emergency script sent; urgent clinical handoff")
        if session.state is SessionState.HANDED_OFF and session.open_ticket_id:
            return relay_decision(self._config, session, now)
        if result.safety is SafetyLevel.CLINICAL:
            return self._handoff(inbound, session, result, language, code="clinical",
                                 lane="clinical", reply="clinical_ack",
                                 action="clinical message: not answered by the bot")
        if result.intent in SOCIAL_REPLIES:
            return Decision(code=result.intent, language=language,
                            replies=(self._config.text(SOCIAL_REPLIES[result.intent], language),),
                            slots={OUT_OF_SCOPE_SLOT: "0"})
        if result.intent == OUT_OF_SCOPE or result.lane is None:
            return self._out_of_scope(inbound, session, result, language)
        return self._handoff(inbound, session, result, language, code="routed",
                             lane=result.lane, reply="lane_ack",
                             action=f"routed by contact reason ({result.intent})")

    def _out_of_scope(self, inbound: Inbound, session: Session, result: ParseResult,
                      language: str) -> Decision:
        count = int(session.slots.get(OUT_OF_SCOPE_SLOT, "0") or 0) + 1
        if count >= OUT_OF_SCOPE_HANDOFF_AFTER:
            return self._handoff(inbound, session, result, language, code="out_of_scope_handoff",
                                 lane=FRONT_DESK, reply="lane_ack",
                                 action="request not understood twice; handed to front desk")
        return Decision(code="out_of_scope", language=language,
                        replies=(self._config.text("out_of_scope_reply", language),),
                        slots={OUT_OF_SCOPE_SLOT: str(count)})

    def _handoff(self, inbound: Inbound, session: Session, result: ParseResult,
                 language: str, *, code: str, lane: str, reply: str, action: str,
                 priority: Priority = Priority.NORMAL) -> Decision:
        team = self._config.queues[lane].name_for_patients(language)
        text = self._config.text(reply, language).replace("{team}", team)
        note = HandoffNote(
            contact_reason=result.intent,
            checks_done=checks_done(session),
            action_taken=action,
            queue=lane,
            callback_window="",
            unresolved="patient request awaiting staff review",
            summary=inbound.text[:NOTE_SUMMARY_CHARS],
            triage=triage_summary(result),
        )
        return Decision(code=code, replies=(text,), language=language,
                        handoff=HandoffRequest(lane=lane, reason=code, note=note,
                                               priority=priority),
                        state=SessionState.HANDED_OFF, slots={OUT_OF_SCOPE_SLOT: "0"})
