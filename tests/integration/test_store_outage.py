"""With Redis unreachable the app says so (503, not ready) and leaks nothing."""

from __future__ import annotations

import httpx

from bot.app.runtime import Runtime
from bot.app.web import create_app
from bot.config.settings import Settings
from bot.engine.decision import FrontDeskHandoff
from tests.conftest import free_port


async def test_redis_outage_gives_503_and_not_ready(config, keys, prefix) -> None:
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_prefix=prefix,
                        keys=keys)
    runtime = Runtime.build(config, settings, decision_step=FrontDeskHandoff)
    app = create_app(runtime, workers=0)
    try:
        # The server (uvicorn) would log the re-raised error; here it is the test's to ignore.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["store"] is False
            assert (await client.get("/healthz")).status_code == 200
            signin = await client.post("/portal/api/signin",
                                       json={"name": "Maria Lopez", "dob": "1984-03-12"})
            assert signin.status_code == 503
            assert signin.json() == {"error": "Temporarily unavailable, please try again."}
    finally:
        await runtime.close()
