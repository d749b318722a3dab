"""Escalation timers: no handoff is forgotten and no promised callback slips by unnoticed.

Timers live in the store (Redis: a due-time sorted set plus sealed payloads), so they survive
restarts; every worker runs `EscalationSweeper.sweep` in its maintenance loop, and each due
timer is leased atomically to one sweeper, so two workers never fire the same timer.

For a new ticket (scheduled in the same atomic commit that stores it, see `bot.messaging.pipeline`):

- unclaimed past its lane's ``ack_sla_minutes`` -> ``renotify`` (the lane owner), then after
  another SLA period still unclaimed -> ``backup`` (the queue's backup owner), then ->
  ``supervisor``. Emergency tickets use min(lane SLA, ``escalation.emergency_ack_minutes``).
  A claim cancels the unclaimed steps; moving a ticket to another lane starts them again.
- a promised callback about to be missed (``escalation.callback_alert_share`` of the time to
  ``note.callback_due`` passed, or ``callback_alert_lead_minutes`` before it) while the ticket
  is not resolved -> ``callback_due_soon`` to the owner (the agent who claimed it, else the
  lane owner).

Every step fired is recorded in the ticket's history and audited (actor ``system``), then
handed to an `EscalationNotifier`: the default one only records; Slack
(`handoff/slack/notices.py`) and email (`handoff/email_notices.py`) implement it. Steps are
fired at least once: a sweeper that dies between notifying and recording
leaves the timer to be fired again after its lease.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import structlog

from bot.config.loader import Config
from bot.core.envelopes import utcnow
from bot.core.tickets import (
    HandoffTicket,
    TicketEvent,
    TicketTimer,
    TimerKind,
)
from bot.engine.escalation import EscalationPolicy, applies, callback_due
from bot.store import Store
from bot.store.audit import AuditEvent, AuditLog

log = structlog.get_logger("patientbot.escalation")


SYSTEM = "system"


# What each unclaimed-ticket stage means, for the agent interfaces.
STAGE_NAMES = {1: "lane owner re-notified", 2: "backup owner notified",
               3: "supervisor notified"}


MAX_ATTEMPTS = 50  # compare-and-set retries; each lost race means someone else's change won


class EscalationNotifier(Protocol):
    """Tells people about a timer step. Implementations must not log patient data; the
    ticket's note holds PHI (`summary`, `collected`), so show only what the destination may
    carry (the Slack layer applies its field allow-list). Raising leaves the timer to be
    fired again after its lease."""

    async def renotify(self, ticket: HandoffTicket, *, owner: str) -> None:
        """Still unclaimed after the lane's acknowledge SLA: remind the lane and its owner."""

    async def notify_backup(self, ticket: HandoffTicket, *, backup: str) -> None:
        """Still unclaimed after another SLA period: the queue's backup owner takes over."""

    async def notify_supervisor(self, ticket: HandoffTicket, *, supervisor: str) -> None:
        """Still unclaimed after the backup step: tell the supervisor."""

    async def callback_due_soon(self, ticket: HandoffTicket, *, owner: str,
                                due: datetime) -> None:
        """The callback promised to the patient (`due`) is about to be missed."""


@dataclass(frozen=True, slots=True)
class Notification:
    kind: TimerKind
    ticket_id: str
    lane: str
    to: str  # a staff role or staff id


@dataclass
class RecordingNotifier:
    """The default notifier: remembers what it was asked to send (the step itself is
    already in the ticket's history and the audit log)."""

    sent: list[Notification] = field(default_factory=list)

    async def renotify(self, ticket: HandoffTicket, *, owner: str) -> None:
        self.sent.append(Notification(TimerKind.RENOTIFY, ticket.id, ticket.lane, owner))

    async def notify_backup(self, ticket: HandoffTicket, *, backup: str) -> None:
        self.sent.append(Notification(TimerKind.BACKUP, ticket.id, ticket.lane, backup))

    async def notify_supervisor(self, ticket: HandoffTicket, *, supervisor: str) -> None:
        self.sent.append(Notification(TimerKind.SUPERVISOR, ticket.id, ticket.lane,
                                      supervisor))

    async def callback_due_soon(self, ticket: HandoffTicket, *, owner: str,
                                due: datetime) -> None:
        self.sent.append(Notification(TimerKind.CALLBACK_DUE_SOON, ticket.id, ticket.lane,
                                      owner))


class EscalationSweeper:
    """Fires due timers. Run by every worker (bot/messaging/worker.py); safe to run in many
    places."""

    def __init__(self, config: Config, store: Store, audit: AuditLog, *,
                 notifier: EscalationNotifier | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 policy: EscalationPolicy | None = None) -> None:
        self._config = config
        self._store = store
        self._audit = audit
        self._clock = clock
        self._policy = policy or EscalationPolicy(config)
        # Public so that the Slack layer can plug its notifier into a built runtime.
        self.notifier: EscalationNotifier = notifier or RecordingNotifier()

    async def sweep(self, *, limit: int = 100) -> int:
        """Fire the timers due now; returns how many steps were fired. A timer whose
        notification fails stays leased and is fired again after its lease."""
        now = self._clock()
        due = await self._store.claim_timers(
            now=now, limit=limit, lease_seconds=self._config.escalation.timer_lease_seconds)
        fired = 0
        for timer in due:
            try:
                fired += await self._fire(timer, now)
            except Exception as err:
                log.error("escalation step failed; retried after its lease", timer=timer.id,
                          kind=timer.kind.value, error_type=type(err).__name__)
        return fired

    def _target(self, ticket: HandoffTicket, kind: TimerKind) -> str:
        """Who is told (a staff role from queues.yml, or the owning agent's staff id)."""
        queue = self._config.queues.get(ticket.lane)
        escalation = ticket.note.escalation
        if kind is TimerKind.BACKUP:
            return (queue.backup_owner if queue else None) or \
                (escalation[0] if escalation else "")
        if kind is TimerKind.SUPERVISOR:
            return (queue.supervisor if queue else None) or \
                (escalation[-1] if escalation else "")
        if kind is TimerKind.CALLBACK_DUE_SOON and ticket.claimed_by:
            return ticket.claimed_by
        return ticket.note.owner or (queue.owner if queue else None) or ""

    async def _notify(self, ticket: HandoffTicket, kind: TimerKind, target: str) -> None:
        match kind:
            case TimerKind.RENOTIFY:
                await self.notifier.renotify(ticket, owner=target)
            case TimerKind.BACKUP:
                await self.notifier.notify_backup(ticket, backup=target)
            case TimerKind.SUPERVISOR:
                await self.notifier.notify_supervisor(ticket, supervisor=target)
            case TimerKind.CALLBACK_DUE_SOON:
                await self.notifier.callback_due_soon(
                    ticket, owner=target, due=callback_due(ticket) or self._clock())

    async def _fire(self, timer: TicketTimer, now: datetime) -> int:
        ticket = await self._store.get_ticket(timer.ticket_id)
        if ticket is None or not applies(ticket, timer):
            await self._store.complete_timer(timer.id)  # claimed, resolved, moved or gone
            return 0
        target = self._target(ticket, timer.kind)
        await self._notify(ticket, timer.kind, target)
        action = f"escalation.{timer.kind.value}"
        for _ in range(MAX_ATTEMPTS):
            # Recorded even if the ticket changed since (the notification went out); the
            # next step is scheduled only while the step still applies.
            follow_up = []
            if applies(ticket, timer):
                if timer.kind is TimerKind.CALLBACK_DUE_SOON:
                    ticket.callback_alerted = True
                else:
                    ticket.escalation_stage = timer.kind.stage
                    following = self._policy.next_timer(ticket, timer)
                    follow_up = [following] if following else []
            ticket.history.append(TicketEvent(action, SYSTEM, now, target))
            ticket.updated_at = now
            if await self._store.update_ticket(ticket, timers=follow_up,
                                               cancel_timers=[timer.id]):
                break
            ticket = await self._store.get_ticket(timer.ticket_id)
            if ticket is None:
                await self._store.complete_timer(timer.id)
                return 1
        else:
            raise RuntimeError("ticket kept changing; escalation step not recorded")
        await self._audit.record(AuditEvent(action, SYSTEM, ticket.conversation_id,
                                            f"{ticket.id}:{timer.kind.value}"))
        log.info("escalation step fired", ticket=ticket.id, lane=ticket.lane,
                 kind=timer.kind.value, stage=ticket.escalation_stage)
        return 1
