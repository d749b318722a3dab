"""A local Telegram Bot API for tests: the methods patientbot calls, over real HTTP.

Speaks the documented API (https://core.telegram.org/bots/api): `POST /bot<token>/<method>`
with form or JSON parameters, answering `{"ok": true, "result": ...}` or
`{"ok": false, "error_code": ..., "description": ..., "parameters": {...}}`. It checks the
token in the path, records every call, can fail the next calls of a method, and serves
`getUpdates` long polling from updates a test pushes. Driven by the real aiogram client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.support.local_server import Call, LocalServer, request_params

TOKEN = "123456789:AAF-test_token_for_patientbot-0123456"


@dataclass
class Failure:
    status: int
    description: str
    retry_after: int | None = None


@dataclass
class FakeTelegramAPI:
    token: str = TOKEN
    calls: list[Call] = field(default_factory=list)
    file_requests: list[str] = field(default_factory=list)
    url: str = ""
    _failures: dict[str, list[Failure]] = field(default_factory=dict)
    _updates: list[dict[str, Any]] = field(default_factory=list)
    _new_updates: asyncio.Condition | None = None
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1001))
    _http: LocalServer = field(default_factory=LocalServer)

    # test controls ----------------------------------------------------------------------
    def fail(self, method: str, status: int, description: str, *, retry_after: int | None = None,
             times: int = 1) -> None:
        """Answer the next `times` calls of `method` with this Bot API error."""
        self._failures.setdefault(method.lower(), []).extend(
            [Failure(status, description, retry_after)] * times)

    async def push_update(self, update: dict[str, Any]) -> None:
        """Make an update available to getUpdates."""
        assert self._new_updates is not None
        async with self._new_updates:
            self._updates.append(update)
            self._new_updates.notify_all()

    def calls_of(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method.lower() == method.lower()]

    def sent(self, *, ok_only: bool = True) -> list[Call]:
        return [call for call in self.calls_of("sendMessage") if call.ok or not ok_only]

    def sent_texts(self) -> list[str]:
        return [call.params["text"] for call in self.sent()]

    # server -----------------------------------------------------------------------------
    async def start(self) -> FakeTelegramAPI:
        self._new_updates = asyncio.Condition()
        app = Starlette(routes=[
            Route("/bot{token}/{method}", self._method, methods=["GET", "POST"]),
            Route("/file/bot{token}/{path:path}", self._file, methods=["GET"]),
        ])
        self.url = await self._http.start(app)
        return self

    async def stop(self) -> None:
        await self._http.stop()

    # Bot API ----------------------------------------------------------------------------
    async def _params(self, request: Request) -> dict[str, Any]:
        # aiogram sends a form when there are no files, arrays and objects JSON-serialised.
        return await request_params(request, json_fields=("*",))

    async def _method(self, request: Request) -> Response:
        method = request.path_params["method"]
        if request.path_params["token"] != self.token:
            return _error(401, "Unauthorized")
        params = await self._params(request)
        failures = self._failures.get(method.lower())
        if failures:
            failure = failures.pop(0)
            self.calls.append(Call(method, params, ok=False))
            return _error(failure.status, failure.description, failure.retry_after)
        self.calls.append(Call(method, params))
        handler = {"getme": self._get_me, "sendmessage": self._send_message,
                   "setwebhook": _true, "deletewebhook": _true,
                   "getupdates": self._get_updates}.get(method.lower())
        if handler is None:
            return _error(404, "Not Found: method not found")
        return await handler(params)

    async def _file(self, request: Request) -> Response:
        self.file_requests.append(request.url.path)
        return _error(404, "Not Found")

    async def _get_me(self, params: dict[str, Any]) -> Response:
        return _ok({"id": int(self.token.split(":")[0]), "is_bot": True,
                    "first_name": "Clinic", "username": "clinic_test_bot"})

    async def _send_message(self, params: dict[str, Any]) -> Response:
        text = params.get("text", "")
        if not text:
            return _error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            return _error(400, "Bad Request: message is too long")
        try:
            chat_id = int(params["chat_id"])
        except (KeyError, ValueError):
            return _error(400, "Bad Request: chat not found")
        return _ok({"message_id": next(self._ids), "date": int(time.time()),
                    "chat": {"id": chat_id, "type": "private"}, "text": text})

    async def _get_updates(self, params: dict[str, Any]) -> Response:
        assert self._new_updates is not None
        offset = int(params.get("offset", 0) or 0)
        timeout = float(params.get("timeout", 0) or 0)
        async with self._new_updates:
            # An offset confirms every update before it (Telegram then forgets them).
            self._updates[:] = [u for u in self._updates if u["update_id"] >= offset]
            if not self._updates and timeout > 0:
                # At most a second (not `timeout`): test servers stop quickly.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._new_updates.wait_for(lambda: self._updates),
                                           min(timeout, 1.0))
            batch = list(self._updates[:int(params.get("limit", 100) or 100)])
        return _ok(batch)


async def _true(params: dict[str, Any]) -> Response:
    return _ok(True)


def _ok(result: Any) -> Response:
    return JSONResponse({"ok": True, "result": result})


def _error(status: int, description: str, retry_after: int | None = None) -> Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return JSONResponse(body, status_code=status)
