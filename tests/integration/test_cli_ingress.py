"""`patientbot ingress dead-letters` shows and requeues what was set aside (real Redis)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bot.ingress import RedisIngressQueue
from tests.conftest import CONFIG_DIR, key_env, redis_url


def cli(*args: str, prefix: str, cwd: Path) -> str:
    env = {**os.environ, **key_env(), "REDIS_URL": redis_url(),
           "PATIENTBOT_REDIS_PREFIX": prefix}
    result = subprocess.run([sys.executable, "-m", "bot.cli", "ingress", "dead-letters",
                             "--config", str(CONFIG_DIR), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=60)
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
