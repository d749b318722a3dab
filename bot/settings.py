"""Secrets and deployment settings from the environment (optionally a .env file).

Secrets never live in config/. This module reads them, checks that production has what it
needs, and never echoes a secret's value in an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dotenv import dotenv_values

from bot.config import Config
from bot.crypto import KeyMaterial, load_key_material
from bot.errors import SecretsError


@dataclass(frozen=True)
class Settings:
    redis_url: str | None
    redis_prefix: str
    keys: KeyMaterial

    @property
    def persistent(self) -> bool:
        return self.redis_url is not None


def environment(env_file: Path | None = Path(".env")) -> dict[str, str]:
    """Process environment over the optional .env file (the environment wins)."""
    merged: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ)
    return merged


def load_settings(config: Config, env: dict[str, str] | None = None) -> Settings:
    env = environment() if env is None else env
    data_dir = Path(config.app.data_dir)
    keys = load_key_material(env, data_dir)
    redis_url = env.get("REDIS_URL") or None
    if config.app.environment == "production":
        if redis_url is None:
            raise SecretsError("environment is production but REDIS_URL is not set "
                               "(in-memory storage loses every message on restart)")
        if keys.generated_dev_keys:
            raise SecretsError("environment is production but PATIENTBOT_DATA_KEYS is not set "
                               "(generated development keys are refused)")
    return Settings(redis_url=redis_url,
                    redis_prefix=env.get("PATIENTBOT_REDIS_PREFIX", "pb"),
                    keys=keys)
