"""How the outbox reaches each patient channel: the adapter protocol, the registry, and the
channel-safe text of a reply."""

from __future__ import annotations

from typing import Protocol

from bot.config.loader import Config
from bot.core.envelopes import Outbound
from bot.core.errors import PatientbotError


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
            # Retryable: a channel switched off by mistake is switched on again, and the
            # replies waiting for it are still sent.
            raise ChannelSendError(f"no adapter for channel {name!r}", retryable=True) from None

    def names(self) -> list[str]:
        return sorted(self._adapters)


def portal_url(config: Config) -> str:
    return config.app.public_base_url.rstrip("/") + "/portal/"


def channel_text(config: Config, name: str, language: str | None = None) -> str:
    """A patient-facing channel template with {organisation} and {portal_url} filled."""
    return (config.text(name, language)
            .replace("{organisation}", config.app.organisation)
            .replace("{portal_url}", portal_url(config)))


def text_for_channel(config: Config, message: Outbound, *, phi_allowed: bool) -> str:
    """What a channel may send: the reply, or a portal pointer when it discloses PHI and the
    channel must not carry PHI."""
    if message.phi and not phi_allowed:
        return channel_text(config, "phi_redirect", message.language)
    return message.text
