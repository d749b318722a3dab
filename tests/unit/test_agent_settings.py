"""Agent interfaces refuse to start half-configured: Slack without its secrets, email
notices without the relay password, or a production desk that still has the published demo
password."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import PasswordHasher

from bot.config.loader import load_config
from bot.config.settings import load_settings
from bot.core.errors import SecretsError
from tests.conftest import key_env

SLACK_SECRETS = {"SLACK_BOT_TOKEN": "xoxb-1-2-abc", "SLACK_SIGNING_SECRET": "f" * 32}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture text {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def enable_slack(config_dir: Path, mode: str = "http") -> None:
    edit(config_dir / "agents.yml", "  enabled: false\n  mode: http",
         f"  enabled: true\n  mode: {mode}")
    edit(config_dir / "agents.yml", '  default_channel: ""', "  default_channel: C0FRONT01")


@pytest.mark.parametrize("missing", sorted(SLACK_SECRETS))
def test_slack_without_its_secret_refuses_to_start(config_dir: Path, missing: str) -> None:
    enable_slack(config_dir)
    env = {**key_env(), **SLACK_SECRETS}
    del env[missing]
    with pytest.raises(SecretsError, match=missing) as caught:
        load_settings(load_config(config_dir), env)
    for value in SLACK_SECRETS.values():  # never echoes a secret
        assert value not in str(caught.value)


def test_socket_mode_needs_the_app_token(config_dir: Path) -> None:
    enable_slack(config_dir, mode="socket")
    config = load_config(config_dir)
    with pytest.raises(SecretsError, match="SLACK_APP_TOKEN"):
        load_settings(config, {**key_env(), "SLACK_BOT_TOKEN": "xoxb-1-2-abc"})
    settings = load_settings(config, {**key_env(), "SLACK_BOT_TOKEN": "xoxb-1-2-abc",
                                      "SLACK_APP_TOKEN": "xapp-1-A1-2-abc"})
    assert settings.secrets["SLACK_APP_TOKEN"] == "xapp-1-A1-2-abc"


def enable_email_notices(config_dir: Path, *, relay_username: str = "") -> None:
    edit(config_dir / "agents.yml", 'email_notices:\n  enabled: false\n  from_address: ""',
         "email_notices:\n  enabled: true\n  from_address: patientbot@clinic.example")
    edit(config_dir / "channels.yml", '  relay_username: ""',
         f'  relay_username: "{relay_username}"')


def test_email_notices_with_a_relay_login_need_smtp_password(config_dir: Path) -> None:
    enable_email_notices(config_dir, relay_username="notices@clinic.example")
    config = load_config(config_dir)
    with pytest.raises(SecretsError, match="SMTP_PASSWORD") as caught:
        load_settings(config, key_env())
    assert "agents.yml email_notices" in str(caught.value)
    settings = load_settings(config, {**key_env(), "SMTP_PASSWORD": "relay-pass"})
    assert settings.secrets["SMTP_PASSWORD"] == "relay-pass"


def test_email_notices_through_an_open_relay_need_no_password(config_dir: Path) -> None:
    enable_email_notices(config_dir)  # no relay_username: the relay takes mail unauthenticated
    assert "SMTP_PASSWORD" not in load_settings(load_config(config_dir), key_env()).secrets


def test_production_refuses_the_demo_desk_password(config_dir: Path) -> None:
    edit(config_dir / "app.yml", "environment: development", "environment: production")
    env = {**key_env(), "REDIS_URL": "redis://127.0.0.1:6379/0"}
    with pytest.raises(SecretsError, match="demo password") as caught:
        load_settings(load_config(config_dir), env)
    assert "riverside-desk-demo" not in str(caught.value)  # the message names no secret

    agents = config_dir / "agents.yml"
    demo_hash = next(line.split(": ", 1)[1] for line in agents.read_text().splitlines()
                     if "password_hash:" in line)
    edit(agents, demo_hash, PasswordHasher().hash("a long unique passphrase"))
    assert load_settings(load_config(config_dir), env).redis_url is not None
