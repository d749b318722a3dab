"""The decision step: what happens to one inbound message.

`DecisionStep` is the seam the engine (bot/engine/engine.py) fills. `FrontDeskHandoff` hands every
new request to the front_desk lane with a note; the pipeline-mechanics tests and benchmark
use it so they measure the pipeline, not the NLU. A decision is data; the pipeline turns it
into a committed turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from bot.config.loader import Config
from bot.core.envelopes import Inbound
from bot.core.session import IdentityStatus, Session, SessionState
from bot.core.tickets import HandoffNote, Priority

NOTE_SUMMARY_CHARS = 500
FOLLOWUP_ACK_INTERVAL = timedelta(minutes=10)


@dataclass(frozen=True, slots=True)
class HandoffRequest:
    lane: str
    reason: str
    note: HandoffNote
    priority: Priority = Priority.NORMAL


@dataclass(frozen=True, slots=True)
class Decision:
    """`code` names the decision in logs and metrics (never patient data)."""

    code: str
    replies: tuple[str, ...] = ()
    handoff: HandoffRequest | None = None
    state: SessionState | None = None
    relay_to_ticket: bool = False
    language: str | None = None
    slots: dict[str, str] = field(default_factory=dict)
    # Slots whose name starts with one of these are removed before `slots` is applied.
    drop_slots: tuple[str, ...] = ()
    identity: IdentityUpdate | None = None
    # Extra audit events for this turn: (action, ref), e.g. ("identity.verified", "").
    audit: tuple[tuple[str, str], ...] = ()
    phi: bool = False  # the replies disclose PHI (see `Outbound.phi`)


@dataclass(frozen=True, slots=True)
class IdentityUpdate:
    """The result of an identity check made during this turn."""

    status: IdentityStatus
    patient_id: str | None = None


class DecisionStep(Protocol):
    async def decide(self, inbound: Inbound, session: Session, *, now: datetime) -> Decision:
        """Decide for one message. May raise: the pipeline's error boundary hands off."""


def checks_done(session: Session) -> str:
    if session.identity is IdentityStatus.VERIFIED:
        return "identity verified (signed-in portal session)" if session.patient_id else \
            "identity verified"
    return "no identity check yet"


def front_desk_handoff(config: Config, inbound: Inbound, session: Session, *, reason: str,
                       action: str, unresolved: str) -> HandoffRequest:
    """A handoff to front_desk that needs no NLU or clock (the error boundary uses it)."""
    queue = config.queues["front_desk"]
    return HandoffRequest(
        lane="front_desk",
        reason=reason,
        note=HandoffNote(
            contact_reason="unclassified",
            checks_done=checks_done(session),
            action_taken=action,
            queue="front_desk",
            callback_window=queue.callback_window,
            unresolved=unresolved,
            summary=inbound.text[:NOTE_SUMMARY_CHARS],
            owner=queue.owner or "",
            escalation=tuple(n for n in (queue.backup_owner, queue.supervisor) if n),
            language=session.language,
            channel=inbound.channel,
            transcript_ref=session.transcript_ref,
        ),
    )


def relay_decision(config: Config, session: Session, now: datetime) -> Decision:
    """A message in a handed-off conversation joins the open ticket; the patient hears back
    at most once per interval, so a burst of messages is not answered by a burst of acks."""
    recently = session.last_ack_at and now - session.last_ack_at < FOLLOWUP_ACK_INTERVAL
    replies = () if recently else (config.text("handoff_followup", session.language),)
    return Decision(code="relay", replies=replies, relay_to_ticket=True)


class FrontDeskHandoff:
    """Foundation decision step: every new request goes to front_desk with a note."""

    def __init__(self, config: Config) -> None:
        self._config = config

    async def decide(self, inbound: Inbound, session: Session, *, now: datetime) -> Decision:
        if session.state is SessionState.HANDED_OFF and session.open_ticket_id:
            return relay_decision(self._config, session, now)
        return Decision(
            code="handoff",
            replies=(self._config.text("handoff_ack", session.language),),
            handoff=front_desk_handoff(
                self._config, inbound, session, reason="triage_not_enabled",
                action="handed to front desk (automatic triage not enabled)",
                unresolved="patient request awaiting staff review"),
            state=SessionState.HANDED_OFF,
        )


def error_decision(config: Config, inbound: Inbound, session: Session) -> Decision:
    """What the error boundary does: a polite reply and a front_desk handoff."""
    return Decision(
        code="error_handoff",
        replies=(config.text("error_fallback", session.language),),
        handoff=front_desk_handoff(
            config, inbound, session, reason="processing_error",
            action="automatic processing failed; handed to front desk",
            unresolved="patient message not handled by the bot"),
        state=SessionState.HANDED_OFF,
    )
