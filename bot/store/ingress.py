"""Durable ingress: the queue between webhooks and workers.

A channel handler calls `Ingress.submit(inbound)` and acknowledges its provider only after
it returns: the sealed envelope is then in a Redis Stream (or, embedded, an in-process queue).
Workers read through a consumer group, acknowledge after the turn is committed, and reclaim
entries a crashed worker left pending. Each entry carries a per-conversation sequence number,
assigned atomically with the append, which workers use to keep conversation order.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import redis.asyncio as redis

from bot.core.crypto import Hasher, Sealer
from bot.core.envelopes import ConversationKey, Inbound


@dataclass(frozen=True, slots=True)
class IngressEntry:
    entry_id: str
    conversation_id: str
    seq: int
    envelope: str  # the sealed Inbound
    deliveries: int = 1  # how many times it has been handed to a worker, this time included


class IngressQueue(Protocol):
    """Contract (tests/contract/test_ingress.py runs it over both implementations)."""

    async def append(self, conversation_id: str, envelope: str) -> IngressEntry:
        """Durably append; the sequence number is per conversation, starting at 1."""

    async def read(self, consumer: str, *, count: int, block: float) -> list[IngressEntry]:
        """New entries for `consumer`, waiting up to `block` seconds. They stay pending
        until acknowledged."""

    async def ack(self, entry_id: str) -> None:
        """The entry is done: remove it from pending and from the queue."""

    async def reclaim(self, consumer: str, *, min_idle: float, count: int) -> list[IngressEntry]:
        """Take over entries pending on any consumer for at least `min_idle` seconds; their
        `deliveries` count this delivery too."""

    async def dead_letter(self, entry_id: str) -> None:
        """Move an entry that can never be processed aside (kept for an operator), and ack."""

    async def dead_letters(self) -> int:
        """How many entries were set aside."""

    async def requeue_dead_letters(self) -> int:
        """Put every set-aside entry back in the queue (after the cause is fixed)."""

    async def pending(self) -> int:
        """Entries delivered but not yet acknowledged."""

    async def close(self) -> None: ...


class Ingress:
    """Seals envelopes and appends them; the one way messages enter the pipeline."""

    def __init__(self, queue: IngressQueue, sealer: Sealer, hasher: Hasher) -> None:
        self.queue = queue
        self._sealer = sealer
        self._hasher = hasher

    def conversation_key(self, channel: str, sender: str) -> ConversationKey:
        return ConversationKey(channel, self._hasher.digest(sender, purpose=f"sender:{channel}"))

    async def submit(self, inbound: Inbound) -> IngressEntry:
        key = self.conversation_key(inbound.channel, inbound.sender)
        sealed = self._sealer.seal(inbound.to_json(), record=f"ingress:{key.id}",
                                   field="envelope")
        return await self.queue.append(key.id, sealed)

    def open(self, entry: IngressEntry) -> Inbound:
        return Inbound.from_json(self._sealer.open(
            entry.envelope, record=f"ingress:{entry.conversation_id}", field="envelope"))


@dataclass(slots=True)
class _Pending:
    entry: IngressEntry
    consumer: str
    since: float = field(default_factory=time.monotonic)
    deliveries: int = 1


class MemoryIngressQueue:
    """In-process twin of the Redis Stream: same pending/reclaim semantics, no durability."""

    def __init__(self) -> None:
        self._queue: list[IngressEntry] = []
        self._pending: dict[str, _Pending] = {}
        self._dead: list[IngressEntry] = []
        self._seq: dict[str, int] = {}
        self._next_id = 0
        self._arrived = asyncio.Condition()

    async def append(self, conversation_id: str, envelope: str) -> IngressEntry:
        self._next_id += 1
        seq = self._seq.get(conversation_id, 0) + 1
        self._seq[conversation_id] = seq
        entry = IngressEntry(f"{self._next_id}-0", conversation_id, seq, envelope)
        self._queue.append(entry)
        async with self._arrived:
            self._arrived.notify_all()
        return entry

    async def read(self, consumer: str, *, count: int, block: float) -> list[IngressEntry]:
        if not self._queue and block > 0:
            async with self._arrived:
                try:
                    await asyncio.wait_for(self._arrived.wait_for(lambda: bool(self._queue)),
                                           block)
                except TimeoutError:
                    return []
        taken, self._queue = self._queue[:count], self._queue[count:]
        for entry in taken:
            self._pending[entry.entry_id] = _Pending(entry, consumer)
        return taken

    async def ack(self, entry_id: str) -> None:
        self._pending.pop(entry_id, None)

    async def dead_letter(self, entry_id: str) -> None:
        pending = self._pending.pop(entry_id, None)
        if pending is not None:
            self._dead.append(pending.entry)

    async def dead_letters(self) -> int:
        return len(self._dead)

    async def requeue_dead_letters(self) -> int:
        dead, self._dead = self._dead, []
        self._queue.extend(dead)
        async with self._arrived:
            self._arrived.notify_all()
        return len(dead)

    async def reclaim(self, consumer: str, *, min_idle: float, count: int) -> list[IngressEntry]:
        now = time.monotonic()
        idle = [p for p in self._pending.values() if now - p.since >= min_idle][:count]
        for p in idle:
            p.consumer, p.since, p.deliveries = consumer, now, p.deliveries + 1
        return [replace(p.entry, deliveries=p.deliveries) for p in idle]

    async def pending(self) -> int:
        return len(self._pending)

    async def close(self) -> None:
        return None


# Sequence number and stream entry are written together, so a sequence number never exists
# without its entry (a gap would stall the conversation until order_wait_seconds).
_APPEND = """
local seq = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local id = redis.call('XADD', KEYS[1], '*', 'conv', ARGV[1], 'seq', seq, 'env', ARGV[2])
return {id, seq}
"""


class RedisIngressQueue:
    """A Redis Stream read through a consumer group; XAUTOCLAIM takes over dead workers'
    entries. Acknowledged entries are deleted, so the stream holds only unfinished work."""

    def __init__(self, client: redis.Redis, *, prefix: str = "pb", group: str = "workers",
                 retention: float = 90 * 86400) -> None:
        self._r = client
        self._stream = f"{prefix}:ingress"
        self._dead_stream = f"{prefix}:ingress:dead"
        self._seq_prefix = f"{prefix}:seq:"
        self._group = group
        self._retention_ms = int(retention * 1000)
        self._append = client.register_script(_APPEND)
        self._group_ready = False

    async def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            await self._r.xgroup_create(self._stream, self._group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self._group_ready = True

    async def append(self, conversation_id: str, envelope: str) -> IngressEntry:
        await self._ensure_group()
        entry_id, seq = await self._append(
            keys=[self._stream, self._seq_prefix + conversation_id],
            args=[conversation_id, envelope, self._retention_ms])
        return IngressEntry(entry_id.decode(), conversation_id, int(seq), envelope)

    @staticmethod
    def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> IngressEntry:
        return IngressEntry(entry_id.decode(), fields[b"conv"].decode(), int(fields[b"seq"]),
                            fields[b"env"].decode())

    async def read(self, consumer: str, *, count: int, block: float) -> list[IngressEntry]:
        await self._ensure_group()
        # Replies are bytes (decode_responses is off); redis-py annotates them as a union.
        result: Any = await self._r.xreadgroup(self._group, consumer, {self._stream: ">"},
                                          count=count, block=max(1, int(block * 1000)))
        if not result:
            return []
        return [self._entry(eid, fields) for eid, fields in result[0][1] if fields]

    async def ack(self, entry_id: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.xack(self._stream, self._group, entry_id)
        pipe.xdel(self._stream, entry_id)
        await pipe.execute()

    async def dead_letter(self, entry_id: str) -> None:
        entries: Any = await self._r.xrange(self._stream, entry_id, entry_id)
        pipe = self._r.pipeline(transaction=True)
        for _, fields in entries:
            pipe.xadd(self._dead_stream, fields)
        pipe.xack(self._stream, self._group, entry_id)
        pipe.xdel(self._stream, entry_id)
        await pipe.execute()

    async def dead_letters(self) -> int:
        return int(await self._r.xlen(self._dead_stream))

    async def requeue_dead_letters(self) -> int:
        await self._ensure_group()
        moved = 0
        dead: Any = await self._r.xrange(self._dead_stream)
        for dead_id, fields in dead:
            pipe = self._r.pipeline(transaction=True)
            pipe.xadd(self._stream, fields)
            pipe.xdel(self._dead_stream, dead_id)
            await pipe.execute()
            moved += 1
        return moved

    async def reclaim(self, consumer: str, *, min_idle: float, count: int) -> list[IngressEntry]:
        await self._ensure_group()
        result = await self._r.xautoclaim(self._stream, self._group, consumer,
                                          min_idle_time=int(min_idle * 1000),
                                          start_id="0-0", count=count)
        entries = [self._entry(eid, fields) for eid, fields in result[1] if fields]
        return [replace(entry, deliveries=await self._deliveries(entry.entry_id))
                for entry in entries]

    async def _deliveries(self, entry_id: str) -> int:
        info = await self._r.xpending_range(self._stream, self._group, min=entry_id,
                                            max=entry_id, count=1)
        return int(info[0]["times_delivered"]) if info else 1

    async def pending(self) -> int:
        await self._ensure_group()
        info = await self._r.xpending(self._stream, self._group)
        return int(info["pending"])

    async def close(self) -> None:
        await self._r.aclose()
