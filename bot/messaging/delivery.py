"""How the outbox reaches each patient channel: the adapter protocol, the registry, and the
channel-safe text of a reply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
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
    # Whether this channel may carry protected health information. The outbox sends a PHI
    # reply to a channel that may not as the portal pointer instead (adapters never decide).
    phi_allowed: bool

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


def phi_gate(config: Config) -> Callable[[Outbound, ChannelAdapter], Outbound]:
    """The outbox's PHI gate: a reply that discloses PHI, bound for a channel that must not
    carry PHI (or that does not say), leaves as the portal pointer instead."""
    def gate(message: Outbound, adapter: ChannelAdapter) -> Outbound:
        if message.phi and not getattr(adapter, "phi_allowed", False):
            return replace(message, text=channel_text(config, "phi_redirect", message.language),
                           phi=False)
        return message
    return gate
