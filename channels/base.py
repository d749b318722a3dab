"""Channel adapter protocol and registry: how the outbox reaches each patient channel."""

from __future__ import annotations

from typing import Protocol

from starlette.requests import Request
from starlette.routing import BaseRoute

from bot.config import Config
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
            # Retryable: a channel switched off by mistake is switched on again, and the
            # replies waiting for it are still sent.
            raise ChannelSendError(f"no adapter for channel {name!r}", retryable=True) from None

    def names(self) -> list[str]:
        return sorted(self._adapters)


class Refused(Exception):
    """An inbound request a channel answers with an error and does not queue: the HTTP
    status, a reason code (metric label, logs) and a short message (never patient data)."""

    def __init__(self, status: int, reason: str, error: str) -> None:
        super().__init__(reason)
        self.status, self.reason, self.error = status, reason, error


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is larger than `limit` bytes: a declared
    length is checked first, and the stream is never read past the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Refused(413, "too_large", "Request too large.")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise Refused(413, "too_large", "Request too large.")
    return bytes(body)


class PatientChannel(ChannelAdapter, Protocol):
    """A patient channel with its inbound side: webhook routes for the web app and/or a
    listener (SMTP server, polling loop) that `patientbot serve` starts and stops."""

    def routes(self) -> list[BaseRoute]:
        """Starlette routes of the provider webhooks (may be empty)."""

    async def start(self) -> None:
        """Start listeners; called once by the web app's lifespan."""

    async def stop(self) -> None:
        """Stop listeners and close clients."""


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
