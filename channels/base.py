"""The protocol a patient channel implements: sending (ChannelAdapter) plus its HTTP routes and
its start/stop."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from starlette.routing import BaseRoute

from bot.messaging.delivery import ChannelAdapter


class PatientChannel(ChannelAdapter, Protocol):
    """A patient channel with its inbound side: webhook routes for the web app and/or a
    listener (SMTP server, polling loop) that `patientbot serve` starts and stops."""

    def routes(self) -> Sequence[BaseRoute]:
        """Starlette routes of the provider webhooks (may be empty)."""

    async def start(self) -> None:
        """Start listeners; called once by the web app's lifespan."""

    async def stop(self) -> None:
        """Stop listeners and close clients."""
