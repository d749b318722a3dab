"""Escalation notices in Slack: the `EscalationNotifier` the escalation sweeper calls.

Notices are minimum-necessary whatever `phi_capable` says: ticket id, lane, reason
category, urgency, waiting time and a link to the web desk. People are mentioned through
`agents.yml slack.staff` (staff role -> U.../S...); a role without a mapping is named in
text. A notice for a note that is gone (or whose channel is) goes to the lane's channel, then
to the default channel; any other failed Slack call raises, so the sweeper fires the step
again after its lease.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import structlog

from bot.config.loader import Config
from bot.core.tickets import HandoffTicket
from handoff.slack.blocks import (
    backup_text,
    callback_text,
    escape,
    is_user_id,
    mention,
    renotify_text,
    supervisor_text,
)
from handoff.slack.sync import CHANNEL_ERRORS, GONE, SlackCallError, SlackSync, SlackWeb

log = structlog.get_logger("patientbot.slack")


class SlackNotifier:
    def __init__(self, config: Config, *, web: SlackWeb, sync: SlackSync,
                 clock: Callable[[], datetime]) -> None:
        self._config = config
        self._settings = config.agents.slack
        self._web = web
        self._sync = sync
        self._clock = clock

    def _to(self, role: str) -> str:
        """The mention that starts a notice: the role's Slack id, else the role by name."""
        staff_id = self._settings.staff.get(role, "")
        if staff_id:
            return f"{mention(staff_id)} "
        return f"{escape(role)}: " if role else ""

    async def _in_thread(self, ticket: HandoffTicket, text: str) -> None:
        """In the note's thread, also shown in the channel; in the lane's channel if the
        note is not posted (yet)."""
        record = await self._sync.record(ticket.id)
        if record is not None:
            try:
                await self._web.post(record.channel, text, thread_ts=record.ts,
                                     broadcast=True)
                return
            except SlackCallError as err:
                if err.code not in GONE | CHANNEL_ERRORS:
                    raise
                log.warning("slack note gone; notice posted in the channel", ticket=ticket.id,
                            code=err.code)
        await self._post(self._settings.channel_for(ticket.lane), text)

    async def _to_channel(self, ticket: HandoffTicket, role: str, text: str) -> None:
        channel = self._settings.staff_channels.get(role) or \
            self._settings.channel_for(ticket.lane)
        await self._post(channel, text)

    async def _post(self, channel: str, text: str) -> None:
        """In `channel`, else in the default channel if `channel` cannot be used."""
        try:
            await self._web.post(channel, text)
        except SlackCallError as err:
            fallback = self._settings.default_channel
            if err.code not in CHANNEL_ERRORS or not fallback or fallback == channel:
                raise
            log.warning("slack channel unusable; notice posted in the default channel",
                        code=err.code)
            await self._web.post(fallback, text)

    async def renotify(self, ticket: HandoffTicket, *, owner: str) -> None:
        await self._in_thread(ticket, renotify_text(ticket, self._config, self._clock(),
                                                    to=self._to(owner)))
        log.info("slack escalation notice", ticket=ticket.id, kind="renotify")

    async def notify_backup(self, ticket: HandoffTicket, *, backup: str) -> None:
        await self._to_channel(ticket, backup, backup_text(
            ticket, self._config, self._clock(), role=backup, to=self._to(backup)))
        log.info("slack escalation notice", ticket=ticket.id, kind="backup")

    async def notify_supervisor(self, ticket: HandoffTicket, *, supervisor: str) -> None:
        await self._to_channel(ticket, supervisor, supervisor_text(
            ticket, self._config, self._clock(), role=supervisor, to=self._to(supervisor)))
        log.info("slack escalation notice", ticket=ticket.id, kind="supervisor")

    async def callback_due_soon(self, ticket: HandoffTicket, *, owner: str,
                                due: datetime) -> None:
        to = f"{mention(owner)} " if is_user_id(owner) else self._to(owner)
        await self._in_thread(ticket, callback_text(ticket, self._config, self._clock(),
                                                    due=due, to=to))
        log.info("slack escalation notice", ticket=ticket.id, kind="callback_due_soon")
