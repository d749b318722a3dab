"""Operator commands against real Redis: dead letters and audit verification."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.core.crypto import load_key_material
from bot.store.audit import AuditChain, AuditEvent, RedisAuditLog
from bot.store.ingress import RedisIngressQueue
from tests.conftest import CONFIG_DIR, key_env, redis_url


def run(*args: str, prefix: str, cwd: Path,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env or key_env()), "REDIS_URL": redis_url(),
           "PATIENTBOT_REDIS_PREFIX": prefix}
    return subprocess.run([sys.executable, "-m", "bot.app.cli", *args, "--config", str(CONFIG_DIR)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def cli(*args: str, prefix: str, cwd: Path) -> str:
    result = run("ingress", "dead-letters", *args, prefix=prefix, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


async def test_dead_letters_are_counted_and_requeued(redis_client, prefix: str,
                                                    tmp_path: Path) -> None:
    queue = RedisIngressQueue(redis_client, prefix=prefix)
    entry = await queue.append("portal:abc", "sealed")
    await queue.read("w1", count=1, block=0.1)
    await queue.dead_letter(entry.entry_id)
    assert cli(prefix=prefix, cwd=tmp_path).startswith("1 dead-letter entries")
    assert cli("--requeue", prefix=prefix, cwd=tmp_path) == "requeued 1 dead-letter entries"
    assert await queue.dead_letters() == 0
    [back] = await queue.read("w1", count=1, block=0.1)
    assert back.envelope == "sealed"


async def test_audit_verify_reports_the_head_and_detects_tampering(redis_client, prefix: str,
                                                                   tmp_path: Path) -> None:
    secrets = key_env()
    keys = load_key_material(secrets, tmp_path)
    log = RedisAuditLog(redis_client, AuditChain(keys.hasher.derive_key("audit-mac-v1")),
                        prefix=prefix)
    for n in range(3):
        await log.record(AuditEvent("transcript.read", "patient", f"portal:{n}"))
    good = run("audit", "verify", prefix=prefix, cwd=tmp_path, env=secrets)
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("audit log OK: 3 entries; head 3 ")
    first_id = (await redis_client.xrange(f"{prefix}:audit"))[0][0]
    await redis_client.xdel(f"{prefix}:audit", first_id)
    bad = run("audit", "verify", prefix=prefix, cwd=tmp_path, env=secrets)
    assert bad.returncode == 1
    assert bad.stderr.strip() == "audit log BROKEN: entry 1 is missing (found 2 next)"


# Modules that mean the NLU model was loaded or trained (the lexicon and the config models
# are read by `config check` itself and are cheap).
MODEL_MODULES = ("nlu.service", "nlu.embedded", "sklearn")
PROBE = """
import sys

import pytest
from bot.app.cli.main import main
code = main(sys.argv[1:])
loaded = [m for m in sys.modules if m.startswith({modules!r})]
print("loaded:", ",".join(loaded))
sys.exit(code)
"""


@pytest.mark.parametrize("command", [("audit", "verify"), ("ingress", "dead-letters"),
                                     ("config", "check"), ("desk", "token", "demo")],
                         ids=" ".join)
def test_ops_commands_never_load_the_nlu_model(command: tuple[str, ...], prefix: str,
                                               tmp_path: Path) -> None:
    env = {**os.environ, **key_env(), "REDIS_URL": redis_url(), "PATIENTBOT_REDIS_PREFIX": prefix}
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(modules=MODEL_MODULES), *command,
         "--config", str(CONFIG_DIR)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("loaded:"), result.stdout


def test_a_replaced_decision_step_is_refused_in_production(config_dir: Path,
                                                           tmp_path: Path) -> None:
    app = config_dir / "app.yml"
    app.write_text(app.read_text().replace("environment: development",
                                           "environment: production"))
    env = {**os.environ, **key_env(), "PATIENTBOT_DECISION_STEP":
           "bot.engine.decision:FrontDeskHandoff"}
    result = subprocess.run([sys.executable, "-m", "bot.app.cli", "worker", "--config",
                             str(config_dir)], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(
        "patientbot: config error: app.yml: environment: production refuses --decision-step")
