"""The one ASGI app: health, metrics, portal chat, provider webhooks, Slack and the agent desk."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bot.app.runtime import Runtime
from channels.portal.adapter import PortalChannel

log = structlog.get_logger("patientbot.app")

REQUEST_DEADLINE_SECONDS = 10.0
STREAMING_PATHS = frozenset({"/portal/api/stream"})
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Headers every response gets; API responses are never cached (they carry PHI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = "/api/" in scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RequestDeadline:
    """A deadline for every request but long-lived streams: a hung backend answers 503
    instead of holding the provider's or patient's connection open."""

    def __init__(self, app: ASGIApp, *, seconds: float = REQUEST_DEADLINE_SECONDS,
                 streaming_paths: frozenset[str] = STREAMING_PATHS) -> None:
        self.app = app
        self.seconds = seconds
        self.streaming_paths = streaming_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.streaming_paths:
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with asyncio.timeout(self.seconds):
                await self.app(scope, receive, tracking_send)
        except TimeoutError:
            log.error("request deadline exceeded", path=scope["path"])
            if not started:
                await JSONResponse({"error": "Temporarily unavailable, please try again."},
                                   status_code=503)(scope, receive, send)


def create_app(runtime: Runtime, *, workers: int | None = None) -> Starlette:
    """`workers`: in-process workers to run (default: config workers.in_process)."""
    count = runtime.config.app.workers.in_process if workers is None else workers
    keys = runtime.settings.keys
    portal = PortalChannel(config=runtime.config, store=runtime.store, ingress=runtime.ingress,
                           intake=runtime.intake,
                           directory=runtime.directory, hasher=keys.hasher,
                           session_secret=keys.session_secret, audit=runtime.audit)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        checks = {"store": await runtime.store.ping(),
                  "workers": count == 0 or runtime.workers_running == count}
        ready = all(checks.values())
        return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        runtime.start_workers(count)
        for channel in runtime.patient_channels:
            await channel.start()
        if runtime.slack is not None:
            await runtime.slack.start()  # Socket Mode connects here
        try:
            yield
        finally:
            await runtime.close()  # stops the channels' listeners too

    async def unavailable(request: Request, exc: Exception) -> Response:
        # The HTTP error boundary: no exception text or request data in the answer or logs.
        log.error("request failed", path=request.url.path, error_type=type(exc).__name__)
        return JSONResponse({"error": "Temporarily unavailable, please try again."},
                            status_code=503)

    routes = [
        Route("/", lambda request: RedirectResponse("/portal/")),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics_endpoint),
        *portal.routes(),
        *(route for channel in runtime.patient_channels for route in channel.routes()),
        *(runtime.slack.routes() if runtime.slack is not None else ()),
        *(runtime.web_desk.routes() if runtime.web_desk is not None else ()),
    ]
    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=[Middleware(SecurityHeaders), Middleware(RequestDeadline)],
                     exception_handlers={Exception: unavailable})
