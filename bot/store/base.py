"""The Store protocol: everything the pipeline keeps between messages.

Implementations: `MemoryStore` (embedded default, one process) and `RedisStore` (shared by
many processes). One contract suite (tests/contract/test_store.py) runs over both. Both keep
only what `bot.store.codec` produces, so PHI is sealed before it reaches either; key names
carry conversation ids (keyed hashes) and opaque ids only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bot.core.envelopes import ConversationKey, Outbound
from bot.core.errors import LockTimeout
from bot.core.session import Session, TranscriptEntry
from bot.core.tickets import HandoffTicket, TicketTimer


@dataclass(slots=True)
class Turn:
    """Everything one processed message changes, committed atomically.

    `processed` is the (channel, provider message id) to remember for dedupe; the outbox
    entries are committed leased to the committing worker (it sends them right away) and are
    picked up by any worker's outbox sweep if it does not. `timers` are the escalation timers
    of the new tickets (handoff/escalation.py); a timer already stored is left as it is.
    """

    session: Session
    processed: tuple[str, str] | None = None
    transcript: list[TranscriptEntry] = field(default_factory=list)
    outbox: list[Outbound] = field(default_factory=list)
    tickets: list[HandoffTicket] = field(default_factory=list)
    timers: list[TicketTimer] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class MailboxItem:
    """A message delivered to a pull-based channel (the portal); `cursor` orders them."""

    cursor: int
    message_id: str
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """A record waiting for an admin's review, e.g. a message an agent relabelled (queue
    ``relabel``). `record` may hold PHI: the whole item is sealed at rest, and only `queue`
    (a code) and `item_id` (an opaque id) appear in key names."""

    queue: str
    item_id: str
    record: dict[str, Any]
    at: datetime


@dataclass(slots=True)
class Lease:
    """A held lock; `token` proves ownership when releasing. `released` is set once a
    commit has released it, so leaving the lock's block does not release it again."""

    name: str
    token: str
    released: bool = False


@dataclass(frozen=True, slots=True)
class TurnStart:
    """What a turn starts from, read under the conversation lock (see `Store.open_turn`)."""

    session: Session | None
    already_processed: bool
    lease: Lease


class Store(Protocol):
    """Async storage contract. Every method is safe to call from many tasks at once."""

    async def get_session(self, key: ConversationKey) -> Session | None:
        """The session, or None if this conversation was never seen (or has expired)."""

    async def save_session(self, session: Session) -> None:
        """Write the session outside a turn (e.g. a portal sign-in)."""

    async def is_processed(self, channel: str, provider_message_id: str) -> bool:
        """True if a turn for this provider message id was committed within the dedupe TTL."""

    def lock(self, conversation_id: str, *, ttl: float = 30.0,
             timeout: float = 10.0) -> AbstractAsyncContextManager[Lease]:
        """Exclusive per-conversation lock. Raises `LockTimeout` after `timeout` seconds.

        A holder that dies loses the lock after `ttl` seconds, so a crashed worker cannot
        block a conversation forever.
        """

    def open_turn(self, key: ConversationKey, *, channel: str, provider_message_id: str,
                  ttl: float = 30.0, timeout: float = 10.0
                  ) -> AbstractAsyncContextManager[TurnStart]:
        """`lock(key.id)` plus, in the same step, the session and whether this provider
        message was already processed: one round trip on the pipeline's hot path."""

    async def commit(self, turn: Turn, *, lease_seconds: float = 30.0,
                     release: Lease | None = None) -> None:
        """Atomically: save the session, append the transcript, add tickets, queue the
        outbox entries (leased for `lease_seconds`), remember `processed`, and release the
        conversation lock `release` if given (and still held)."""

    async def transcript(self, conversation_id: str, start: int = 0) -> list[TranscriptEntry]:
        """Transcript entries from index `start`, oldest first."""

    async def claim_outbox(self, *, limit: int, lease_seconds: float) -> list[Outbound]:
        """Outbox entries due for (re)sending, leased to the caller for `lease_seconds`."""

    async def mark_sent(self, outbound_id: str, *, provider_id: str | None = None) -> None:
        """The entry reached the provider: never send it again."""

    async def mark_undeliverable(self, outbound_id: str) -> None:
        """The channel refused the entry for good (opted out, invalid address): never send
        it again, and let staff see it did not arrive (status 'undeliverable')."""

    async def retry_outbox(self, outbound_id: str, *, delay: float) -> None:
        """A send failed: make the entry due again after `delay` seconds."""

    async def outbox_status(self, outbound_id: str) -> str | None:
        """'pending', 'sent', 'undeliverable', or None if unknown."""

    async def get_ticket(self, ticket_id: str) -> HandoffTicket | None: ...

    async def tickets_in_lane(self, lane: str) -> list[HandoffTicket]:
        """Tickets of one lane in serving order: emergency, urgent, then normal priority,
        oldest first within each. A ticket resolved or moved through `update_ticket` has
        left the lane."""

    async def update_ticket(self, ticket: HandoffTicket, *, turn: Turn | None = None,
                            timers: Sequence[TicketTimer] = (),
                            cancel_timers: Sequence[str] = (),
                            review: ReviewItem | None = None, lease_seconds: float = 30.0,
                            release: Lease | None = None) -> bool:
        """Compare-and-set a changed ticket, with everything that goes with the change.

        Writes only if the stored ticket's `revision` still equals `ticket.revision` (nobody
        changed it since it was read), and then, atomically: the ticket with its revision
        advanced (`ticket.revision` is advanced too); its lane index entry (moved to
        `ticket.lane` with the current serving score; removed when it is RESOLVED, so a
        lane's index holds open tickets only); the turn's session, transcript and outbox as
        `commit` writes them (`turn.tickets` must be empty); `timers` scheduled (replacing
        timers with the same id); `cancel_timers` (timer ids) dropped; `review` added to its
        queue (replacing an item with the same id); and the conversation lock `release`
        released if still held.

        Returns False, writing nothing, when the ticket changed meanwhile or is gone: read
        it again and decide again.
        """

    async def claim_timers(self, *, now: datetime, limit: int,
                           lease_seconds: float) -> list[TicketTimer]:
        """Timers due at `now` (the caller's clock), oldest first, leased to the caller until
        `now + lease_seconds`: no other caller gets them meanwhile, even in another process.
        A leased timer that is neither completed nor cancelled is due again when its lease
        ends, so a sweeper that dies mid-way does not lose it. `TicketTimer.due` is the
        timer's own due time, not the lease."""

    async def complete_timer(self, timer_id: str) -> None:
        """The timer has fired (or is obsolete): drop it."""

    async def get_timer(self, timer_id: str) -> TicketTimer | None:
        """A scheduled (or leased) timer; None once completed or cancelled."""

    async def review_items(self, queue: str) -> list[ReviewItem]:
        """The items of a review queue, oldest first."""

    async def review_remove(self, queue: str, item_id: str) -> None: ...

    async def mailbox_append(self, conversation_id: str, message_id: str, text: str,
                             at: datetime) -> int:
        """Deliver to a pull-based channel; returns the new item's cursor. Idempotent per
        `message_id`: appending the same message twice returns the first cursor."""

    async def mailbox_read(self, conversation_id: str, *, after: int,
                           wait: float = 0.0) -> list[MailboxItem]:
        """Items with cursor > `after`, waiting up to `wait` seconds for one to arrive."""

    async def kv_get(self, namespace: str, item_id: str) -> dict[str, Any] | None: ...

    async def kv_set(self, namespace: str, item_id: str, value: dict[str, Any], *,
                     ttl: float) -> None:
        """A small sealed value with an expiry (portal sessions)."""

    async def kv_existing(self, namespace: str, item_ids: list[str]) -> set[str]:
        """Which of the items exist (unexpired), in one round trip and without opening any
        value: how calendars skip taken time quickly."""

    async def kv_create_all(self, namespace: str, item_ids: list[str], value: dict[str, Any],
                            *, ttl: float) -> bool:
        """Create every item (same sealed value, same expiry) only if none of them exists.

        All or nothing, atomically even across processes: returns False and changes nothing
        when any item already exists. This is how bookings claim their time (no double
        booking), so a partial claim must never be visible to anyone.
        """

    async def kv_delete(self, namespace: str, item_id: str) -> None: ...

    async def count_hit(self, namespace: str, item_id: str, *, window: float) -> int:
        """Increment a counter that expires `window` seconds after its first hit."""

    async def count_get(self, namespace: str, item_id: str) -> int:
        """The counter's current value (0 when absent or expired)."""

    async def ping(self) -> bool:
        """True when the backing service answers."""

    async def close(self) -> None: ...


async def acquire_polling(try_acquire: Callable[[], Awaitable[bool]], *,
                          timeout: float) -> None:
    """Call `try_acquire()` (async, returns bool) with backoff until it succeeds.

    Shared by both stores so their locks behave the same; raises `LockTimeout`.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not await try_acquire():
        if time.monotonic() >= deadline:
            raise LockTimeout("conversation lock not obtained in time")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)
