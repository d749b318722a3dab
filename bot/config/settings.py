"""Secrets and deployment settings from the environment (optionally a .env file).

Secrets never live in config/. This module reads them, checks that production has what it
needs, and never echoes a secret's value in an error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dotenv import dotenv_values

from bot.config.agents import SlackConfig
from bot.config.loader import Config
from bot.core.crypto import KeyMaterial, load_key_material
from bot.core.errors import SecretsError

# Provider secrets the channels read from the environment (never from config/).
CHANNEL_SECRETS = ("TWILIO_AUTH_TOKEN", "TELEGRAM_BOT_TOKEN", "TELEGRAM_WEBHOOK_SECRET",
                   "SMTP_PASSWORD", "IMAP_PASSWORD", "SLACK_SIGNING_SECRET", "SLACK_BOT_TOKEN",
                   "SLACK_APP_TOKEN")
DEMO_DESK_PASSWORD = "riverside-desk-demo"  # the sample account's, in config/agents.yml


@dataclass(frozen=True)
class Settings:
    redis_url: str | None
    redis_prefix: str
    keys: KeyMaterial
    secrets: Mapping[str, str] = field(default_factory=dict)  # CHANNEL_SECRETS that are set

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
        _refuse_demo_accounts(config)
    secrets = {name: env[name] for name in CHANNEL_SECRETS if env.get(name)}
    _check_channel_secrets(config, secrets)
    return Settings(redis_url=redis_url,
                    redis_prefix=env.get("PATIENTBOT_REDIS_PREFIX", "pb"),
                    keys=keys, secrets=secrets)


def _check_channel_secrets(config: Config, secrets: Mapping[str, str]) -> None:
    """An enabled channel without its secret would accept forged requests or fail every
    send: refuse to start instead, naming the variable."""
    channels = config.channels
    needed = []
    if channels.sms.enabled:
        needed.append(("TWILIO_AUTH_TOKEN", "channels.yml sms is enabled"))
    if channels.telegram.enabled:
        needed.append(("TELEGRAM_BOT_TOKEN", "channels.yml telegram is enabled"))
        if channels.telegram.mode == "webhook":
            needed.append(("TELEGRAM_WEBHOOK_SECRET", "telegram webhook mode needs a secret"))
    if config.agents.slack.enabled:
        needed.extend(slack_secrets_needed(config.agents.slack))
    if config.agents.email_notices.enabled and channels.email.relay_username:
        # The notices reuse the email channel's relay and its login.
        needed.append(("SMTP_PASSWORD", "agents.yml email_notices is enabled and channels.yml "
                       "email.relay_username is set"))
    require_secrets(needed, secrets)


def slack_secrets_needed(slack: SlackConfig) -> list[tuple[str, str]]:
    """(variable, why) for an enabled Slack workspace in its mode."""
    if slack.mode == "http":
        mode = ("SLACK_SIGNING_SECRET", "Slack HTTP mode verifies every request")
    else:
        mode = ("SLACK_APP_TOKEN", "Slack Socket Mode needs an app-level token")
    return [("SLACK_BOT_TOKEN", "agents.yml slack is enabled"), mode]


def require_secrets(needed: list[tuple[str, str]], secrets: Mapping[str, str]) -> None:
    """Refuse to start without a needed secret, naming the variable (never its value)."""
    for name, why in needed:
        if not secrets.get(name):
            raise SecretsError(f"{name} is not set ({why})")


def _refuse_demo_accounts(config: Config) -> None:
    """The sample desk account's password is published: never in production."""
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    hasher = PasswordHasher()
    for account in config.agents.desk.accounts:
        if not account.password_hash:
            continue
        try:
            hasher.verify(account.password_hash, DEMO_DESK_PASSWORD)
        except (VerificationError, InvalidHashError):
            continue
        raise SecretsError(f"agents.yml desk account {account.id!r} still has the published "
                           "demo password: set a new hash (patientbot desk hash-password)")
