"""Small stand-ins shared by tests: a driven clock and a recording SMS edge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from bot.core.envelopes import Outbound
from bot.messaging.delivery import ChannelSendError

# A Tuesday morning: every lane in config/coverage.yml is open.
START = datetime(2025, 3, 11, 10, 0, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)


class Clock:
    """A clock the test moves (`Runtime.build(clock=...)`)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


class RecordingSms:
    """The SMS provider edge: records what would have been sent."""

    name = "sms"

    def __init__(self) -> None:
        self.sent: list[Outbound] = []
        self.opted_out: set[str] = set()  # numbers the provider refuses for good (STOP)

    async def send(self, message: Outbound) -> str | None:
        if message.recipient in self.opted_out:
            raise ChannelSendError("recipient opted out", retryable=False)
        self.sent.append(message)
        return f"SM{len(self.sent)}"
