"""Escalation policy: which timers a handoff ticket gets and when each stage is due.

Pure decisions on a ticket; `handoff.escalation` sweeps the timers and notifies people."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.config.loader import Config
from bot.core.tickets import (
    UNCLAIMED_KINDS,
    HandoffTicket,
    Priority,
    TicketStatus,
    TicketTimer,
    TimerKind,
    timer_id,
)
from bot.engine.coverage import Coverage


def callback_due(ticket: HandoffTicket) -> datetime | None:
    """The callback deadline promised to the patient, if the note has one."""
    try:
        due = datetime.fromisoformat(ticket.note.callback_due)
    except ValueError:
        return None
    return due if due.tzinfo is not None else None


class EscalationPolicy:
    """When each timer of a ticket is due: pure functions of (config, coverage, ticket,
    time). Shared by the pipeline (new tickets), the desk (moved tickets) and the sweeper."""

    def __init__(self, config: Config, coverage: Coverage | None = None) -> None:
        self._config = config
        self._coverage = coverage or Coverage.from_config(config)

    def ack_sla(self, ticket: HandoffTicket) -> timedelta:
        queue = self._config.queues.get(ticket.lane)
        minutes = queue.ack_sla_minutes if queue else self._config.queues["front_desk"] \
            .ack_sla_minutes
        if ticket.priority is Priority.EMERGENCY:
            minutes = min(minutes, self._config.escalation.emergency_ack_minutes)
        return timedelta(minutes=minutes)

    def staffed(self, ticket: HandoffTicket, at: datetime) -> datetime:
        """`at`, or when the lane next opens if nobody staffs it at `at` (lanes waiting for
        the next business day). Emergencies and on-call lanes escalate at any hour."""
        queue = self._config.queues.get(ticket.lane)
        if (not self._config.escalation.staffed_hours_only or queue is None
                or ticket.priority is Priority.EMERGENCY
                or (queue.after_hours == "on_call" and queue.on_call_owner)):
            return at
        try:
            return self._coverage.next_open(queue.hours, at).astimezone(UTC)
        except ValueError:  # a schedule that never opens: do not wait forever
            return at

    def first_timers(self, ticket: HandoffTicket, now: datetime) -> list[TicketTimer]:
        """The timers of a ticket that has just been queued (created, or moved to a lane):
        the first unclaimed step and the callback alert, in the ticket's current round."""
        timers = [TicketTimer(ticket.id, TimerKind.RENOTIFY,
                              self.staffed(ticket, now + self.ack_sla(ticket)),
                              ticket.escalation_round)]
        alert = self.callback_alert(ticket, now)
        if alert is not None:
            timers.append(alert)
        return timers

    def next_timer(self, ticket: HandoffTicket, fired: TicketTimer) -> TicketTimer | None:
        """The unclaimed step after `fired`, one SLA period after it was due."""
        following = {TimerKind.RENOTIFY: TimerKind.BACKUP,
                     TimerKind.BACKUP: TimerKind.SUPERVISOR}.get(fired.kind)
        if following is None:
            return None
        return TicketTimer(ticket.id, following,
                           self.staffed(ticket, fired.due + self.ack_sla(ticket)),
                           ticket.escalation_round)

    def callback_alert(self, ticket: HandoffTicket, now: datetime) -> TicketTimer | None:
        due = callback_due(ticket)
        if due is None:
            return None
        settings = self._config.escalation
        alert = now + max(due - now, timedelta(0)) * settings.callback_alert_share
        if settings.callback_alert_lead_minutes:
            alert = min(alert, due - timedelta(minutes=settings.callback_alert_lead_minutes))
        alert = self.staffed(ticket, max(alert, now))
        return TicketTimer(ticket.id, TimerKind.CALLBACK_DUE_SOON, alert,
                           ticket.escalation_round)

    @staticmethod
    def unclaimed_timer_ids(ticket: HandoffTicket) -> list[str]:
        """What a claim cancels."""
        return [timer_id(ticket.id, kind, ticket.escalation_round) for kind in UNCLAIMED_KINDS]

    @staticmethod
    def all_timer_ids(ticket: HandoffTicket) -> list[str]:
        """What resolving (or re-queueing) a ticket cancels."""
        return [timer_id(ticket.id, kind, ticket.escalation_round) for kind in TimerKind]


def applies(ticket: HandoffTicket, timer: TicketTimer) -> bool:
    """Whether a due timer still means something: the ticket is not resolved, the timer is
    of its current round, and (unclaimed steps) it is still unclaimed and not past that step,
    or (callback) the owner was not warned yet."""
    if ticket.status is TicketStatus.RESOLVED or timer.round != ticket.escalation_round:
        return False
    if timer.kind is TimerKind.CALLBACK_DUE_SOON:
        return not ticket.callback_alerted
    return ticket.status is TicketStatus.OPEN and ticket.escalation_stage < timer.kind.stage
