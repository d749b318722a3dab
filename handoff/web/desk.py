"""The web agent desk at /agent/: where Slack is not configured, agents work handoffs here;
it is also the secure view minimum-necessary Slack notes link to (`desk_url`).

Server-rendered pages (handoff/web/pages.py) over the agent desk (handoff/desk.py): queues
per lane, a ticket's note and transcript (every view audited by `AgentDesk.transcript`), and
forms for claim, reply, resolve, return to bot, move and relabel. Forms POST with the
session's CSRF token and answer with a redirect (POST-redirect-GET); refusals are shown as
plain messages from a code, never with patient data.

Sign-in (handoff/web/auth.py): account + argon2 password, or a signed single-use link.
Sessions are server-side, named by an HttpOnly SameSite=Strict cookie on /agent, and end
after `idle_minutes` without activity or `absolute_hours` at most. desk.js refreshes the
queue page every few seconds as a *passive* poll (``X-Desk-Poll: passive``), which does not
count as activity, so an unattended desk still signs itself out.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, quote

import structlog
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from bot.config.agents import DeskAccount
from bot.config.loader import Config
from bot.core.envelopes import utcnow
from bot.core.errors import PatientbotError
from bot.core.http import Refused, read_body
from bot.core.tickets import HandoffTicket
from bot.store import Store
from bot.store.audit import AuditLog
from handoff.desk import REFUSALS, AgentDesk, DeskError
from handoff.web.auth import DeskAuth, DeskSession, SessionEnded, SignInRefused
from handoff.web.pages import DeskPages

log = structlog.get_logger("patientbot.web_desk")

STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "pb_desk"
PRE_COOKIE = "pb_desk_pre"  # binds the sign-in forms' CSRF token before there is a session
ACTIONS = ("claim", "reply", "resolve", "return", "move", "relabel")
MAX_FIELDS = 16
_NEXT = re.compile(r"/agent/(tickets/[A-Za-z0-9_-]{1,64})?")  # of the whole value
_PRE = re.compile(r"[A-Za-z0-9_-]{32}")
NO_STORE = {"cache-control": "no-store"}  # every desk page may show PHI


class FormError(PatientbotError):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def safe_next(value: str | None) -> str:
    """Where to go after sign-in: the queue or a ticket page, nothing else (no open
    redirect, no query strings)."""
    return value if value and _NEXT.fullmatch(value) else "/agent/"


class WebDesk:
    """The /agent/ routes. `secret`: `handoff.web.auth.desk_secret(keys)`."""

    def __init__(self, config: Config, *, desk: AgentDesk, store: Store, audit: AuditLog,
                 secret: bytes, clock: Callable[[], datetime] = utcnow) -> None:
        self._config = config
        self._desk = desk
        self._clock = clock
        self._auth = DeskAuth(config.agents.desk, store=store, audit=audit, secret=secret,
                              clock=clock)
        self._pages = DeskPages(config)
        self._secure = config.app.public_base_url.lower().startswith("https://")
        limit = config.app.limits.max_message_chars
        self._max_body = limit * 12 + 4096  # a reply, percent-encoded, plus the other fields

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/agent", lambda request: RedirectResponse("/agent/", status_code=308)),
            Mount("/agent", routes=[
                Route("/", self.queues, methods=["GET"]),
                Route("/signin", self.signin, methods=["GET", "POST"]),
                Route("/token", self.token, methods=["GET", "POST"]),
                Route("/signout", self.signout, methods=["POST"]),
                Route("/api/ping", self.ping, methods=["GET"]),
                Route("/tickets/{ticket_id}", self.ticket, methods=["GET"]),
                Route("/tickets/{ticket_id}/{action}", self.act, methods=["POST"]),
                Mount("/static", StaticFiles(directory=STATIC_DIR), name="desk-static"),
            ]),
        ]

    # --- plumbing --------------------------------------------------------------------------
    def _html(self, body: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers=NO_STORE)

    def _set_cookie(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, path="/agent", secure=self._secure, httponly=True,
                            samesite="strict")

    def _drop_cookie(self, response: Response, name: str) -> None:
        response.delete_cookie(name, path="/agent", secure=self._secure, httponly=True,
                               samesite="strict")

    async def _form(self, request: Request) -> dict[str, str]:
        """An urlencoded form body (first value of each field), size-limited."""
        try:
            body = await read_body(request, self._max_body)
        except Refused as err:
            raise FormError(err.status) from None
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if body and kind != "application/x-www-form-urlencoded":
            raise FormError(415)
        try:
            pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True,
                              max_num_fields=MAX_FIELDS, encoding="utf-8", errors="strict")
        except (UnicodeDecodeError, ValueError):
            raise FormError(400) from None
        form: dict[str, str] = {}
        for name, value in pairs:
            form.setdefault(name, value)
        return form

    def _form_error(self, err: FormError, session: DeskSession | None = None) -> Response:
        return self._html(self._pages.message("Not accepted", "The form could not be read.",
                                              session=session), err.status)

    def _form_expired(self, session: DeskSession, done: str = "") -> Response:
        """A desk form without its session's CSRF token (`done`: what did not happen)."""
        return self._html(self._pages.message(
            "Form expired", f"The form had expired{done}. Reload the page and try again.",
            session=session), 403)

    async def _session(self, request: Request) -> tuple[DeskSession | None, bool]:
        """(the signed-in session or None, whether a session just ended by itself)."""
        try:
            return await self._auth.session(request.cookies.get(COOKIE)), False
        except SessionEnded:
            return None, True

    def _to_signin(self, request: Request, path: str, ended: bool) -> Response:
        """Not signed in: sign in, then come back to `path`."""
        if request.headers.get("x-desk-poll"):
            return Response(status_code=401, headers=NO_STORE)
        if request.method == "GET" and request.headers.get("sec-fetch-site") == "cross-site":
            return self._html(self._pages.bounce(safe_next(path)))
        target = f"/agent/signin?next={quote(safe_next(path), safe='/')}"
        if ended:
            target += "&notice=expired"
        response = RedirectResponse(target, status_code=303, headers=NO_STORE)
        if ended:
            self._drop_cookie(response, COOKIE)
        return response

    async def _page(self, session: DeskSession, request: Request) -> str:
        """The flash message to show (polls leave it for the page the agent opens), and
        the idle limit restarted unless this is a passive poll: one write for both."""
        poll = request.headers.get("x-desk-poll")
        flash = ""
        if poll is None:
            flash, session.flash = session.flash, ""
        if poll != "passive":
            await self._auth.touch(session)
        return flash

    def _lanes(self, session: DeskSession) -> list[str]:
        allowed = session.account.lanes
        return [lane for lane in self._config.queues if not allowed or lane in allowed]

    async def _visible(self, session: DeskSession, ticket_id: str) -> HandoffTicket | None:
        """The ticket, if it is in one of the agent's lanes (others: as if not there)."""
        try:
            ticket = await self._desk.get(ticket_id)
        except DeskError:
            return None
        return ticket if ticket.lane in self._lanes(session) else None

    def _not_found(self, session: DeskSession) -> Response:
        return self._html(self._pages.message("Not found", REFUSALS["not_found"],
                                              session=session), 404)

    # --- pages -----------------------------------------------------------------------------
    async def queues(self, request: Request) -> Response:
        session, ended = await self._session(request)
        if session is None:
            return self._to_signin(request, "/agent/", ended)
        lanes = [(lane, await self._desk.open_tickets(lane)) for lane in self._lanes(session)]
        flash = await self._page(session, request)
        return self._html(self._pages.queues(session, lanes, self._clock(), flash=flash))

    async def ticket(self, request: Request) -> Response:
        ticket_id = request.path_params["ticket_id"]
        session, ended = await self._session(request)
        if session is None:
            return self._to_signin(request, f"/agent/tickets/{ticket_id}", ended)
        ticket = await self._visible(session, ticket_id)
        if ticket is None:
            await self._page(session, request)
            return self._not_found(session)
        transcript = await self._desk.transcript(ticket.id, session.account.id)  # audited
        delivery = await self._desk.delivery(transcript)
        flash = await self._page(session, request)
        return self._html(self._pages.ticket(session, ticket, transcript, self._clock(),
                                             flash=flash, delivery=delivery))

    async def ping(self, request: Request) -> Response:
        """desk.js asks whether the session lives (``X-Desk-Poll: active`` when the agent
        was busy on the page since the last ask)."""
        session, _ = await self._session(request)
        if session is None:
            return Response(status_code=401, headers=NO_STORE)
        await self._page(session, request)
        return Response(status_code=204, headers=NO_STORE)

    # --- ticket actions --------------------------------------------------------------------
    async def act(self, request: Request) -> Response:
        ticket_id, action = request.path_params["ticket_id"], request.path_params["action"]
        session, ended = await self._session(request)
        if session is None:
            return self._to_signin(request, f"/agent/tickets/{ticket_id}", ended)
        if action not in ACTIONS:
            return self._not_found(session)
        try:
            form = await self._form(request)
        except FormError as err:
            return self._form_error(err, session)
        if not self._auth.check_csrf(session, form.get("csrf")):
            log.warning("desk form refused: CSRF token", action=action)
            return self._form_expired(session, "; nothing was changed")
        ticket = await self._visible(session, ticket_id)
        if ticket is None:
            return self._not_found(session)
        code, back_to_queue = await self._perform(action, ticket, session.account.id, form)
        session.flash = code
        await self._auth.touch(session)
        where = "/agent/" if back_to_queue else f"/agent/tickets/{ticket.id}"
        return RedirectResponse(where, status_code=303, headers=NO_STORE)

    async def _perform(self, action: str, ticket: HandoffTicket, agent: str,
                       form: dict[str, str]) -> tuple[str, bool]:
        """(flash code, whether the ticket has left the agent's view) for one action."""
        desk = self._desk
        try:
            if action == "claim":
                return f"claim_{(await desk.claim(ticket.id, agent)).code}", False
            if action == "reply":
                text = form.get("text", "").replace("\r\n", "\n")
                await desk.reply(ticket.id, agent, text, phi=form.get("phi") == "1")
                return "replied", False
            if action == "resolve":
                await desk.resolve(ticket.id, agent, form.get("outcome", ""))
                return "resolved", True
            if action == "return":
                await desk.return_to_bot(ticket.id, agent)
                return "returned", True
            if action == "move":
                await desk.move(ticket.id, agent, form.get("lane", ""))
                return "moved", True
            await desk.relabel(ticket.id, agent, form.get("intent", ""))
            return "relabelled", False
        except DeskError as err:
            log.info("desk action refused", action=action, ticket=ticket.id, agent=agent,
                     code=err.code)
            return err.code, False

    # --- sign-in / sign-out ----------------------------------------------------------------
    def _signin_page(self, request: Request, *, status: int = 200, **fields: str) -> Response:
        pre = request.cookies.get(PRE_COOKIE, "")
        if not _PRE.fullmatch(pre):
            pre = secrets.token_urlsafe(24)
        csrf = self._auth.signin_csrf(pre)
        if "token" in fields:
            body = self._pages.token_confirm(csrf=csrf, token=fields["token"],
                                             name=fields["name"])
        else:
            body = self._pages.signin(csrf=csrf, **fields)
        response = self._html(body, status)
        self._set_cookie(response, PRE_COOKIE, pre)
        return response

    async def _signed_in(self, request: Request, account: DeskAccount, via: str,
                         next_path: str) -> Response:
        old, _ = await self._session(request)
        if old is not None:  # a sign-in always starts a fresh session
            await self._auth.end(old, "replaced")
        sid, _ = await self._auth.start_session(account, via=via)
        response = RedirectResponse(safe_next(next_path), status_code=303, headers=NO_STORE)
        self._set_cookie(response, COOKIE, sid)
        self._drop_cookie(response, PRE_COOKIE)
        return response

    async def signin(self, request: Request) -> Response:
        if request.method == "GET":
            next_path = safe_next(request.query_params.get("next"))
            session, _ = await self._session(request)
            if session is not None:
                return RedirectResponse(next_path, status_code=303, headers=NO_STORE)
            return self._signin_page(request, next_path=next_path,
                                     notice=request.query_params.get("notice", ""))
        try:
            form = await self._form(request)
        except FormError as err:
            return self._form_error(err)
        next_path = safe_next(form.get("next"))
        account_id = form.get("account", "")
        if not self._auth.check_signin_csrf(request.cookies.get(PRE_COOKIE),
                                            form.get("csrf")):
            return self._signin_page(request, status=403, next_path=next_path,
                                     account=account_id, error="form_expired")
        try:
            account = await self._auth.password_sign_in(account_id, form.get("password", ""))
        except SignInRefused as err:
            return self._signin_page(request, status=429 if err.code == "locked" else 401,
                                     next_path=next_path, account=account_id, error=err.code)
        return await self._signed_in(request, account, "password", next_path)

    async def token(self, request: Request) -> Response:
        """GET shows a sign-in button for a valid link; POST uses the link up."""
        if request.method == "GET":
            token = request.query_params.get("t", "")
            try:
                account = await self._auth.check_token(token, redeem=False)
            except SignInRefused as err:
                return self._signin_page(request, status=400, next_path="/agent/",
                                         error=err.code)
            return self._signin_page(request, token=token, name=account.name)
        try:
            form = await self._form(request)
        except FormError as err:
            return self._form_error(err)
        if not self._auth.check_signin_csrf(request.cookies.get(PRE_COOKIE),
                                            form.get("csrf")):
            return self._signin_page(request, status=403, next_path="/agent/",
                                     error="form_expired")
        try:
            account = await self._auth.check_token(form.get("t", ""), redeem=True)
        except SignInRefused as err:
            return self._signin_page(request, status=400, next_path="/agent/",
                                     error=err.code)
        return await self._signed_in(request, account, "token", "/agent/")

    async def signout(self, request: Request) -> Response:
        session, ended = await self._session(request)
        try:
            form = await self._form(request)
        except FormError as err:
            return self._form_error(err, session)
        idle = form.get("reason") == "idle"  # desk.js, after idle_minutes without use
        if session is not None:
            if not self._auth.check_csrf(session, form.get("csrf")):
                return self._form_expired(session)
            await self._auth.end(session, "idle" if idle else "agent")
        notice = "idle" if idle or ended else "signed_out"
        response = RedirectResponse(f"/agent/signin?notice={notice}", status_code=303,
                                    headers=NO_STORE)
        self._drop_cookie(response, COOKIE)
        return response
