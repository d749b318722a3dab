"""Workers: read the ingress queue, run the pipeline, acknowledge, reclaim, sweep the outbox
and run the periodic sweepers (escalation timers, keeping Slack notes up to date).

Messages are processed concurrently (up to `concurrency`), except that messages of one
conversation run one after another in arrival order; across processes, the pipeline's
sequence check keeps that order. An entry is acknowledged only after its turn is committed;
if processing raises (store down), it stays pending and is reclaimed later.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Sequence
from typing import Protocol

import structlog

from bot.core.envelopes import Outbound
from bot.messaging.outbox import OutboxDispatcher
from bot.messaging.pipeline import Outcome, Pipeline, PoisonEntry
from bot.ops import metrics
from bot.store.ingress import Ingress, IngressEntry


class Sweeper(Protocol):
    """Periodic work every worker runs (each implementation makes itself safe to run in many
    processes at once): `handoff.escalation.EscalationSweeper`,
    `handoff.slack.agents.SlackAgents`."""

    async def sweep(self) -> int: ...

log = structlog.get_logger("patientbot.worker")

DEFER_POLL_SECONDS = 0.02
MAINTENANCE_INTERVAL = 1.0
READ_BLOCK_SECONDS = 0.5
# Redis calls run without per-command socket timeouts (see bot.app.runtime.redis_client); these
# deadlines keep a hung backend from stalling a worker forever.
BACKEND_DEADLINE = 5.0
MAINTENANCE_DEADLINE = 60.0
SHUTDOWN_GRACE_SECONDS = 10.0


def consumer_name(prefix: str = "worker") -> str:
    return f"{prefix}-{socket.gethostname()}-{os.getpid()}-{id(object()):x}"


class Worker:
    def __init__(self, *, ingress: Ingress, pipeline: Pipeline, dispatcher: OutboxDispatcher,
                 name: str | None = None, concurrency: int = 32,
                 reclaim_idle: float = 30.0, max_deliveries: int = 5,
                 sweepers: Sequence[Sweeper] = ()) -> None:
        self.name = name or consumer_name()
        self._sweepers = tuple(sweepers)
        self._ingress = ingress
        self._queue = ingress.queue
        self._pipeline = pipeline
        self._dispatcher = dispatcher
        # Conversation lock first, then a slot: a backlog of one conversation's messages
        # waits without holding slots that other conversations could use.
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._reclaim_idle = reclaim_idle
        self._max_deliveries = max_deliveries
        self._conversation_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: set[str] = set()
        self.processed = 0

    async def run(self, stop: asyncio.Event) -> None:
        log.info("worker started", worker=self.name)
        maintenance = asyncio.create_task(self._maintenance(stop))
        try:
            while not stop.is_set():
                if len(self._tasks) >= self._concurrency:
                    await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
                    continue
                free = self._concurrency - len(self._tasks)
                try:
                    async with asyncio.timeout(READ_BLOCK_SECONDS + BACKEND_DEADLINE):
                        entries = await self._read_unless_stopped(stop, free)
                except Exception as err:
                    log.error("ingress read failed", worker=self.name,
                              error_type=type(err).__name__)
                    await asyncio.sleep(1.0)
                    continue
                self._start(entries)
        finally:
            maintenance.cancel()
            await self._drain()
            log.info("worker stopped", worker=self.name)

    async def _read_unless_stopped(self, stop: asyncio.Event, count: int) -> list[IngressEntry]:
        """A blocking read that gives up as soon as `stop` is set, so that shutting down does
        not wait out the block. An entry Redis handed over just as the read was cancelled
        stays pending on this consumer and is reclaimed, as after a crash."""
        read = asyncio.ensure_future(self._queue.read(self.name, count=count,
                                                      block=READ_BLOCK_SECONDS))
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not read.done():
                read.cancel()
                await asyncio.wait({read})  # let the cancellation land before reading it
        if read.cancelled():
            return []
        return read.result()

    async def _drain(self) -> None:
        """Let in-flight messages finish; cancel what is still running after the grace
        period (those entries stay pending and another worker reclaims them)."""
        if not self._tasks:
            return
        _, unfinished = await asyncio.wait(self._tasks, timeout=SHUTDOWN_GRACE_SECONDS)
        for task in unfinished:
            task.cancel()
        if unfinished:
            await asyncio.wait(unfinished)
            log.warning("in-flight entries left for reclaim", worker=self.name,
                        count=len(unfinished))

    def _start(self, entries: list[IngressEntry]) -> None:
        for entry in entries:
            if entry.entry_id in self._in_flight:
                continue  # reclaimed from ourselves while still being worked on
            self._in_flight.add(entry.entry_id)
            task = asyncio.create_task(self._process(entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, entry: IngressEntry) -> None:
        lock = self._conversation_lock(entry.conversation_id)
        try:
            if entry.deliveries > self._max_deliveries:
                raise PoisonEntry(entry.entry_id)
            started = time.monotonic()
            while True:
                async with lock, self._slots:
                    result = await self._pipeline.handle(
                        entry, waited=time.monotonic() - started)
                    if result.outcome is not Outcome.DEFERRED:
                        # Still holding the conversation: replies leave in message order.
                        await self._deliver(entry, result.outbox)
                        break
                # Wait outside the conversation lock: the earlier message may be the next
                # in line for it here (reclaimed from a dead worker after this one arrived).
                await asyncio.sleep(DEFER_POLL_SECONDS)
            async with asyncio.timeout(BACKEND_DEADLINE):
                await self._queue.ack(entry.entry_id)
            self.processed += 1
        except PoisonEntry:
            # It cannot be opened (its key was removed from PATIENTBOT_DATA_KEYS) or failed
            # max_deliveries times: kept aside for an operator, not retried forever.
            await self._queue.dead_letter(entry.entry_id)
            metrics.PIPELINE_ERRORS.labels(stage="poison").inc()
            log.error("entry moved to dead letters", worker=self.name, entry=entry.entry_id,
                      deliveries=entry.deliveries)
        except Exception as err:
            # Left pending on purpose: another worker (or this one) reclaims it.
            metrics.PIPELINE_ERRORS.labels(stage="worker").inc()
            log.error("entry not processed; left pending", worker=self.name,
                      entry=entry.entry_id, error_type=type(err).__name__)
        finally:
            self._in_flight.discard(entry.entry_id)
            self._release_conversation_lock(entry.conversation_id)

    async def _deliver(self, entry: IngressEntry, outbox: tuple[Outbound, ...]) -> None:
        try:
            await self._dispatcher.deliver(outbox)
        except Exception as err:
            # Committed replies are not lost: the outbox sweep sends them after their lease.
            log.error("reply delivery failed; left to the outbox sweep", worker=self.name,
                      entry=entry.entry_id, error_type=type(err).__name__)

    def _conversation_lock(self, conversation_id: str) -> asyncio.Lock:
        lock, users = self._conversation_locks.get(conversation_id, (asyncio.Lock(), 0))
        self._conversation_locks[conversation_id] = (lock, users + 1)
        return lock

    def _release_conversation_lock(self, conversation_id: str) -> None:
        lock, users = self._conversation_locks[conversation_id]
        if users <= 1:
            del self._conversation_locks[conversation_id]
        else:
            self._conversation_locks[conversation_id] = (lock, users - 1)

    async def _maintenance(self, stop: asyncio.Event) -> None:
        """Reclaim dead workers' entries, resend replies whose lease ran out, and fire due
        escalation timers (each is leased to one sweeper, so workers never fire one twice) and
        run the other sweepers."""
        while not stop.is_set():
            try:
                async with asyncio.timeout(MAINTENANCE_DEADLINE):
                    reclaimed = await self._queue.reclaim(
                        self.name, min_idle=self._reclaim_idle, count=self._concurrency)
                    if reclaimed:
                        log.warning("reclaimed pending entries", worker=self.name,
                                    count=len(reclaimed))
                        self._start(reclaimed)
                    await self._dispatcher.sweep()
                    metrics.INGRESS_PENDING.set(await self._queue.pending())
                    metrics.INGRESS_DEAD.set(await self._queue.dead_letters())
            except Exception as err:
                log.error("maintenance failed", worker=self.name, error_type=type(err).__name__)
            for sweeper in self._sweepers:  # one failing sweeper does not stop the others
                try:
                    async with asyncio.timeout(MAINTENANCE_DEADLINE):
                        await sweeper.sweep()
                except Exception as err:
                    log.error("sweep failed", worker=self.name, sweeper=type(sweeper).__name__,
                              error_type=type(err).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), MAINTENANCE_INTERVAL)
