"""config/intents.yml: each contact reason and the lane it goes to."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    Field,
)

from bot.config.base import CallbackWindowText, LaneName
from bot.core.models import ConfigModel


class IntentConfig(ConfigModel):
    """A contact reason: its lane, the identity check it needs, the approved script that
    handles it, and (optionally) its own callback window and escalation owner."""

    lane: LaneName | None = None
    identity: Literal["none", "basic", "strong"] = "none"
    script: str | None = None
    callback_window: CallbackWindowText | None = None  # default: the lane's
    escalation_owner: str | None = None  # default: the lane's owner


class IntentsFile(ConfigModel):
    intents: dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], IntentConfig]
