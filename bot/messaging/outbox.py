"""Outbox dispatch: committed replies -> channel adapters, each sent once.

The committing worker sends its own replies at once (`deliver`); `sweep` picks up anything
whose lease ran out (a worker died between commit and send, or a send failed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import structlog

from bot.core.envelopes import Outbound
from bot.messaging.delivery import ChannelAdapter, ChannelRegistry, ChannelSendError
from bot.ops import metrics
from bot.store import Store
from bot.store.audit import AuditEvent, AuditLog

log = structlog.get_logger("patientbot.outbox")

# Retries back off and then continue every ten minutes: a reply is never dropped silently.
# A send the channel calls not retryable is closed at once and audited (reply.undeliverable).
RETRY_DELAYS = (1.0, 5.0, 30.0, 120.0, 600.0)


class OutboxDispatcher:
    def __init__(self, store: Store, channels: ChannelRegistry, audit: AuditLog, *,
                 phi_gate: Callable[[Outbound, ChannelAdapter], Outbound],
                 lease_seconds: float = 30.0) -> None:
        self._phi_gate = phi_gate
        self._store = store
        self._audit = audit
        self._channels = channels
        self._lease = lease_seconds
        self._attempts: dict[str, int] = {}

    async def deliver(self, messages: Iterable[Outbound]) -> None:
        for message in messages:
            await self._send(message)

    async def sweep(self, *, limit: int = 100) -> int:
        due = await self._store.claim_outbox(limit=limit, lease_seconds=self._lease)
        await self.deliver(due)
        return len(due)

    async def _send(self, message: Outbound) -> None:
        bound = log.bind(conversation=message.conversation_id, outbound=message.id,
                         channel=message.channel)
        try:
            # Half the lease: a send still running when the lease ends could be sent twice.
            async with asyncio.timeout(self._lease / 2):
                adapter = self._channels.get(message.channel)
                provider_id = await adapter.send(self._phi_gate(message, adapter))
        except Exception as err:
            metrics.SEND_FAILURES.labels(channel=message.channel).inc()
            if isinstance(err, ChannelSendError) and not err.retryable:
                # Another try cannot succeed (the patient opted out, the address is invalid):
                # close the entry so it is never sent, and say so in the audit log and its
                # status (the agent desk shows staff that a reply did not arrive).
                self._attempts.pop(message.id, None)
                await self._store.mark_undeliverable(message.id)
                await self._audit.record(AuditEvent("reply.undeliverable", "bot",
                                                    message.conversation_id,
                                                    f"{message.channel}:{message.id}"))
                bound.warning("send refused; not retried", error_type=type(err).__name__)
                return
            attempt = self._attempts.get(message.id, 0) + 1
            self._attempts[message.id] = attempt
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS)) - 1]
            await self._store.retry_outbox(message.id, delay=delay)
            bound.warning("send failed; will retry", error_type=type(err).__name__,
                          attempt=attempt, retry_in=delay)
            return
        self._attempts.pop(message.id, None)
        await self._store.mark_sent(message.id, provider_id=provider_id)
        await self._audit.record(AuditEvent("reply.sent", "bot", message.conversation_id,
                                            f"{message.channel}:{message.id}"))
        metrics.MESSAGES_OUT.labels(channel=message.channel).inc()
        bound.info("reply sent")
