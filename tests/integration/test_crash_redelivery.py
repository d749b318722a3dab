"""A worker process killed in the middle of a message: another worker finishes it, and the
patient gets exactly one reply (real Redis, real `patientbot worker` processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from bot.app.runtime import Runtime
from bot.config.loader import load_config
from bot.config.settings import Settings
from bot.core.crypto import load_key_material
from bot.core.envelopes import Inbound
from bot.engine.decision import FrontDeskHandoff
from tests.conftest import REPO, key_env, redis_url


def start_worker(config_dir: Path, env: dict[str, str], *, hanging: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "bot.app.cli", "worker", "--config", str(config_dir)]
    if hanging:
        args += ["--decision-step", "tests.support.hanging_step:HangingStep"]
    else:
        args += ["--decision-step", "bot.engine.decision:FrontDeskHandoff"]
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


async def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_killed_worker_message_is_finished_by_another_with_one_reply(
        config_dir: Path, prefix: str, redis_client, tmp_path: Path, edit_config) -> None:
    edit_config("reclaim_idle_seconds: 30", "reclaim_idle_seconds: 1")
    # The decision step's deadline is half the lock TTL: long enough to kill the worker
    # mid-message, short enough for the rescuer to take the lock soon after.
    edit_config("lock_ttl_seconds: 30", "lock_ttl_seconds: 4")
    secrets = key_env()
    marker = tmp_path / "mid-message"
    env = {**os.environ, **secrets, "REDIS_URL": redis_url(), "PATIENTBOT_REDIS_PREFIX": prefix,
           "PATIENTBOT_TEST_MARKER": str(marker)}
    config = load_config(config_dir)
    runtime = Runtime.build(config, Settings(redis_url=redis_url(), redis_prefix=prefix,
                                             keys=load_key_material(secrets, tmp_path)),
                            decision_step=FrontDeskHandoff)
    conv = runtime.ingress.conversation_key("portal", "P1001").id
    doomed = start_worker(config_dir, env, hanging=True)
    rescuer = None
    try:
        await runtime.ingress.submit(Inbound(channel="portal", sender="P1001",
                                             provider_message_id="crash-1", text="hello",
                                             verified_patient="P1001"))

        async def mid_message() -> bool:
            return marker.exists()

        await wait_for(mid_message, 20, "the first worker to start the message")
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=10)
        assert await runtime.ingress.queue.pending() == 1  # still owed, not lost

        rescuer = start_worker(config_dir, env, hanging=False)

        async def replied() -> bool:
            return len(await runtime.store.mailbox_read(conv, after=0)) >= 1

        await wait_for(replied, 30, "the second worker to reply")
        await wait_for(lambda: _no_pending(runtime), 10, "the entry to be acknowledged")
        await asyncio.sleep(1.5)  # a second reply, if any, would arrive within a reclaim cycle
        assert [i.text for i in await runtime.store.mailbox_read(conv, after=0)] == \
            [config.text("handoff_ack")]
        assert len(await runtime.store.tickets_in_lane("front_desk")) == 1
    finally:
        for process in (doomed, rescuer):
            if process and process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
        await runtime.close()


async def _no_pending(runtime: Runtime) -> bool:
    return await runtime.ingress.queue.pending() == 0
