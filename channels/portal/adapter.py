"""Portal web chat: the patient-portal channel.

A demo sign-in (name + date of birth against the patient directory) issues a signed token
naming a server-side portal session; the session has an idle timeout (refreshed by patient
activity) and an absolute one (the token's max age). A signed-in session counts as verified
identity. Messages go through the durable ingress like every channel; replies come back
through the outbox into a per-conversation mailbox, streamed to the page as server-sent events.
"""

from __future__ import annotations

import json
import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bot.config.loader import Config
from bot.core.crypto import Hasher
from bot.core.envelopes import Inbound, Outbound, utcnow
from bot.core.errors import PatientbotError
from bot.core.session import Direction
from bot.engine.identity import PatientDirectory, normalise_name, parse_date
from bot.messaging.intake import Intake, IntakeResult
from bot.store import Store
from bot.store.audit import AuditEvent, AuditLog
from bot.store.ingress import Ingress

log = structlog.get_logger("patientbot.portal")

CHANNEL = "portal"
STATIC_DIR = Path(__file__).parent / "static"
MAX_BODY_BYTES = 64 * 1024
STREAM_WAIT_SECONDS = 15.0
SIGNIN_FAILED = "We could not sign you in with those details. Please check them and try again."
SIGNIN_LOCKED = "Too many sign-in attempts. Please wait a few minutes, or call the clinic."
_CLIENT_ID = re.compile(r"^[A-Za-z0-9-]{8,64}$")


class PortalAdapter:
    """Outbound side: a reply 'sent' on the portal lands in the conversation's mailbox."""

    name = CHANNEL
    phi_allowed = True  # the signed-in portal is where PHI may be read

    def __init__(self, store: Store) -> None:
        self._store = store

    async def send(self, message: Outbound) -> str | None:
        cursor = await self._store.mailbox_append(message.conversation_id, message.id,
                                                  message.text, message.created_at)
        return f"portal:{cursor}"


class BadRequest(PatientbotError):
    def __init__(self, status: int, error: str) -> None:
        self.status, self.error = status, error


def _error(status: int, error: str) -> JSONResponse:
    return JSONResponse({"error": error}, status_code=status)


async def _read_json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise BadRequest(415, "Expected application/json.")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_BODY_BYTES:
            raise BadRequest(413, "Request too large.")
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequest(400, "Malformed JSON.") from None
    if not isinstance(data, dict):
        raise BadRequest(422, "Expected a JSON object.")
    return data


def _string_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(422, f"'{name}' is required.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate sent as a JSON \ud800 escape
        raise BadRequest(422, f"'{name}' is not valid text.") from None
    return value


class PortalChannel:
    def __init__(self, *, config: Config, store: Store, ingress: Ingress, intake: Intake,
                 directory: PatientDirectory, hasher: Hasher, session_secret: bytes,
                 audit: AuditLog) -> None:
        self._config = config
        self._audit = audit
        self._intake = intake  # flood limit per patient, then the durable enqueue
        self._portal = config.app.portal
        self._store = store
        self._ingress = ingress
        self._directory = directory
        self._hasher = hasher
        self._tokens = URLSafeTimedSerializer(session_secret, salt="patientbot-portal")

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/portal", lambda request: Response(status_code=308,
                                                       headers={"location": "/portal/"})),
            Route("/portal/", self.index),
            Mount("/portal/static", StaticFiles(directory=STATIC_DIR), name="portal-static"),
            Route("/portal/api/signin", self.signin, methods=["POST"]),
            Route("/portal/api/signout", self.signout, methods=["POST"]),
            Route("/portal/api/messages", self.post_message, methods=["POST"]),
            Route("/portal/api/history", self.history, methods=["GET"]),
            Route("/portal/api/stream", self.stream, methods=["GET"]),
        ]

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    # sessions ---------------------------------------------------------------------------
    def _ref(self, sid: str) -> str:
        """Where a portal session is stored: a keyed hash, so that key names in the store
        never carry the session id that the patient's token names."""
        return self._hasher.digest(sid, purpose="portal-session")

    async def _session(self, request: Request, *, touch: bool) -> tuple[str, dict[str, Any]]:
        """(stored session reference, session data) for the bearer token, or raise 401."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise BadRequest(401, "Please sign in.")
        try:
            claims = self._tokens.loads(
                token, max_age=round(self._portal.absolute_timeout_minutes * 60))
        except SignatureExpired:
            raise BadRequest(401, "Your session has ended. Please sign in again.") from None
        except BadSignature:
            raise BadRequest(401, "Please sign in.") from None
        sid = claims.get("sid") if isinstance(claims, dict) else None
        ref = self._ref(sid) if isinstance(sid, str) else None
        data = await self._store.kv_get("portal", ref) if ref else None
        if ref is None or data is None:
            raise BadRequest(401, "Your session has ended. Please sign in again.")
        if touch:
            await self._store.kv_set("portal", ref, data,
                                     ttl=self._portal.idle_timeout_minutes * 60)
        return ref, data

    async def signin(self, request: Request) -> Response:
        try:
            data = await _read_json(request)
            name, dob = _string_field(data, "name"), _string_field(data, "dob")
        except BadRequest as err:
            return _error(err.status, err.error)
        if len(name) > 200 or len(dob) > 20:
            return _error(422, "Name or date of birth is too long.")
        # Only failures count: a patient who signs in often is never locked out, while
        # guessing dates of birth for one name (or from one address) is.
        limit = self._portal.max_signin_attempts
        counters = [
            ("signin-name", self._hasher.digest(normalise_name(name), purpose="signin"), limit),
            ("signin-client", self._hasher.digest(request.client.host if request.client
                                                  else "unknown", purpose="signin"), 4 * limit),
        ]
        for namespace, item_id, allowed in counters:
            if await self._store.count_get(namespace, item_id) >= allowed:
                log.warning("portal sign-in rate limited", counter=namespace)
                return _error(429, SIGNIN_LOCKED)
        born = parse_date(dob)
        found = await self._directory.match(name, born) if born else None
        if found is None:
            window = self._portal.signin_lockout_minutes * 60
            for namespace, item_id, _ in counters:
                await self._store.count_hit(namespace, item_id, window=window)
            await self._audit.record(AuditEvent("portal.signin_failed", "patient"))
            log.info("portal sign-in failed")
            return _error(401, SIGNIN_FAILED)
        sid = secrets.token_urlsafe(24)
        issued = utcnow()
        patient_id = found.patient_id
        await self._store.kv_set("portal", self._ref(sid), {"patient_id": patient_id,
                                                 "issued_at": issued.isoformat()},
                                 ttl=self._portal.idle_timeout_minutes * 60)
        expires = issued + timedelta(minutes=self._portal.absolute_timeout_minutes)
        await self._audit.record(AuditEvent("portal.signin", "patient",
                                            self._conversation_id(patient_id)))
        log.info("portal sign-in")
        return JSONResponse({
            "token": self._tokens.dumps({"sid": sid}),
            "display_name": " ".join(name.split()),
            "expires_at": expires.isoformat(),
            "welcome": self._config.text("portal_welcome"),
        })

    async def signout(self, request: Request) -> Response:
        try:
            ref, _ = await self._session(request, touch=False)
        except BadRequest:
            return Response(status_code=204)
        await self._store.kv_delete("portal", ref)
        return Response(status_code=204)

    # messages ---------------------------------------------------------------------------
    async def post_message(self, request: Request) -> Response:
        try:
            ref, session = await self._session(request, touch=True)
            data = await _read_json(request)
            text = _string_field(data, "text")
            client_id = _string_field(data, "client_message_id")
        except BadRequest as err:
            return _error(err.status, err.error)
        if not _CLIENT_ID.match(client_id):
            return _error(422, "'client_message_id' must be 8-64 letters, digits or dashes.")
        limit = self._config.app.limits.max_message_chars
        if len(text) > limit:
            return _error(413, f"Message too long: the limit is {limit} characters.")
        patient_id = session["patient_id"]
        inbound = Inbound(channel=CHANNEL, sender=patient_id,
                          provider_message_id=f"{ref}:{client_id}", text=text,
                          verified_patient=patient_id)
        if await self._intake.accept(inbound) is IntakeResult.RATE_LIMITED:
            return _error(429, "Too many messages at once. Please wait a minute and try again.")
        return JSONResponse({"accepted": True}, status_code=202)

    def _conversation_id(self, patient_id: str) -> str:
        return self._ingress.conversation_key(CHANNEL, patient_id).id

    async def history(self, request: Request) -> Response:
        try:
            _, session = await self._session(request, touch=True)
        except BadRequest as err:
            return _error(err.status, err.error)
        conv = self._conversation_id(session["patient_id"])
        await self._audit.record(AuditEvent("transcript.read", "patient", conv))
        # Patient lines from the transcript, replies from the mailbox (what was delivered),
        # so a reply still in the outbox arrives once, over the stream.
        lines: list[tuple[datetime, str, str]] = [
            (e.at, "in", e.text) for e in await self._store.transcript(conv)
            if e.direction is Direction.IN]
        delivered = await self._store.mailbox_read(conv, after=0)
        lines += [(item.at, "out", item.text) for item in delivered]
        lines.sort(key=lambda line: line[0])
        return JSONResponse({
            "messages": [{"direction": d, "text": t, "at": at.isoformat()} for at, d, t in lines],
            "cursor": delivered[-1].cursor if delivered else 0,
        })

    async def stream(self, request: Request) -> Response:
        try:
            ref, session = await self._session(request, touch=False)
            cursor = int(request.query_params.get("cursor", "0"))
        except BadRequest as err:
            return _error(err.status, err.error)
        except ValueError:
            return _error(422, "'cursor' must be a number.")
        conv = self._conversation_id(session["patient_id"])

        async def events() -> Any:
            nonlocal cursor
            yield ": connected\n\n"
            while not await request.is_disconnected():
                if await self._store.kv_get("portal", ref) is None:
                    yield "event: expired\ndata: {}\n\n"
                    return
                items = await self._store.mailbox_read(conv, after=cursor,
                                                       wait=STREAM_WAIT_SECONDS)
                for item in items:
                    cursor = item.cursor
                    payload = json.dumps({"direction": "out", "text": item.text,
                                          "at": item.at.astimezone(UTC).isoformat(),
                                          "cursor": item.cursor})
                    yield f"event: message\ndata: {payload}\n\n"
                if not items:
                    yield ": keep-alive\n\n"

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store",
                                          "x-accel-buffering": "no"})
