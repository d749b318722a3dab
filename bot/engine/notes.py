"""The handoff note: factual, what the patient said and which approved action followed.

Built from the NLU verdict, the session, the route and what the bot did; an agent reads it
first. Patient words (`summary`) and collected fields are PHI and sealed at rest.
"""

from __future__ import annotations

from bot.core.envelopes import Inbound
from bot.core.session import Session
from bot.core.tickets import HandoffNote
from bot.engine.decision import NOTE_SUMMARY_CHARS
from bot.engine.routing import Route
from nlu.base import ParseResult

REQUEST_PREFIX = "Request: "
LATEST_SEPARATOR = " | Latest: "
# Display values scripts show the patient; the note keeps what the patient gave.
DISPLAY_FIELDS = frozenset({"options", "visit_type_name", "location_name", "address",
                            "preparation", "next_steps", "answer"})
IDENTITY_CHECKS = {
    "not_required": "no identity check needed for this request",
    "none": "identity not verified",
    "basic": "name and date of birth verified",
    "strong": "name and date of birth verified; writes from the phone or email on file",
    "portal": "signed-in patient portal session",
    "failed": "identity check failed (details did not match)",
    "strong_unavailable": "name and date of birth verified; stronger check needed, not "
                          "possible on this channel",
}


def triage_summary(result: ParseResult) -> str:
    """The NLU's verdict as codes (no patient text)."""
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


def collected_fields(fields: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in fields.items()
            if not name.startswith("_") and name not in DISPLAY_FIELDS}


def build_note(*, inbound: Inbound, session: Session, parse: ParseResult, route: Route,
               contact_reason: str, action: str, unresolved: str, identity: str,
               language: str, collected: dict[str, str] | None = None,
               script: str = "", request: str = "") -> HandoffNote:
    """`request` is the message that started a script or identity check, when the handoff
    comes later in the conversation: the note quotes it and the latest message."""
    summary = inbound.text
    if request and request != inbound.text:
        summary = f"{REQUEST_PREFIX}{request[:NOTE_SUMMARY_CHARS // 2]}{LATEST_SEPARATOR}" \
                  f"{inbound.text}"
    return HandoffNote(
        contact_reason=contact_reason,
        checks_done=IDENTITY_CHECKS.get(identity, identity),
        action_taken=action,
        queue=route.lane,
        callback_window=route.window,
        unresolved=unresolved,
        summary=summary[:NOTE_SUMMARY_CHARS],
        triage=triage_summary(parse),
        confidence=round(parse.confidence, 4),
        safety=parse.safety.value,
        safety_cues=tuple(parse.safety_cues),
        identity=identity,
        owner=route.owner,
        escalation=route.escalation,
        callback_due=route.due.isoformat(),
        after_hours=route.after_hours,
        page=route.page,
        language=language,
        channel=inbound.channel,
        nlu_backend=parse.backend,  # says "(rasa unavailable)" when it fell back
        script=script,
        transcript_ref=session.transcript_ref,
        collected=collected_fields(collected or {}),
    )


def summary_request(summary: str) -> str:
    """The patient's request quoted by a note's summary (what its contact reason is about)."""
    if summary.startswith(REQUEST_PREFIX) and LATEST_SEPARATOR in summary:
        return summary[len(REQUEST_PREFIX):summary.index(LATEST_SEPARATOR)]
    return summary
