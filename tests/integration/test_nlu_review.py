"""`patientbot nlu review`: what agents relabelled, listed, exported as Rasa YAML, removed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot.app.runtime import Runtime
from bot.config.loader import Config
from bot.config.settings import Settings
from bot.core.crypto import load_key_material
from bot.engine.decision import FrontDeskHandoff
from bot.store.audit import AuditChain, RedisAuditLog
from nlu.data import read_file
from tests.conftest import CONFIG_DIR, key_env, redis_url
from tests.integration.test_desk import hand_off


def review(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.app.cli", "nlu", "review", *args,
                           "--config", str(CONFIG_DIR)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


async def test_relabelled_messages_are_listed_exported_and_removed(
        config: Config, prefix: str, redis_client, tmp_path: Path) -> None:
    secrets = key_env()
    settings = Settings(redis_url=redis_url(), redis_prefix=prefix,
                        keys=load_key_material(secrets, tmp_path))
    runtime = Runtime.build(config, settings, decision_step=FrontDeskHandoff)
    try:
        ticket = await hand_off(runtime, "why was I charged twice for my October visit")
        await runtime.desk.relabel(ticket.id, "agent-7", "billing_question")
        other = await hand_off(runtime, "I need a copy of my shot records", patient="P1002")
        await runtime.desk.relabel(other.id, "agent-7", "records_request")
    finally:
        await runtime.close()
    env = {**os.environ, **secrets, "REDIS_URL": redis_url(), "PATIENTBOT_REDIS_PREFIX": prefix}

    listed = review(env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "2 relabelled messages" in listed.stdout
    assert "unclassified -> billing_question" in listed.stdout
    assert "charged twice" in listed.stdout

    out = tmp_path / "relabelled.yml"
    exported = review("--export", str(out), "--only", ticket.id, "--remove", env=env,
                      cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    [example] = read_file(out).examples
    assert (example.intent, example.text) == ("billing_question",
                                             "why was I charged twice for my October visit")
    left = review(env=env, cwd=tmp_path)
    assert "1 relabelled messages" in left.stdout and "records_request" in left.stdout
    # Reading the queue shows patient words: every read and export is audited.
    log = RedisAuditLog(redis_client, AuditChain(settings.keys.hasher.derive_key("audit-mac-v1")),
                        prefix=prefix)
    recorded = [entry.event.action for entry in await log.entries()]
    assert recorded.count("review.read") == 2 and recorded.count("review.exported") == 1
    assert (await log.verify()).ok


def test_review_needs_redis(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    result = review(env={**env, **key_env()}, cwd=tmp_path)
    assert result.returncode == 2 and "set REDIS_URL" in result.stderr
