"""Agents work handoffs in Slack: a note per ticket, claim, thread replies, resolve.

A slack-bolt `AsyncApp` receives Slack's requests: `POST /slack/events` in HTTP mode, every
request verified with the signing secret before anything is parsed (bolt's request
verification: HMAC-SHA256, constant-time compare, stale timestamps refused), or over a
Socket Mode WebSocket (`mode: socket`, `SLACK_APP_TOKEN`, no public URL).

- Buttons and menus on a note drive the desk (`handoff.desk.AgentDesk`): claim (atomic;
  a second agent is told who has it), resolve with an outcome, return to the bot, move to
  another lane, relabel the contact reason. The Slack user id is the agent id, so it is on
  every history entry, audit record and relayed reply. Refusals come back as ephemeral
  messages with a plain explanation (never patient data).
- Thread replies on a note: in a PHI-capable workspace the owner's replies reach the
  patient on the patient's own channel (`AgentDesk.reply`), anyone else's stay internal
  notes; elsewhere nothing is relayed and the writer is pointed at the web desk.
- Notes are kept up to date by reconciliation (`handoff.slack_sync`), escalation notices
  come from `handoff.slack_notices`, and what is shown is built in `handoff.slack_blocks`.

Slack retries an event it thinks we missed: each `event_id` is processed once. Bot
messages, edits and other message subtypes are ignored, as are our own messages. Only
the handoff package imports slack-bolt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import structlog
from slack_bolt.adapter.starlette.async_handler import (
    to_async_bolt_request,
    to_starlette_response,
)
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bot.audit import AuditLog
from bot.config import Config
from bot.envelopes import utcnow
from bot.errors import LockTimeout, SecretsError
from bot.store import Store
from channels.base import Refused, read_body
from handoff.desk import AgentDesk, DeskError, desk_url
from handoff.escalation import EscalationNotifier
from handoff.slack_blocks import (
    CLAIM,
    MOVE,
    RELABEL,
    RESOLVE,
    RETURN,
    SEPARATOR,
    escape,
    to_plain,
    who,
)
from handoff.slack_notices import SlackNotifier
from handoff.slack_sync import SlackCallError, SlackSync, SlackWeb, timeout_seconds
from handoff.tickets import TicketStatus

log = structlog.get_logger("patientbot.slack")

EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1_000_000
EVENT_NS = "slack-event"
EVENT_TTL = 24 * 3600.0  # Slack retries an event for minutes, not days
ACTION_SYNC_WAIT = 5.0  # an action waits this long for a sweep holding the ticket's note
_EVENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# A human's thread reply: no subtype, or "also send to channel"; "file_share" is answered
# (files are never relayed); every other subtype (bots, edits, deletions...) is ignored.
REPLY_SUBTYPES = (None, "thread_broadcast")
FILE_SHARE = "file_share"

EXPLAIN = {
    "not_found": "This ticket no longer exists (it may have expired).",
    "invalid_agent": "Your Slack account id cannot be used as an agent id.",
    "not_owner": "Another agent has claimed this ticket: only they can do that. "
                 "Claim it first if it is unclaimed.",
    "already_resolved": "This ticket is already closed.",
    "invalid_outcome": "Pick one of the listed outcomes.",
    "unknown_lane": "That lane is not configured.",
    "same_lane": "The ticket is already in that lane.",
    "unknown_intent": "That contact reason is not configured.",
    "same_intent": "The ticket already has that contact reason.",
    "empty_reply": "Empty replies are not sent.",
    "reply_too_long": "That reply is too long for the patient's channel: shorten it or "
                      "split it.",
    "conversation_gone": "The patient's conversation has expired: the reply was not sent.",
    "conversation_busy": "The conversation is busy right now: please try again in a moment.",
    "busy": "The ticket is busy right now: please try again in a moment.",
}


def _quiet_logger(name: str) -> logging.Logger:
    """The SDK logs request bodies at DEBUG: never below WARNING, whatever the root says."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    return logger


class SlackAgents:
    """The Slack agent layer. `routes()` for the web app (HTTP mode), `start()`/`stop()`
    for Socket Mode, `sweep()` for the workers, `notifier` for the escalation sweeper."""

    def __init__(self, config: Config, *, desk: AgentDesk, store: Store, audit: AuditLog,
                 secrets: Mapping[str, str], clock: Callable[[], datetime] = utcnow) -> None:
        settings = config.agents.slack
        token = secrets.get("SLACK_BOT_TOKEN", "")
        if not token:
            raise SecretsError("SLACK_BOT_TOKEN is not set (agents.yml slack is enabled)")
        self._http = settings.mode == "http"
        signing_secret = secrets.get("SLACK_SIGNING_SECRET", "")
        if self._http and not signing_secret:
            raise SecretsError("SLACK_SIGNING_SECRET is not set (Slack HTTP mode verifies "
                               "every request)")
        self._app_token = secrets.get("SLACK_APP_TOKEN", "")
        if not self._http and not self._app_token:
            raise SecretsError("SLACK_APP_TOKEN is not set (Slack Socket Mode needs an "
                               "app-level token)")
        self._config = config
        self._settings = settings
        self._desk = desk
        self._store = store
        self._clock = clock
        base_url = settings.api_base_url if settings.api_base_url.endswith("/") \
            else settings.api_base_url + "/"
        client = AsyncWebClient(token=token, base_url=base_url,
                                timeout=timeout_seconds(settings.timeout_seconds),
                                logger=_quiet_logger("patientbot.slack.sdk"))
        self._web = SlackWeb(client)
        self.app = AsyncApp(client=client, signing_secret=signing_secret or None,
                            request_verification_enabled=self._http,
                            process_before_response=True, name="patientbot",
                            logger=_quiet_logger("patientbot.slack.bolt"))
        self.sync = SlackSync(config, desk=desk, store=store, audit=audit, web=self._web,
                              clock=clock)
        self.notifier: EscalationNotifier = SlackNotifier(config, web=self._web,
                                                          sync=self.sync, clock=clock)
        self._socket: Any = None
        self._connecting: asyncio.Task[None] | None = None
        self._next_round = 0.0
        self._register()

    # --- lifecycle -------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route(EVENTS_PATH, self._endpoint, methods=["POST"])] if self._http else []

    async def start(self) -> None:
        """Socket Mode: open the WebSocket (idempotent). The SDK keeps retrying a connection
        that fails (and reconnects a dropped one), so start-up waits a bounded time for the
        first one and then lets it retry in the background. HTTP mode: nothing to do."""
        if self._http or self._socket is not None:
            return
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        self._socket = AsyncSocketModeHandler(self.app, self._app_token,
                                              logger=_quiet_logger("patientbot.slack.socket"))
        self._connecting = asyncio.create_task(self._socket.connect_async())
        try:
            await asyncio.wait_for(asyncio.shield(self._connecting),
                                   self._settings.timeout_seconds)
            log.info("slack socket mode connected")
        except TimeoutError:
            log.warning("slack socket mode not connected yet; retrying in the background")

    async def stop(self) -> None:
        """Close the Socket Mode connection (idempotent). Web API calls open and close
        their own HTTP sessions, so there is nothing else to close."""
        socket, self._socket = self._socket, None
        connecting, self._connecting = self._connecting, None
        if socket is not None:
            await socket.close_async()  # also ends a connect that is still retrying
        if connecting is not None and not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting

    async def sweep(self, *, force: bool = False) -> int:
        """One reconciliation round (`handoff.slack_sync`), at most every `sync_seconds`
        in this process unless `force`; returns the Slack calls made."""
        now = time.monotonic()
        if not force and now < self._next_round:
            return 0
        self._next_round = now + self._settings.sync_seconds
        return await self.sync.sweep()

    async def _endpoint(self, request: Request) -> Response:
        try:
            body = await read_body(request, MAX_BODY_BYTES)
        except Refused as refused:
            return JSONResponse({"error": refused.error}, status_code=refused.status)
        # Bolt verifies the signature first, before parsing anything.
        response = await self.app.async_dispatch(to_async_bolt_request(request, body))
        return to_starlette_response(response)

    # --- listeners -------------------------------------------------------------------------
    def _register(self) -> None:
        self.app.action(CLAIM)(self._on_claim)
        self.app.action(RESOLVE)(self._on_resolve)
        self.app.action(RETURN)(self._on_return)
        self.app.action(MOVE)(self._on_move)
        self.app.action(RELABEL)(self._on_relabel)
        self.app.event("message")(self._on_message)
        self.app.error(self._on_error)

    async def _on_error(self, error: Exception, body: dict[str, Any]) -> None:
        # Bolt's default handler logs the exception text; ours logs its type only.
        log.error("slack request failed", kind=body.get("type"), error_type=type(error).__name__)

    async def _tell(self, channel: str, user: str, text: str, *,
                    thread_ts: str | None = None) -> None:
        """An ephemeral message to one person; failing to tell is logged, not raised."""
        try:
            await self._web.ephemeral(channel, user, text, thread_ts=thread_ts)
        except SlackCallError as err:
            log.error("slack ephemeral failed", code=err.code)

    async def _sync_now(self, ticket_id: str) -> None:
        """After an action, the note changes at once instead of on the next sweep."""
        try:
            await self.sync.sync(ticket_id, wait=ACTION_SYNC_WAIT)
        except (LockTimeout, SlackCallError) as err:
            log.warning("slack note sync deferred to the sweep", ticket=ticket_id,
                        error_type=type(err).__name__)

    async def _act(self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any],
                   action: dict[str, Any],
                   run: Callable[[str, str, str], Awaitable[str | None]]) -> None:
        """Common to every control: acknowledge, run the desk action as the clicking user,
        explain a refusal privately, and bring the note up to date."""
        await ack()
        user = str(body["user"]["id"])
        channel = str((body.get("channel") or {}).get("id")
                      or body.get("container", {}).get("channel_id", ""))
        value = action.get("value") or (action.get("selected_option") or {}).get("value", "")
        ticket_id, _, choice = str(value).partition(SEPARATOR)
        try:
            notice = await run(ticket_id, user, choice)
        except DeskError as err:
            log.info("slack action refused", ticket=ticket_id, action=action.get("action_id"),
                     code=err.code)
            notice = EXPLAIN.get(err.code, "That did not work: please try again.")
            if err.code == "not_found":
                await self._tell(channel, user, notice)
                return
        if notice:
            await self._tell(channel, user, notice)
        await self._sync_now(ticket_id)

    async def _on_claim(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await self._act(ack, body, action, self._claim)

    async def _claim(self, ticket_id: str, user: str, _: str) -> str | None:
        result = await self._desk.claim(ticket_id, user)
        match result.code:
            case "already_claimed":
                return f"Already claimed by {who(result.owner)}."
            case "already_yours":
                return "You already own this ticket."
            case "resolved":
                return EXPLAIN["already_resolved"]
        link = f"<{desk_url(self._config, ticket_id)}|the web desk>"
        if self._settings.phi_capable:
            return ("You own this ticket. The patient's messages appear in the thread; your "
                    "replies in the thread are sent to the patient.")
        return ("You own this ticket. This workspace is not set up for patient information: "
                f"read and answer the conversation in {link}.")

    async def _on_resolve(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        async def run(ticket_id: str, user: str, outcome: str) -> None:
            await self._desk.resolve(ticket_id, user, outcome)
        await self._act(ack, body, action, run)

    async def _on_return(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        async def run(ticket_id: str, user: str, _: str) -> None:
            await self._desk.return_to_bot(ticket_id, user)
        await self._act(ack, body, action, run)

    async def _on_move(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        async def run(ticket_id: str, user: str, lane: str) -> None:
            await self._desk.move(ticket_id, user, lane)
        await self._act(ack, body, action, run)

    async def _on_relabel(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        async def run(ticket_id: str, user: str, intent: str) -> str:
            await self._desk.relabel(ticket_id, user, intent)
            return (f"Relabelled as {escape(intent)}: the correction goes to the NLU review "
                    "queue.")
        await self._act(ack, body, action, run)

    # --- thread replies --------------------------------------------------------------------
    async def _on_message(self, body: dict[str, Any], event: dict[str, Any],
                          context: Any) -> None:
        subtype = event.get("subtype")
        if subtype not in (*REPLY_SUBTYPES, FILE_SHARE) or event.get("bot_id"):
            return  # bot messages, edits, deletions, joins...
        user = event.get("user")
        thread_ts, channel = event.get("thread_ts"), event.get("channel")
        if not user or user == context.get("bot_user_id") or not thread_ts or not channel \
                or thread_ts == event.get("ts"):
            return  # our own messages, and channel messages outside a thread
        ticket_id = await self.sync.ticket_for_thread(channel, thread_ts)
        if ticket_id is None:
            return  # a thread that is not a ticket's
        event_id = str(body.get("event_id") or "")
        if _EVENT_ID.match(event_id) and not await self._store.kv_create_all(
                EVENT_NS, [event_id], {"at": self._clock().isoformat()}, ttl=EVENT_TTL):
            log.info("slack event already processed", ticket=ticket_id)
            return
        try:
            if subtype == FILE_SHARE:
                await self._tell(channel, user, "Not sent to the patient: files (and messages "
                                 "with files) are never relayed. Send the text on its own.",
                                 thread_ts=thread_ts)
                return
            await self._thread_reply(ticket_id, channel, thread_ts, user,
                                     str(event.get("text") or ""))
        except Exception:
            # Not processed after all: Slack's retry of this event may try again.
            if _EVENT_ID.match(event_id):
                await self._store.kv_delete(EVENT_NS, event_id)
            raise

    async def _thread_reply(self, ticket_id: str, channel: str, thread_ts: str, user: str,
                            text: str) -> None:
        async def tell(notice: str) -> None:
            await self._tell(channel, user, notice, thread_ts=thread_ts)

        link = f"<{desk_url(self._config, ticket_id)}|the web desk>"
        if not self._settings.phi_capable:
            await tell("Not sent to the patient: this workspace is not set up for patient "
                       f"information. Read and answer the conversation in {link}.")
            return
        try:
            ticket = await self._desk.get(ticket_id)
        except DeskError as err:
            await tell(EXPLAIN.get(err.code, "That did not work."))
            return
        if ticket.status is TicketStatus.RESOLVED:
            await tell("Internal note: this ticket is closed, so nothing is sent to the "
                       "patient.")
        elif ticket.status is TicketStatus.CLAIMED and ticket.claimed_by == user:
            try:
                await self._desk.reply(ticket_id, user, to_plain(text))
            except DeskError as err:
                log.info("slack reply refused", ticket=ticket_id, code=err.code)
                await tell(f"Not sent to the patient. {EXPLAIN.get(err.code, '')}".strip())
                return
            log.info("slack reply relayed", ticket=ticket_id, agent=user)
        elif ticket.status is TicketStatus.CLAIMED:
            await tell(f"Internal note: not sent to the patient (only {who(ticket.claimed_by)}"
                       ", who claimed the ticket, replies to the patient).")
        else:
            await tell("Internal note: not sent to the patient. Claim the ticket to reply to "
                       "the patient from this thread.")
