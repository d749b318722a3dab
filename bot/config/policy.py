"""config/policy.yml: identity verification and upset-patient policy."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bot.core.models import ConfigModel


class IdentityPolicy(ConfigModel):
    max_attempts: int = Field(3, ge=1, le=10)
    verified_minutes: int = Field(60, ge=1, le=24 * 60)  # how long verification lasts


class UpsetPolicy(ConfigModel):
    """Upset-patient signals: wording (lexicon patterns, see safety.yml) or repeat contacts."""

    route: Literal["patient_experience", "supervisor"] = "patient_experience"
    repeat_contacts: int = Field(3, ge=2, le=20)  # same contact reason this often ...
    repeat_window_hours: int = Field(72, ge=1, le=24 * 30)  # ... within this window
    en: list[str] = []
    es: list[str] = []


class PolicyFile(ConfigModel):
    """config/policy.yml: the rules the policy applies to every message."""

    identity: IdentityPolicy = IdentityPolicy()
    duplicate_window_seconds: int = Field(120, ge=0, le=3600)
    out_of_scope_handoff_after: int = Field(2, ge=1, le=10)
    # While the bot waits for an answer (identity, a script question), a message switches
    # to a new request (a person, a complaint) only at this intent confidence: a bare date
    # or number says little. Safety levels interrupt at any confidence.
    interrupt_confidence: float = Field(0.6, ge=0, le=1)
    upset: UpsetPolicy = UpsetPolicy()
