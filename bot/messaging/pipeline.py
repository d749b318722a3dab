"""The pipeline: one ingress entry -> at most one committed turn.

dedupe -> per-conversation ordering lock -> session -> decision step -> commit (session,
transcript, tickets, outbox, dedupe mark in one atomic write) -> send. The decision step runs
inside the error boundary: whatever it raises, the patient gets a polite reply and the
conversation goes to front_desk. Failures of the store itself propagate, so the entry stays
pending and is retried; nothing is acknowledged before it is committed.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

import structlog

from bot.config.loader import Config
from bot.core.envelopes import Inbound, Outbound, utcnow
from bot.core.errors import CryptoError, PatientbotError
from bot.core.session import Direction, IdentityStatus, Session, SessionState, TranscriptEntry
from bot.core.tickets import HandoffNote, HandoffTicket
from bot.engine.decision import Decision, DecisionStep, error_decision, front_desk_handoff
from bot.engine.escalation import EscalationPolicy
from bot.ops import metrics
from bot.store import Store, Turn
from bot.store.audit import AuditEvent, AuditLog
from bot.store.ingress import Ingress, IngressEntry

log = structlog.get_logger("patientbot.pipeline")

REPLY_WINDOW = timedelta(hours=1)  # the reply cap counts replies per conversation per hour
REPLY_WINDOW_SLOT = "pipeline.reply_window"
REPLY_COUNT_SLOT = "pipeline.replies"
CRITICAL_SECTION_SHARE = 0.8  # of the lock TTL, for everything under the lock
DECISION_SHARE = 0.5  # of the lock TTL, for the decision step


class PoisonEntry(PatientbotError):
    """An ingress entry that can never be processed (its envelope does not open)."""


class Outcome(StrEnum):
    PROCESSED = "processed"
    DUPLICATE = "duplicate"
    DEFERRED = "deferred"  # an earlier message of the conversation is not done yet


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    outbox: tuple[Outbound, ...] = ()
    decision: str = ""  # the decision's code (processed messages)


def _message_id() -> str:
    return uuid.uuid4().hex


def _note_with_attachments(note: HandoffNote, inbound: Inbound) -> HandoffNote:
    """The note tells staff the patient attached files that nobody opened (types, sizes)."""
    if not inbound.attachments:
        return note
    kinds = ", ".join(a.content_type if a.size is None else f"{a.content_type} {a.size} bytes"
                      for a in inbound.attachments[:10])
    count = len(inbound.attachments)
    return replace(note, action_taken=f"{note.action_taken}; {count} attachment"
                                      f"{'s' if count > 1 else ''} not opened ({kinds})")


class Pipeline:
    def __init__(self, *, config: Config, store: Store, ingress: Ingress, audit: AuditLog,
                 decision_step: DecisionStep,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._config = config
        self._store = store
        self._audit = audit
        self._ingress = ingress
        self._decide = decision_step
        self._workers = config.app.workers
        self._clock = clock  # `patientbot simulate` and readiness drive it
        self._escalation = EscalationPolicy(config)

    async def handle(self, entry: IngressEntry, *, waited: float = 0.0) -> Result:
        """Process one entry. `waited` is how long the caller has been deferring it."""
        try:
            inbound = self._ingress.open(entry)
        except (CryptoError, ValueError, KeyError) as err:
            raise PoisonEntry(entry.entry_id) from err
        key = self._ingress.conversation_key(inbound.channel, inbound.sender)
        bound = log.bind(conversation=key.id, entry=entry.entry_id, seq=entry.seq)
        ttl = self._workers.lock_ttl_seconds
        # The critical section must end well before the lock expires, or a second worker
        # could take the conversation while this one still works on it.
        async with self._store.open_turn(
                key, channel=inbound.channel, provider_message_id=inbound.provider_message_id,
                ttl=ttl, timeout=ttl) as start, asyncio.timeout(ttl * CRITICAL_SECTION_SHARE):
            session = start.session or Session(
                key=key, sender=inbound.sender, language=self._config.app.default_language)
            # Sequence numbers order a conversation; dedupe marks (committed with each turn)
            # decide what is a duplicate, so no message is ever dropped for its number.
            if entry.seq > session.last_seq + 1 and waited < self._workers.order_wait_seconds:
                return Result(Outcome.DEFERRED)
            if start.already_processed:
                # Redelivered after its commit, or the same provider message sent again.
                if entry.seq > session.last_seq:
                    session.last_seq = entry.seq
                    await self._store.commit(Turn(session=session), release=start.lease)
                metrics.DUPLICATES.inc()
                bound.info("duplicate dropped")
                return Result(Outcome.DUPLICATE)
            # Past order_wait_seconds a message is processed out of order rather than held.
            session.last_seq = max(session.last_seq, entry.seq)

            now = self._clock()
            self._apply_channel_identity(session, inbound, now)
            try:
                # A decision that hangs (a slow NLU server) is an error like any other: the
                # patient is handed off now rather than the entry retried forever.
                async with asyncio.timeout(ttl * DECISION_SHARE):
                    decision = await self._decide.decide(inbound, session, now=now)
            except Exception as err:  # the error boundary: never text, never a crash
                metrics.PIPELINE_ERRORS.labels(stage="decision").inc()
                bound.error("decision step failed; handing off", error_type=type(err).__name__)
                decision = error_decision(self._config, inbound, session)
            if decision.replies:
                decision = self._reply_cap(inbound, session, decision, now)
            turn = self._build_turn(inbound, session, decision, now)
            # Audited before the write: an entry whose commit then fails is retried, so the
            # log may show an attempt twice, never a write it does not show.
            await self._audit.record(*self._audit_events(entry, turn, decision))
            await self._store.commit(turn, lease_seconds=ttl, release=start.lease)

        self._record(inbound, decision, turn, bound)
        return Result(Outcome.PROCESSED, tuple(turn.outbox), decision.code)

    def _reply_cap(self, inbound: Inbound, session: Session, decision: Decision,
                   now: datetime) -> Decision:
        """The loop breaker: past the hourly reply cap a conversation gets no more replies
        (an auto-responder answering the bot would otherwise ping-pong forever). The first
        time, a person is asked to look; messages are still recorded and handed on.

        The count lives in the session, which this turn saves anyway: no extra round trip.
        """
        cap = self._config.channels.limits.replies_per_conversation_per_hour
        started = session.slots.get(REPLY_WINDOW_SLOT)
        count = int(session.slots.get(REPLY_COUNT_SLOT) or 0) + 1
        if not started or now - datetime.fromisoformat(started) > REPLY_WINDOW:
            started, count = now.isoformat(), 1
        session.slots[REPLY_WINDOW_SLOT] = started
        session.slots[REPLY_COUNT_SLOT] = str(count)
        if count <= cap:
            return decision
        metrics.REPLIES_SUPPRESSED.labels(channel=inbound.channel).inc()
        handoff = decision.handoff
        if handoff is None and count == cap + 1 and not session.open_ticket_id:
            handoff = front_desk_handoff(
                self._config, inbound, session, reason="reply_cap",
                action="reply cap reached: bot replies paused for this conversation",
                unresolved="possible auto-reply loop or flood; check the conversation")
        return replace(decision, replies=(), handoff=handoff,
                       state=SessionState.HANDED_OFF if handoff else decision.state)

    @staticmethod
    def _apply_channel_identity(session: Session, inbound: Inbound, now: datetime) -> None:
        """A channel that authenticated the patient itself (signed-in portal) verifies them."""
        if inbound.verified_patient and session.identity is not IdentityStatus.VERIFIED:
            session.identity = IdentityStatus.VERIFIED
            session.identity_verified_at = now
            session.patient_id = inbound.verified_patient

    def _build_turn(self, inbound: Inbound, session: Session, decision: Decision,
                    now: datetime) -> Turn:
        turn = Turn(session=session,
                    processed=(inbound.channel, inbound.provider_message_id))
        turn.transcript.append(TranscriptEntry(Direction.IN, "patient", inbound.text,
                                               _message_id(), inbound.received_at))
        if inbound.attachments:  # never opened or stored; the record says they were there
            turn.transcript.append(TranscriptEntry(
                Direction.EVENT, "system", f"attachments_not_opened:{len(inbound.attachments)}",
                _message_id(), inbound.received_at))
        if decision.language:
            session.language = decision.language
        if decision.drop_slots:
            session.slots = {name: value for name, value in session.slots.items()
                             if not name.startswith(decision.drop_slots)}
        session.slots.update(decision.slots)
        if decision.identity:
            session.identity = decision.identity.status
            session.patient_id = decision.identity.patient_id or session.patient_id
            session.identity_verified_at = now if decision.identity.status is \
                IdentityStatus.VERIFIED else session.identity_verified_at
        if decision.handoff:
            request = decision.handoff
            ticket = HandoffTicket(conversation_id=session.conversation_id,
                                   channel=inbound.channel, lane=request.lane,
                                   reason=request.reason,
                                   note=_note_with_attachments(request.note, inbound),
                                   priority=request.priority, created_at=now, updated_at=now)
            turn.tickets.append(ticket)
            # Escalation timers go in the same atomic commit as their ticket.
            turn.timers.extend(self._escalation.first_timers(ticket, now))
            session.open_ticket_id = ticket.id
            turn.transcript.append(TranscriptEntry(
                Direction.EVENT, "system", f"handoff:{request.lane}:{request.reason}",
                _message_id(), now))
        if decision.state:
            session.state = decision.state
        for text in decision.replies:
            message = Outbound(conversation_id=session.conversation_id, channel=inbound.channel,
                               recipient=inbound.sender, text=text, created_at=now,
                               in_reply_to=inbound.provider_message_id, phi=decision.phi,
                               language=session.language)
            turn.outbox.append(message)
            turn.transcript.append(TranscriptEntry(Direction.OUT, "bot", text, message.id, now))
        if decision.replies:
            session.last_ack_at = now
        session.updated_at = now
        return turn

    @staticmethod
    def _audit_events(entry: IngressEntry, turn: Turn, decision: Decision) -> list[AuditEvent]:
        conversation = turn.session.conversation_id
        events = [AuditEvent("conversation.turn", "bot", conversation,
                             f"{entry.entry_id}:{decision.code}")]
        events += [AuditEvent("handoff.created", "bot", conversation, ticket.id)
                   for ticket in turn.tickets]
        events += [AuditEvent(action, "bot", conversation, ref) for action, ref in decision.audit]
        return events

    @staticmethod
    def _record(inbound: Inbound, decision: Decision, turn: Turn,
                bound: structlog.stdlib.BoundLogger) -> None:
        metrics.DECISIONS.labels(decision=decision.code).inc()
        for ticket in turn.tickets:
            metrics.HANDOFFS.labels(lane=ticket.lane, priority=ticket.priority.value).inc()
        metrics.PIPELINE_LATENCY.observe((utcnow() - inbound.received_at).total_seconds())
        bound.info("turn committed", decision=decision.code, replies=len(turn.outbox),
                   tickets=[t.id for t in turn.tickets],
                   lanes=[t.lane for t in turn.tickets],
                   state=turn.session.state.value)
