"""A Starlette app served by uvicorn on a free loopback port inside the test's event loop:
what the provider API fakes (Slack, Telegram) run on."""

from __future__ import annotations

import asyncio

import uvicorn
from starlette.types import ASGIApp

from tests.conftest import free_port


class LocalServer:
    """`await start(app)` serves `app` at `url`; `await stop()` shuts it down."""

    def __init__(self) -> None:
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, app: ASGIApp) -> str:
        port = free_port()
        # No access log: request paths of some APIs carry a token.
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                     log_config=None, access_log=False,
                                                     lifespan="off",
                                                     timeout_graceful_shutdown=1))
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None
