"""Escalation notices by email: the `EscalationNotifier` for sites without Slack.

Each step goes to the address agents.yml `email_notices.staff` gives the staff role concerned
(re-notify: the lane owner; then the backup owner; then the supervisor; callback due soon: the
owner). A callback owner that is an agent's staff id (the ticket was claimed) has no address:
the lane owner's role is told instead. A role without an address is logged (role and ticket
id) and skipped: there is nothing to retry.

Notices are minimum-necessary, like Slack's: ticket id, lane, reason code, urgency, waiting
time, escalation step and a link to the web desk; never the patient's words, name, number or
address (the note's `summary` and `collected` are never read here). Mail goes through the
outbound relay of channels.yml `email` (`relay_*`, `hostname`) with SMTP_PASSWORD; a relay
that cannot be reached, or refuses for now, raises, so the sweeper fires the step again after
its lease. A recipient the relay refuses for good (5xx) is logged and skipped, like a missing
address: retrying would fail the same way, and would re-send the other notifiers' notices.

`FanOutNotifier` hands each step to several notifiers (Slack and email).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from email.message import EmailMessage
from zoneinfo import ZoneInfo

import aiosmtplib
import structlog

from bot.config.loader import Config
from bot.core.envelopes import utcnow
from bot.core.mail import build_reply
from bot.core.tickets import HandoffTicket, Priority, TimerKind
from bot.messaging.relay import relay_send
from handoff.desk import contact_reason, desk_url, waiting_time
from handoff.escalation import STAGE_NAMES, EscalationNotifier

log = structlog.get_logger("patientbot.email_notices")

FROM_NAME = "patientbot"
URGENCY = {Priority.NORMAL: "normal", Priority.URGENT: "URGENT",
           Priority.EMERGENCY: "EMERGENCY"}
# (subject, first line of the body) per step.
HEADLINES = {
    TimerKind.RENOTIFY: ("Unclaimed handoff",
                         "A handoff in your lane is still unclaimed after its acknowledge "
                         "time."),
    TimerKind.BACKUP: ("Unclaimed handoff for the backup owner",
                       "A handoff is still unclaimed after the lane owner was reminded: as "
                       "the backup owner, please claim it or see that someone does."),
    TimerKind.SUPERVISOR: ("Unclaimed handoff, backup owner told",
                           "A handoff is still unclaimed after the backup owner was told."),
    TimerKind.CALLBACK_DUE_SOON: ("Callback due soon",
                                  "The callback promised to the patient is about to be "
                                  "missed."),
}


class EmailNotifier:
    """Sends each escalation step to the staff role's address (EscalationNotifier)."""

    def __init__(self, config: Config, *, secrets: Mapping[str, str] | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self._config = config
        self._settings = config.agents.email_notices
        self._relay = config.channels.email
        self._password = (secrets or {}).get("SMTP_PASSWORD") or None
        self._clock = clock
        self._zone = ZoneInfo(config.app.timezone)
        # Our Message-ID domain and SMTP greeting, as the email channel's.
        self._hostname = (self._relay.hostname
                          or self._settings.from_address.rpartition("@")[2] or "localhost")

    async def renotify(self, ticket: HandoffTicket, *, owner: str) -> None:
        await self._notify(ticket, TimerKind.RENOTIFY, owner)

    async def notify_backup(self, ticket: HandoffTicket, *, backup: str) -> None:
        await self._notify(ticket, TimerKind.BACKUP, backup)

    async def notify_supervisor(self, ticket: HandoffTicket, *, supervisor: str) -> None:
        await self._notify(ticket, TimerKind.SUPERVISOR, supervisor)

    async def callback_due_soon(self, ticket: HandoffTicket, *, owner: str,
                                due: datetime) -> None:
        role = owner
        if owner not in self._settings.staff and owner == ticket.claimed_by:
            role = self._lane_owner(ticket)  # an agent's staff id has no address
        await self._notify(ticket, TimerKind.CALLBACK_DUE_SOON, role, due=due)

    def _lane_owner(self, ticket: HandoffTicket) -> str:
        queue = self._config.queues.get(ticket.lane)
        return ticket.note.owner or (queue.owner if queue else None) or ""

    async def _notify(self, ticket: HandoffTicket, kind: TimerKind, role: str, *,
                      due: datetime | None = None) -> None:
        address = self._settings.staff.get(role)
        if not address:
            log.warning("email notice skipped: no address for the staff role", role=role,
                        ticket=ticket.id, kind=kind.value)
            return
        message = self.compose(ticket, kind, role=role, to=address, due=due)
        try:
            await self._send(message, address)
        except aiosmtplib.SMTPRecipientsRefused as err:
            codes = [refused.code for refused in err.recipients]
            if not codes or not all(500 <= code < 600 for code in codes):
                raise
            log.error("email notice refused by the relay for good; not retried", role=role,
                      ticket=ticket.id, kind=kind.value, code=codes[0])
            return
        log.info("email escalation notice", ticket=ticket.id, kind=kind.value)

    def compose(self, ticket: HandoffTicket, kind: TimerKind, *, role: str, to: str,
                due: datetime | None = None) -> EmailMessage:
        """The notice: plain text, codes and ids only."""
        now = self._clock()
        subject, intro = HEADLINES[kind]
        urgency = URGENCY[ticket.priority]
        if ticket.priority is not Priority.NORMAL:
            subject = f"{urgency}: {subject}"
        queue = self._config.queues.get(ticket.lane)
        current, original = contact_reason(ticket)
        reason = f"{current} (relabelled from {original})" if original else current
        fields = [("Ticket", ticket.id),
                  ("Lane", queue.display_name if queue else ticket.lane),
                  ("Reason", reason), ("Urgency", urgency),
                  ("Waiting", waiting_time(ticket.created_at, now))]
        if kind is TimerKind.CALLBACK_DUE_SOON:
            if due is not None:
                fields.append(("Callback due", f"{due.astimezone(self._zone):%Y-%m-%d %H:%M} "
                                               f"({self._config.app.timezone})"))
            if ticket.claimed_by:
                fields.append(("Claimed by", ticket.claimed_by))
        else:
            fields.append(("Escalation", f"{STAGE_NAMES[kind.stage]} (step {kind.stage} of 3)"))
        fields.append(("Open it", desk_url(self._config, ticket.id)))
        lines = [intro, "", *(f"{label + ':':<14}{value}" for label, value in fields), "",
                 f"Sent to {role} by patientbot. Patient details are never sent by email: "
                 "sign in to the agent desk to read the ticket."]
        message = build_reply(from_address=self._settings.from_address, from_name=FROM_NAME,
                              to=to, subject=f"{self._settings.subject_prefix} {subject}: "
                                            f"ticket {ticket.id}",
                              text="\n".join(lines) + "\n", domain=self._hostname)
        # A notice, not an answer to anyone (RFC 3834): robots must not answer it either.
        message.replace_header("Auto-Submitted", "auto-generated")
        return message

    async def _send(self, message: EmailMessage, address: str) -> None:
        await relay_send(self._relay, message, sender=self._settings.from_address,
                         recipients=[address], password=self._password,
                         local_hostname=self._hostname)


class FanOutNotifier:
    """Hands every step to each notifier (say Slack and email), all at once.

    All are tried; if any raised, the first error is raised after the others finished, so
    the sweeper fires the step again after its lease, and then every notifier is called
    again, including those that succeeded. Delivery is at least once: a failing email relay
    can repeat a Slack notice (and the reverse) once per lease until it recovers.
    """

    def __init__(self, *notifiers: EscalationNotifier) -> None:
        self.notifiers = notifiers

    async def _each(self, call: Callable[[EscalationNotifier], Awaitable[None]]) -> None:
        results = await asyncio.gather(*(call(notifier) for notifier in self.notifiers),
                                       return_exceptions=True)
        failed = [(notifier, result) for notifier, result in zip(self.notifiers, results,
                                                                 strict=True)
                  if isinstance(result, BaseException)]
        for notifier, error in failed:
            log.warning("escalation notifier failed", notifier=type(notifier).__name__,
                        error_type=type(error).__name__)
        if failed:
            raise failed[0][1]

    async def renotify(self, ticket: HandoffTicket, *, owner: str) -> None:
        await self._each(lambda notifier: notifier.renotify(ticket, owner=owner))

    async def notify_backup(self, ticket: HandoffTicket, *, backup: str) -> None:
        await self._each(lambda notifier: notifier.notify_backup(ticket, backup=backup))

    async def notify_supervisor(self, ticket: HandoffTicket, *, supervisor: str) -> None:
        await self._each(lambda notifier: notifier.notify_supervisor(ticket,
                                                                     supervisor=supervisor))

    async def callback_due_soon(self, ticket: HandoffTicket, *, owner: str,
                                due: datetime) -> None:
        await self._each(lambda notifier: notifier.callback_due_soon(ticket, owner=owner,
                                                                     due=due))
