"""What every channel does with a verified inbound message: rate limit, enqueue, count.

Channels verify the provider request first (signature, secret, SMTP limits), build an
`Inbound`, and call `Intake.accept`; they acknowledge the provider only after it returns
`ACCEPTED`, i.e. after the envelope is durably queued. A flood from one address is refused
before it reaches the queue (the channel answers with its own "slow down"), and counted.
"""

from __future__ import annotations

from enum import StrEnum

import structlog

from bot.config.channels import ChannelLimits
from bot.core.crypto import Hasher
from bot.core.envelopes import Inbound
from bot.ops import metrics
from bot.store import Store
from bot.store.ingress import Ingress

log = structlog.get_logger("patientbot.intake")


class IntakeResult(StrEnum):
    ACCEPTED = "accepted"
    RATE_LIMITED = "rate_limited"


class Intake:
    def __init__(self, *, ingress: Ingress, store: Store, hasher: Hasher,
                 limits: ChannelLimits) -> None:
        self._ingress = ingress
        self._store = store
        self._hasher = hasher
        self._limits = limits

    async def accept(self, inbound: Inbound) -> IntakeResult:
        if await self.admit(inbound) is IntakeResult.RATE_LIMITED:
            return IntakeResult.RATE_LIMITED
        entry = await self._ingress.submit(inbound)
        metrics.MESSAGES_IN.labels(channel=inbound.channel).inc()
        log.info("message queued", channel=inbound.channel, conversation=entry.conversation_id,
                 entry=entry.entry_id)
        return IntakeResult.ACCEPTED

    async def admit(self, inbound: Inbound) -> IntakeResult:
        """The rate limit alone (counted against the same per-sender budget), for messages a
        channel answers itself and never queues (SMS keywords such as STOP and HELP)."""
        sender = self._hasher.digest(f"{inbound.channel}:{inbound.sender}", purpose="rate")
        per_minute = await self._store.count_hit("rate-minute", sender, window=60)
        per_hour = await self._store.count_hit("rate-hour", sender, window=3600)
        if (per_minute > self._limits.per_sender_per_minute
                or per_hour > self._limits.per_sender_per_hour):
            reject(inbound.channel, "rate_limited")
            return IntakeResult.RATE_LIMITED
        return IntakeResult.ACCEPTED


def reject(channel: str, reason: str) -> None:
    """Count (and log, without content) an inbound request a channel refused."""
    metrics.MESSAGES_REJECTED.labels(channel=channel, reason=reason).inc()
    log.info("inbound refused", channel=channel, reason=reason)
