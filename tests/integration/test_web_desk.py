"""The web agent desk over HTTP (our real ASGI app through httpx), over both stores (Redis is
real): sign-in by password and by link, lockout, idle and absolute log-off on a driven
clock, CSRF, lanes, and the ticket actions reaching the patient."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher

from bot.app.runtime import Runtime
from bot.app.web import create_app
from bot.config.agents import AgentsFile, DeskAccount, DeskConfig
from bot.config.loader import Config
from bot.config.settings import Settings
from bot.core.crypto import load_key_material
from bot.core.envelopes import Inbound
from bot.core.session import SessionState
from bot.core.tickets import TicketStatus
from bot.engine.decision import FrontDeskHandoff
from bot.ops.logs import configure_logging
from handoff.web.auth import DeskAuth, desk_secret, sign_in_token
from handoff.web.desk import COOKIE, safe_next
from handoff.web.pages import MESSAGES, SIGNIN_ERRORS
from tests.conftest import CONFIG_DIR, key_env
from tests.integration.test_desk import audit_actions, hand_off, patient_writes, session_of
from tests.integration.test_pipeline import mailbox
from tests.support.doubles import Clock, RecordingSms

PASSWORD = "correct horse battery"
BILLING_PASSWORD = "ledger lines forever"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
# Cheap parameters for test hashes; verification reads them from the hash itself.
_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def desk_config(config: Config) -> Config:
    """The repository config with test accounts: one for every lane, one for billing only,
    one that signs in by link only."""
    accounts = [
        DeskAccount(id="ana", name="Ana Agent", password_hash=_HASHER.hash(PASSWORD)),
        DeskAccount(id="bill", name="Bill Clerk", password_hash=_HASHER.hash(BILLING_PASSWORD),
                    lanes=["billing"]),
        DeskAccount(id="tok", name="Token Only"),
    ]
    desk = DeskConfig(idle_minutes=15, absolute_hours=2, max_signin_attempts=3,
                      signin_lockout_minutes=15, token_minutes=10, accounts=accounts)
    return config.model_copy(update={"agents": AgentsFile(desk=desk)})


@dataclass
class Desk:
    runtime: Runtime
    client: httpx.AsyncClient
    clock: Clock
    transport: httpx.ASGITransport

    async def csrf(self, path: str = "/agent/") -> str:
        page = await self.client.get(path)
        assert page.status_code == 200, page.text
        return CSRF.search(page.text).group(1)

    async def sign_in(self, account: str = "ana", password: str = PASSWORD, *,
                      next_path: str = "/agent/") -> httpx.Response:
        form = await self.client.get("/agent/signin", params={"next": next_path})
        token = CSRF.search(form.text).group(1)
        return await self.client.post("/agent/signin", data={
            "csrf": token, "next": next_path, "account": account, "password": password})

    async def act(self, ticket_id: str, action: str, **fields: str) -> httpx.Response:
        token = await self.csrf(f"/agent/tickets/{ticket_id}")
        return await self.client.post(f"/agent/tickets/{ticket_id}/{action}",
                                      data={"csrf": token, **fields})

    async def flash(self, response: httpx.Response) -> str:
        """The message on the page a POST redirected to."""
        assert response.status_code == 303, response.text
        page = await self.client.get(response.headers["location"])
        found = re.search(r'<p class="flash [a-z]+" role="[a-z]+">([^<]*)</p>', page.text)
        return found.group(1) if found else ""


@pytest.fixture
async def desk(config: Config, settings: Settings, clock: Clock) -> AsyncIterator[Desk]:
    runtime = Runtime.build(desk_config(config), settings, decision_step=FrontDeskHandoff,
                            clock=clock)
    transport = httpx.ASGITransport(app=create_app(runtime, workers=0))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Desk(runtime, client, clock, transport)
    await runtime.close()


def other_client(desk: Desk) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=desk.transport, base_url="http://testserver")


async def actions(desk: Desk, name: str) -> list[tuple[str, str, str]]:
    return [a for a in await audit_actions(desk.runtime) if a[0] == name]


# --- sign-in ---------------------------------------------------------------------------------
async def test_sign_in_opens_the_queues_and_sign_out_ends_the_session(desk: Desk) -> None:
    start = await desk.client.get("/agent/")
    assert (start.status_code, start.headers["location"]) == (303,
                                                               "/agent/signin?next=/agent/")
    response = await desk.sign_in()
    assert (response.status_code, response.headers["location"]) == (303, "/agent/")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/agent"):
        assert attribute.lower() in cookie.lower()
    assert "secure" not in cookie.lower()  # public_base_url is http in the sample config

    queues = await desk.client.get("/agent/")
    assert queues.status_code == 200
    assert "Signed in as Ana Agent" in queues.text
    assert all(f'data-lane="{lane}"' in queues.text for lane in desk.runtime.config.queues)
    assert queues.headers["cache-control"] == "no-store"
    assert "script-src 'self'" in queues.headers["content-security-policy"]
    sid = desk.client.cookies[COOKIE]

    out = await desk.client.post("/agent/signout", data={"csrf": await desk.csrf()})
    assert (out.status_code, out.headers["location"]) == (303,
                                                          "/agent/signin?notice=signed_out")
    assert (await desk.client.get("/agent/signin?notice=signed_out")).text.count(
        "You have signed out.") == 1
    # The old cookie no longer opens anything: the session is gone on the server.
    desk.client.cookies.set(COOKIE, sid, path="/agent")
    assert (await desk.client.get("/agent/")).status_code == 303
    assert await actions(desk, "desk.signin") == [("desk.signin", "agent:ana", "password")]
    assert await actions(desk, "desk.signout") == [("desk.signout", "agent:ana", "agent")]


async def test_an_unknown_account_answers_exactly_like_a_wrong_password(desk: Desk) -> None:
    wrong = await desk.sign_in(password="not the password")
    unknown = await desk.sign_in(account="nobody", password="not the password")
    token_only = await desk.sign_in(account="tok", password="")
    for response in (wrong, unknown, token_only):
        assert response.status_code == 401
        assert SIGNIN_ERRORS["bad_credentials"] in response.text
        assert COOKIE not in response.cookies
    def strip(text: str) -> str:
        return CSRF.sub("", re.sub(r'name="account" value="[^"]*"', "", text))
    assert strip(wrong.text) == strip(unknown.text)
    assert 'value="nobody"' in unknown.text  # what was typed stays in the form
    assert await actions(desk, "desk.signin_failed") == [
        ("desk.signin_failed", "agent:ana", "bad_password"),
        ("desk.signin_failed", "unknown", "unknown_account"),
        ("desk.signin_failed", "agent:tok", "bad_password")]


async def test_repeated_failures_lock_the_account_even_for_the_right_password(
        desk: Desk) -> None:
    for _ in range(3):  # max_signin_attempts
        assert (await desk.sign_in(password="guess")).status_code == 401
    locked = await desk.sign_in()
    assert locked.status_code == 429
    assert SIGNIN_ERRORS["locked"] in locked.text
    # An unknown account locks the same way: lockout says nothing about existence.
    for _ in range(3):
        assert (await desk.sign_in(account="ghost", password="guess")).status_code == 401
    assert (await desk.sign_in(account="ghost", password="guess")).status_code == 429
    # Other accounts are unaffected.
    assert (await desk.sign_in("bill", BILLING_PASSWORD)).status_code == 303
    desk.client.cookies.clear()
    assert (await desk.sign_in()).status_code == 429  # still locked: audited once
    assert [a for a in await actions(desk, "desk.signin_failed") if a[1] == "agent:ana"] == \
        [("desk.signin_failed", "agent:ana", "bad_password")] * 3 + \
        [("desk.signin_failed", "agent:ana", "locked")]


async def test_concurrent_guesses_get_no_more_password_checks_than_the_limit(
        desk: Desk) -> None:
    form = await desk.client.get("/agent/signin")
    token = CSRF.search(form.text).group(1)
    guesses = await asyncio.gather(*(desk.client.post("/agent/signin", data={
        "csrf": token, "next": "/agent/", "account": "ana", "password": f"guess {n}"})
        for n in range(10)))
    assert sorted(r.status_code for r in guesses) == [401] * 3 + [429] * 7
    checked = [ref for _, actor, ref in await actions(desk, "desk.signin_failed")
               if actor == "agent:ana"]
    assert sorted(checked) == ["bad_password"] * 3 + ["locked"]  # max_signin_attempts: 3
    assert (await desk.sign_in()).status_code == 429  # the right password waits too


async def test_a_successful_sign_in_starts_the_count_afresh(desk: Desk) -> None:
    for _ in range(2):
        assert (await desk.sign_in(password="guess")).status_code == 401
    for _ in range(4):  # more sign-ins than max_signin_attempts: none of them counts
        assert (await desk.sign_in()).status_code == 303
        desk.client.cookies.clear()
    for expected in (401, 401, 401, 429):
        assert (await desk.sign_in(password="guess")).status_code == expected


class TimedHasher(PasswordHasher):
    """Slow verifications that record how many ran at once."""

    def __init__(self) -> None:
        super().__init__()
        self.running = self.most = 0
        self._lock = threading.Lock()

    def verify(self, stored: str | bytes, password: str | bytes) -> bool:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(0.05)
        with self._lock:
            self.running -= 1
        return False


async def test_password_checks_run_a_few_at_a_time_whoever_asks(desk: Desk) -> None:
    hasher = TimedHasher()
    runtime = desk.runtime
    auth = DeskAuth(runtime.config.agents.desk, store=runtime.store, audit=runtime.audit,
                    secret=desk_secret(runtime.settings.keys), clock=desk.clock,
                    passwords=hasher, max_hashing=4)
    refused = await asyncio.gather(*(auth.password_sign_in(f"nobody{n}", "guess")
                                     for n in range(12)), return_exceptions=True)
    assert [getattr(r, "code", r) for r in refused] == ["bad_credentials"] * 12
    assert hasher.most == 4


async def test_anonymous_failures_are_audited_once_per_window_real_accounts_always(
        desk: Desk) -> None:
    for n in range(4):
        assert (await desk.sign_in(account=f"ghost{n}", password="guess")).status_code == 401
        forged = await desk.client.get("/agent/token", params={"t": f"forged{n}"})
        assert forged.status_code == 400
    assert (await desk.sign_in(password="guess")).status_code == 401
    assert (await desk.sign_in(password="guess")).status_code == 401
    assert await actions(desk, "desk.signin_failed") == [
        ("desk.signin_failed", "unknown", "unknown_account"),
        ("desk.signin_failed", "unknown", "token_invalid"),
        ("desk.signin_failed", "agent:ana", "bad_password"),
        ("desk.signin_failed", "agent:ana", "bad_password")]


async def test_sign_in_forms_need_their_csrf_token_and_next_stays_on_the_desk(
        desk: Desk) -> None:
    await desk.client.get("/agent/signin")
    refused = await desk.client.post("/agent/signin", data={
        "account": "ana", "password": PASSWORD, "next": "/agent/"})
    assert refused.status_code == 403 and COOKIE not in refused.cookies
    for evil in ("//evil.example/", "https://evil.example/", "/agent/../portal/",
                 "/agent/signout", "/\\evil.example"):
        response = await desk.sign_in(next_path=evil)
        assert (response.status_code, response.headers["location"]) == (303, "/agent/")
        desk.client.cookies.clear()


@pytest.mark.parametrize("evil", ["/agent/\n", "/agent/tickets/abc\n", "//evil.example",
                                  "/agent/../x", "/agent//evil.example", "/agent/?x=1", "",
                                  None])
def test_safe_next_takes_the_whole_value_or_nothing(evil: str | None) -> None:
    assert safe_next(evil) == "/agent/"
    assert safe_next("/agent/tickets/abc-1_2") == "/agent/tickets/abc-1_2"


async def test_a_deep_link_signs_in_then_returns_to_the_ticket(desk: Desk) -> None:
    ticket = await hand_off(desk.runtime)
    path = f"/agent/tickets/{ticket.id}"
    first = await desk.client.get(path)
    assert first.headers["location"] == f"/agent/signin?next={path}"
    form = await desk.client.get(first.headers["location"])
    assert f'name="next" value="{path}"' in form.text
    response = await desk.sign_in(next_path=path)
    assert response.headers["location"] == path
    assert (await desk.client.get(path)).status_code == 200
    # From another site (a Slack note in a browser) the SameSite=Strict cookie is not sent:
    # a same-site hop (meta refresh) brings it.
    async with other_client(desk) as stranger:
        bounce = await stranger.get(path, headers={"sec-fetch-site": "cross-site"})
    assert bounce.status_code == 200
    assert f'http-equiv="refresh" content="0; url={path}"' in bounce.text


# --- sign-in links ---------------------------------------------------------------------------
async def test_a_sign_in_link_works_once_and_only_while_valid(desk: Desk) -> None:
    secret = desk_secret(desk.runtime.settings.keys)
    token = sign_in_token(secret, "tok", clock=desk.clock)
    # Opening the link only shows a button: link scanners cannot use it up.
    shown = await desk.client.get("/agent/token", params={"t": token})
    assert shown.status_code == 200 and "Sign in as Token Only" in shown.text
    assert (await desk.client.get("/agent/token", params={"t": token})).status_code == 200
    csrf = CSRF.search(shown.text).group(1)
    assert (await desk.client.post("/agent/token", data={"t": token})).status_code == 403
    signed = await desk.client.post("/agent/token", data={"t": token, "csrf": csrf})
    assert (signed.status_code, signed.headers["location"]) == (303, "/agent/")
    assert "Signed in as Token Only" in (await desk.client.get("/agent/")).text

    async with other_client(desk) as again:
        reused = await again.get("/agent/token", params={"t": token})
        assert reused.status_code == 400 and SIGNIN_ERRORS["token_used"] in reused.text
        csrf = CSRF.search(reused.text).group(1)
        posted = await again.post("/agent/token", data={"t": token, "csrf": csrf})
        assert posted.status_code == 400 and COOKIE not in posted.cookies

        late = sign_in_token(secret, "ana", clock=desk.clock)
        desk.clock.advance(minutes=10, seconds=1)  # token_minutes
        expired = await again.get("/agent/token", params={"t": late})
        assert SIGNIN_ERRORS["token_expired"] in expired.text

        for forged in (sign_in_token(b"k" * 32, "ana", clock=desk.clock),
                       late[:-2] + ("AA" if late[-2:] != "AA" else "BB"),
                       sign_in_token(secret, "mallory", clock=desk.clock), "", "x" * 300):
            answer = await again.get("/agent/token", params={"t": forged})
            assert answer.status_code == 400
            assert SIGNIN_ERRORS["token_invalid"] in answer.text
    failures = [ref for _, _, ref in await actions(desk, "desk.signin_failed")]
    assert failures[:3] == ["token_used", "token_used", "token_expired"]
    assert set(failures[3:]) == {"token_invalid"}
    assert await actions(desk, "desk.signin") == [("desk.signin", "agent:tok", "token")]


# --- automatic log-off -----------------------------------------------------------------------
async def test_idle_agents_are_signed_out_and_passive_polls_do_not_keep_them_in(
        desk: Desk) -> None:
    await desk.sign_in()
    for _ in range(3):  # activity slides the idle limit
        desk.clock.advance(minutes=14)
        assert (await desk.client.get("/agent/")).status_code == 200
    # desk.js refreshes the queues passively: not activity.
    for expected in (200, 401):
        desk.clock.advance(minutes=8)
        poll = await desk.client.get("/agent/", headers={"x-desk-poll": "passive"})
        assert poll.status_code == expected
    gone = await desk.client.get("/agent/")
    assert gone.headers["location"] == "/agent/signin?next=/agent/"
    assert await actions(desk, "desk.signout") == [("desk.signout", "agent:ana", "idle")]

    # An active ping (the agent typing on a ticket page) does keep the session.
    await desk.sign_in()
    desk.clock.advance(minutes=14)
    assert (await desk.client.get("/agent/api/ping",
                                  headers={"x-desk-poll": "active"})).status_code == 204
    desk.clock.advance(minutes=14)
    assert (await desk.client.get("/agent/api/ping",
                                  headers={"x-desk-poll": "passive"})).status_code == 204
    desk.clock.advance(minutes=2)
    ended = await desk.client.get("/agent/tickets/0000000000000000")
    assert ended.headers["location"].endswith("&notice=expired")


async def test_a_session_ends_after_absolute_hours_however_busy(desk: Desk) -> None:
    await desk.sign_in()
    for _ in range(8):  # two hours of activity every 14 minutes
        desk.clock.advance(minutes=14)
        assert (await desk.client.get("/agent/")).status_code == 200
    desk.clock.advance(minutes=14)
    assert (await desk.client.get("/agent/")).status_code == 303
    assert await actions(desk, "desk.signout") == [("desk.signout", "agent:ana", "absolute")]


async def test_desk_js_signs_out_with_reason_idle(desk: Desk) -> None:
    await desk.sign_in()
    out = await desk.client.post("/agent/signout",
                                 data={"csrf": await desk.csrf(), "reason": "idle"})
    assert out.headers["location"] == "/agent/signin?notice=idle"
    assert await actions(desk, "desk.signout") == [("desk.signout", "agent:ana", "idle")]


# --- ticket actions --------------------------------------------------------------------------
async def test_claim_and_reply_reach_the_patient_and_the_transcript_view_is_audited(
        desk: Desk, config: Config) -> None:
    ticket = await hand_off(desk.runtime, "<script>alert('x')</script> I need a person")
    await desk.sign_in()
    queue = await desk.client.get("/agent/")
    assert f'href="/agent/tickets/{ticket.id}"' in queue.text
    row = re.search(rf'<tr [^>]*data-ticket="{ticket.id}">(.*?)</tr>', queue.text).group(1)
    assert ">open<" in row and ">normal<" in row and "&lt;1 min" in row

    page = await desk.client.get(f"/agent/tickets/{ticket.id}")
    assert "<script>alert" not in page.text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; I need a person" in page.text
    assert page.text.count("<script") == 1  # desk.js only
    assert 'id="claim-form"' in page.text and 'id="reply-form"' not in page.text

    assert await desk.flash(await desk.act(ticket.id, "claim")) == \
        MESSAGES["claim_claimed"]
    page = await desk.client.get(f"/agent/tickets/{ticket.id}")
    assert 'id="reply-form"' in page.text and 'id="claim-form"' not in page.text
    reply = await desk.act(ticket.id, "reply", text="Hello,\r\nwe can see you Friday <9am>.")
    assert await desk.flash(reply) == MESSAGES["replied"]
    assert await mailbox(desk.runtime) == [config.text("handoff_ack"),
                                           "Hello,\nwe can see you Friday <9am>."]
    page = await desk.client.get(f"/agent/tickets/{ticket.id}")
    assert "we can see you Friday &lt;9am&gt;." in page.text
    views = await actions(desk, "transcript.read")
    assert views and set(views) == {("transcript.read", "agent:ana", ticket.id)}
    assert len(views) == 7  # every ticket page shown (desk.act and desk.flash open it too)
    assert (await actions(desk, "agent.reply"))[0][:2] == ("agent.reply", "agent:ana")

    # Nothing to refuse shows patient data: an empty reply is a plain message.
    assert await desk.flash(await desk.act(ticket.id, "reply", text="  ")) == \
        MESSAGES["empty_reply"]


async def test_resolve_return_move_and_relabel_through_the_forms(desk: Desk,
                                                                 config: Config) -> None:
    first = await hand_off(desk.runtime, "first", patient="P1001")
    second = await hand_off(desk.runtime, "second", patient="P1002")
    await desk.sign_in()

    assert await desk.flash(await desk.act(first.id, "resolve", outcome="fixed")) == \
        MESSAGES["invalid_outcome"]
    await desk.act(first.id, "claim")
    resolved = await desk.act(first.id, "resolve", outcome="callback_done")
    assert resolved.headers["location"] == "/agent/"
    assert await desk.flash(resolved) == MESSAGES["resolved"]
    stored = await desk.runtime.store.get_ticket(first.id)
    assert (stored.status, stored.outcome) == (TicketStatus.RESOLVED, "callback_done")
    assert (await mailbox(desk.runtime))[-1] == config.text("resolved_closing")
    assert (await session_of(desk.runtime)).state is SessionState.CLOSED

    assert await desk.flash(await desk.act(second.id, "relabel", intent="billing_question")) \
        == MESSAGES["relabelled"]
    assert await desk.flash(await desk.act(second.id, "move", lane="front_desk")) == \
        MESSAGES["same_lane"]
    assert await desk.flash(await desk.act(second.id, "move", lane="billing")) == \
        MESSAGES["moved"]
    moved = await desk.runtime.store.get_ticket(second.id)
    assert (moved.lane, moved.corrected_intent) == ("billing", "billing_question")
    returned = await desk.act(second.id, "return")
    assert await desk.flash(returned) == MESSAGES["returned"]
    assert (await mailbox(desk.runtime, "P1002"))[-1] == config.text("returned_to_bot")
    assert (await session_of(desk.runtime, "P1002")).state is SessionState.ACTIVE
    assert [a for a, _, _ in await audit_actions(desk.runtime) if a.startswith("ticket.")] == [
        "ticket.claimed", "ticket.resolved", "ticket.relabelled", "ticket.moved",
        "ticket.returned_to_bot"]
    assert "Ticket resolved." not in (await desk.client.get("/agent/")).text  # flash shown once


async def test_a_ticket_relabelled_back_to_its_first_reason_shows_no_relabel(
        desk: Desk) -> None:
    ticket = await hand_off(desk.runtime)
    await desk.sign_in()
    await desk.act(ticket.id, "relabel", intent="billing_question")
    page = (await desk.client.get(f"/agent/tickets/{ticket.id}")).text
    assert "<dd>billing_question (relabelled from unclassified)</dd>" in page
    # As after relabelling to another reason and back to the classifier's own.
    stored = await desk.runtime.store.get_ticket(ticket.id)
    stored.note = replace(stored.note, contact_reason="complaint")
    stored.corrected_intent = "complaint"
    assert await desk.runtime.store.update_ticket(stored)
    page = (await desk.client.get(f"/agent/tickets/{ticket.id}")).text
    assert "<dt>Contact reason</dt><dd>complaint</dd>" in page
    assert "relabelled from" not in page


async def test_another_agents_ticket_offers_no_reply_and_refuses_one(desk: Desk) -> None:
    ticket = await hand_off(desk.runtime)
    await desk.runtime.desk.claim(ticket.id, "someone")
    await desk.sign_in()
    page = await desk.client.get(f"/agent/tickets/{ticket.id}")
    assert "Claimed by someone." in page.text
    assert 'id="reply-form"' not in page.text and 'id="resolve-form"' not in page.text
    assert await desk.flash(await desk.act(ticket.id, "claim")) == \
        MESSAGES["claim_already_claimed"]
    assert await desk.flash(await desk.act(ticket.id, "reply", text="hi")) == \
        MESSAGES["not_owner"]
    assert len(await mailbox(desk.runtime)) == 1  # only the bot's acknowledgement


async def test_a_reply_goes_out_by_sms(desk: Desk) -> None:
    sms = RecordingSms()
    desk.runtime.channels.register(sms)
    await patient_writes(desk.runtime, Inbound(channel="sms", sender="+16175550123",
                                               provider_message_id="SMweb1",
                                               text="call me please"))
    [ticket] = await desk.runtime.desk.open_tickets("front_desk")
    await desk.sign_in()
    await desk.act(ticket.id, "claim")
    await desk.act(ticket.id, "reply", text="We will call you at 2pm.")
    assert [(m.recipient, m.text) for m in sms.sent][-1] == ("+16175550123",
                                                             "We will call you at 2pm.")
    page = (await desk.client.get(f"/agent/tickets/{ticket.id}")).text
    assert "sent" in page and "NOT DELIVERED" not in page


async def test_a_reply_the_channel_refuses_shows_as_not_delivered(desk: Desk) -> None:
    sms = RecordingSms()
    desk.runtime.channels.register(sms)
    await patient_writes(desk.runtime, Inbound(channel="sms", sender="+16175550124",
                                               provider_message_id="SMweb2",
                                               text="call me please"))
    [ticket] = await desk.runtime.desk.open_tickets("front_desk")
    sms.opted_out.add("+16175550124")  # the patient texted STOP meanwhile
    await desk.sign_in()
    await desk.act(ticket.id, "claim")
    await desk.act(ticket.id, "reply", text="We will call you at 2pm.")
    page = (await desk.client.get(f"/agent/tickets/{ticket.id}")).text
    assert "NOT DELIVERED" in page and "delivery-undeliverable" in page


async def test_forms_without_the_csrf_token_change_nothing(desk: Desk) -> None:
    ticket = await hand_off(desk.runtime)
    await desk.sign_in()
    for data in ({}, {"csrf": "forged"}, {"csrf": ""}):
        for action, extra in (("claim", {}), ("reply", {"text": "x"}),
                              ("resolve", {"outcome": "resolved"}), ("return", {}),
                              ("move", {"lane": "billing"}),
                              ("relabel", {"intent": "complaint"})):
            response = await desk.client.post(f"/agent/tickets/{ticket.id}/{action}",
                                              data={**data, **extra})
            assert response.status_code == 403, action
    assert (await desk.client.post("/agent/signout", data={})).status_code == 403
    stored = await desk.runtime.store.get_ticket(ticket.id)
    assert (stored.status, stored.lane, stored.history, stored.revision) == \
        (TicketStatus.OPEN, "front_desk", [], 0)
    assert (await desk.client.get("/agent/")).status_code == 200  # still signed in
    # A JSON or multipart body is not a desk form.
    refused = await desk.client.post(f"/agent/tickets/{ticket.id}/claim",
                                     json={"csrf": await desk.csrf()})
    assert refused.status_code == 415


async def test_form_bodies_over_the_limit_are_refused_before_they_are_read(
        desk: Desk) -> None:
    ticket = await hand_off(desk.runtime)
    await desk.sign_in()
    limit = desk.runtime.config.app.limits.max_message_chars * 12 + 4096
    csrf = await desk.csrf()
    form = {"content-type": "application/x-www-form-urlencoded"}
    declared = await desk.client.post(f"/agent/tickets/{ticket.id}/claim",
                                      content=f"csrf={csrf}".encode(),
                                      headers={**form, "content-length": str(limit + 1)})
    assert declared.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no declared length: counted as read
        yield f"csrf={csrf}&text=".encode()
        for _ in range(limit // 1024 + 1):
            yield b"x" * 1024

    streamed = await desk.client.post(f"/agent/tickets/{ticket.id}/claim", content=chunks(),
                                      headers=form)
    assert streamed.status_code == 413
    assert (await desk.runtime.store.get_ticket(ticket.id)).status is TicketStatus.OPEN
    # The sign-in form is read the same way.
    big = await desk.client.post("/agent/signin", content=b"account=ana",
                                 headers={**form, "content-length": str(limit + 1)})
    assert big.status_code == 413


async def test_agents_see_only_their_lanes(desk: Desk) -> None:
    front = await hand_off(desk.runtime, patient="P1001")
    billing = await hand_off(desk.runtime, patient="P1002")
    await desk.runtime.desk.move(billing.id, "ana", "billing")
    await desk.sign_in("bill", BILLING_PASSWORD)
    queues = await desk.client.get("/agent/")
    assert 'data-lane="billing"' in queues.text and 'data-lane="front_desk"' not in queues.text
    assert billing.id in queues.text and front.id not in queues.text
    assert (await desk.client.get(f"/agent/tickets/{billing.id}")).status_code == 200
    hidden = await desk.client.get(f"/agent/tickets/{front.id}")
    missing = await desk.client.get("/agent/tickets/ffffffffffffffff")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text.replace(front.id, "") == missing.text.replace("ffffffffffffffff", "")
    csrf = await desk.csrf()
    refused = await desk.client.post(f"/agent/tickets/{front.id}/claim", data={"csrf": csrf})
    assert refused.status_code == 404
    assert (await desk.runtime.store.get_ticket(front.id)).status is TicketStatus.OPEN
    views = await actions(desk, "transcript.read")
    assert views == [("transcript.read", "agent:bill", billing.id)]


async def test_desk_logs_carry_no_patient_text_or_secrets(desk: Desk, capsys) -> None:
    configure_logging(production=True)
    ticket = await hand_off(desk.runtime, "CANARY-WEB-41 my private matter")
    await desk.sign_in(password="CANARY-PW-1 wrong")
    await desk.sign_in()
    await desk.act(ticket.id, "claim")
    await desk.act(ticket.id, "reply", text="CANARY-AGENT-77 reply")
    await desk.act(ticket.id, "resolve", outcome="resolved")
    logs = capsys.readouterr().err
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    assert {"desk sign-in", "desk sign-in refused"} <= {e.get("event") for e in events}
    assert "CANARY" not in logs and PASSWORD not in logs
    assert desk.client.cookies[COOKIE] not in logs
    entries = json.dumps([str(e.event) for e in await desk.runtime.audit.entries()])
    assert "CANARY" not in entries and PASSWORD not in entries


async def test_static_files_and_plain_redirects(desk: Desk) -> None:
    js = await desk.client.get("/agent/static/desk.js")
    css = await desk.client.get("/agent/static/desk.css")
    assert js.status_code == css.status_code == 200
    assert "javascript" in js.headers["content-type"]
    assert (await desk.client.get("/agent")).headers["location"] == "/agent/"
    poll = await desk.client.get("/agent/", headers={"x-desk-poll": "passive"})
    assert poll.status_code == 401  # desk.js goes to the sign-in page itself
    assert (await desk.client.get("/agent/api/ping")).status_code == 401


# --- command line ----------------------------------------------------------------------------
def desk_cli(*args: str, cwd: Path, env: dict[str, str],
             stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.app.cli", "desk", *args],
                          cwd=cwd, env={**os.environ, **env}, input=stdin,
                          capture_output=True, text=True, timeout=60)


async def test_the_cli_hashes_passwords_and_prints_links_the_desk_accepts(
        config: Config, tmp_path: Path) -> None:
    made = desk_cli("hash-password", cwd=tmp_path, env={}, stdin="a long desk password\n")
    assert made.returncode == 0, made.stderr
    assert PasswordHasher().verify(made.stdout.strip(), "a long desk password")
    for refused in ("short\n", "riverside-desk-demo\n"):
        assert desk_cli("hash-password", cwd=tmp_path, env={}, stdin=refused).returncode == 2

    env = key_env()
    printed = desk_cli("token", "demo", "--config", str(CONFIG_DIR), cwd=tmp_path, env=env)
    assert printed.returncode == 0, printed.stderr
    link = printed.stdout.strip()
    assert link.startswith(f"{config.app.public_base_url}/agent/token?t=")
    unknown = desk_cli("token", "nobody", "--config", str(CONFIG_DIR), cwd=tmp_path, env=env)
    assert unknown.returncode == 2 and "nobody" in unknown.stderr

    # The server with the same keys takes the link.
    settings = Settings(redis_url=None, redis_prefix="unused",
                        keys=load_key_material(env, tmp_path))
    runtime = Runtime.build(config, settings, decision_step=FrontDeskHandoff)
    transport = httpx.ASGITransport(app=create_app(runtime, workers=0))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            path = link.removeprefix(config.app.public_base_url)
            shown = await client.get(path)
            assert "Sign in as Demo agent" in shown.text
            signed = await client.post("/agent/token", data={
                "t": path.split("t=", 1)[1], "csrf": CSRF.search(shown.text).group(1)})
            assert signed.status_code == 303 and COOKIE in signed.cookies
    finally:
        await runtime.close()


async def test_the_queue_shows_which_unclaimed_tickets_escalated(desk: Desk) -> None:
    waiting = await hand_off(desk.runtime, patient="P1001")
    desk.clock.advance(minutes=31)  # past the front desk's 30-minute acknowledge SLA
    assert await desk.runtime.escalations.sweep() == 1
    fresh = await hand_off(desk.runtime, patient="P1002")
    await desk.sign_in()
    page = (await desk.client.get("/agent/")).text
    rows = {ticket_id: row for row, ticket_id in
            re.findall(r'(<tr class="[^"]*" data-ticket="([^"]+)">.*?</tr>)', page)}
    assert "escalated" in rows[waiting.id] and "lane owner re-notified" in rows[waiting.id]
    assert "escalated" not in rows[fresh.id]
