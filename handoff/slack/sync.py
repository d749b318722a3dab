"""Keeping Slack in step with the tickets: one note per ticket, updated in place.

Tickets are created by the pipeline and changed by the desk and the escalation sweeper, in
any process. Instead of hooking into those, the Slack layer reconciles: every worker calls
`SlackSync.sweep` about once a second; one of them at a time (a store lock) walks the open
tickets of every lane plus the tickets it still has live notes for, and for each one posts
the note if it has none, updates it (chat.update) when the ticket changed, re-posts it in
the new lane's channel after a move (the old note then says where it went), and, in a
PHI-capable workspace, relays the patient's new messages to a claimed ticket's thread.

What it remembers (store kv, ids only in key names, values sealed by the store):
``slack-ticket/<ticket id>`` the note's channel, ts, lane, rendered revision and digest, and
the transcript index relayed so far; ``slack-thread/<channel>.<ts>`` -> ticket id, for thread
replies; ``slack-live/tickets`` the round's state (`SweepState`): the ids with notes that are
not final yet (resolved tickets leave the lanes, so this is how their last update is not
missed), the tickets backing off after failures, and where a cut-short round stopped. It is
written under the sweep lock after each change, so a round cut short loses nothing; one
record is plenty at clinic scale.

Failures: a ticket whose note fails is retried with exponential backoff (one warning per
try), so it neither floods the log nor eats the rate limit of the others. A note that is
gone (deleted) is posted anew; a lane channel that cannot be used (archived, not found, the
app not in it) falls back to `default_channel`. A round stops at its time budget, well
within the sweep lock's expiry, and the next one resumes where it stopped.

Posting is at least once: a process that dies between chat.postMessage and writing the
record posts the note again on the next round. Everything else is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp
import structlog
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from bot.config.agents import PHI_NOTE_FIELDS
from bot.config.loader import Config
from bot.core.errors import LockTimeout, PatientbotError
from bot.core.session import Direction, TranscriptEntry
from bot.core.tickets import HandoffTicket, TicketStatus
from bot.store import Store
from bot.store.audit import AuditEvent, AuditLog
from handoff.desk import AgentDesk, desk_url
from handoff.slack.blocks import (
    attachments_notice,
    moved_blocks,
    moved_text,
    note_blocks,
    note_text,
    patient_message,
)

log = structlog.get_logger("patientbot.slack")

TICKET_NS, THREAD_NS, LIVE_NS, LIVE_ITEM = "slack-ticket", "slack-thread", "slack-live", "tickets"
SWEEP_LOCK = "slack-sync"
ATTACHMENTS_EVENT = "attachments_not_opened:"
BACKOFF_FIRST, BACKOFF_CAP = 10.0, 600.0  # seconds before a failed ticket is tried again
# Slack's codes for a note (or its thread) that is no longer there to update or reply to.
GONE = frozenset({"message_not_found", "thread_not_found", "cant_update_message"})
# ... and for a channel patientbot cannot post in (any more).
CHANNEL_ERRORS = frozenset({"channel_not_found", "is_archived", "not_in_channel",
                            "restricted_action", "restricted_action_read_only_channel",
                            "restricted_action_thread_only_channel", "team_access_not_granted",
                            "ekm_access_denied"})


class SlackCallError(PatientbotError):
    """A Slack Web API call failed. Carries the method and Slack's error code only (the SDK's
    own exception text can include what was sent). `unavailable`: Slack could not be reached
    or is rate limiting us, so further calls now would fail too."""

    def __init__(self, method: str, code: str, *, unavailable: bool = False) -> None:
        super().__init__(f"slack {method} failed: {code}")
        self.method, self.code, self.unavailable = method, code, unavailable


class SlackWeb:
    """The Web API methods patientbot calls. Links never unfurl (a patient's link must not
    be fetched by Slack); `calls` counts calls made, for the sweep's result."""

    def __init__(self, client: AsyncWebClient) -> None:
        self.client = client
        self.calls = 0
        self._team: str | None = None

    async def team(self) -> str:
        """Our workspace's id (auth.test), asked once per process."""
        if self._team is None:
            response = await self._call("auth.test", self.client.auth_test())
            self._team = str(response.get("team_id") or "")
        return self._team

    async def post(self, channel: str, text: str, *, blocks: list[dict[str, Any]] | None = None,
                   thread_ts: str | None = None, broadcast: bool = False) -> str:
        """Returns the new message's ts."""
        options: dict[str, Any] = {"blocks": blocks} if blocks is not None else {}
        if thread_ts:
            options.update(thread_ts=thread_ts, reply_broadcast=broadcast)
        response = await self._call("chat.postMessage", self.client.chat_postMessage(
            channel=channel, text=text, unfurl_links=False, unfurl_media=False, **options))
        return str(response["ts"])

    async def update(self, channel: str, ts: str, text: str,
                     blocks: list[dict[str, Any]]) -> None:
        await self._call("chat.update", self.client.chat_update(
            channel=channel, ts=ts, text=text, blocks=blocks))

    async def ephemeral(self, channel: str, user: str, text: str, *,
                        thread_ts: str | None = None) -> None:
        await self._call("chat.postEphemeral", self.client.chat_postEphemeral(
            channel=channel, user=user, text=text, thread_ts=thread_ts or None))

    async def _call(self, method: str, call: Any) -> Any:
        self.calls += 1
        try:
            return await call
        except SlackApiError as err:  # not chained: the SDK's text may quote the request
            code = str(err.response.get("error", "error"))
            raise SlackCallError(method, code, unavailable=code == "ratelimited") from None
        except (SlackClientError, aiohttp.ClientError, TimeoutError) as err:
            raise SlackCallError(method, type(err).__name__, unavailable=True) from None


@dataclass
class NoteRecord:
    """Where a ticket's note is and how far it is up to date."""

    channel: str
    ts: str
    lane: str
    revision: int
    digest: str
    start: int | None = None  # transcript index of the handoff's first patient message
    relayed: int | None = None  # next transcript index to relay to the thread

    @property
    def thread(self) -> str:
        return f"{self.channel}.{self.ts}"


def digest(text: str, blocks: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps([text, blocks], sort_keys=True).encode()).hexdigest()


@dataclass
class SweepState:
    """What the rounds remember between them (``slack-live/tickets``)."""

    ids: list[str] = field(default_factory=list)  # tickets whose notes are not final yet
    # ticket id -> {"failures": n, "next": ISO time of the next try, "code": last error}
    retry: dict[str, dict[str, Any]] = field(default_factory=dict)
    resume: str | None = None  # where a cut-short round stopped: the next one starts there

    def due(self, ticket_id: str, now: datetime) -> bool:
        entry = self.retry.get(ticket_id)
        return entry is None or datetime.fromisoformat(entry["next"]) <= now

    def failed(self, ticket_id: str, code: str, now: datetime) -> tuple[int, float]:
        """Count a failure; returns (failures so far, seconds until the next try)."""
        failures = self.retry.get(ticket_id, {}).get("failures", 0) + 1
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (failures - 1))
        self.retry[ticket_id] = {"failures": failures, "code": code,
                                 "next": (now + timedelta(seconds=delay)).isoformat()}
        return failures, delay

    def synced(self, ticket_id: str, watching: bool) -> bool:
        """A ticket's note is up to date; returns whether anything changed."""
        changed = self.retry.pop(ticket_id, None) is not None
        if watching and ticket_id not in self.ids:
            self.ids.append(ticket_id)
            changed = True
        elif not watching and ticket_id in self.ids:
            self.ids.remove(ticket_id)
            changed = True
        return changed

    def forget_all_but(self, ticket_ids: list[str]) -> None:
        """Backoff of tickets no longer synced (closed before they were shown, expired)."""
        self.retry = {key: value for key, value in self.retry.items() if key in ticket_ids}


def _rotated(ticket_ids: list[str], first: str | None) -> list[str]:
    if first not in ticket_ids:
        return ticket_ids
    index = ticket_ids.index(first)
    return ticket_ids[index:] + ticket_ids[:index]


class SlackSync:
    def __init__(self, config: Config, *, desk: AgentDesk, store: Store, audit: AuditLog,
                 web: SlackWeb, clock: Callable[[], datetime]) -> None:
        self._config = config
        self._settings = config.agents.slack
        self._desk = desk
        self._store = store
        self._audit = audit
        self._web = web
        self._clock = clock
        self._retention = config.app.limits.retention_days * 86400.0
        # Long enough for a round of slow calls; a holder that dies frees it after this.
        self._lock_ttl = max(60.0, 6 * self._settings.timeout_seconds)
        # A round stops starting tickets after this, so the lock never expires mid-round.
        self.round_budget = self._lock_ttl / 3
        self._phi_note = any(name in PHI_NOTE_FIELDS for name in self._settings.note_fields)

    # --- records ---------------------------------------------------------------------------
    async def record(self, ticket_id: str) -> NoteRecord | None:
        value = await self._store.kv_get(TICKET_NS, ticket_id)
        return NoteRecord(**value) if value else None

    async def _save(self, ticket_id: str, record: NoteRecord) -> None:
        await self._store.kv_set(TICKET_NS, ticket_id, asdict(record), ttl=self._retention)

    async def ticket_for_thread(self, channel: str, ts: str) -> str | None:
        value = await self._store.kv_get(THREAD_NS, f"{channel}.{ts}")
        return str(value["ticket"]) if value else None

    # --- the reconciliation round ----------------------------------------------------------
    async def sweep(self) -> int:
        """One round, in one process at a time (others skip it); returns Slack calls made."""
        before = self._web.calls
        try:
            async with self._store.lock(SWEEP_LOCK, ttl=self._lock_ttl, timeout=0):
                await self._round()
        except LockTimeout:
            return 0
        return self._web.calls - before

    async def _state(self) -> SweepState:
        value = await self._store.kv_get(LIVE_NS, LIVE_ITEM)
        return SweepState(**value) if value else SweepState()

    async def _save_state(self, state: SweepState) -> None:
        await self._store.kv_set(LIVE_NS, LIVE_ITEM, asdict(state), ttl=self._retention)

    async def _round(self) -> None:
        deadline = time.monotonic() + self.round_budget
        state = await self._state()
        found: list[str] = []
        for lane in self._config.queues:
            found.extend(ticket.id for ticket in await self._desk.open_tickets(lane))
        # Serving order (emergencies first), but a cut-short round's successor resumes
        # where it stopped, so tickets late in the order are not starved.
        pending = _rotated(list(dict.fromkeys([*found, *state.ids])), state.resume)
        now = self._clock()
        due = [ticket_id for ticket_id in pending if state.due(ticket_id, now)]
        state.resume = None
        for index, ticket_id in enumerate(due):
            if index and time.monotonic() >= deadline:
                state.resume = ticket_id
                log.warning("slack sync round stopped at its time budget",
                            left=len(due) - index)
                break
            try:
                watching = await self.sync(ticket_id, wait=0)
            except LockTimeout:  # an action is syncing it right now
                continue
            except SlackCallError as err:
                if err.unavailable:  # this one and the rest next round
                    state.resume = ticket_id
                    log.warning("slack unavailable; sync resumes next round",
                                method=err.method, code=err.code)
                    break
                failures, delay = state.failed(ticket_id, err.code, self._clock())
                log.warning("slack sync failed; retrying later", ticket=ticket_id,
                            method=err.method, code=err.code, failures=failures,
                            retry_in=delay)
            except Exception as err:  # one bad ticket must not stall every other note
                failures, delay = state.failed(ticket_id, type(err).__name__, self._clock())
                log.error("slack sync failed; retrying later", ticket=ticket_id,
                          error_type=type(err).__name__, failures=failures, retry_in=delay)
            else:
                if not state.synced(ticket_id, watching):
                    continue
            await self._save_state(state)  # at once: this round may not get to its end
        else:
            state.forget_all_but(pending)
        await self._save_state(state)

    async def sync(self, ticket_id: str, *, wait: float) -> bool:
        """Bring one ticket's note up to date (under its own lock, waiting up to `wait`
        seconds for it). Returns whether the note still needs watching (not final)."""
        async with self._store.lock(f"slack-note.{ticket_id}", ttl=self._lock_ttl,
                                    timeout=wait):
            return await self._sync(ticket_id)

    async def _sync(self, ticket_id: str) -> bool:
        ticket = await self._store.get_ticket(ticket_id)
        if ticket is None:  # expired under retention
            return False
        resolved = ticket.status is TicketStatus.RESOLVED
        record = await self.record(ticket_id)
        if record is None:
            if resolved:  # closed before it was ever shown: nothing to tell
                return False
            record = await self._post(ticket)
        else:
            channel = self._settings.channel_for(ticket.lane)
            try:
                if not resolved and ticket.lane != record.lane and channel != record.channel:
                    record = await self._repost(ticket, record, channel)
                elif ticket.revision != record.revision or ticket.lane != record.lane:
                    await self._update(ticket, record)
            except SlackCallError as err:
                if err.code not in GONE | CHANNEL_ERRORS:
                    raise
                if resolved:  # nowhere to show that it closed, and nothing left to do
                    log.warning("slack note gone; ticket closed", ticket=ticket.id,
                                code=err.code)
                    await self._store.kv_delete(TICKET_NS, ticket.id)
                    return False
                record = await self._post_anew(ticket, record, err)
        if self._settings.phi_capable and ticket.status is TicketStatus.CLAIMED:
            try:
                await self._relay(ticket, record)
            except SlackCallError as err:
                if err.code not in GONE | CHANNEL_ERRORS:
                    raise
                # The owner must not silently stop hearing from the patient.
                await self._relay(ticket, await self._post_anew(ticket, record, err))
        return not resolved

    async def _post_anew(self, ticket: HandoffTicket, old: NoteRecord,
                         err: SlackCallError) -> NoteRecord:
        """The note (or its channel) is gone: a new note, whose fresh thread gets the
        patient's messages again from the start."""
        log.warning("slack note gone; posting it anew", ticket=ticket.id, method=err.method,
                    code=err.code)
        return await self._post(ticket, start=old.start)

    # --- notes -----------------------------------------------------------------------------
    async def _disclose(self, ticket: HandoffTicket, ref: str) -> None:
        """Audited before it happens, like every disclosure."""
        await self._audit.record(AuditEvent("slack.disclosed", "system",
                                            ticket.conversation_id, f"{ticket.id}:{ref}"))

    async def _post(self, ticket: HandoffTicket, channel: str | None = None,
                    start: int | None = None) -> NoteRecord:
        channel = channel or self._settings.channel_for(ticket.lane)
        text, blocks = note_text(ticket, self._config), note_blocks(ticket, self._config)
        if self._settings.phi_capable and start is None:
            start = await self._start_index(ticket)
        if self._phi_note:
            await self._disclose(ticket, "note")
        try:
            ts = await self._web.post(channel, text, blocks=blocks)
        except SlackCallError as err:
            fallback = self._settings.default_channel
            if err.code not in CHANNEL_ERRORS or not fallback or fallback == channel:
                raise
            log.warning("slack lane channel unusable; note posted in the default channel",
                        ticket=ticket.id, lane=ticket.lane, code=err.code)
            channel = fallback
            ts = await self._web.post(channel, text, blocks=blocks)
        record = NoteRecord(channel=channel, ts=ts, lane=ticket.lane, revision=ticket.revision,
                            digest=digest(text, blocks), start=start, relayed=start)
        await self._save(ticket.id, record)
        await self._store.kv_set(THREAD_NS, record.thread, {"ticket": ticket.id},
                                 ttl=self._retention)
        log.info("slack note posted", ticket=ticket.id, lane=ticket.lane, channel=channel)
        return record

    async def _update(self, ticket: HandoffTicket, record: NoteRecord) -> None:
        text, blocks = note_text(ticket, self._config), note_blocks(ticket, self._config)
        rendered = digest(text, blocks)
        if rendered != record.digest:  # history-only changes (a reply) change nothing shown
            if self._phi_note:
                await self._disclose(ticket, "note")
            await self._web.update(record.channel, record.ts, text, blocks)
            log.info("slack note updated", ticket=ticket.id, status=ticket.status.value)
        record.revision, record.lane, record.digest = ticket.revision, ticket.lane, rendered
        await self._save(ticket.id, record)

    async def _repost(self, ticket: HandoffTicket, old: NoteRecord, channel: str) -> NoteRecord:
        """Moved to a lane with another channel: the note appears there (a fresh thread, so
        the patient's messages are relayed again from the start once it is claimed), and
        the old note says where it went, without controls."""
        record = await self._post(ticket, channel, start=old.start)
        try:
            await self._web.update(old.channel, old.ts, moved_text(ticket, self._config),
                                   moved_blocks(ticket, self._config, channel))
        except SlackCallError as err:  # best effort: its controls still act on the ticket
            log.warning("slack old note not updated", ticket=ticket.id, code=err.code)
        return record

    # --- relaying the patient's messages ---------------------------------------------------
    async def _start_index(self, ticket: HandoffTicket) -> int:
        """Where the handoff's messages start: the patient message that raised it (just
        before the pipeline's ``handoff:<lane>:<reason>`` event), else from now on."""
        entries = await self._store.transcript(ticket.conversation_id)
        for index in range(len(entries) - 1, -1, -1):
            entry = entries[index]
            if entry.direction is Direction.EVENT and entry.text.startswith("handoff:") \
                    and entry.text.endswith(f":{ticket.reason}"):
                first = index
                while first > 0 and entries[first - 1].direction is Direction.EVENT:
                    first -= 1
                if first > 0 and entries[first - 1].direction is Direction.IN:
                    return first - 1
                return index
        return len(entries)

    def _relayed_text(self, ticket: HandoffTicket, entry: TranscriptEntry) -> str | None:
        if entry.direction is Direction.IN:
            return patient_message(entry.text, entry.at, limit=self._settings.max_text_chars,
                                   link=desk_url(self._config, ticket.id))
        if entry.direction is Direction.EVENT and entry.text.startswith(ATTACHMENTS_EVENT):
            return attachments_notice(entry.text.removeprefix(ATTACHMENTS_EVENT))
        return None

    async def _relay(self, ticket: HandoffTicket, record: NoteRecord) -> None:
        """The patient's messages since the handoff, each once, into the note's thread."""
        if record.relayed is None:
            record.start = record.relayed = await self._start_index(ticket)
            await self._save(ticket.id, record)
        entries = await self._store.transcript(ticket.conversation_id, record.relayed)
        first = record.relayed
        for offset, entry in enumerate(entries):
            text = self._relayed_text(ticket, entry)
            if text is not None:
                await self._disclose(ticket, entry.message_id)
                await self._web.post(record.channel, text, thread_ts=record.ts)
            record.relayed = first + offset + 1
            if text is not None:  # at most one message posted twice after a crash
                await self._save(ticket.id, record)
        if record.relayed != first:
            await self._save(ticket.id, record)


def timeout_seconds(value: float) -> int:
    """slack_sdk takes whole seconds."""
    return max(1, math.ceil(value))
