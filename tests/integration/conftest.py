"""Integration fixtures: a live server (our real ASGI app under uvicorn, one worker), and a
runtime on a driven clock (`rt`) for the agent desk and escalation tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bot.app.runtime import Runtime
from bot.config.loader import Config, load_config
from bot.config.settings import Settings
from bot.engine.decision import FrontDeskHandoff
from tests.conftest import serve_app
from tests.support.doubles import START, Clock


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """One store per integration test: tests/contract proves the memory and Redis stores
    equivalent. Redis where the behaviour depends on it (modules marked `redis_store`: several
    processes, leases and locks, what is at rest), memory otherwise. A test may still
    parametrize `backend` itself."""
    return "redis" if request.node.get_closest_marker("redis_store") else "memory"


@dataclass
class Live:
    url: str
    runtime: Runtime
    client: httpx.AsyncClient

    async def sign_in(self, name: str = "Maria Lopez", dob: str = "1984-03-12") -> dict[str, str]:
        response = await self.client.post("/portal/api/signin", json={"name": name, "dob": dob})
        assert response.status_code == 200, response.text
        return {"authorization": f"Bearer {response.json()['token']}"}

    async def history(self, auth: dict[str, str]) -> dict:
        response = await self.client.get("/portal/api/history", headers=auth)
        assert response.status_code == 200, response.text
        return response.json()

    async def wait_for_replies(self, auth: dict[str, str], count: int,
                               timeout: float = 10.0) -> list[str]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            replies = [m["text"] for m in (await self.history(auth))["messages"]
                       if m["direction"] == "out"]
            if len(replies) >= count or asyncio.get_running_loop().time() > deadline:
                return replies
            await asyncio.sleep(0.05)


@pytest.fixture
async def live(config_dir: Path, settings: Settings) -> AsyncIterator[Live]:
    runtime = Runtime.build(load_config(config_dir), settings, decision_step=FrontDeskHandoff)
    async with serve_app(runtime, workers=1) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield Live(url, runtime, client)


@pytest.fixture(autouse=True)
def canary_patient(config_dir: Path) -> None:
    """A fictional patient whose details a test can search for afterwards."""
    with (config_dir / "patients.yml").open("a") as patients:
        patients.write('  - id: P9001\n    name: Zebedee Quillfeather\n    dob: 1971-05-09\n'
                       '    phone: "+16175550199"\n    email: zebedee.quill@example.org\n')


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@pytest.fixture
async def rt(config: Config, settings: Settings, clock: Clock) -> AsyncIterator[Runtime]:
    runtime = Runtime.build(config, settings, decision_step=FrontDeskHandoff, clock=clock)
    yield runtime
    await runtime.close()
