"""What every patient channel shares: enabled channels show in /metrics from the start, and
an enabled channel without its secret stops the start naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from bot.app.runtime import Runtime
from bot.config.loader import load_config
from bot.config.settings import Settings, load_settings
from bot.core.crypto import KeyMaterial
from bot.core.errors import SecretsError
from tests.conftest import key_env

ALL_ON = {
    "sms": {"enabled": True, "account_sid": "AC" + "0" * 32, "from_number": "+16175550100"},
    "email": {"enabled": True, "recipients": ["help@clinic.example"],
              "from_address": "help@clinic.example"},
    "telegram": {"enabled": True},
}
SECRETS = {"TWILIO_AUTH_TOKEN": "t" * 32, "TELEGRAM_BOT_TOKEN": "123456:" + "A" * 35,
           "TELEGRAM_WEBHOOK_SECRET": "s3cret-token"}


def enable_all(config_dir: Path) -> None:
    path = config_dir / "channels.yml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    for channel, settings in ALL_ON.items():
        data[channel].update(settings)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


async def test_enabled_channels_are_listed_in_metrics_before_any_message(
        config_dir: Path, keys: KeyMaterial) -> None:
    enable_all(config_dir)
    config = load_config(config_dir)
    runtime = Runtime.build(config, Settings(redis_url=None, redis_prefix="t", keys=keys,
                                             secrets=SECRETS))
    try:
        assert runtime.channels.names() == ["email", "portal", "sms", "telegram"]
        for channel in ("sms", "email", "telegram", "portal"):
            assert REGISTRY.get_sample_value("patientbot_messages_in_total",
                                             {"channel": channel}) is not None
        paths = {route.path for channel in runtime.patient_channels
                 for route in channel.routes()}
        assert {"/webhooks/twilio/sms", "/webhooks/twilio/status",
                "/webhooks/telegram"} <= paths
    finally:
        await runtime.close()


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_an_enabled_channel_without_its_secret_refuses_to_start(config_dir: Path, tmp_path: Path,
                                                                missing: str) -> None:
    enable_all(config_dir)
    config = load_config(config_dir)
    env = {**key_env(), **SECRETS}
    del env[missing]
    with pytest.raises(SecretsError, match=missing):
        load_settings(config, env)
