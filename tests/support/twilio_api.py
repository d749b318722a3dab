"""A local stand-in for Twilio's Messages API (the one edge we cannot reach in tests).

It speaks the part of the documented API that `channels.sms` uses:
`POST /2010-04-01/Accounts/{AccountSid}/Messages.json` with form fields To, From, Body and
StatusCallback, HTTP Basic auth (AccountSid, auth token), answering 201 with a message
resource, or Twilio's error JSON (`{"code", "message", "more_info", "status"}`). Every request,
whatever its path or method, is recorded, so a test can assert that nothing fetched media.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import free_port

API_VERSION = "2010-04-01"


@dataclass
class RecordedRequest:
    method: str
    path: str
    form: dict[str, str]
    authorized: bool


@dataclass
class Failure:
    status: int
    code: int | None
    delay: float = 0.0


def _error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message,
                         "more_info": f"https://www.twilio.com/docs/errors/{code}",
                         "status": status}, status_code=status)


@dataclass
class FakeTwilio:
    account_sid: str
    auth_token: str
    requests: list[RecordedRequest] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)  # accepted, with their sid
    _failures: list[Failure] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fail_next(self, status: int, code: int | None = None, *, times: int = 1,
                  delay: float = 0.0) -> None:
        """The next `times` Messages API requests fail with this status (and Twilio error
        code), after `delay` seconds."""
        self._failures.extend(Failure(status, code, delay) for _ in range(times))

    def bodies(self, to: str | None = None) -> list[str]:
        return [m["Body"] for m in self.messages if to is None or m["To"] == to]

    # the API ------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(f"{user}:{password}",
                                      f"{self.account_sid}:{self.auth_token}")

    async def _record(self, request: Request) -> RecordedRequest:
        body = (await request.body()).decode()
        form = dict(parse_qsl(body, keep_blank_values=True)) \
            if request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded") else {}
        recorded = RecordedRequest(request.method, request.url.path, form,
                                   self._authorized(request))
        self.requests.append(recorded)
        return recorded

    async def create_message(self, request: Request) -> Response:
        recorded = await self._record(request)
        if not recorded.authorized or request.path_params["account"] != self.account_sid:
            return _error(401, 20003, "Authenticate")
        if self._failures:
            failure = self._failures.pop(0)
            await asyncio.sleep(failure.delay)
            if failure.code is None:
                return Response("upstream trouble", status_code=failure.status)
            return _error(failure.status, failure.code, "Failure requested by the test")
        form = recorded.form
        for name, code in (("To", 21604), ("From", 21603), ("Body", 21602)):
            if not form.get(name):
                return _error(400, code, f"A '{name}' parameter is required.")
        if not form["To"].startswith("+"):
            return _error(400, 21211, "The 'To' number is not a valid phone number.")
        if len(form["Body"].encode("utf-16-le")) // 2 > 1600:
            return _error(400, 21617, "The concatenated message body exceeds the 1600 "
                                      "character limit.")
        sid = "SM" + secrets.token_hex(16)
        now = formatdate(usegmt=True)
        self.messages.append({**form, "sid": sid})
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{sid}.json"
        return JSONResponse({
            "account_sid": self.account_sid, "api_version": API_VERSION,
            "body": form["Body"], "date_created": now, "date_sent": None, "date_updated": now,
            "direction": "outbound-api", "error_code": None, "error_message": None,
            "from": form["From"], "messaging_service_sid": None, "num_media": "0",
            "num_segments": "1", "price": None, "price_unit": "USD", "sid": sid,
            "status": "queued", "subresource_uris": {"media": uri.replace(".json",
                                                                          "/Media.json")},
            "to": form["To"], "uri": uri,
        }, status_code=201)

    async def anything_else(self, request: Request) -> Response:
        await self._record(request)
        return _error(404, 20404, "The requested resource was not found")

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]
        return Starlette(routes=[
            Route(f"/{API_VERSION}/Accounts/{{account}}/Messages.json", self.create_message,
                  methods=["POST"]),
            Route("/{path:path}", self.anything_else, methods=methods),
        ])

    # lifecycle ----------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget recorded requests, messages and pending failures (between tests)."""
        self.requests.clear()
        self.messages.clear()
        self._failures.clear()

    def start(self) -> FakeTwilio:
        """Serve on a free port from a thread of its own, so that one server can outlive
        the event loop of each test."""
        self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(self.app(), host="127.0.0.1",
                                                     port=self.port, log_config=None,
                                                     access_log=False, lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, name="fake-twilio",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake Twilio server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
