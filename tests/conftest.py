"""Shared fixtures: fresh keys, the repository config, and stores over real Redis.

Redis is always real: `make test` sets REDIS_URL (starting a private server when needed).
Each test gets its own key prefix and its keys are removed afterwards.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import redis.asyncio as redis

from bot.app.runtime import Runtime
from bot.config.loader import Config, load_config
from bot.config.settings import Settings
from bot.core.crypto import KeyMaterial, load_key_material, new_key
from bot.engine.decision import FrontDeskHandoff
from bot.store.ingress import MemoryIngressQueue, RedisIngressQueue
from bot.store.memory import MemoryStore
from bot.store.redis import RedisStore

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"


def redis_url() -> str:
    url = os.environ.get("REDIS_URL")
    if not url:
        raise RuntimeError("REDIS_URL is not set: run the suite with `make test`, which starts "
                           "a private redis-server, or point REDIS_URL at a test Redis")
    return url


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def key_env() -> dict[str, str]:
    """Fresh secrets in the environment format (for subprocesses)."""
    return {"PATIENTBOT_DATA_KEYS": f"t1:{new_key()}", "PATIENTBOT_LOOKUP_KEY": new_key(),
            "PATIENTBOT_SESSION_SECRET": new_key()}


@pytest.fixture(scope="session", autouse=True)
def shared_nlu_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One NLU model cache for the whole run, subprocesses included: each distinct model is
    trained once, not once per test directory."""
    cache = tmp_path_factory.mktemp("nlu-cache")
    previous = os.environ.get("PATIENTBOT_NLU_CACHE")
    os.environ["PATIENTBOT_NLU_CACHE"] = str(cache)
    yield cache
    if previous is None:
        os.environ.pop("PATIENTBOT_NLU_CACHE", None)
    else:
        os.environ["PATIENTBOT_NLU_CACHE"] = previous


@pytest.fixture
def keys(tmp_path: Path) -> KeyMaterial:
    return load_key_material(key_env(), tmp_path / "unused")


@pytest.fixture
def config() -> Config:
    return load_config(CONFIG_DIR)


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A private copy of the repository config that a test may edit."""
    target = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, target)
    return target


@pytest.fixture
def edit_config(config_dir: Path) -> Callable[[str, str], None]:
    """Replace one piece of text in the private copy of app.yml."""
    def edit(old: str, new: str) -> None:
        path = config_dir / "app.yml"
        text = path.read_text()
        assert old in text, f"{old!r} not in app.yml"
        path.write_text(text.replace(old, new))
    return edit


@pytest.fixture
def prefix() -> str:
    return f"pbtest-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url())
    yield client
    async for key in client.scan_iter(match=f"{prefix}:*", count=500):
        await client.unlink(key)
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(backend: str, keys: KeyMaterial, prefix: str,
               redis_client: redis.Redis) -> Iterator:
    """Factory for a store of the parametrised backend (options like dedupe_ttl pass on)."""

    def make(**options: float) -> MemoryStore | RedisStore:
        if backend == "memory":
            return MemoryStore(keys.sealer, keys.hasher, **options)
        return RedisStore(redis_client, keys.sealer, keys.hasher, prefix=prefix, **options)

    yield make


@pytest.fixture
def store(make_store) -> MemoryStore | RedisStore:
    return make_store()


@pytest.fixture
def ingress_queue(backend: str, prefix: str,
                  redis_client: redis.Redis) -> MemoryIngressQueue | RedisIngressQueue:
    if backend == "memory":
        return MemoryIngressQueue()
    return RedisIngressQueue(redis_client, prefix=prefix)


@pytest.fixture
def settings(backend: str, keys: KeyMaterial, prefix: str, redis_client: redis.Redis) -> Settings:
    return Settings(redis_url=redis_url() if backend == "redis" else None, redis_prefix=prefix,
                    keys=keys)


@pytest.fixture
async def runtime(config: Config, settings: Settings) -> AsyncIterator[Runtime]:
    # Pipeline mechanics are tested with the fixed front-desk step; the engine has its own
    # tests (tests/integration/test_engine_pipeline.py and the scenarios).
    rt = Runtime.build(config, settings, decision_step=FrontDeskHandoff)
    yield rt
    await rt.close()


async def run_workers_until(runtime: Runtime, done, *, workers: int = 1,
                            timeout: float = 15.0, reclaim_idle: float | None = None) -> None:
    """Run real workers until the async predicate `done()` holds (or fail after timeout)."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(
        runtime.new_worker(f"test-{i}", reclaim_idle=reclaim_idle).run(stop))
        for i in range(workers)]
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not await done():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("workers did not reach the expected state in time")
            await asyncio.sleep(0.02)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@asynccontextmanager
async def serve_app(runtime: Runtime, *, workers: int = 0) -> AsyncIterator[str]:
    """Our real ASGI app under uvicorn on a free port (lifespan on); yields its base URL."""
    import uvicorn

    from bot.app.web import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(runtime, workers=workers),
                                           host="127.0.0.1", port=port, log_config=None,
                                           lifespan="on", timeout_graceful_shutdown=1))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
