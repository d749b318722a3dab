"""Every patient channel by name. A new channel is its folder under channels/, its config model
in bot/config/channels.py (so `config check` validates it without importing the adapter), and
one line here.

The portal web chat is not listed: it is always on and the web app builds it itself.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Protocol

from bot.config.loader import Config
from bot.core.crypto import Hasher
from bot.messaging.intake import Intake
from bot.store import Store
from channels.base import PatientChannel

# channels.yml key -> "module:class"; imported only when the channel is enabled, so a site
# without Telegram never loads aiogram.
PATIENT_CHANNELS: dict[str, str] = {
    "sms": "channels.sms.adapter:SmsChannel",
    "email": "channels.email.adapter:EmailChannel",
    "telegram": "channels.telegram.adapter:TelegramChannel",
}


class ChannelFactory(Protocol):
    def __call__(self, config: Config, *, intake: Intake, store: Store, hasher: Hasher,
                 secrets: Mapping[str, str]) -> PatientChannel: ...


def channel_class(name: str) -> ChannelFactory:
    module_name, _, class_name = PATIENT_CHANNELS[name].partition(":")
    factory: ChannelFactory = getattr(importlib.import_module(module_name), class_name)
    return factory


def enabled_channels(config: Config, *, intake: Intake, store: Store, hasher: Hasher,
                     secrets: Mapping[str, str]) -> list[PatientChannel]:
    """The patient channels switched on in channels.yml, in registry order."""
    return [channel_class(name)(config, intake=intake, store=store, hasher=hasher,
                                secrets=secrets)
            for name in PATIENT_CHANNELS if getattr(config.channels, name).enabled]
