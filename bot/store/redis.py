"""Redis Store (redis.asyncio): shared by every web and worker process.

Key names (all under one prefix): ``s:<conv>`` session, ``t:<conv>`` transcript list,
``d:<hash>`` processed provider message ids, ``l:<conv>`` conversation lock, ``o:<id>`` outbox
entry (hash) with ``oq`` its due-time sorted set, ``tk:<id>`` ticket with ``lane:<lane>``,
``mb:<conv>``/``mbi:<conv>`` portal mailbox, ``kv:<ns>:<id>``, ``c:<ns>:<id>`` counters,
``tm:<timer id>`` escalation timer (sealed) with ``tmq`` its due-time sorted set,
``rv:<queue>`` review items (hash of sealed items) with ``rvq:<queue>`` their order.
<conv> is ``channel:keyed-hash``; ticket and timer ids are opaque; nothing in a key name is
PHI. Values are sealed by `Codec`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from typing import Any

import redis.asyncio as redis

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

# Take the conversation lock and, if taken, read the session and the dedupe mark with it.
_OPEN_TURN = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('GET', KEYS[2]) or '', redis.call('EXISTS', KEYS[3])}
end
return {0}
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Lease due outbox entries: move their due time forward so no other worker takes them.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  table.insert(out, id)
  table.insert(out, redis.call('HGET', ARGV[4] .. id, 'body') or '')
end
return out
"""
# Lease due timers (same scheme as the outbox): ARGV now, lease end, limit, payload key prefix.
_CLAIM_TIMERS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  table.insert(out, id)
  table.insert(out, redis.call('GET', ARGV[4] .. id) or '')
end
return out
"""
_MAILBOX_APPEND = """
local existing = redis.call('HGET', KEYS[2], ARGV[1])
if existing then return tonumber(existing) end
local cursor = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], cursor)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return cursor
"""
# Create every key (KEYS) with its value (ARGV[i + 1]) and expiry (ARGV[1]) only if none exists.
_CREATE_ALL = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return 0 end
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
end
return 1
"""
_COUNT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    def __init__(self, client: redis.Redis, sealer: Sealer, hasher: Hasher, *,
                 prefix: str = "pb", dedupe_ttl: float = 72 * 3600,
                 retention: float = 90 * 86400, mailbox_poll: float = 0.1) -> None:
        self._r = client
        self._codec = Codec(sealer)
        self._hasher = hasher
        self._p = f"{prefix}:"
        self._dedupe_ttl = dedupe_ttl
        self._retention = retention
        self._mailbox_poll = mailbox_poll
        self._open_turn = client.register_script(_OPEN_TURN)
        self._release = client.register_script(_RELEASE)
        self._claim = client.register_script(_CLAIM)
        self._mailbox_append = client.register_script(_MAILBOX_APPEND)
        self._count = client.register_script(_COUNT)
        self._create_all = client.register_script(_CREATE_ALL)
        self._claim_timers = client.register_script(_CLAIM_TIMERS)

    @classmethod
    def from_url(cls, url: str, sealer: Sealer, hasher: Hasher, **options: Any) -> RedisStore:
        return cls(redis.Redis.from_url(url), sealer, hasher, **options)

    def _k(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    def _dedupe_key(self, channel: str, provider_message_id: str) -> str:
        return self._k("d", self._hasher.digest(f"{channel}\x00{provider_message_id}",
                                                purpose="dedupe"))

    async def get_session(self, key: ConversationKey) -> Session | None:
        raw = await self._r.get(self._k("s", key.id))
        return None if raw is None else self._codec.parse_session(raw)

    async def save_session(self, session: Session) -> None:
        await self._r.set(self._k("s", session.conversation_id), self._codec.session(session),
                          px=_ms(self._retention))

    async def is_processed(self, channel: str, provider_message_id: str) -> bool:
        return bool(await self._r.exists(self._dedupe_key(channel, provider_message_id)))

    @asynccontextmanager
    async def lock(self, conversation_id: str, *, ttl: float = 30.0,
                   timeout: float = 10.0) -> AsyncIterator[Lease]:
        name = self._k("l", conversation_id)
        lease = Lease(name, secrets.token_hex(8))

        async def try_acquire() -> bool:
            return bool(await self._r.set(name, lease.token, nx=True, px=_ms(ttl)))

        await acquire_polling(try_acquire, timeout=timeout)
        try:
            yield lease
        finally:
            await self._release_unless_committed(lease)

    async def _release_unless_committed(self, lease: Lease) -> None:
        if not lease.released:
            await self._release(keys=[lease.name], args=[lease.token])

    @asynccontextmanager
    async def open_turn(self, key: ConversationKey, *, channel: str, provider_message_id: str,
                        ttl: float = 30.0, timeout: float = 10.0) -> AsyncIterator[TurnStart]:
        lease = Lease(self._k("l", key.id), secrets.token_hex(8))
        keys = [lease.name, self._k("s", key.id), self._dedupe_key(channel, provider_message_id)]
        found: list[Any] = []

        async def try_acquire() -> bool:
            found[:] = await self._open_turn(keys=keys, args=[lease.token, _ms(ttl)])
            return found[0] == 1

        await acquire_polling(try_acquire, timeout=timeout)
        try:
            session = self._codec.parse_session(found[1]) if found[1] else None
            yield TurnStart(session=session, already_processed=bool(found[2]), lease=lease)
        finally:
            await self._release_unless_committed(lease)

    async def commit(self, turn: Turn, *, lease_seconds: float = 30.0,
                     release: Lease | None = None) -> None:
        pipe = self._r.pipeline(transaction=True)
        self._queue_turn(pipe, turn, lease_seconds=lease_seconds)
        if release is not None and not release.released:
            await self._release(keys=[release.name], args=[release.token], client=pipe)
        await pipe.execute()
        if release is not None:
            release.released = True

    def _queue_turn(self, pipe: Any, turn: Turn, *, lease_seconds: float) -> None:
        """Queue the writes of a turn on a transaction pipeline."""
        conv = turn.session.conversation_id
        retention = _ms(self._retention)
        pipe.set(self._k("s", conv), self._codec.session(turn.session), px=retention)
        if turn.transcript:
            tkey = self._k("t", conv)
            pipe.rpush(tkey, *(self._codec.entry(conv, e) for e in turn.transcript))
            pipe.pexpire(tkey, retention)
        due = time.time() + lease_seconds
        for message in turn.outbox:
            okey = self._k("o", message.id)
            pipe.hsetnx(okey, "body", self._codec.outbound(message))
            pipe.hsetnx(okey, "status", "pending")
            pipe.pexpire(okey, retention)
            pipe.zadd(self._k("oq"), {message.id: due}, nx=True)
        for ticket in turn.tickets:
            pipe.set(self._k("tk", ticket.id), self._codec.ticket(ticket), px=retention)
            pipe.zadd(self._k("lane", ticket.lane), {ticket.id: ticket.queue_score}, nx=True)
        for timer in turn.timers:
            pipe.set(self._k("tm", timer.id), self._codec.timer(timer), px=retention, nx=True)
            pipe.zadd(self._k("tmq"), {timer.id: timer.due.timestamp()}, nx=True)
        if turn.processed:
            pipe.set(self._dedupe_key(*turn.processed), b"1", px=_ms(self._dedupe_ttl))

    async def update_ticket(self, ticket: HandoffTicket, *, turn: Turn | None = None,
                            timers: Sequence[TicketTimer] = (),
                            cancel_timers: Sequence[str] = (),
                            review: ReviewItem | None = None, lease_seconds: float = 30.0,
                            release: Lease | None = None) -> bool:
        if turn is not None and turn.tickets:
            raise ValueError("update_ticket writes its own ticket; turn.tickets must be empty")
        key = self._k("tk", ticket.id)
        retention = _ms(self._retention)
        written = replace(ticket, revision=ticket.revision + 1)
        body = self._codec.ticket(written)
        sealed_timers = [(timer, self._codec.timer(timer)) for timer in timers]
        sealed_review = self._codec.review(review) if review else None
        # WATCH the ticket: the transaction fails if anyone writes it after our read.
        async with self._r.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                stored = await pipe.get(key)
                if stored is None:
                    return False
                revision, old_lane = self._codec.ticket_header(stored)
                if revision != ticket.revision:
                    return False
                pipe.multi()
                pipe.set(key, body, px=retention)
                if old_lane != ticket.lane:
                    pipe.zrem(self._k("lane", old_lane), ticket.id)
                if ticket.status is TicketStatus.RESOLVED:
                    pipe.zrem(self._k("lane", ticket.lane), ticket.id)
                else:
                    pipe.zadd(self._k("lane", ticket.lane), {ticket.id: ticket.queue_score})
                if turn is not None:
                    self._queue_turn(pipe, turn, lease_seconds=lease_seconds)
                for timer_id in cancel_timers:
                    pipe.zrem(self._k("tmq"), timer_id)
                    pipe.delete(self._k("tm", timer_id))
                for timer, sealed in sealed_timers:
                    pipe.set(self._k("tm", timer.id), sealed, px=retention)
                    pipe.zadd(self._k("tmq"), {timer.id: timer.due.timestamp()})
                if review is not None:
                    items, order = self._k("rv", review.queue), self._k("rvq", review.queue)
                    pipe.hset(items, review.item_id, sealed_review)
                    pipe.zadd(order, {review.item_id: review.at.timestamp()})
                    pipe.pexpire(items, retention)
                    pipe.pexpire(order, retention)
                if release is not None and not release.released:
                    await self._release(keys=[release.name], args=[release.token], client=pipe)
                await pipe.execute()
            except redis.WatchError:
                return False
        if release is not None:
            release.released = True
        ticket.revision = written.revision
        return True

    async def claim_timers(self, *, now: datetime, limit: int,
                           lease_seconds: float) -> list[TicketTimer]:
        at = now.timestamp()
        flat = await self._claim_timers(keys=[self._k("tmq")],
                                        args=[at, at + lease_seconds, limit, self._k("tm", "")])
        claimed = []
        for raw_id, body in zip(flat[::2], flat[1::2], strict=True):
            timer_id = raw_id.decode()
            if not body:  # expired under retention; drop its queue slot
                await self._r.zrem(self._k("tmq"), timer_id)
                continue
            claimed.append(self._codec.parse_timer(timer_id, body))
        return claimed

    async def complete_timer(self, timer_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.zrem(self._k("tmq"), timer_id)
        pipe.delete(self._k("tm", timer_id))
        await pipe.execute()

    async def get_timer(self, timer_id: str) -> TicketTimer | None:
        raw = await self._r.get(self._k("tm", timer_id))
        return None if raw is None else self._codec.parse_timer(timer_id, raw)

    async def review_items(self, queue: str) -> list[ReviewItem]:
        # Replies are bytes (decode_responses is off); redis-py annotates them as a union.
        ids: Any = await self._r.zrange(self._k("rvq", queue), 0, -1)
        if not ids:
            return []
        raws = await self._r.hmget(self._k("rv", queue), ids)
        return [self._codec.parse_review(queue, item_id.decode(), raw)
                for item_id, raw in zip(ids, raws, strict=True) if raw is not None]

    async def review_remove(self, queue: str, item_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(self._k("rv", queue), item_id)
        pipe.zrem(self._k("rvq", queue), item_id)
        await pipe.execute()

    async def transcript(self, conversation_id: str, start: int = 0) -> list[TranscriptEntry]:
        raw = await self._r.lrange(self._k("t", conversation_id), start, -1)
        return [self._codec.parse_entry(conversation_id, item) for item in raw]

    async def claim_outbox(self, *, limit: int, lease_seconds: float) -> list[Outbound]:
        now = time.time()
        flat = await self._claim(keys=[self._k("oq")],
                                 args=[now, now + lease_seconds, limit, self._k("o", "")])
        claimed = []
        for raw_id, body in zip(flat[::2], flat[1::2], strict=True):
            outbound_id = raw_id.decode()
            if not body:  # the entry expired under retention; drop its queue slot
                await self._r.zrem(self._k("oq"), outbound_id)
                continue
            claimed.append(self._codec.parse_outbound(outbound_id, body))
        return claimed

    async def mark_sent(self, outbound_id: str, *, provider_id: str | None = None) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._k("o", outbound_id),
                  mapping={"status": "sent", "provider_id": provider_id or ""})
        pipe.zrem(self._k("oq"), outbound_id)
        await pipe.execute()

    async def mark_undeliverable(self, outbound_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(self._k("o", outbound_id), mapping={"status": "undeliverable"})
        pipe.zrem(self._k("oq"), outbound_id)
        await pipe.execute()

    async def retry_outbox(self, outbound_id: str, *, delay: float) -> None:
        await self._r.zadd(self._k("oq"), {outbound_id: time.time() + delay}, xx=True)

    async def outbox_status(self, outbound_id: str) -> str | None:
        status: Any = await self._r.hget(self._k("o", outbound_id), "status")
        return None if status is None else status.decode()

    async def get_ticket(self, ticket_id: str) -> HandoffTicket | None:
        raw = await self._r.get(self._k("tk", ticket_id))
        return None if raw is None else self._codec.parse_ticket(raw)

    async def tickets_in_lane(self, lane: str) -> list[HandoffTicket]:
        """Emergency first, then urgent, then normal; oldest first within each."""
        ids: Any = await self._r.zrange(self._k("lane", lane), 0, -1)
        if not ids:
            return []
        raws = await self._r.mget([self._k("tk", i.decode()) for i in ids])
        return [self._codec.parse_ticket(raw) for raw in raws if raw is not None]

    async def mailbox_append(self, conversation_id: str, message_id: str, text: str,
                             at: datetime) -> int:
        wrapper = self._codec.mailbox_entry(conversation_id, message_id, text, at)
        return int(await self._mailbox_append(
            keys=[self._k("mb", conversation_id), self._k("mbi", conversation_id)],
            args=[message_id, wrapper, _ms(self._retention)]))

    async def mailbox_read(self, conversation_id: str, *, after: int,
                           wait: float = 0.0) -> list[MailboxItem]:
        key = self._k("mb", conversation_id)
        deadline = time.monotonic() + wait
        while True:
            raw = await self._r.lrange(key, after, -1)
            if raw or time.monotonic() >= deadline:
                return [self._codec.parse_mailbox_entry(conversation_id, cursor, item)
                        for cursor, item in enumerate(raw, start=after + 1)]
            await asyncio.sleep(self._mailbox_poll)

    async def kv_get(self, namespace: str, item_id: str) -> dict[str, Any] | None:
        raw = await self._r.get(self._k("kv", namespace, item_id))
        return None if raw is None else self._codec.parse_value(namespace, item_id, raw)

    async def kv_set(self, namespace: str, item_id: str, value: dict[str, Any], *,
                     ttl: float) -> None:
        await self._r.set(self._k("kv", namespace, item_id),
                          self._codec.value(namespace, item_id, value), px=_ms(ttl))

    async def kv_existing(self, namespace: str, item_ids: list[str]) -> set[str]:
        if not item_ids:
            return set()
        async with self._r.pipeline(transaction=False) as pipe:
            for item_id in item_ids:
                pipe.exists(self._k("kv", namespace, item_id))
            found = await pipe.execute()
        return {item_id for item_id, exists in zip(item_ids, found, strict=True) if exists}

    async def kv_create_all(self, namespace: str, item_ids: list[str], value: dict[str, Any],
                            *, ttl: float) -> bool:
        if not item_ids:
            return True
        keys = [self._k("kv", namespace, item_id) for item_id in item_ids]
        sealed = [self._codec.value(namespace, item_id, value) for item_id in item_ids]
        return bool(await self._create_all(keys=keys, args=[_ms(ttl), *sealed]))

    async def kv_delete(self, namespace: str, item_id: str) -> None:
        await self._r.delete(self._k("kv", namespace, item_id))

    async def count_hit(self, namespace: str, item_id: str, *, window: float) -> int:
        return int(await self._count(keys=[self._k("c", namespace, item_id)],
                                     args=[_ms(window)]))

    async def count_get(self, namespace: str, item_id: str) -> int:
        return int(await self._r.get(self._k("c", namespace, item_id)) or 0)

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except redis.RedisError:
            return False

    async def close(self) -> None:
        await self._r.aclose()
