"""A local Slack Web API for tests: the methods patientbot calls, over real HTTP.

Speaks the documented API (https://api.slack.com/web): `POST /api/<method>` with a bearer
token and JSON or form parameters, answering HTTP 200 with `{"ok": true, ...}` or
`{"ok": false, "error": "<code>"}`. It checks the token, keeps the messages it was sent
(so a test can read a note as it stands after chat.update, or a thread), checks the Block
Kit limits patientbot could hit, records every call and can fail the next calls of a
method, archive a channel, delete a message or hold a method's calls until released.
Driven by the real slack_sdk `AsyncWebClient` (`base_url=api.base_url`).

Helpers also build what Slack sends to the app: signed requests (the v0 signature of
https://api.slack.com/authentication/verifying-requests-from-slack), block_actions payloads
and message event callbacks.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from aiohttp import WSMsgType, web
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.conftest import free_port
from tests.support.local_server import Call, LocalServer, request_params

BOT_TOKEN = "xoxb-0000000000-test-patientbot"
APP_TOKEN = "xapp-1-A0PATBOT-0000-test"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
TEAM, APP, BOT_USER, BOT_ID = "T0CLINIC", "A0PATBOT", "U0PATBOT", "B0PATBOT"
_CHANNEL = re.compile(r"^[CGD][A-Z0-9]{2,20}$")
_USER = re.compile(r"^[UW][A-Z0-9]{2,20}$")


@dataclass
class FakeSlackAPI:
    token: str = BOT_TOKEN
    calls: list[Call] = field(default_factory=list)
    # channel -> ts -> message as it stands (chat.update replaces text and blocks)
    messages: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    url: str = ""
    socket: FakeSocketMode | None = None  # answers apps.connections.open when set
    archived: set[str] = field(default_factory=set)  # channels answering is_archived
    _failures: dict[str, list[str]] = field(default_factory=dict)
    _holds: dict[str, asyncio.Event] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)
    _passes: dict[str, int] = field(default_factory=dict)
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    _http: LocalServer = field(default_factory=LocalServer)

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/"

    # test controls ----------------------------------------------------------------------
    def fail(self, method: str, error: str, *, times: int = 1) -> None:
        """Answer the next `times` calls of `method` with `{"ok": false, "error": error}`."""
        self._failures.setdefault(method, []).extend([error] * times)

    def delete(self, channel: str, ts: str) -> None:
        """Someone deleted a message (chat.update on it: message_not_found)."""
        del self.messages[channel][ts]

    def hold(self, method: str, *, after: int = 0) -> None:
        """Calls of `method` wait (unanswered) until `release(method)`; the first `after`
        are answered as usual."""
        self._holds[method] = asyncio.Event()
        self._passes[method] = after

    def release(self, method: str) -> None:
        self._holds.pop(method).set()

    async def held(self, method: str, count: int = 1, *, timeout: float = 10) -> None:
        """Wait until `count` calls of `method` are waiting on a hold."""
        deadline = time.monotonic() + timeout
        while self._held.get(method, 0) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no held {method} call")
            await asyncio.sleep(0.01)

    def calls_of(self, method: str, *, ok_only: bool = True) -> list[Call]:
        return [c for c in self.calls if c.method == method and (c.ok or not ok_only)]

    def posts(self, channel: str | None = None, *, thread: str | None = None,
              top_level: bool = False) -> list[dict[str, Any]]:
        """chat.postMessage parameters, optionally of one channel / one thread."""
        return [c.params for c in self.calls_of("chat.postMessage")
                if (channel is None or c.params.get("channel") == channel)
                and (thread is None or c.params.get("thread_ts") == thread)
                and not (top_level and c.params.get("thread_ts"))]

    def ephemerals(self, user: str | None = None) -> list[dict[str, Any]]:
        return [c.params for c in self.calls_of("chat.postEphemeral")
                if user is None or c.params.get("user") == user]

    def message(self, channel: str, ts: str) -> dict[str, Any]:
        return self.messages[channel][ts]

    def everything(self) -> str:
        """Every parameter of every call, as one string (for what-must-never-appear checks)."""
        return json.dumps([[c.method, c.params] for c in self.calls])

    # server -----------------------------------------------------------------------------
    async def start(self) -> FakeSlackAPI:
        app = Starlette(routes=[Route("/api/{method}", self._method, methods=["GET", "POST"])])
        self.url = await self._http.start(app)
        return self

    async def stop(self) -> None:
        await self._http.stop()

    # Web API ----------------------------------------------------------------------------
    async def _params(self, request: Request) -> dict[str, Any]:
        return await request_params(request, json_fields=("blocks", "attachments"))

    async def _method(self, request: Request) -> Response:
        method = request.path_params["method"]
        token = APP_TOKEN if method == "apps.connections.open" else self.token
        if request.headers.get("authorization") != f"Bearer {token}":
            return _error("invalid_auth")
        params = await self._params(request)
        hold = self._holds.get(method)
        if hold is not None and self._passes.get(method, 0) > 0:
            self._passes[method] -= 1
        elif hold is not None:
            self._held[method] = self._held.get(method, 0) + 1
            try:
                await hold.wait()
            finally:
                self._held[method] -= 1
        if method == "apps.connections.open":
            self.calls.append(Call(method, params, ok=self.socket is not None))
            if self.socket is None:
                return _error("not_allowed_token_type")
            return JSONResponse({"ok": True, "url": self.socket.url})
        failures = self._failures.get(method)
        if failures:
            self.calls.append(Call(method, params, ok=False))
            return _error(failures.pop(0))
        handler = {"auth.test": self._auth_test, "chat.postMessage": self._post_message,
                   "chat.update": self._update, "chat.postEphemeral": self._ephemeral,
                   }.get(method)
        if handler is None:
            self.calls.append(Call(method, params, ok=False))
            return _error("unknown_method")
        problem = _check(method, params)
        if not problem and params.get("channel") in self.archived:
            problem = "is_archived"
        if method == "chat.update" and not problem and \
                params["ts"] not in self.messages.get(params["channel"], {}):
            problem = "message_not_found"
        if problem:
            self.calls.append(Call(method, params, ok=False))
            return _error(problem)
        self.calls.append(Call(method, params))
        return JSONResponse(handler(params))

    def _ts(self) -> str:
        return f"{int(time.time())}.{next(self._seq):06d}"

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://clinic-test.slack.com/", "team": "Clinic",
                "user": "patientbot", "team_id": TEAM, "user_id": BOT_USER, "bot_id": BOT_ID,
                "is_enterprise_install": False}

    def _post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params["channel"], self._ts()
        message = {"type": "message", "user": BOT_USER, "bot_id": BOT_ID, "ts": ts,
                   "text": params.get("text", ""), "blocks": params.get("blocks", [])}
        if params.get("thread_ts"):
            message["thread_ts"] = params["thread_ts"]
        self.messages.setdefault(channel, {})[ts] = message
        return {"ok": True, "channel": channel, "ts": ts, "message": message}

    def _update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = params["channel"], params["ts"]
        message = self.messages[channel][ts]
        message.update(text=params.get("text", ""), blocks=params.get("blocks", []))
        return {"ok": True, "channel": channel, "ts": ts, "text": message["text"],
                "message": message}

    def _ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "message_ts": self._ts()}


@dataclass
class FakeSocketMode:
    """Slack's Socket Mode end (https://api.slack.com/apis/socket-mode): a WebSocket that
    says hello, sends envelopes a test pushes, and records the app's acknowledgements.
    aiohttp's server (uvicorn here has no WebSocket library)."""

    url: str = ""
    acks: list[dict[str, Any]] = field(default_factory=list)
    _sockets: list[web.WebSocketResponse] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> FakeSocketMode:
        app = web.Application()
        app.router.add_get("/link", self._link)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"ws://127.0.0.1:{port}/link"
        return self

    async def stop(self) -> None:
        for socket in list(self._sockets):
            await socket.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _link(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(autoping=True)
        await socket.prepare(request)
        self._sockets.append(socket)
        await socket.send_json({"type": "hello", "num_connections": 1,
                                "debug_info": {"host": "fake-slack"},
                                "connection_info": {"app_id": APP}})
        self._connected.set()
        try:
            async for message in socket:
                if message.type == WSMsgType.TEXT:
                    self.acks.append(json.loads(message.data))
        finally:
            self._sockets.remove(socket)
        return socket

    async def push(self, kind: str, payload: dict[str, Any], *, timeout: float = 10) -> str:
        """Send an envelope ("interactive", "events_api") and wait for its ack."""
        await asyncio.wait_for(self._connected.wait(), timeout)
        envelope_id = f"env-{time.time_ns()}"
        await self._sockets[-1].send_json({"envelope_id": envelope_id, "type": kind,
                                           "payload": payload,
                                           "accepts_response_payload": kind == "interactive",
                                           "retry_attempt": 0, "retry_reason": ""})
        deadline = time.monotonic() + timeout
        while not any(ack.get("envelope_id") == envelope_id for ack in self.acks):
            if time.monotonic() > deadline:
                raise AssertionError("the app did not acknowledge the envelope")
            await asyncio.sleep(0.01)
        return envelope_id


def _check(method: str, params: dict[str, Any]) -> str | None:
    """The errors Slack documents for what patientbot sends."""
    if method == "auth.test":
        return None
    if not _CHANNEL.match(str(params.get("channel", ""))):
        return "channel_not_found"
    if not params.get("text") and not params.get("blocks"):
        return "no_text"
    if len(str(params.get("text", ""))) > 40000:
        return "msg_too_long"
    if method == "chat.postEphemeral" and not _USER.match(str(params.get("user", ""))):
        return "user_not_in_channel"
    if method == "chat.update" and not params.get("ts"):
        return "message_not_found"
    return check_blocks(params.get("blocks"))


def check_blocks(blocks: Any) -> str | None:
    """Block Kit limits: 50 blocks, section text 3000, 10 fields of 2000, 25 elements,
    button texts 75, 100 options per select, unique action ids."""
    if blocks is None:
        return None
    if not isinstance(blocks, list) or len(blocks) > 50:
        return "invalid_blocks"
    action_ids: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "section":
            text = (block.get("text") or {}).get("text", "")
            fields = block.get("fields") or []
            if len(text) > 3000 or len(fields) > 10 or not (text or fields) or \
                    any(len(f.get("text", "")) > 2000 for f in fields):
                return "invalid_blocks"
        elif kind == "actions":
            elements = block.get("elements") or []
            if not elements or len(elements) > 25:
                return "invalid_blocks"
            for element in elements:
                action_ids.append(element.get("action_id", ""))
                if element.get("type") == "button" and \
                        len(element["text"]["text"]) > 75:
                    return "invalid_blocks"
                if element.get("type") == "static_select" and \
                        not 0 < len(element.get("options", [])) <= 100:
                    return "invalid_blocks"
        elif kind not in ("context", "divider", "header"):
            return "invalid_blocks"
    if len(action_ids) != len(set(action_ids)):
        return "invalid_blocks"
    return None


def _error(error: str) -> Response:
    return JSONResponse({"ok": False, "error": error})


# --- what Slack sends to the app ------------------------------------------------------------
def signed_headers(body: bytes | str, *, secret: str = SIGNING_SECRET,
                   timestamp: int | None = None, content_type: str) -> dict[str, str]:
    """Headers as Slack signs a request: v0=HMAC-SHA256(secret, "v0:<ts>:<body>")."""
    raw = body.encode() if isinstance(body, str) else body
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    digest = hmac.new(secret.encode(), b"v0:" + stamp.encode() + b":" + raw,
                      hashlib.sha256).hexdigest()
    return {"content-type": content_type, "x-slack-request-timestamp": stamp,
            "x-slack-signature": f"v0={digest}"}


def action_body(action_id: str, value: str, *, user: str, channel: str, message_ts: str,
                select: bool = False, team: str = TEAM) -> str:
    """A block_actions interaction, form-encoded as `payload=<json>` like Slack sends it."""
    return urlencode({"payload": json.dumps(action_payload(
        action_id, value, user=user, channel=channel, message_ts=message_ts, select=select,
        team=team))})


def action_payload(action_id: str, value: str, *, user: str, channel: str, message_ts: str,
                   select: bool = False, team: str = TEAM) -> dict[str, Any]:
    """A block_actions interaction payload (a button click or a select choice); `team`:
    the clicking user's workspace (another one for a guest in a shared channel)."""
    action: dict[str, Any] = {"action_id": action_id, "block_id": "pb_actions",
                              "action_ts": f"{time.time():.6f}"}
    if select:
        action.update(type="static_select",
                      selected_option={"text": {"type": "plain_text", "text": value},
                                       "value": value})
    else:
        action.update(type="button", value=value,
                      text={"type": "plain_text", "text": action_id})
    payload = {
        "type": "block_actions", "api_app_id": APP, "token": "legacy-unused",
        "team": {"id": TEAM, "domain": "clinic-test"},
        "user": {"id": user, "username": user.lower(), "team_id": team},
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel,
                      "is_ephemeral": False},
        "channel": {"id": channel, "name": "lane"},
        "message": {"type": "message", "ts": message_ts, "user": BOT_USER, "bot_id": BOT_ID},
        "trigger_id": "13345224609.738474920.8088930838d88f008e0",
        "response_url": "https://hooks.slack.com/actions/T0CLINIC/1/unused",
        "actions": [action],
    }
    return payload


def message_event(text: str, *, user: str | None, channel: str, thread_ts: str | None,
                  event_id: str, subtype: str | None = None, bot_id: str | None = None,
                  team: str = TEAM, user_team: str | None = None) -> str:
    """An Events API `event_callback` carrying a message (a thread reply with thread_ts).
    `user_team`: the writer's own workspace, in a channel shared with it (Slack Connect)."""
    ts = f"{time.time():.6f}"
    event: dict[str, Any] = {"type": "message", "channel": channel, "text": text, "ts": ts,
                             "event_ts": ts, "channel_type": "channel", "team": team}
    for key, value in (("user", user), ("thread_ts", thread_ts), ("subtype", subtype),
                       ("bot_id", bot_id), ("user_team", user_team)):
        if value is not None:
            event[key] = value
    return json.dumps({
        "token": "legacy-unused", "team_id": TEAM, "api_app_id": APP, "event": event,
        "type": "event_callback", "event_id": event_id, "event_time": int(time.time()),
        "authorizations": [{"team_id": TEAM, "user_id": BOT_USER, "is_bot": True,
                            "is_enterprise_install": False}],
        "is_ext_shared_channel": False,
    })
