"""PHI sealing, key rotation, keyed hashes, and the environment rules around keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot.config.loader import load_config
from bot.config.settings import load_settings
from bot.core.crypto import Hasher, Sealer, load_key_material, new_key, parse_data_keys
from bot.core.errors import CryptoError, SecretsError
from tests.conftest import key_env


def sealer(*ids: str) -> tuple[Sealer, dict[str, bytes]]:
    raw = {key_id: os.urandom(32) for key_id in ids}
    return Sealer(list(raw.items())), raw


def test_seal_round_trip_carries_the_key_id_and_hides_the_text() -> None:
    s, _ = sealer("k1")
    token = s.seal("Maria Lopez", record="session:sms:abc", field="name")
    assert token.startswith("pb1.k1.")
    assert "Maria" not in token
    assert s.open(token, record="session:sms:abc", field="name") == "Maria Lopez"
    assert s.seal("x", record="r", field="f") != s.seal("x", record="r", field="f")  # fresh nonce


@pytest.mark.parametrize(("record", "field"), [("session:sms:other", "name"),
                                               ("session:sms:abc", "dob")])
def test_a_ciphertext_moved_to_another_record_or_field_does_not_open(record, field) -> None:
    s, _ = sealer("k1")
    token = s.seal("Maria Lopez", record="session:sms:abc", field="name")
    with pytest.raises(CryptoError):
        s.open(token, record=record, field=field)


def test_tampering_is_detected() -> None:
    s, _ = sealer("k1")
    token = s.seal("hello", record="r", field="f")
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(CryptoError):
        s.open(flipped, record="r", field="f")
    with pytest.raises(CryptoError):
        s.open("not-a-token", record="r", field="f")


def test_keys_rotate_old_ciphertexts_still_open() -> None:
    old_key, new = os.urandom(32), os.urandom(32)
    before = Sealer([("2025", old_key)])
    token = before.seal("dob 1984-03-12", record="r", field="f")
    after = Sealer([("2026", new), ("2025", old_key)])
    assert after.open(token, record="r", field="f") == "dob 1984-03-12"
    assert after.seal("x", record="r", field="f").startswith("pb1.2026.")
    retired = Sealer([("2026", new)])
    with pytest.raises(CryptoError, match="unknown key id '2025'"):
        retired.open(token, record="r", field="f")


def test_data_keys_parse_and_errors_never_echo_key_material() -> None:
    key = new_key()
    assert [k for k, _ in parse_data_keys(f"a:{key}, b:{new_key()}")] == ["a", "b"]
    with pytest.raises(SecretsError) as err:
        Sealer(parse_data_keys(f"short:{key[:10]}"))
    assert key[:10] not in str(err.value)
    with pytest.raises(SecretsError, match="not id:base64key"):
        parse_data_keys(key)


def test_keyed_hashes_are_stable_keyed_and_purpose_bound() -> None:
    k = os.urandom(32)
    h = Hasher(k)
    assert h.digest("+16175550100", purpose="sender") == Hasher(k).digest("+16175550100",
                                                                         purpose="sender")
    assert h.digest("+16175550100", purpose="sender") != h.digest("+16175550100",
                                                                 purpose="other")
    assert h.digest("+16175550100", purpose="sender") != Hasher(os.urandom(32)).digest(
        "+16175550100", purpose="sender")
    assert "5550100" not in h.digest("+16175550100", purpose="sender")


def test_development_keys_are_generated_once_and_reused(tmp_path: Path) -> None:
    first = load_key_material({}, tmp_path / ".data")
    assert first.generated_dev_keys
    key_file = tmp_path / ".data" / "dev-keys.json"
    assert key_file.stat().st_mode & 0o777 == 0o600
    token = first.sealer.seal("x", record="r", field="f")
    second = load_key_material({}, tmp_path / ".data")
    assert second.sealer.open(token, record="r", field="f") == "x"


def test_data_keys_require_the_other_secrets(tmp_path: Path) -> None:
    env = key_env()
    del env["PATIENTBOT_LOOKUP_KEY"]
    with pytest.raises(SecretsError, match="PATIENTBOT_LOOKUP_KEY is not"):
        load_key_material(env, tmp_path)


@pytest.fixture
def production_config(config_dir: Path, tmp_path: Path, edit_config):
    edit_config("environment: development", "environment: production")
    edit_config("data_dir: .data", f"data_dir: {tmp_path / 'data'}")
    (config_dir / "agents.yml").write_text("desk: {accounts: []}\n")  # no demo account
    return load_config(config_dir)


def test_production_refuses_generated_keys(production_config) -> None:
    config = production_config
    with pytest.raises(SecretsError, match="PATIENTBOT_DATA_KEYS is not set"):
        load_settings(config, {"REDIS_URL": "redis://127.0.0.1:6379/0"})


def test_production_refuses_in_memory_storage(production_config) -> None:
    config = production_config
    with pytest.raises(SecretsError, match="REDIS_URL is not set"):
        load_settings(config, key_env())
    settings = load_settings(config, {**key_env(), "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert settings.persistent and not settings.keys.generated_dev_keys


def test_keys_new_prints_secrets_that_load(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bot.app.cli", "keys", "new"], capture_output=True,
                         text=True, check=True).stdout
    env = dict(line.split("=", 1) for line in out.strip().splitlines())
    assert set(env) == {"PATIENTBOT_DATA_KEYS", "PATIENTBOT_LOOKUP_KEY",
                        "PATIENTBOT_SESSION_SECRET"}
    material = load_key_material(env, tmp_path)
    assert not material.generated_dev_keys
    assert material.sealer.open(material.sealer.seal("x", record="r", field="f"),
                                record="r", field="f") == "x"
