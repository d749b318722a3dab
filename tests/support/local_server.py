"""A Starlette app served by uvicorn on a free loopback port inside the test's event loop,
and what the provider API fakes (Slack, Telegram) run on and record."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.requests import Request
from starlette.types import ASGIApp

from tests.conftest import free_port


@dataclass
class Call:
    """One API call a fake received: its method, parameters, and whether it succeeded."""

    method: str
    params: dict[str, Any]
    ok: bool = True


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


async def request_params(request: Request, *, json_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """An API call's parameters as provider SDKs send them: a JSON body, or a form body plus
    the query string, where `json_fields` arrive JSON-serialised (every field that looks
    like JSON when `json_fields` is ``("*",)``)."""
    body = await request.body()
    media_type = request.headers.get("content-type", "").split(";")[0].strip()
    if media_type == "application/json":
        return json.loads(body or b"{}")
    params: dict[str, Any] = dict(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
    params.update(request.query_params)
    for key, value in params.items():
        wanted = key in json_fields or ("*" in json_fields and value[:1] in "[{")
        if wanted and isinstance(value, str):
            params[key] = json.loads(value)
    return params
