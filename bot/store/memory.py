"""In-memory Store: the embedded default for one process. Nothing survives a restart.

It keeps the same sealed strings RedisStore keeps (via `Codec`) and the same TTL semantics,
so the contract suite holds for both.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

from bot.core.crypto import Hasher, Sealer
from bot.core.envelopes import ConversationKey, Outbound
from bot.core.session import Session, TranscriptEntry
from bot.core.tickets import HandoffTicket, TicketStatus, TicketTimer
from bot.store.base import (
    Lease,
    MailboxItem,
    ReviewItem,
    Turn,
    TurnStart,
    acquire_polling,
)
from bot.store.codec import Codec


class _Expiring:
    """A dict whose entries vanish after their TTL (checked on read, and purged in bulk
    every `PURGE_EVERY` writes so that a long-running process does not grow without bound)."""

    PURGE_EVERY = 10_000

    def __init__(self) -> None:
        self._items: dict[str, tuple[Any, float]] = {}
        self._writes = 0

    def get(self, key: str) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._items[key]
            return None
        return item[0]

    def set(self, key: str, value: Any, ttl: float) -> None:
        now = time.monotonic()
        self._items[key] = (value, now + ttl)
        self._writes += 1
        if self._writes % self.PURGE_EVERY == 0:
            self._items = {k: item for k, item in self._items.items() if item[1] > now}

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def incr(self, key: str, ttl: float) -> int:
        """Add one; a new counter expires `ttl` seconds after its first hit (like INCR+EXPIRE)."""
        if self.get(key) is None:
            self.set(key, 1, ttl)
            return 1
        count, expires = self._items[key]
        self._items[key] = (count + 1, expires)
        return count + 1


class MemoryStore:
    def __init__(self, sealer: Sealer, hasher: Hasher, *, dedupe_ttl: float = 72 * 3600,
                 retention: float = 90 * 86400) -> None:
        self._codec = Codec(sealer)
        self._hasher = hasher
        self._dedupe_ttl = dedupe_ttl
        self._retention = retention
        self._sessions = _Expiring()
        self._processed = _Expiring()
        self._locks = _Expiring()
        self._kv = _Expiring()
        self._counters = _Expiring()
        self._transcripts: dict[str, list[str]] = defaultdict(list)
        # Pending entries (body, due time) apart from sent ones, so a sweep looks only at
        # what is still owed; sent ids are remembered for `retention`.
        self._outbox: dict[str, tuple[str, float]] = {}
        self._outbox_sent = _Expiring()
        self._tickets: dict[str, str] = {}
        self._lanes: dict[str, list[str]] = defaultdict(list)
        self._mailboxes: dict[str, list[str]] = defaultdict(list)
        self._mailbox_cursors: dict[tuple[str, str], int] = {}
        self._mailbox_changed = asyncio.Condition()
        # Escalation timers: id -> (sealed payload, due or lease end as a POSIX timestamp).
        self._timers: dict[str, tuple[str, float]] = {}
        # Review queues: queue -> item id -> (sealed item, position timestamp).
        self._reviews: dict[str, dict[str, tuple[str, float]]] = defaultdict(dict)

    def _dedupe_key(self, channel: str, provider_message_id: str) -> str:
        return self._hasher.digest(f"{channel}\x00{provider_message_id}", purpose="dedupe")

    async def get_session(self, key: ConversationKey) -> Session | None:
        raw = self._sessions.get(key.id)
        return None if raw is None else self._codec.parse_session(raw)

    async def save_session(self, session: Session) -> None:
        self._sessions.set(session.conversation_id, self._codec.session(session), self._retention)

    async def is_processed(self, channel: str, provider_message_id: str) -> bool:
        return self._processed.get(self._dedupe_key(channel, provider_message_id)) is not None

    @asynccontextmanager
    async def lock(self, conversation_id: str, *, ttl: float = 30.0,
                   timeout: float = 10.0) -> AsyncIterator[Lease]:
        lease = Lease(conversation_id, secrets.token_hex(8))

        async def try_acquire() -> bool:
            if self._locks.get(conversation_id) is not None:
                return False
            self._locks.set(conversation_id, lease.token, ttl)
            return True

        await acquire_polling(try_acquire, timeout=timeout)
        try:
            yield lease
        finally:
            self._release(lease)

    def _release(self, lease: Lease) -> None:
        if not lease.released and self._locks.get(lease.name) == lease.token:
            self._locks.pop(lease.name)
        lease.released = True

    @asynccontextmanager
    async def open_turn(self, key: ConversationKey, *, channel: str, provider_message_id: str,
                        ttl: float = 30.0, timeout: float = 10.0) -> AsyncIterator[TurnStart]:
        async with self.lock(key.id, ttl=ttl, timeout=timeout) as lease:
            yield TurnStart(session=await self.get_session(key),
                            already_processed=await self.is_processed(channel,
                                                                      provider_message_id),
                            lease=lease)

    async def commit(self, turn: Turn, *, lease_seconds: float = 30.0,
                     release: Lease | None = None) -> None:
        # Serialise everything first: an encoding error must leave nothing half-written.
        apply = self._prepare_turn(turn, lease_seconds=lease_seconds)
        apply()
        if release is not None:
            self._release(release)

    def _prepare_turn(self, turn: Turn, *, lease_seconds: float) -> Callable[[], None]:
        """Serialise a turn; the returned function writes it (no await in between, so that
        a caller can check a condition and write atomically)."""
        conv = turn.session.conversation_id
        session_raw = self._codec.session(turn.session)
        entries = [self._codec.entry(conv, entry) for entry in turn.transcript]
        outbox = [(m.id, self._codec.outbound(m)) for m in turn.outbox]
        tickets = [(t, self._codec.ticket(t)) for t in turn.tickets]
        timers = [(t.id, self._codec.timer(t), t.due.timestamp()) for t in turn.timers]

        def apply() -> None:
            self._sessions.set(conv, session_raw, self._retention)
            self._transcripts[conv].extend(entries)
            due = time.monotonic() + lease_seconds
            for outbound_id, body in outbox:
                if outbound_id not in self._outbox and \
                        self._outbox_sent.get(outbound_id) is None:
                    self._outbox[outbound_id] = (body, due)
            for ticket, body in tickets:
                if ticket.id not in self._tickets:
                    self._lanes[ticket.lane].append(ticket.id)
                self._tickets[ticket.id] = body
            for timer_id, body, timer_due in timers:
                self._timers.setdefault(timer_id, (body, timer_due))
            if turn.processed:
                self._processed.set(self._dedupe_key(*turn.processed), True, self._dedupe_ttl)

        return apply

    async def update_ticket(self, ticket: HandoffTicket, *, turn: Turn | None = None,
                            timers: Sequence[TicketTimer] = (),
                            cancel_timers: Sequence[str] = (),
                            review: ReviewItem | None = None, lease_seconds: float = 30.0,
                            release: Lease | None = None) -> bool:
        if turn is not None and turn.tickets:
            raise ValueError("update_ticket writes its own ticket; turn.tickets must be empty")
        # Serialise first, then check and write with no await in between: atomic in the loop.
        written = replace(ticket, revision=ticket.revision + 1)
        body = self._codec.ticket(written)
        apply_turn = self._prepare_turn(turn, lease_seconds=lease_seconds) if turn else None
        sealed_timers = [(t.id, self._codec.timer(t), t.due.timestamp()) for t in timers]
        sealed_review = self._codec.review(review) if review else None
        stored = self._tickets.get(ticket.id)
        if stored is None:
            return False
        revision, old_lane = self._codec.ticket_header(stored)
        if revision != ticket.revision:
            return False
        if old_lane != ticket.lane and ticket.id in self._lanes.get(old_lane, []):
            self._lanes[old_lane].remove(ticket.id)
        lane = self._lanes[ticket.lane]
        if ticket.status is TicketStatus.RESOLVED:
            if ticket.id in lane:
                lane.remove(ticket.id)
        elif ticket.id not in lane:
            lane.append(ticket.id)
        self._tickets[ticket.id] = body
        if apply_turn is not None:
            apply_turn()
        for timer_id in cancel_timers:
            self._timers.pop(timer_id, None)
        for timer_id, timer_body, due in sealed_timers:
            self._timers[timer_id] = (timer_body, due)
        if review is not None and sealed_review is not None:
            self._reviews[review.queue][review.item_id] = (sealed_review, review.at.timestamp())
        if release is not None:
            self._release(release)
        ticket.revision = written.revision
        return True

    async def claim_timers(self, *, now: datetime, limit: int,
                           lease_seconds: float) -> list[TicketTimer]:
        at = now.timestamp()
        due = sorted((item_due, timer_id) for timer_id, (_, item_due) in self._timers.items()
                     if item_due <= at)[:limit]
        claimed = []
        for _, timer_id in due:
            body, _ = self._timers[timer_id]
            self._timers[timer_id] = (body, at + lease_seconds)
            claimed.append(self._codec.parse_timer(timer_id, body))
        return claimed

    async def complete_timer(self, timer_id: str) -> None:
        self._timers.pop(timer_id, None)

    async def get_timer(self, timer_id: str) -> TicketTimer | None:
        item = self._timers.get(timer_id)
        return None if item is None else self._codec.parse_timer(timer_id, item[0])

    async def review_items(self, queue: str) -> list[ReviewItem]:
        items = sorted(self._reviews.get(queue, {}).items(), key=lambda pair: pair[1][1])
        return [self._codec.parse_review(queue, item_id, body) for item_id, (body, _) in items]

    async def review_remove(self, queue: str, item_id: str) -> None:
        self._reviews.get(queue, {}).pop(item_id, None)

    async def transcript(self, conversation_id: str, start: int = 0) -> list[TranscriptEntry]:
        raw = self._transcripts.get(conversation_id, [])[start:]
        return [self._codec.parse_entry(conversation_id, item) for item in raw]

    async def claim_outbox(self, *, limit: int, lease_seconds: float) -> list[Outbound]:
        now = time.monotonic()
        due = sorted((item_due, oid) for oid, (_, item_due) in self._outbox.items()
                     if item_due <= now)[:limit]
        claimed = []
        for _, oid in due:
            body, _ = self._outbox[oid]
            self._outbox[oid] = (body, now + lease_seconds)
            claimed.append(self._codec.parse_outbound(oid, body))
        return claimed

    async def mark_sent(self, outbound_id: str, *, provider_id: str | None = None) -> None:
        if self._outbox.pop(outbound_id, None) is not None:
            self._outbox_sent.set(outbound_id, "sent", self._retention)

    async def mark_undeliverable(self, outbound_id: str) -> None:
        if self._outbox.pop(outbound_id, None) is not None:
            self._outbox_sent.set(outbound_id, "undeliverable", self._retention)

    async def retry_outbox(self, outbound_id: str, *, delay: float) -> None:
        if outbound_id in self._outbox:
            body, _ = self._outbox[outbound_id]
            self._outbox[outbound_id] = (body, time.monotonic() + delay)

    async def outbox_status(self, outbound_id: str) -> str | None:
        if outbound_id in self._outbox:
            return "pending"
        return self._outbox_sent.get(outbound_id)

    async def get_ticket(self, ticket_id: str) -> HandoffTicket | None:
        raw = self._tickets.get(ticket_id)
        return None if raw is None else self._codec.parse_ticket(raw)

    async def tickets_in_lane(self, lane: str) -> list[HandoffTicket]:
        tickets = [self._codec.parse_ticket(self._tickets[ticket_id])
                   for ticket_id in self._lanes.get(lane, [])]
        return sorted(tickets, key=lambda ticket: ticket.queue_score)

    async def mailbox_append(self, conversation_id: str, message_id: str, text: str,
                             at: datetime) -> int:
        existing = self._mailbox_cursors.get((conversation_id, message_id))
        if existing is not None:
            return existing
        box = self._mailboxes[conversation_id]
        cursor = len(box) + 1
        box.append(self._codec.mailbox_entry(conversation_id, message_id, text, at))
        self._mailbox_cursors[(conversation_id, message_id)] = cursor
        async with self._mailbox_changed:
            self._mailbox_changed.notify_all()
        return cursor

    def _mailbox_after(self, conversation_id: str, after: int) -> list[MailboxItem]:
        items = []
        for cursor, raw in enumerate(self._mailboxes.get(conversation_id, [])[after:],
                                     start=after + 1):
            items.append(self._codec.parse_mailbox_entry(conversation_id, cursor, raw))
        return items

    async def mailbox_read(self, conversation_id: str, *, after: int,
                           wait: float = 0.0) -> list[MailboxItem]:
        items = self._mailbox_after(conversation_id, after)
        if items or wait <= 0:
            return items
        async with self._mailbox_changed:
            try:
                await asyncio.wait_for(self._mailbox_changed.wait_for(
                    lambda: len(self._mailboxes.get(conversation_id, [])) > after), wait)
            except TimeoutError:
                return []
        return self._mailbox_after(conversation_id, after)

    async def kv_get(self, namespace: str, item_id: str) -> dict[str, Any] | None:
        raw = self._kv.get(f"{namespace}:{item_id}")
        return None if raw is None else self._codec.parse_value(namespace, item_id, raw)

    async def kv_set(self, namespace: str, item_id: str, value: dict[str, Any], *,
                     ttl: float) -> None:
        self._kv.set(f"{namespace}:{item_id}", self._codec.value(namespace, item_id, value), ttl)

    async def kv_existing(self, namespace: str, item_ids: list[str]) -> set[str]:
        return {item_id for item_id in item_ids
                if self._kv.get(f"{namespace}:{item_id}") is not None}

    async def kv_create_all(self, namespace: str, item_ids: list[str], value: dict[str, Any],
                            *, ttl: float) -> bool:
        # Seal first, then check and set with no await in between: atomic within the loop.
        sealed = {item_id: self._codec.value(namespace, item_id, value) for item_id in item_ids}
        if any(self._kv.get(f"{namespace}:{item_id}") is not None for item_id in item_ids):
            return False
        for item_id, raw in sealed.items():
            self._kv.set(f"{namespace}:{item_id}", raw, ttl)
        return True

    async def kv_delete(self, namespace: str, item_id: str) -> None:
        self._kv.pop(f"{namespace}:{item_id}")

    async def count_hit(self, namespace: str, item_id: str, *, window: float) -> int:
        return self._counters.incr(f"{namespace}:{item_id}", window)

    async def count_get(self, namespace: str, item_id: str) -> int:
        return self._counters.get(f"{namespace}:{item_id}") or 0

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        return None

