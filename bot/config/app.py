"""config/app.yml: the organisation, environment, portal, limits and workers."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from bot.config.base import check_timezone
from bot.core.models import ConfigModel


class PortalConfig(ConfigModel):
    enabled: bool = True
    idle_timeout_minutes: float = Field(15, gt=0, le=240)
    absolute_timeout_minutes: float = Field(120, gt=0, le=1440)
    max_signin_attempts: int = Field(5, ge=1, le=50)
    signin_lockout_minutes: int = Field(15, ge=1, le=1440)


class LimitsConfig(ConfigModel):
    # Longer messages are refused at the channel with a clear error, not truncated.
    max_message_chars: int = Field(4000, ge=100, le=100_000)
    dedupe_ttl_hours: int = Field(72, ge=1, le=24 * 30)
    retention_days: int = Field(90, ge=1, le=3650)


class WorkersConfig(ConfigModel):
    in_process: int = Field(1, ge=0, le=64)
    concurrency: int = Field(32, ge=1, le=1024)
    reclaim_idle_seconds: float = Field(30.0, gt=0)
    lock_ttl_seconds: float = Field(30.0, gt=0)
    order_wait_seconds: float = Field(60.0, ge=0)
    max_deliveries: int = Field(5, ge=2, le=100)


class AppConfig(ConfigModel):
    organisation: str = Field(min_length=1)
    environment: Literal["development", "production"] = "development"
    timezone: str = "UTC"
    public_base_url: str = "http://127.0.0.1:8000"
    data_dir: str = ".data"
    default_language: Literal["en", "es"] = "en"
    limits: LimitsConfig = LimitsConfig()
    workers: WorkersConfig = WorkersConfig()
    portal: PortalConfig = PortalConfig()

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        return check_timezone(value)
