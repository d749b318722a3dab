"""The agent desk: the ticket lifecycle every agent interface (Slack, the web desk) drives.

claim -> reply ... -> resolve | return to bot, with move (re-queue in another lane) and
relabel (correct the contact reason, for NLU review) at any point. Each change is one atomic
store write (`Store.update_ticket`, a compare-and-set on the ticket's revision) that also
records an entry in the ticket's history; changes that touch the conversation (reply,
resolve, return to bot) take the conversation lock, so they are ordered with the patient's
own messages, and commit session, transcript and outbox in the same write, like a pipeline
turn. Replies leave through the outbox on the patient's own channel.

Auditing: views and disclosures (a transcript read, an agent reply) are audited before they
happen, so the log never misses one; ticket state changes are audited right after their
write (their history entry is part of the write itself), so a claim lost to another agent
is never logged as a claim.

Agents are named by staff ids (a Slack user id, a desk account): fine in history and audit
(``agent:<id>``). Errors carry a code only (`DeskError.code`), never patient data.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from bot.config.loader import Config
from bot.core.envelopes import ConversationKey, Outbound, utcnow
from bot.core.errors import LockTimeout, PatientbotError
from bot.core.session import Direction, Session, SessionState, TranscriptEntry
from bot.core.tickets import HandoffTicket, Priority, TicketEvent, TicketStatus
from bot.engine.coverage import Coverage
from bot.engine.escalation import EscalationPolicy
from bot.engine.routing import route
from bot.messaging.outbox import OutboxDispatcher
from bot.store import Lease, ReviewItem, Store, Turn
from bot.store.audit import AuditEvent, AuditLog

log = structlog.get_logger("patientbot.desk")

# Outcome codes an agent picks when resolving; `returned_to_bot` is set by return_to_bot.
OUTCOMES = ("resolved", "callback_done", "no_response", "duplicate", "referred")
RETURNED_TO_BOT = "returned_to_bot"
RELABEL_QUEUE = "relabel"  # the review queue `patientbot nlu review` reads
MAX_ATTEMPTS = 50  # compare-and-set retries; each lost race means someone else's change won
_AGENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_TICKET_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class DeskError(PatientbotError):
    """A desk action was refused. `code`: not_found, invalid_agent, not_owner,
    already_resolved, invalid_outcome, unknown_lane, same_lane, unknown_intent, same_intent,
    empty_reply, reply_too_long, conversation_gone, conversation_busy, busy."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class ClaimResult:
    """`code`: claimed (now yours), already_yours, already_claimed (`owner` has it), or
    resolved (nothing left to claim)."""

    code: str
    owner: str
    ticket: HandoffTicket

    @property
    def ok(self) -> bool:
        return self.code in ("claimed", "already_yours")


# What an agent is told when the desk refuses an action (`DeskError.code`), in Slack and in
# the web desk alike. Codes only reach here: never patient data.
REFUSALS = {
    "not_found": "This ticket was not found (it may have expired).",
    "invalid_agent": "Your account cannot act on tickets.",
    "not_owner": "Another agent owns this ticket: only they can do that. Claim it first if "
                 "it is unclaimed.",
    "already_resolved": "This ticket is already closed.",
    "invalid_outcome": "Choose one of the listed outcomes.",
    "unknown_lane": "Choose a configured lane.",
    "same_lane": "The ticket is already in that lane.",
    "unknown_intent": "Choose a configured contact reason.",
    "same_intent": "The ticket already has that contact reason.",
    "empty_reply": "The reply is empty: nothing was sent.",
    "reply_too_long": "The reply is too long for the patient's channel: shorten or split it.",
    "conversation_gone": "The patient's conversation has expired: nothing was sent.",
    "conversation_busy": "The conversation is busy right now. Please try again in a moment.",
    "busy": "The ticket is busy right now. Please try again in a moment.",
}


def waiting_time(since: datetime, now: datetime) -> str:
    """How long a ticket has waited, coarse enough to read at a glance."""
    minutes = max(0, int((now - since).total_seconds() // 60))
    if minutes < 1:
        return "<1 min"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def contact_reason(ticket: HandoffTicket) -> tuple[str, str | None]:
    """(the contact reason, the agents' correction winning; the original one when agents
    relabelled it to something else, else None)."""
    original = ticket.note.contact_reason or "unclassified"
    corrected = ticket.corrected_intent
    if corrected and corrected != ticket.note.contact_reason:
        return corrected, original
    return original, None


def desk_url(config: Config, ticket_id: str) -> str:
    """The ticket in the web agent desk: where minimum-necessary Slack notes link to."""
    return f"{config.app.public_base_url.rstrip('/')}/agent/tickets/{ticket_id}"


def _actor(agent: str) -> str:
    if not isinstance(agent, str) or not _AGENT_ID.fullmatch(agent):
        raise DeskError("invalid_agent")
    return f"agent:{agent}"


def _replied(ticket: HandoffTicket, message_id: str) -> bool:
    return any(event.action == "reply" and event.detail == message_id
               for event in ticket.history)


def _record(ticket: HandoffTicket, action: str, actor: str, now: datetime,
            detail: str = "") -> None:
    ticket.history.append(TicketEvent(action, actor, now, detail))
    ticket.updated_at = now


class AgentDesk:
    """Ticket lifecycle. `dispatcher` (optional) sends a committed reply at once; without
    it replies are committed due at once and the workers' outbox sweep sends them."""

    def __init__(self, config: Config, store: Store, audit: AuditLog, *,
                 dispatcher: OutboxDispatcher | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 coverage: Coverage | None = None,
                 policy: EscalationPolicy | None = None) -> None:
        self._config = config
        self._store = store
        self._audit = audit
        self._dispatcher = dispatcher
        self._clock = clock
        self._coverage = coverage or Coverage.from_config(config)
        self._policy = policy or EscalationPolicy(config, self._coverage)
        self._lock_ttl = config.app.workers.lock_ttl_seconds

    # --- reading ---------------------------------------------------------------------------
    async def get(self, ticket_id: str) -> HandoffTicket:
        """The ticket (raises `DeskError('not_found')`). Not audited: for the agent
        interfaces' own use; showing the note to a person is their audited view."""
        if not isinstance(ticket_id, str) or not _TICKET_ID.fullmatch(ticket_id):
            raise DeskError("not_found")
        ticket = await self._store.get_ticket(ticket_id)
        if ticket is None:
            raise DeskError("not_found")
        return ticket

    async def open_tickets(self, lane: str) -> list[HandoffTicket]:
        """Open and claimed tickets of a lane in serving order: emergency, urgent, normal;
        oldest first within each. Resolved tickets have left the lane."""
        if lane not in self._config.queues:
            raise DeskError("unknown_lane")
        return [ticket for ticket in await self._store.tickets_in_lane(lane)
                if ticket.status is not TicketStatus.RESOLVED]

    async def transcript(self, ticket_id: str, agent: str) -> list[TranscriptEntry]:
        """The conversation's transcript. Every view is audited (``transcript.read``)
        before the transcript is returned."""
        actor = _actor(agent)
        ticket = await self.get(ticket_id)
        await self._audit.record(AuditEvent("transcript.read", actor, ticket.conversation_id,
                                            ticket.id))
        return await self._store.transcript(ticket.conversation_id)

    async def delivery(self, transcript: list[TranscriptEntry]) -> dict[str, str]:
        """The outbox status (pending, sent, undeliverable) of each reply in `transcript`,
        by message id (a reply's transcript id is its outbox entry's): so that staff see a
        reply still being sent, or one the channel refused for good (an SMS opt-out)."""
        replies = [entry.message_id for entry in transcript if entry.direction is Direction.OUT]
        statuses = await asyncio.gather(*(self._store.outbox_status(message_id)
                                          for message_id in replies))
        return {message_id: status for message_id, status in zip(replies, statuses, strict=True)
                if status}

    # --- claim -----------------------------------------------------------------------------
    async def claim(self, ticket_id: str, agent: str) -> ClaimResult:
        """Atomic: the first agent owns the ticket (status CLAIMED, `claimed_by`,
        `claimed_at`); anyone later gets ``already_claimed`` with the owner's id. The claim
        cancels the pending unclaimed-ticket escalations (the callback alert stays)."""
        actor = _actor(agent)
        for _ in range(MAX_ATTEMPTS):
            ticket = await self.get(ticket_id)
            if ticket.status is TicketStatus.RESOLVED:
                return ClaimResult("resolved", ticket.claimed_by, ticket)
            if ticket.status is TicketStatus.CLAIMED:
                code = "already_yours" if ticket.claimed_by == agent else "already_claimed"
                return ClaimResult(code, ticket.claimed_by, ticket)
            cancel = self._policy.unclaimed_timer_ids(ticket)
            now = self._clock()
            ticket.status = TicketStatus.CLAIMED
            ticket.claimed_by = agent
            ticket.claimed_at = now
            _record(ticket, "claimed", actor, now)
            if await self._store.update_ticket(ticket, cancel_timers=cancel):
                await self._audit.record(AuditEvent("ticket.claimed", actor,
                                                    ticket.conversation_id, ticket.id))
                log.info("ticket claimed", ticket=ticket.id, lane=ticket.lane, agent=agent)
                return ClaimResult("claimed", agent, ticket)
        raise DeskError("busy")

    # --- reply -----------------------------------------------------------------------------
    async def reply(self, ticket_id: str, agent: str, text: str, *, phi: bool = False,
                    message_id: str | None = None) -> str:
        """Relay the owner's reply to the patient on the patient's own channel (through the
        outbox), recorded in the transcript as ``agent:<id>``, audited (``agent.reply``),
        with the session's last acknowledgement time updated: one atomic write under the
        conversation lock. Only the owner may reply (others: ``not_owner``; claim first).
        `phi`: the reply discloses PHI, so channels that must not carry PHI send a portal
        pointer instead. `message_id` makes the reply idempotent: an interface that may
        deliver the same agent message twice (Slack retries an event) passes an id derived
        from it, and a reply already recorded with that id is not sent again. Returns the
        outbound message id."""
        actor = _actor(agent)
        if not text or not text.strip():
            raise DeskError("empty_reply")
        if len(text) > self._config.app.limits.max_message_chars:
            raise DeskError("reply_too_long")
        message_id = message_id or uuid.uuid4().hex
        ticket = await self.get(ticket_id)
        if _replied(ticket, message_id):
            return message_id  # already committed (a retried delivery)
        self._check_owner(ticket, agent, must_own=True)  # refuse early, without the lock
        async with self._conversation(ticket) as lease:
            for _ in range(MAX_ATTEMPTS):
                ticket = await self.get(ticket_id)
                if _replied(ticket, message_id):
                    return message_id
                self._check_owner(ticket, agent, must_own=True)
                session = await self._session(ticket)
                if session is None:
                    raise DeskError("conversation_gone")
                now = self._clock()
                message = Outbound(conversation_id=ticket.conversation_id,
                                   channel=session.key.channel, recipient=session.sender,
                                   text=text, id=message_id, created_at=now, phi=phi,
                                   language=session.language)
                session.last_ack_at = now
                session.updated_at = now
                turn = Turn(session=session, outbox=[message], transcript=[
                    TranscriptEntry(Direction.OUT, actor, text, message.id, now)])
                _record(ticket, "reply", actor, now, message.id)
                await self._audit.record(AuditEvent("agent.reply", actor,
                                                    ticket.conversation_id,
                                                    f"{ticket.id}:{message.id}"))
                if await self._store.update_ticket(ticket, turn=turn, release=lease,
                                                   lease_seconds=self._send_lease):
                    break
            else:
                raise DeskError("busy")
        log.info("agent reply committed", ticket=ticket.id, agent=agent, outbound=message.id,
                 channel=message.channel)
        await self._deliver(message)
        return message.id

    # --- resolve / return to bot -----------------------------------------------------------
    async def resolve(self, ticket_id: str, agent: str, outcome: str) -> HandoffTicket:
        """Close the handoff with an outcome code (`OUTCOMES`): the ticket is RESOLVED and
        leaves its lane; its timers are cancelled; if the conversation is handed off to this
        ticket, the session is CLOSED (open ticket cleared) and the closing template is sent
        in the conversation's language (the patient may write again any time: a new
        conversation turn starts afresh). A claimed ticket may be resolved by its owner only;
        an unclaimed one by any agent."""
        if outcome not in OUTCOMES:
            raise DeskError("invalid_outcome")
        return await self._close(ticket_id, agent, outcome=outcome, action="resolved",
                                 state=SessionState.CLOSED, template="resolved_closing")

    async def return_to_bot(self, ticket_id: str, agent: str) -> HandoffTicket:
        """Give the conversation back to the bot: the ticket is RESOLVED with outcome
        ``returned_to_bot``, the session ACTIVE again, and the ``returned_to_bot`` template
        sent. Same ownership rule as `resolve`."""
        return await self._close(ticket_id, agent, outcome=RETURNED_TO_BOT,
                                 action=RETURNED_TO_BOT, state=SessionState.ACTIVE,
                                 template="returned_to_bot")

    async def _close(self, ticket_id: str, agent: str, *, outcome: str, action: str,
                     state: SessionState, template: str) -> HandoffTicket:
        actor = _actor(agent)
        ticket = await self.get(ticket_id)
        self._check_owner(ticket, agent)  # refuse early, without the lock
        message: Outbound | None = None
        event = action if action == outcome else f"{action}:{outcome}"
        async with self._conversation(ticket) as lease:
            for _ in range(MAX_ATTEMPTS):
                ticket = await self.get(ticket_id)
                self._check_owner(ticket, agent)
                cancel = self._policy.all_timer_ids(ticket)
                session = await self._session(ticket)
                now = self._clock()
                ticket.status = TicketStatus.RESOLVED
                ticket.outcome = outcome
                _record(ticket, action, actor, now, outcome)
                turn = None
                message = None
                if session is not None:
                    turn = Turn(session=session, transcript=[TranscriptEntry(
                        Direction.EVENT, actor, event, uuid.uuid4().hex, now)])
                    # Only the conversation's current handoff closes it: a newer ticket
                    # (an emergency raised meanwhile) keeps the conversation with staff.
                    if session.open_ticket_id == ticket.id:
                        session.state = state
                        session.open_ticket_id = None
                        message = self._template_message(session, template, now)
                        turn.outbox.append(message)
                        turn.transcript.append(TranscriptEntry(Direction.OUT, "bot",
                                                               message.text, message.id, now))
                        session.last_ack_at = now
                    session.updated_at = now
                if await self._store.update_ticket(ticket, turn=turn, cancel_timers=cancel,
                                                   release=lease,
                                                   lease_seconds=self._send_lease):
                    break
            else:
                raise DeskError("busy")
        await self._audit.record(AuditEvent(f"ticket.{action}", actor, ticket.conversation_id,
                                            f"{ticket.id}:{outcome}"))
        log.info("ticket resolved", ticket=ticket.id, lane=ticket.lane, agent=agent,
                 outcome=outcome, conversation_closed=message is not None)
        if message is not None:
            await self._deliver(message)
        return ticket

    # --- move / relabel --------------------------------------------------------------------
    async def move(self, ticket_id: str, agent: str, lane: str) -> HandoffTicket:
        """Re-queue the ticket in another lane: unclaimed again, in the new lane's index
        (and out of the old one) in the same write, the note's queue, owner and escalation
        re-routed for the new lane (`bot.engine.routing.route`, by the clock), and its escalation
        timers started afresh on the new lane's SLA. The callback promised to the patient
        stands. A claimed ticket may be moved by its owner only."""
        actor = _actor(agent)
        if lane not in self._config.queues:
            raise DeskError("unknown_lane")
        for _ in range(MAX_ATTEMPTS):
            ticket = await self.get(ticket_id)
            self._check_owner(ticket, agent)
            if ticket.lane == lane:
                raise DeskError("same_lane")
            cancel = self._policy.all_timer_ids(ticket)
            now = self._clock()
            old_lane = ticket.lane
            intent = ticket.corrected_intent or ticket.note.contact_reason
            where = route(self._config, self._coverage, lane, now=now,
                          intent=intent if self._config.lane_of(intent) == lane else None,
                          priority=ticket.priority)
            if where.on_call and ticket.priority is Priority.NORMAL:
                ticket.priority = Priority.URGENT  # taken now by the on-call owner
            ticket.lane = lane
            ticket.note = replace(ticket.note, queue=lane, owner=where.owner,
                                  escalation=where.escalation, after_hours=where.after_hours)
            ticket.status = TicketStatus.OPEN
            ticket.claimed_by = ""
            ticket.claimed_at = None
            ticket.escalation_stage = 0
            ticket.escalation_round += 1
            ticket.callback_alerted = False
            _record(ticket, "moved", actor, now, f"{old_lane}>{lane}")
            timers = self._policy.first_timers(ticket, now)
            if await self._store.update_ticket(ticket, timers=timers, cancel_timers=cancel):
                await self._audit.record(AuditEvent("ticket.moved", actor,
                                                    ticket.conversation_id,
                                                    f"{ticket.id}:{old_lane}>{lane}"))
                log.info("ticket moved", ticket=ticket.id, lane=lane, previous=old_lane,
                         agent=agent)
                return ticket
        raise DeskError("busy")

    async def relabel(self, ticket_id: str, agent: str, intent: str) -> HandoffTicket:
        """Record the correct contact reason: on the ticket (`corrected_intent`), and as a
        review item in the ``relabel`` queue (ticket and conversation ids, original and
        corrected intent, agent, time, and the patient's words from the note, sealed) for
        `patientbot nlu review`. Relabelling again replaces the ticket's review item. Any
        agent may relabel, at any time."""
        actor = _actor(agent)
        if intent not in self._config.intents:
            raise DeskError("unknown_intent")
        for _ in range(MAX_ATTEMPTS):
            ticket = await self.get(ticket_id)
            original = ticket.note.contact_reason
            if intent == (ticket.corrected_intent or original):
                raise DeskError("same_intent")
            now = self._clock()
            ticket.corrected_intent = intent
            _record(ticket, "relabelled", actor, now, f"{original}>{intent}")
            review = ReviewItem(queue=RELABEL_QUEUE, item_id=ticket.id, at=now, record={
                "ticket_id": ticket.id,
                "conversation_id": ticket.conversation_id,
                "original_intent": original,
                "corrected_intent": intent,
                "agent": agent,
                "at": now.isoformat(),
                "language": ticket.note.language,
                "channel": ticket.channel,
                "text": ticket.note.summary,  # PHI: the whole item is sealed at rest
            })
            if await self._store.update_ticket(ticket, review=review):
                await self._audit.record(AuditEvent("ticket.relabelled", actor,
                                                    ticket.conversation_id,
                                                    f"{ticket.id}:{original}>{intent}"))
                log.info("ticket relabelled", ticket=ticket.id, original=original,
                         corrected=intent, agent=agent)
                return ticket
        raise DeskError("busy")

    async def relabelled(self) -> list[ReviewItem]:
        """The relabel review queue, oldest first (for `patientbot nlu review`)."""
        return await self._store.review_items(RELABEL_QUEUE)

    # --- helpers ---------------------------------------------------------------------------
    @staticmethod
    def _check_owner(ticket: HandoffTicket, agent: str, *, must_own: bool = False) -> None:
        """Resolved tickets are final; a claimed ticket is its owner's; `must_own`: the
        agent must have claimed it (replies)."""
        if ticket.status is TicketStatus.RESOLVED:
            raise DeskError("already_resolved")
        if ticket.status is TicketStatus.CLAIMED and ticket.claimed_by != agent:
            raise DeskError("not_owner")
        if must_own and ticket.status is not TicketStatus.CLAIMED:
            raise DeskError("not_owner")

    @asynccontextmanager
    async def _conversation(self, ticket: HandoffTicket) -> AsyncIterator[Lease]:
        """The conversation's ordering lock, as the pipeline takes it."""
        try:
            async with self._store.lock(ticket.conversation_id, ttl=self._lock_ttl,
                                        timeout=self._lock_ttl) as lease:
                yield lease
        except LockTimeout as err:
            raise DeskError("conversation_busy") from err

    async def _session(self, ticket: HandoffTicket) -> Session | None:
        return await self._store.get_session(ConversationKey.parse(ticket.conversation_id))

    def _template_message(self, session: Session, template: str, now: datetime) -> Outbound:
        text = self._config.text(template, session.language) \
            .replace("{organisation}", self._config.app.organisation)
        return Outbound(conversation_id=session.conversation_id, channel=session.key.channel,
                        recipient=session.sender, text=text, created_at=now,
                        language=session.language)

    @property
    def _send_lease(self) -> float:
        """Leased to us when we send at once; due at once for the workers' sweep if not."""
        return self._lock_ttl if self._dispatcher is not None else 0.0

    async def _deliver(self, message: Outbound) -> None:
        if self._dispatcher is None:
            return
        try:
            await self._dispatcher.deliver([message])
        except Exception as err:  # committed: the outbox sweep sends it after its lease
            log.error("desk delivery failed; left to the outbox sweep", outbound=message.id,
                      error_type=type(err).__name__)
