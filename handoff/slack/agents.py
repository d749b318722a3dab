"""Agents work handoffs in Slack: a note per ticket, claim, thread replies, resolve.

A slack-bolt `AsyncApp` receives Slack's requests: `POST /slack/events` in HTTP mode, or
over a Socket Mode WebSocket (`mode: socket`, `SLACK_APP_TOKEN`, no public URL). In HTTP
mode `_endpoint` verifies the signing secret on the raw bytes before anything is decoded or
parsed (HMAC-SHA256, constant-time compare, stale timestamps refused): 401 and a warning
otherwise; a signed body that cannot be read is a 400.

- Buttons and menus on a note drive the desk (`handoff.desk.AgentDesk`): claim (atomic;
  a second agent is told who has it), resolve with an outcome, return to the bot, move to
  another lane, relabel the contact reason. Slack wants an answer within 3 s, so a click is
  acknowledged at once and the desk action and note update run in the background (`idle()`
  waits for them; `stop()` lets them finish briefly, then cancels them). The Slack user id is
  the agent id, so it is on every history entry, audit record and relayed reply. Refusals
  come back as ephemeral messages with a plain explanation (never patient data).
- Thread replies on a note: in a PHI-capable workspace the owner's replies reach the
  patient on the patient's own channel (`AgentDesk.reply`, flagged as PHI: a channel that
  must not carry PHI sends the patient a portal pointer instead), anyone else's stay
  internal notes; elsewhere nothing is relayed and the writer is pointed at the web desk.
- Only members of our own workspace (auth.test's team) act: guests from other workspaces
  (Slack Connect) are refused.
- Notes are kept up to date by reconciliation (`handoff.slack.sync`), escalation notices
  come from `handoff.slack.notices`, and what is shown is built in `handoff.slack.blocks`.

Slack retries an event it thinks we missed, so each `event_id` is processed once: marked
"processing" for a short while, "done" once processed, and released if processing did not
finish (an error, a cancelled request, a crash: the mark expires), so Slack's retry tries
again; a retry that arrives while the first attempt is still running is answered 503, so
Slack tries once more later. A replayed owner reply is not sent twice: its outbound id is
derived from the event id. Events are handled within the request (Slack's retries are what
makes them durable); bot messages, edits and other subtypes are ignored, as are our own
messages. Only the handoff package imports slack-bolt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

import structlog
from slack_bolt.adapter.starlette.async_handler import to_starlette_response
from slack_bolt.async_app import AsyncApp, AsyncBoltRequest
from slack_bolt.request.internals import parse_body
from slack_bolt.response import BoltResponse
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bot.config.loader import Config
from bot.config.settings import require_secrets, slack_secrets_needed
from bot.core.envelopes import utcnow
from bot.core.http import Refused, read_body
from bot.core.tickets import TicketStatus
from bot.store import Store
from bot.store.audit import AuditLog
from handoff.desk import REFUSALS, AgentDesk, DeskError, desk_url
from handoff.escalation import EscalationNotifier
from handoff.slack.blocks import (
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
from handoff.slack.notices import SlackNotifier
from handoff.slack.sync import SlackCallError, SlackSync, SlackWeb, timeout_seconds

log = structlog.get_logger("patientbot.slack")

EVENTS_PATH = "/slack/events"
MAX_BODY_BYTES = 1_000_000
EVENT_NS = "slack-event"
EVENT_TTL = 24 * 3600.0  # Slack retries an event for minutes, not days
EVENT_PROCESSING_TTL = 60.0  # a crashed attempt's mark expires, so Slack's retry runs
ACTION_SYNC_WAIT = 5.0  # an action waits this long for a sweep holding the ticket's note
ACTION_DEADLINE = 60.0  # background work never runs longer than this
STOP_GRACE = 5.0  # stop() lets background work finish for this long, then cancels it
_EVENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_REPLY_IDS = uuid.UUID("5b0d7f5e-4c4b-4a53-9c2e-7a1f0e2d9b61")  # namespace: event -> reply id
# A human's thread reply: no subtype, or "also send to channel"; "file_share" is answered
# (files are never relayed); every other subtype (bots, edits, deletions...) is ignored.
REPLY_SUBTYPES = (None, "thread_broadcast")
FILE_SHARE = "file_share"
TRY_AGAIN = "That did not work: please try again."
OUTSIDER = "Only members of this workspace can work handoffs."

# A control's desk call: (ticket id, Slack user id, chosen option) -> what to tell the user.
Control = Callable[[str, str, str], Awaitable[str | None]]


def _quiet_logger(name: str) -> logging.Logger:
    """The SDK logs request bodies at DEBUG: never below WARNING, whatever the root says."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.WARNING)
    return logger


def reply_id(event_id: str) -> str:
    """The outbound id of the reply an event carries: the same for Slack's retries."""
    return uuid.uuid5(_REPLY_IDS, event_id).hex


class SlackAgents:
    """The Slack agent layer. `routes()` for the web app (HTTP mode), `start()`/`stop()`
    for Socket Mode and background work, `sweep()` for the workers, `notifier` for the
    escalation sweeper."""

    def __init__(self, config: Config, *, desk: AgentDesk, store: Store, audit: AuditLog,
                 secrets: Mapping[str, str], clock: Callable[[], datetime] = utcnow) -> None:
        settings = config.agents.slack
        require_secrets(slack_secrets_needed(settings), secrets)  # also when built directly
        token = secrets["SLACK_BOT_TOKEN"]
        self._http = settings.mode == "http"
        signing_secret = secrets.get("SLACK_SIGNING_SECRET", "")
        self._app_token = secrets.get("SLACK_APP_TOKEN", "")
        self._config = config
        self._settings = settings
        self._desk = desk
        self._store = store
        self._clock = clock
        self._verifier = SignatureVerifier(signing_secret) if self._http else None
        base_url = settings.api_base_url if settings.api_base_url.endswith("/") \
            else settings.api_base_url + "/"
        client = AsyncWebClient(token=token, base_url=base_url,
                                timeout=timeout_seconds(settings.timeout_seconds),
                                logger=_quiet_logger("patientbot.slack.sdk"))
        self._web = SlackWeb(client)
        # Bolt's own verification is off: `_endpoint` verifies before bolt parses anything.
        self.app = AsyncApp(client=client, signing_secret=signing_secret or None,
                            request_verification_enabled=False,
                            process_before_response=True, name="patientbot",
                            logger=_quiet_logger("patientbot.slack.bolt"))
        self.sync = SlackSync(config, desk=desk, store=store, audit=audit, web=self._web,
                              clock=clock)
        self.notifier: EscalationNotifier = SlackNotifier(config, web=self._web,
                                                          sync=self.sync, clock=clock)
        self._controls: dict[str, Control] = {
            CLAIM: self._claim, RESOLVE: self._resolve, RETURN: self._return,
            MOVE: self._move, RELABEL: self._relabel}
        self._tasks: set[asyncio.Task[None]] = set()  # referenced, so never collected early
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

    async def stop(self, *, grace: float = STOP_GRACE) -> None:
        """Close the Socket Mode connection, then give background work `grace` seconds to
        finish and cancel what is left (idempotent). A cancelled action was acknowledged
        but may not have happened: the agent sees the note unchanged and clicks again. Web
        API calls open and close their own HTTP sessions: nothing else to close."""
        socket, self._socket = self._socket, None
        connecting, self._connecting = self._connecting, None
        if socket is not None:
            await socket.close_async()  # also ends a connect that is still retrying
        if connecting is not None and not connecting.done():
            connecting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await connecting
        if self._tasks:
            _, late = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
            if late:
                log.warning("slack background work cancelled at shutdown", tasks=len(late))

    async def idle(self) -> None:
        """Wait until the background work started so far (and any it starts) is done."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    async def sweep(self, *, force: bool = False) -> int:
        """One reconciliation round (`handoff.slack.sync`), at most every `sync_seconds`
        in this process unless `force`; returns the Slack calls made."""
        now = time.monotonic()
        if not force and now < self._next_round:
            return 0
        self._next_round = now + self._settings.sync_seconds
        return await self.sync.sweep()

    def _spawn(self, work: Coroutine[Any, Any, None], *, what: str) -> None:
        async def guarded() -> None:
            try:
                async with asyncio.timeout(ACTION_DEADLINE):
                    await work
            except Exception as err:  # nobody awaits this task: its errors end here
                log.error("slack background work failed", work=what,
                          error_type=type(err).__name__)
            finally:
                work.close()  # cancelled before it started: no "never awaited" warning

        task = asyncio.create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _endpoint(self, request: Request) -> Response:
        try:
            body = await read_body(request, MAX_BODY_BYTES)
        except Refused as refused:
            return JSONResponse({"error": refused.error}, status_code=refused.status)
        assert self._verifier is not None  # HTTP mode only
        try:  # the raw bytes, before anything is decoded or parsed
            valid = self._verifier.is_valid_request(body, dict(request.headers))
        except ValueError:  # not UTF-8 or a timestamp that is no number: not Slack's
            valid = False
        if not valid:
            log.warning("slack request refused", reason="signature")
            return JSONResponse({"error": "invalid_signature"}, status_code=401)
        content_type = request.headers.get("content-type", "").split(";")[0] or None
        try:  # as bolt will parse it
            text = body.decode("utf-8")
            readable = isinstance(parse_body(text, content_type), dict)
        except ValueError:
            readable = False
        if not readable:  # signed, yet neither a JSON object nor a form carrying one
            log.warning("slack request refused", reason="unreadable_body")
            return JSONResponse({"error": "bad_request"}, status_code=400)
        response = await self.app.async_dispatch(AsyncBoltRequest(
            body=text, query=dict(request.query_params), headers=dict(request.headers)))
        return to_starlette_response(response)

    # --- listeners -------------------------------------------------------------------------
    def _register(self) -> None:
        for action_id in self._controls:
            self.app.action(action_id)(self._on_action)
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
            log.warning("slack ephemeral failed", code=err.code)

    async def _member(self, team: str | None, user: str) -> bool:
        """Whether the acting user belongs to our workspace (guests from other workspaces
        in a shared channel do not). Raises `SlackCallError` if auth.test fails."""
        if team and team == await self._web.team():
            return True
        log.warning("slack user from another workspace refused", user=user, team=team or "")
        return False

    async def _sync_now(self, ticket_id: str) -> None:
        """After an action, the note changes at once instead of on the next sweep. The
        action has committed: whatever fails here, the sweep catches up."""
        try:
            await self.sync.sync(ticket_id, wait=ACTION_SYNC_WAIT)
        except Exception as err:
            log.warning("slack note sync deferred to the sweep", ticket=ticket_id,
                        error_type=type(err).__name__)

    async def _on_action(self, ack: Callable[[], Awaitable[Any]], body: dict[str, Any],
                         action: dict[str, Any]) -> None:
        await ack()  # Slack wants an answer within 3 s: the work goes on in the background
        self._spawn(self._act(body, action), what=str(action.get("action_id")))

    async def _act(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        """Run the control's desk action as the clicking user, explain a refusal privately,
        and bring the note up to date."""
        user = str(body["user"]["id"])
        team = body["user"].get("team_id") or (body.get("team") or {}).get("id")
        channel = str((body.get("channel") or {}).get("id")
                      or body.get("container", {}).get("channel_id", ""))
        action_id = str(action.get("action_id"))
        value = action.get("value") or (action.get("selected_option") or {}).get("value", "")
        ticket_id, _, choice = str(value).partition(SEPARATOR)
        try:
            if not await self._member(team, user):
                await self._tell(channel, user, OUTSIDER)
                return
            notice = await self._controls[action_id](ticket_id, user, choice)
        except DeskError as err:
            log.info("slack action refused", ticket=ticket_id, action=action_id, code=err.code)
            notice = REFUSALS.get(err.code, TRY_AGAIN)
            if err.code == "not_found":
                await self._tell(channel, user, notice)
                return
        except Exception as err:
            log.error("slack action failed", ticket=ticket_id, action=action_id,
                      error_type=type(err).__name__)
            await self._tell(channel, user, TRY_AGAIN)
            return
        if notice:
            await self._tell(channel, user, notice)
        await self._sync_now(ticket_id)

    # --- the controls' desk calls ----------------------------------------------------------
    async def _claim(self, ticket_id: str, user: str, _: str) -> str:
        result = await self._desk.claim(ticket_id, user)
        match result.code:
            case "already_claimed":
                return f"Already claimed by {who(result.owner)}."
            case "already_yours":
                return "You already own this ticket."
            case "resolved":
                return REFUSALS["already_resolved"]
        if not self._settings.phi_capable:
            link = f"<{desk_url(self._config, ticket_id)}|the web desk>"
            return ("You own this ticket. This workspace is not set up for patient "
                    f"information: read and answer the conversation in {link}.")
        guide = ("You own this ticket. The patient's messages appear in the thread; your "
                 "replies in the thread are sent to the patient.")
        channel = result.ticket.channel
        if not self._carries_phi(channel):
            guide += (f" The patient writes on {escape(channel)}, which must not carry "
                      "patient information: your replies reach them as a link to the patient "
                      "portal, not as text.")
        return guide

    def _carries_phi(self, channel: str) -> bool:
        """Whether a patient channel may carry PHI (`channels.yml <channel>.phi_allowed`;
        the portal chat always may, a channel that does not say may not)."""
        if channel == "portal":
            return True
        settings = getattr(self._config.channels, channel, None)
        return bool(getattr(settings, "phi_allowed", False))

    async def _resolve(self, ticket_id: str, user: str, outcome: str) -> None:
        await self._desk.resolve(ticket_id, user, outcome)

    async def _return(self, ticket_id: str, user: str, _: str) -> None:
        await self._desk.return_to_bot(ticket_id, user)

    async def _move(self, ticket_id: str, user: str, lane: str) -> None:
        await self._desk.move(ticket_id, user, lane)

    async def _relabel(self, ticket_id: str, user: str, intent: str) -> str:
        await self._desk.relabel(ticket_id, user, intent)
        return f"Relabelled as {escape(intent)}: the correction goes to the NLU review queue."

    # --- thread replies --------------------------------------------------------------------
    async def _on_message(self, body: dict[str, Any], event: dict[str, Any],
                          context: Any) -> BoltResponse | None:
        subtype = event.get("subtype")
        if subtype not in (*REPLY_SUBTYPES, FILE_SHARE) or event.get("bot_id"):
            return None  # bot messages, edits, deletions, joins...
        user = event.get("user")
        thread_ts, channel = event.get("thread_ts"), event.get("channel")
        if not user or user == context.get("bot_user_id") or not thread_ts or not channel \
                or thread_ts == event.get("ts"):
            return None  # our own messages, and channel messages outside a thread
        ticket_id = await self.sync.ticket_for_thread(channel, thread_ts)
        if ticket_id is None:
            return None  # a thread that is not a ticket's
        event_id = str(body.get("event_id") or "")
        once = _EVENT_ID.match(event_id) is not None
        if once:
            state = await self._begin_event(event_id)
            if state == "done":
                log.info("slack event already processed", ticket=ticket_id)
                return None
            if state == "busy":  # Slack retries again later, when the first one has ended
                log.info("slack event still being processed", ticket=ticket_id)
                return BoltResponse(status=503, body="")
        finished = False
        try:
            team = event.get("user_team") or event.get("team")
            if not await self._member(team, user):
                await self._tell(channel, user, f"Not sent to the patient. {OUTSIDER}",
                                 thread_ts=thread_ts)
            elif subtype == FILE_SHARE:
                await self._tell(channel, user, "Not sent to the patient: files (and messages "
                                 "with files) are never relayed. Send the text on its own.",
                                 thread_ts=thread_ts)
            else:
                await self._thread_reply(ticket_id, channel, thread_ts, user,
                                         str(event.get("text") or ""),
                                         message_id=reply_id(event_id) if once else None)
            finished = True
        finally:  # also when cancelled (the request's deadline): Slack's retry runs again
            if once:
                await self._end_event(event_id, finished=finished)
        return None

    async def _begin_event(self, event_id: str) -> str:
        """Mark an event as being processed: "new" (go ahead), "busy" (another attempt is
        running) or "done" (processed already)."""
        if await self._store.kv_create_all(EVENT_NS, [event_id], {"state": "processing"},
                                           ttl=EVENT_PROCESSING_TTL):
            return "new"
        mark = await self._store.kv_get(EVENT_NS, event_id)
        return "busy" if mark is None or mark.get("state") == "processing" else "done"

    async def _end_event(self, event_id: str, *, finished: bool) -> None:
        """Processed: remembered for a day. Not processed: forgotten, so a retry runs."""
        try:
            if finished:
                await self._store.kv_set(EVENT_NS, event_id, {"state": "done"}, ttl=EVENT_TTL)
            else:
                await self._store.kv_delete(EVENT_NS, event_id)
        except Exception as err:  # the mark expires on its own; replies are not sent twice
            log.warning("slack event mark not updated", error_type=type(err).__name__)

    async def _thread_reply(self, ticket_id: str, channel: str, thread_ts: str, user: str,
                            text: str, *, message_id: str | None) -> None:
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
            await tell(REFUSALS.get(err.code, TRY_AGAIN))
            return
        if ticket.status is TicketStatus.RESOLVED:
            await tell("Internal note: this ticket is closed, so nothing is sent to the "
                       "patient.")
        elif ticket.status is TicketStatus.CLAIMED and ticket.claimed_by == user:
            try:
                # PHI: agents in a PHI-capable workspace may write anything, so a channel
                # that must not carry PHI gets a portal pointer instead.
                await self._desk.reply(ticket_id, user, to_plain(text), phi=True,
                                       message_id=message_id)
            except DeskError as err:
                log.info("slack reply refused", ticket=ticket_id, code=err.code)
                await tell(f"Not sent to the patient. {REFUSALS.get(err.code, '')}".strip())
                return
            log.info("slack reply relayed", ticket=ticket_id, agent=user)
        elif ticket.status is TicketStatus.CLAIMED:
            await tell(f"Internal note: not sent to the patient (only {who(ticket.claimed_by)}"
                       ", who claimed the ticket, replies to the patient).")
        else:
            await tell("Internal note: not sent to the patient. Claim the ticket to reply to "
                       "the patient from this thread.")
