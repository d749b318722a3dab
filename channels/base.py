"""Channel adapter protocol and registry: how the outbox reaches each patient channel."""

from __future__ import annotations

from typing import Protocol

from bot.envelopes import Outbound
from bot.errors import PatientbotError


class ChannelSendError(PatientbotError):
    """A send failed; `retryable` says whether the outbox should try again."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ChannelAdapter(Protocol):
    name: str

    async def send(self, message: Outbound) -> str | None:
        """Deliver one reply; return the provider's message id if it has one.

        Raise `ChannelSendError` on failure. Must not log message text or the recipient.
        """


class ChannelRegistry:
    def __init__(self) -> None:
        self._adapters: dict[str, ChannelAdapter] = {}

    def register(self, adapter: ChannelAdapter) -> None:
        self._adapters[adapter.name] = adapter

    def get(self, name: str) -> ChannelAdapter:
        try:
            return self._adapters[name]
        except KeyError:
            raise ChannelSendError(f"no adapter for channel {name!r}", retryable=False) from None

    def names(self) -> list[str]:
        return sorted(self._adapters)
