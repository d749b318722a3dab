"""Tamper-evident audit log: who read, wrote or disclosed what, when.

Entries carry codes and ids only (action, actor, conversation id, a reference such as an entry,
ticket or outbound id), never patient data. Each entry is chained to the one before it: its
MAC is HMAC-SHA256, under a key derived from PATIENTBOT_LOOKUP_KEY, over its fields including
its sequence number and the previous entry's MAC. Changing, inserting or deleting an entry
breaks the chain, and `verify()` names the first broken entry. Cutting entries off the end is
detectable only against a head recorded elsewhere: `patientbot audit verify` prints it.

Appends are group-committed: concurrent `record()` calls in one process are chained and
written together, and `record()` returns only once its entry is stored. Several processes
share one chain through a compare-and-append on the head; a writer that loses the race
re-chains its batch on the new head and tries again.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import redis.asyncio as redis

from bot.core.envelopes import utcnow

GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditEvent:
    action: str  # e.g. conversation.turn, reply.sent, transcript.read, portal.signin
    actor: str  # patient, bot, system, agent:<id>
    conversation: str = ""
    ref: str = ""
    at: str = field(default_factory=lambda: utcnow().isoformat())


@dataclass(frozen=True, slots=True)
class AuditEntry:
    seq: int
    event: AuditEvent
    prev: str
    mac: str


@dataclass(frozen=True, slots=True)
class AuditCheck:
    ok: bool
    entries: int
    head_seq: int
    head_mac: str
    problem: str = ""


class AuditChain:
    """The MAC computation, shared by both logs and by verification."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def extend(self, head: tuple[int, str], events: list[AuditEvent]) -> list[AuditEntry]:
        """`events` chained after the entry `head` = (seq, mac) names."""
        seq, prev = head
        chained = []
        for event in events:
            seq += 1
            chained.append(AuditEntry(seq, event, prev, self._mac(seq, event, prev)))
            prev = chained[-1].mac
        return chained

    def _mac(self, seq: int, event: AuditEvent, prev: str) -> str:
        body = json.dumps([seq, prev, asdict(event)], sort_keys=True, separators=(",", ":"))
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def check(self, entries: list[AuditEntry], head: tuple[int, str]) -> AuditCheck:
        prev, seq = GENESIS, 0
        for entry in entries:
            problem = ""
            if entry.seq != seq + 1:
                problem = f"entry {seq + 1} is missing (found {entry.seq} next)"
            elif entry.prev != prev:
                problem = f"entry {entry.seq} does not follow entry {seq}"
            elif not hmac.compare_digest(entry.mac, self._mac(entry.seq, entry.event, prev)):
                problem = f"entry {entry.seq} was altered"
            if problem:
                return AuditCheck(False, len(entries), head[0], head[1], problem)
            prev, seq = entry.mac, entry.seq
        if (seq, prev) != head:
            return AuditCheck(False, len(entries), head[0], head[1],
                              f"the head names entry {head[0]} but the log ends at {seq}")
        return AuditCheck(True, len(entries), seq, prev)


class AuditLog(Protocol):
    async def record(self, *events: AuditEvent) -> None:
        """Append, in order; returns once the entries are stored."""

    async def entries(self) -> list[AuditEntry]:
        """Every entry, oldest first."""

    async def verify(self) -> AuditCheck: ...


class _GroupCommit:
    """Batches concurrent `record()` calls into one append (`_append` in subclasses)."""

    def __init__(self) -> None:
        self._waiting: list[tuple[tuple[AuditEvent, ...], asyncio.Future[None]]] = []
        self._flushing: asyncio.Task[None] | None = None

    async def record(self, *events: AuditEvent) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((events, done))
        if self._flushing is None or self._flushing.done():
            self._flushing = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                await self._append([event for events, _ in batch for event in events])
            except Exception as err:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _append(self, events: list[AuditEvent]) -> None:
        raise NotImplementedError


class MemoryAuditLog(_GroupCommit):
    def __init__(self, chain: AuditChain) -> None:
        super().__init__()
        self._chain = chain
        self._entries: list[AuditEntry] = []

    def _head(self) -> tuple[int, str]:
        last = self._entries[-1] if self._entries else None
        return (last.seq, last.mac) if last else (0, GENESIS)

    async def _append(self, events: list[AuditEvent]) -> None:
        self._entries.extend(self._chain.extend(self._head(), events))

    async def entries(self) -> list[AuditEntry]:
        return list(self._entries)

    async def verify(self) -> AuditCheck:
        return self._chain.check(self._entries, self._head())


# Append a chained batch only if the head is still the one it was chained on.
# ARGV: expected head, new head, the head of an empty log, then the entries.
_APPEND = """
local head = redis.call('GET', KEYS[2]) or ARGV[3]
if head ~= ARGV[1] then return head end
for i = 4, #ARGV do redis.call('XADD', KEYS[1], '*', 'e', ARGV[i]) end
redis.call('SET', KEYS[2], ARGV[2])
return 'ok'
"""
EMPTY_HEAD = f"0 {GENESIS}"


class RedisAuditLog(_GroupCommit):
    """The chain in a Redis Stream (never trimmed by the app: retention is the operator's
    compliance decision) with its head in ``<prefix>:audit:head``."""

    def __init__(self, client: redis.Redis, chain: AuditChain, *, prefix: str = "pb") -> None:
        super().__init__()
        self._r = client
        self._chain = chain
        self._stream = f"{prefix}:audit"
        self._head_key = f"{prefix}:audit:head"
        self._append_script = client.register_script(_APPEND)
        self._head = EMPTY_HEAD  # our last known head; corrected on conflict

    async def _append(self, events: list[AuditEvent]) -> None:
        while True:
            chained = self._chain.extend(_parse_head(self._head), events)
            new_head = f"{chained[-1].seq} {chained[-1].mac}"
            result = await self._append_script(keys=[self._stream, self._head_key],
                                               args=[self._head, new_head, EMPTY_HEAD,
                                                     *map(_encode, chained)])
            if result == b"ok":
                self._head = new_head
                return
            self._head = result.decode()  # another process appended first: re-chain

    async def entries(self) -> list[AuditEntry]:
        # Replies are bytes (decode_responses is off); redis-py annotates them as a union.
        stream: Any = await self._r.xrange(self._stream)
        return [_decode(fields[b"e"]) for _, fields in stream]

    async def verify(self) -> AuditCheck:
        raw_head: Any = await self._r.get(self._head_key)
        head = _parse_head(raw_head.decode() if raw_head else EMPTY_HEAD)
        return self._chain.check(await self.entries(), head)


def _parse_head(head: str) -> tuple[int, str]:
    seq, mac = head.split(" ")
    return int(seq), mac


def _encode(entry: AuditEntry) -> str:
    return json.dumps({"seq": entry.seq, "prev": entry.prev, "mac": entry.mac,
                       "event": asdict(entry.event)}, separators=(",", ":"))


def _decode(raw: bytes) -> AuditEntry:
    data = json.loads(raw)
    return AuditEntry(data["seq"], AuditEvent(**data["event"]), data["prev"], data["mac"])
