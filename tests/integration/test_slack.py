"""The Slack agent layer through our real web app (uvicorn) and a local Slack Web API driven by
the real slack_sdk client; Redis is real; the clock is driven. Tickets come from the real
pipeline; requests from "Slack" are signed like Slack signs them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from slack_bolt.async_app import AsyncBoltRequest
from structlog.testing import capture_logs

from bot.app.runtime import Runtime
from bot.config.loader import Config, load_config
from bot.config.settings import Settings
from bot.core.envelopes import Inbound, Outbound
from bot.core.session import SessionState
from bot.core.tickets import HandoffTicket, Priority, TicketStatus
from bot.engine.decision import FrontDeskHandoff
from bot.messaging.delivery import channel_text
from handoff.desk import REFUSALS, desk_url
from handoff.slack.agents import EVENT_NS, SlackAgents
from handoff.slack.blocks import CLAIM, MOVE, RELABEL, RESOLVE, RETURN
from handoff.slack.sync import LIVE_ITEM, LIVE_NS, NoteRecord
from tests.conftest import serve_app
from tests.integration.test_desk import hand_off, patient_writes, session_of
from tests.integration.test_escalation import sweep_at, ticket_with
from tests.integration.test_pipeline import mailbox, portal_message
from tests.integration.test_sms import ACCOUNT as TWILIO_ACCOUNT
from tests.integration.test_sms import PATIENT as SMS_PATIENT
from tests.integration.test_sms import TOKEN as TWILIO_TOKEN
from tests.integration.test_sms import configure as configure_sms
from tests.support.doubles import START, Clock, RecordingSms
from tests.support.slack_api import (
    APP_TOKEN,
    BOT_ID,
    BOT_TOKEN,
    BOT_USER,
    SIGNING_SECRET,
    TEAM,
    FakeSlackAPI,
    FakeSocketMode,
    action_body,
    action_payload,
    message_event,
    signed_headers,
)
from tests.support.twilio_api import FakeTwilio

SECRETS = {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_SIGNING_SECRET": SIGNING_SECRET}
FRONT, SCHED, CLINIC, BACKUP = "C0FRONT", "C0SCHED", "C0CLINIC", "C0BACKUP"
FORM = "application/x-www-form-urlencoded"
SECRET_WORDS = "my knee is swollen since the fall, date of birth 1971-05-09"
HOSTILE = "call me <!channel> <@U0LEAD> <https://evil.example|portal> & thanks"


def slack_config(config_dir: Path, api_url: str, *, phi: bool,
                 fields: list[str] | None = None, **extra: Any) -> Config:
    path = config_dir / "agents.yml"
    data = yaml.safe_load(path.read_text())
    data["slack"].update(
        enabled=True, api_base_url=api_url, phi_capable=phi, default_channel=FRONT,
        lane_channels={"scheduling": SCHED, "clinical": CLINIC}, on_call_group="S0ONCALL",
        staff={"Front desk lead": "U0LEAD", "Practice administrator": "U0ADMIN",
               "Practice manager": "S0MANAGERS"},
        staff_channels={"Practice administrator": BACKUP}, sync_seconds=0.2)
    if fields is not None:
        data["slack"]["note_fields"] = fields
    data["slack"].update(extra)
    path.write_text(yaml.safe_dump(data))
    return load_config(config_dir)


@dataclass
class Harness:
    runtime: Runtime
    api: FakeSlackAPI
    http: httpx.AsyncClient
    clock: Clock

    @property
    def slack(self) -> SlackAgents:
        assert self.runtime.slack is not None
        return self.runtime.slack

    async def sweep(self) -> int:
        return await self.slack.sweep(force=True)

    async def note(self, ticket_id: str) -> NoteRecord:
        record = await self.slack.sync.record(ticket_id)
        assert record is not None, "no Slack note for the ticket"
        return record

    async def message(self, ticket_id: str) -> dict[str, Any]:
        record = await self.note(ticket_id)
        return self.api.message(record.channel, record.ts)

    async def send(self, body: str, content_type: str, **headers: str) -> httpx.Response:
        return await self.http.post("/slack/events", content=body, headers={
            **signed_headers(body, content_type=content_type), **headers})

    async def click(self, action_id: str, value: str, *, user: str, select: bool = False,
                    team: str = TEAM) -> httpx.Response:
        record = await self.note(value.split("|")[0])
        response = await self.send(action_body(action_id, value, user=user,
                                                channel=record.channel, message_ts=record.ts,
                                                select=select, team=team), FORM)
        assert response.status_code == 200, response.text
        await self.slack.idle()  # the click is answered at once and worked in the background
        return response

    async def reply(self, ticket_id: str, text: str, *, user: str, event_id: str,
                    user_team: str | None = None, **headers: str) -> httpx.Response:
        record = await self.note(ticket_id)
        body = message_event(text, user=user, channel=record.channel, thread_ts=record.ts,
                             event_id=event_id, user_team=user_team)
        response = await self.send(body, "application/json", **headers)
        assert response.status_code == 200, response.text
        return response


async def live_ids(h: Harness) -> list[str]:
    """The tickets whose notes the sweep still watches."""
    return (await h.runtime.store.kv_get(LIVE_NS, LIVE_ITEM) or {}).get("ids", [])


def actions(message: dict[str, Any]) -> list[str]:
    return [element["action_id"] for block in message["blocks"] if block["type"] == "actions"
            for element in block["elements"]]


def shown(message: dict[str, Any]) -> str:
    return json.dumps(message["blocks"]) + message["text"]


@pytest.fixture
async def slack_api() -> AsyncIterator[FakeSlackAPI]:
    api = await FakeSlackAPI().start()
    yield api
    await api.stop()


@pytest.fixture
async def make_harness(config_dir: Path, settings: Settings, clock: Clock,
                       slack_api: FakeSlackAPI) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    async with contextlib.AsyncExitStack() as stack:
        async def make(*, phi: bool = False, fields: list[str] | None = None,
                       secrets: dict[str, str] | None = None, **extra: Any) -> Harness:
            config = slack_config(config_dir, slack_api.base_url, phi=phi, fields=fields,
                                  **extra)
            runtime = Runtime.build(config, replace(settings, secrets={**SECRETS,
                                                                       **(secrets or {})}),
                                    decision_step=FrontDeskHandoff, clock=clock)
            url = await stack.enter_async_context(serve_app(runtime))
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            return Harness(runtime, slack_api, http, clock)
        yield make


async def posted_ticket(h: Harness, text: str = "I need to move my physical", *,
                        patient: str = "P1001") -> HandoffTicket:
    ticket = await hand_off(h.runtime, text, patient=patient)
    await h.sweep()
    return ticket


# --- notes -----------------------------------------------------------------------------------
async def test_a_handoff_posts_one_minimum_necessary_note_with_its_controls(
        make_harness, config: Config) -> None:
    h = await make_harness()
    ticket = await hand_off(h.runtime, f"Zebedee Quillfeather here, {SECRET_WORDS}")
    assert await h.sweep() == 1
    for _ in range(3):
        assert await h.sweep() == 0
    [post] = h.api.posts()
    assert post["channel"] == FRONT and post["unfurl_links"] is False \
        and post["unfurl_media"] is False
    note = await h.message(ticket.id)
    text = shown(note)
    for expected in (ticket.id, desk_url(h.runtime.config, ticket.id), "unclassified",
                     "Normal", "not_required", "Front desk", "waiting for an agent"):
        assert expected in text, expected
    assert actions(note) == [CLAIM, RESOLVE, RETURN, MOVE, RELABEL]
    # phi_capable is false: nothing the patient wrote or is reaches Slack.
    everything = h.api.everything()
    for secret in ("knee", "swollen", "1971-05-09", "Zebedee", "Quillfeather"):
        assert secret not in everything
    assert await live_ids(h) == [ticket.id]


async def test_urgent_handoffs_page_the_on_call_group_in_their_lanes_channel(
        make_harness, clock: Clock) -> None:
    h = await make_harness()
    ticket = await ticket_with(h.runtime, clock, lane="clinical", priority=Priority.EMERGENCY)
    await h.sweep()
    [post] = h.api.posts(CLINIC)
    assert post["text"].startswith("<!subteam^S0ONCALL> ") and ticket.id in post["text"]
    assert "EMERGENCY" in post["text"]


async def test_requests_with_a_bad_or_stale_signature_are_refused_and_change_nothing(
        make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    record = await h.note(ticket.id)
    calls = len(h.api.calls)
    body = action_body(CLAIM, ticket.id, user="U0AGENT1", channel=record.channel,
                       message_ts=record.ts)
    forged = signed_headers(body, secret="not-the-signing-secret", content_type=FORM)
    stale = signed_headers(body, timestamp=int(START.timestamp()), content_type=FORM)
    for headers in (forged, stale, {"content-type": FORM}):
        response = await h.http.post("/slack/events", content=body, headers=headers)
        assert response.status_code == 401
    tampered = signed_headers(body, content_type=FORM)
    response = await h.http.post("/slack/events", content=body.replace("U0AGENT1", "U0EVIL"),
                                 headers=tampered)
    assert response.status_code == 401
    stored = await h.runtime.store.get_ticket(ticket.id)
    assert (stored.status, stored.revision) == (TicketStatus.OPEN, 0)
    assert len(h.api.calls) == calls  # not even auth.test

    challenge = json.dumps({"type": "url_verification", "token": "x", "challenge": "c4ll"})
    response = await h.send(challenge, "application/json")
    assert response.status_code == 200 and "c4ll" in response.text


async def test_a_claim_updates_the_note_in_place(make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    await h.click(CLAIM, ticket.id, user="U0AGENT1")
    stored = await h.runtime.store.get_ticket(ticket.id)
    assert (stored.status, stored.claimed_by) == (TicketStatus.CLAIMED, "U0AGENT1")
    [update] = h.api.calls_of("chat.update")
    record = await h.note(ticket.id)
    assert (update.params["channel"], update.params["ts"]) == (record.channel, record.ts)
    note = await h.message(ticket.id)
    assert "Claimed* by <@U0AGENT1>" in shown(note)
    assert actions(note) == [RESOLVE, RETURN, MOVE, RELABEL]
    [told] = h.api.ephemerals("U0AGENT1")
    assert desk_url(h.runtime.config, ticket.id) in told["text"]  # not PHI-capable: web desk
    assert len(h.api.posts()) == 1 and await h.sweep() == 0


async def test_two_agents_claiming_at_once_get_one_owner_and_one_already_claimed(
        make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    await asyncio.gather(h.click(CLAIM, ticket.id, user="U0AAA"),
                         h.click(CLAIM, ticket.id, user="U0BBB"))
    owner = (await h.runtime.store.get_ticket(ticket.id)).claimed_by
    loser = {"U0AAA": "U0BBB", "U0BBB": "U0AAA"}[owner]
    [refused] = h.api.ephemerals(loser)
    assert refused["text"] == f"Already claimed by <@{owner}>."
    assert f"<@{owner}>" in shown(await h.message(ticket.id))
    claims = [e for e in (await h.runtime.store.get_ticket(ticket.id)).history
              if e.action == "claimed"]
    assert [e.actor for e in claims] == [f"agent:{owner}"]


# --- conversation in the thread --------------------------------------------------------------
async def test_phi_capable_thread_relays_both_ways_and_others_write_internal_notes(
        make_harness) -> None:
    h = await make_harness(phi=True)
    ticket = await posted_ticket(h, "I need to move my physical")
    record = await h.note(ticket.id)
    await patient_writes(h.runtime, portal_message("anyone there?", client_id="P1001-2"))
    await h.sweep()
    assert h.api.posts(thread=record.ts) == []  # nothing relayed before a claim

    await h.click(CLAIM, ticket.id, user="U0OWNER")
    relayed = [p["text"] for p in h.api.posts(thread=record.ts)]
    assert len(relayed) == 2  # the message that raised the handoff, and the one after
    assert "I need to move my physical" in relayed[0] and "anyone there?" in relayed[1]
    await patient_writes(h.runtime, portal_message(HOSTILE, client_id="P1001-3"))
    await h.sweep()
    await h.sweep()
    relayed = [p["text"] for p in h.api.posts(thread=record.ts)]
    assert len(relayed) == 3  # each once
    assert "&lt;!channel&gt; &lt;@U0LEAD&gt; &lt;https://evil.example|portal&gt; &amp; thanks" \
        in relayed[2]
    assert "<!channel>" not in h.api.everything() and "<@U0LEAD>" not in h.api.everything()

    await h.reply(ticket.id, "We can do Friday at 9 &amp; call you &lt;today&gt;",
                  user="U0OWNER", event_id="Ev0REPLY1")
    assert (await mailbox(h.runtime))[-1] == "We can do Friday at 9 & call you <today>"
    last = (await h.runtime.store.transcript((await session_of(h.runtime)).conversation_id))[-1]
    assert last.actor == "agent:U0OWNER"

    before = await mailbox(h.runtime)
    await h.reply(ticket.id, "I think she means the annual one", user="U0OTHER",
                  event_id="Ev0NOTE1")
    assert await mailbox(h.runtime) == before
    [note] = h.api.ephemerals("U0OTHER")
    assert note["thread_ts"] == record.ts and "Internal note" in note["text"] \
        and "<@U0OWNER>" in note["text"]
    actions_audited = {e.event.action for e in await h.runtime.audit.entries()}
    assert {"slack.disclosed", "agent.reply"} <= actions_audited


@pytest.mark.parametrize("phi_allowed", [False, True])
async def test_the_owners_thread_reply_reaches_an_sms_patient_as_far_as_sms_may_carry_phi(
        make_harness, config_dir: Path, phi_allowed: bool) -> None:
    # The real SMS channel against a local Twilio: an agent's words may be PHI, so they
    # reach an SMS patient only where channels.yml lets SMS carry PHI; else a portal pointer.
    with FakeTwilio(TWILIO_ACCOUNT, TWILIO_TOKEN) as twilio:
        configure_sms(config_dir, twilio.url, limits={}, sms={"phi_allowed": phi_allowed})
        h = await make_harness(phi=True, secrets={"TWILIO_AUTH_TOKEN": TWILIO_TOKEN})
        await patient_writes(h.runtime, Inbound(channel="sms", sender=SMS_PATIENT,
                                                provider_message_id="SMin1", text="call me"))
        [ticket] = await h.runtime.desk.open_tickets("front_desk")
        await h.sweep()
        await h.click(CLAIM, ticket.id, user="U0OWNER")
        guide = h.api.ephemerals("U0OWNER")[-1]["text"]
        assert ("as a link to the patient portal" in guide) is not phi_allowed
        await h.reply(ticket.id, "Your visit with Dr Quill is on Tuesday at 9:00.",
                      user="U0OWNER", event_id="Ev0SMS1")
        expected = "Your visit with Dr Quill is on Tuesday at 9:00." if phi_allowed \
            else channel_text(h.runtime.config, "phi_redirect", "en")
        assert twilio.bodies(SMS_PATIENT)[-1] == expected
        if not phi_allowed:
            assert "Dr Quill" not in json.dumps(twilio.messages)


async def test_without_phi_nothing_is_relayed_and_thread_replies_point_to_the_web_desk(
        make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h, SECRET_WORDS)
    record = await h.note(ticket.id)
    await h.click(CLAIM, ticket.id, user="U0OWNER")
    await patient_writes(h.runtime, portal_message("still swollen", client_id="P1001-2"))
    await h.sweep()
    assert h.api.posts(thread=record.ts) == []
    before = await mailbox(h.runtime)
    await h.reply(ticket.id, "Please come in today", user="U0OWNER", event_id="Ev0NOPHI")
    assert await mailbox(h.runtime) == before
    told = h.api.ephemerals("U0OWNER")[-1]
    assert told["thread_ts"] == record.ts
    assert desk_url(h.runtime.config, ticket.id) in told["text"]
    assert "swollen" not in h.api.everything()


async def test_a_retried_event_is_processed_once_and_bot_messages_are_ignored(
        make_harness) -> None:
    h = await make_harness(phi=True)
    ticket = await posted_ticket(h)
    await h.click(CLAIM, ticket.id, user="U0OWNER")
    before = len(await mailbox(h.runtime))
    await h.reply(ticket.id, "See you Friday", user="U0OWNER", event_id="Ev0ONCE")
    await h.reply(ticket.id, "See you Friday", user="U0OWNER", event_id="Ev0ONCE",
                  **{"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"})
    assert (await mailbox(h.runtime))[before:] == ["See you Friday"]

    record = await h.note(ticket.id)
    calls = len(h.api.calls)
    for n, kwargs in enumerate([{"user": BOT_USER}, {"user": None, "bot_id": BOT_ID,
                                                     "subtype": "bot_message"},
                                {"user": "U0OWNER", "subtype": "message_changed"},
                                {"user": "U0OWNER", "bot_id": "B0OTHER"}]):
        body = message_event("ignored", channel=record.channel, thread_ts=record.ts,
                             event_id=f"Ev0IGN{n}", **kwargs)
        assert (await h.send(body, "application/json")).status_code == 200
    assert (await mailbox(h.runtime))[before:] == ["See you Friday"]
    assert len(h.api.calls) == calls

    body = message_event("here is the form", user="U0OWNER", channel=record.channel,
                         thread_ts=record.ts, event_id="Ev0FILE", subtype="file_share")
    assert (await h.send(body, "application/json")).status_code == 200
    assert (await mailbox(h.runtime))[before:] == ["See you Friday"]
    assert "files" in h.api.ephemerals("U0OWNER")[-1]["text"]


# --- resolve, return, move, relabel ----------------------------------------------------------
async def test_resolve_sends_the_closing_template_and_the_note_loses_its_controls(
        make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    await h.click(CLAIM, ticket.id, user="U0OWNER")
    await h.click(RESOLVE, f"{ticket.id}|callback_done", user="U0OTHER", select=True)
    [refused] = h.api.ephemerals("U0OTHER")
    assert refused["text"] == REFUSALS["not_owner"]
    await h.click(RESOLVE, f"{ticket.id}|callback_done", user="U0OWNER", select=True)
    stored = await h.runtime.store.get_ticket(ticket.id)
    assert (stored.status, stored.outcome) == (TicketStatus.RESOLVED, "callback_done")
    assert (await mailbox(h.runtime))[-1] == h.runtime.config.text("resolved_closing")
    note = await h.message(ticket.id)
    assert actions(note) == [] and "Callback done* by" not in shown(note)
    assert "Closed*: Callback done by <@U0OWNER>" in shown(note)
    assert await h.sweep() == 0
    assert await live_ids(h) == []


async def test_return_to_bot_reactivates_the_conversation(make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    await h.click(RETURN, ticket.id, user="U0AGENT1")
    assert (await session_of(h.runtime)).state is SessionState.ACTIVE
    assert (await mailbox(h.runtime))[-1] == h.runtime.config.text("returned_to_bot")
    note = await h.message(ticket.id)
    assert actions(note) == [] and "Returned to the bot by <@U0AGENT1>" in shown(note)


async def test_move_posts_the_note_in_the_new_lanes_channel_once(make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    old = await h.note(ticket.id)
    await h.click(MOVE, f"{ticket.id}|scheduling", user="U0AGENT1", select=True)
    assert (await h.runtime.store.get_ticket(ticket.id)).lane == "scheduling"
    new = await h.note(ticket.id)
    assert (new.channel, new.lane) == (SCHED, "scheduling")
    for _ in range(2):
        await h.sweep()
    assert len(h.api.posts(SCHED)) == 1 and len(h.api.posts(FRONT)) == 1
    moved = h.api.message(old.channel, old.ts)
    assert actions(moved) == [] and "was moved to *Scheduling*" in shown(moved)
    assert f"<#{SCHED}>" in shown(moved)
    assert actions(await h.message(ticket.id))[0] == CLAIM  # unclaimed again in its new lane
    assert await h.slack.sync.ticket_for_thread(SCHED, new.ts) == ticket.id


async def test_relabel_records_a_review_item_and_shows_the_correction(make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    await h.click(RELABEL, f"{ticket.id}|billing_question", user="U0AGENT1", select=True)
    [item] = await h.runtime.desk.relabelled()
    assert (item.item_id, item.record["corrected_intent"], item.record["agent"]) == \
        (ticket.id, "billing_question", "U0AGENT1")
    assert "billing_question (relabelled from unclassified)" in shown(await h.message(ticket.id))
    await h.click(RELABEL, f"{ticket.id}|billing_question", user="U0AGENT1", select=True)
    assert "already has that contact reason" in h.api.ephemerals("U0AGENT1")[-1]["text"]


# --- escalation ------------------------------------------------------------------------------
async def test_unclaimed_tickets_escalate_in_slack(make_harness, clock: Clock,
                                                   config: Config) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h, SECRET_WORDS)
    record = await h.note(ticket.id)
    sla = timedelta(minutes=config.queues["front_desk"].ack_sla_minutes)
    assert await sweep_at(h.runtime, clock, START + sla) == 1
    [renotify] = h.api.posts(thread=record.ts)
    assert renotify["reply_broadcast"] is True and "<@U0LEAD>" in renotify["text"]
    assert ticket.id in renotify["text"] and desk_url(h.runtime.config, ticket.id) \
        in renotify["text"]
    await h.sweep()
    assert "lane owner re-notified" in shown(await h.message(ticket.id))

    assert await sweep_at(h.runtime, clock, START + 2 * sla) == 1
    [backup] = h.api.posts(BACKUP)
    assert "<@U0ADMIN>" in backup["text"] and ticket.id in backup["text"]
    assert await sweep_at(h.runtime, clock, START + 3 * sla) == 1
    supervisor = h.api.posts(FRONT, top_level=True)[-1]
    assert "<!subteam^S0MANAGERS>" in supervisor["text"] and ticket.id in supervisor["text"]
    assert "swollen" not in h.api.everything()


async def test_the_owner_is_mentioned_when_a_promised_callback_is_due(
        make_harness, clock: Clock) -> None:
    h = await make_harness()
    ticket = await ticket_with(h.runtime, clock, callback_in=timedelta(hours=4))
    await h.sweep()
    await h.click(CLAIM, ticket.id, user="U0OWNER")
    assert await sweep_at(h.runtime, clock, START + timedelta(hours=4)) == 1
    record = await h.note(ticket.id)
    [alert] = h.api.posts(thread=record.ts)
    assert alert["text"].startswith(":alarm_clock: <@U0OWNER> ") and alert["reply_broadcast"]


async def test_a_failing_slack_leaves_the_note_to_the_next_round_and_fails_the_notice(
        make_harness, clock: Clock, config: Config) -> None:
    h = await make_harness()
    ticket = await hand_off(h.runtime)
    h.api.fail("chat.postMessage", "ratelimited")
    assert await h.sweep() == 1  # tried, failed, kept
    assert await h.slack.sync.record(ticket.id) is None
    assert await h.sweep() == 1
    assert len(h.api.posts()) == 1
    h.api.fail("chat.postMessage", "fatal_error")
    sla = timedelta(minutes=config.queues["front_desk"].ack_sla_minutes)
    assert await sweep_at(h.runtime, clock, START + sla) == 0  # retried after its lease
    assert (await h.runtime.store.get_ticket(ticket.id)).escalation_stage == 0


async def test_phi_capable_notes_show_the_allow_listed_fields_escaped_and_truncated(
        make_harness) -> None:
    h = await make_harness(phi=True, fields=["ticket", "summary", "reason", "desk_link"],
                           max_text_chars=200)
    long_text = HOSTILE + " " + "x" * 400
    ticket = await posted_ticket(h, long_text)
    note = await h.message(ticket.id)
    text = shown(note)
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text and "<@U0LEAD>" not in text
    sections = [b for b in note["blocks"] if b["type"] == "section"]
    assert [f["text"].split("\n")[0] for f in sections[1]["fields"]] == ["*Ticket*"]
    assert sections[2]["text"]["text"].startswith("*Patient wrote*\n")
    assert [f["text"].split("\n")[0] for f in sections[3]["fields"]] == ["*Reason*",
                                                                         "*Web desk*"]
    assert "Urgency" not in text and "Identity" not in text
    summary = sections[2]["text"]["text"]
    assert len(summary) <= 200 and "x" * 400 not in summary
    assert summary.endswith(f"… <{desk_url(h.runtime.config, ticket.id)}|full text in the web "
                            "desk>")


# --- Socket Mode -----------------------------------------------------------------------------
async def test_socket_mode_claims_over_the_websocket_without_an_http_route(
        config_dir: Path, settings: Settings, clock: Clock, slack_api: FakeSlackAPI) -> None:
    slack_api.socket = await FakeSocketMode().start()
    config = slack_config(config_dir, slack_api.base_url, phi=False, mode="socket")
    runtime = Runtime.build(config, replace(settings, secrets={
        "SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": APP_TOKEN}),
        decision_step=FrontDeskHandoff, clock=clock)
    try:
        assert runtime.slack is not None and runtime.slack.routes() == []
        await runtime.slack.start()
        await runtime.slack.start()  # idempotent
        assert len(slack_api.calls_of("apps.connections.open")) == 1
        ticket = await hand_off(runtime)
        await runtime.slack.sweep(force=True)
        record = await runtime.slack.sync.record(ticket.id)
        await slack_api.socket.push("interactive", action_payload(
            CLAIM, ticket.id, user="U0AGENT1", channel=record.channel, message_ts=record.ts))
        await runtime.slack.idle()
        assert (await runtime.store.get_ticket(ticket.id)).claimed_by == "U0AGENT1"
        note = slack_api.message(record.channel, record.ts)
        assert "Claimed* by <@U0AGENT1>" in shown(note)
    finally:
        await runtime.close()  # stops Slack too
        await runtime.slack.stop()  # idempotent
        await slack_api.socket.stop()


# --- answering Slack in time, and events processed exactly once ------------------------------
RETRY = {"x-slack-retry-num": "1", "x-slack-retry-reason": "http_timeout"}


async def until(check: Callable[[], Awaitable[bool]], *, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.01)


async def dispatch(h: Harness, body: str) -> None:
    """An event handed to the app as the endpoint hands it over once verified (so that a
    test can cancel it the way the request deadline does)."""
    await h.slack.app.async_dispatch(AsyncBoltRequest(
        body=body, headers={"content-type": "application/json"}))


class GatedSms(RecordingSms):
    """The SMS provider edge, whose sends wait while `gate` is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def send(self, message: Outbound) -> str | None:
        self.waiting += 1
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        return await super().send(message)


async def test_a_click_is_answered_at_once_and_worked_in_the_background(make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    record = await h.note(ticket.id)
    body = action_body(RESOLVE, f"{ticket.id}|resolved", user="U0AGENT1",
                       channel=record.channel, message_ts=record.ts, select=True)
    # The patient's own turn holds the conversation: resolving has to wait for it.
    async with h.runtime.store.lock(ticket.conversation_id, ttl=30, timeout=1):
        response = await asyncio.wait_for(h.send(body, FORM), 2)  # Slack allows 3 s
        assert response.status_code == 200
        assert (await h.runtime.store.get_ticket(ticket.id)).status is TicketStatus.OPEN
    await h.slack.idle()
    assert (await h.runtime.store.get_ticket(ticket.id)).status is TicketStatus.RESOLVED
    assert "Closed*: Resolved by <@U0AGENT1>" in shown(await h.message(ticket.id))


async def test_stop_cancels_background_work_that_does_not_finish_in_time(make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    record = await h.note(ticket.id)
    body = action_body(RETURN, ticket.id, user="U0AGENT1", channel=record.channel,
                       message_ts=record.ts)
    async with h.runtime.store.lock(ticket.conversation_id, ttl=30, timeout=1):
        assert (await h.send(body, FORM)).status_code == 200
        with capture_logs() as logs:
            await asyncio.wait_for(h.slack.stop(grace=0.1), 2)
        await asyncio.wait_for(h.slack.idle(), 1)  # nothing left running
    assert (await h.runtime.store.get_ticket(ticket.id)).status is TicketStatus.OPEN
    assert [e["event"] for e in logs] == ["slack background work cancelled at shutdown"]


async def test_a_reply_cut_short_by_the_request_deadline_is_sent_on_slacks_retry(
        make_harness) -> None:
    h = await make_harness(phi=True)
    ticket = await posted_ticket(h)
    await h.click(CLAIM, ticket.id, user="U0OWNER")
    record = await h.note(ticket.id)
    body = message_event("See you Friday", user="U0OWNER", channel=record.channel,
                         thread_ts=record.ts, event_id="Ev0CUT")
    before = len(await mailbox(h.runtime))

    async def marked() -> bool:
        return await h.runtime.store.kv_get(EVENT_NS, "Ev0CUT") is not None

    async with h.runtime.store.lock(ticket.conversation_id, ttl=30, timeout=1):
        first = asyncio.create_task(dispatch(h, body))
        await until(marked)
        # Slack's retry while the first attempt still runs: "not now", so Slack tries later.
        busy = await h.http.post("/slack/events", content=body, headers={
            **signed_headers(body, content_type="application/json"), **RETRY})
        assert busy.status_code == 503
        first.cancel()  # what the request deadline does
        with pytest.raises(asyncio.CancelledError):
            await first
    assert not await marked()
    assert len(await mailbox(h.runtime)) == before
    await h.reply(ticket.id, "See you Friday", user="U0OWNER", event_id="Ev0CUT", **RETRY)
    await h.reply(ticket.id, "See you Friday", user="U0OWNER", event_id="Ev0CUT", **RETRY)
    assert (await mailbox(h.runtime))[before:] == ["See you Friday"]


async def test_a_reply_committed_before_the_deadline_is_not_sent_again_on_retry(
        make_harness) -> None:
    h = await make_harness(phi=True)
    sms = GatedSms()
    h.runtime.channels.register(sms)
    await patient_writes(h.runtime, Inbound(channel="sms", sender="+16175550123",
                                            provider_message_id="SMin1", text="call me"))
    [ticket] = await h.runtime.desk.open_tickets("front_desk")
    await h.sweep()
    await h.click(CLAIM, ticket.id, user="U0OWNER")
    record = await h.note(ticket.id)
    body = message_event("We will call you at 2pm.", user="U0OWNER", channel=record.channel,
                         thread_ts=record.ts, event_id="Ev0SENT")
    sms.gate.clear()
    first = asyncio.create_task(dispatch(h, body))

    async def sending() -> bool:
        return sms.waiting == 1

    await until(sending)  # committed, being handed to the provider
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    sms.gate.set()
    await h.reply(ticket.id, "We will call you at 2pm.", user="U0OWNER", event_id="Ev0SENT",
                  **RETRY)
    stored = await h.runtime.store.get_ticket(ticket.id)
    assert [e.action for e in stored.history].count("reply") == 1
    replies = [e for e in await h.runtime.store.transcript(ticket.conversation_id)
               if e.actor == "agent:U0OWNER"]
    assert [e.text for e in replies] == ["We will call you at 2pm."]
    # Not sent twice: the outbox sends the committed reply once its lease ends.
    assert "We will call you at 2pm." not in [m.text for m in sms.sent]


# --- who may act -----------------------------------------------------------------------------
async def test_unsigned_or_unreadable_requests_are_refused_before_anything_is_parsed(
        make_harness) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    calls = len(h.api.calls)
    json_type = "application/json"
    unreadable = [(b"\xff\xfe{not utf-8", json_type), (b"{not json", json_type),
                  (b"[1, 2]", json_type), (b"null", json_type), (b"payload=%7Bnope", FORM),
                  (b"payload=%5B1%5D", FORM), (b"payload=\xff", FORM)]
    with capture_logs() as logs:
        for body, content_type in unreadable:
            unsigned = await h.http.post("/slack/events", content=body,
                                         headers={"content-type": content_type})
            assert unsigned.status_code == 401
            signed = await h.http.post("/slack/events", content=body, headers=signed_headers(
                body, content_type=content_type))
            # Slack signs UTF-8 only: bytes that are not cannot carry its signature.
            assert signed.status_code == (401 if b"\xff" in body else 400), body
        odd_stamp = {**signed_headers(b"{}", content_type="application/json"),
                     "x-slack-request-timestamp": "soon"}
        response = await h.http.post("/slack/events", content=b"{}", headers=odd_stamp)
        assert response.status_code == 401
    assert {e["log_level"] for e in logs} == {"warning"}
    assert {e["event"] for e in logs} == {"slack request refused"}
    stored = await h.runtime.store.get_ticket(ticket.id)
    assert (stored.status, stored.revision) == (TicketStatus.OPEN, 0)
    assert len(h.api.calls) == calls


async def test_people_from_other_workspaces_cannot_act_or_write_to_the_patient(
        make_harness) -> None:
    h = await make_harness(phi=True)
    ticket = await posted_ticket(h)
    with capture_logs() as logs:
        await h.click(CLAIM, ticket.id, user="U0GUEST", team="T0OTHER")
    assert (await h.runtime.store.get_ticket(ticket.id)).status is TicketStatus.OPEN
    assert "Only members of this workspace" in h.api.ephemerals("U0GUEST")[-1]["text"]
    [refused] = [e for e in logs if e["event"] == "slack user from another workspace refused"]
    assert (refused["user"], refused["team"], refused["log_level"]) == \
        ("U0GUEST", "T0OTHER", "warning")

    await h.click(CLAIM, ticket.id, user="U0OWNER")
    asked = len(h.api.calls_of("auth.test"))
    before = await mailbox(h.runtime)
    await h.reply(ticket.id, "From the other side", user="U0OWNER", event_id="Ev0EXT",
                  user_team="T0OTHER")
    assert await mailbox(h.runtime) == before
    told = h.api.ephemerals("U0OWNER")[-1]
    assert "Not sent to the patient" in told["text"] and "Only members" in told["text"]
    await h.reply(ticket.id, "From here", user="U0OWNER", event_id="Ev0OURS")
    assert (await mailbox(h.runtime))[len(before):] == ["From here"]
    assert len(h.api.calls_of("auth.test")) == asked  # our team is asked once, remembered


# --- notes that fail -------------------------------------------------------------------------
async def test_a_deleted_note_is_posted_anew_and_its_claimed_thread_keeps_relaying(
        make_harness) -> None:
    h = await make_harness(phi=True)
    ticket = await posted_ticket(h, "I need to move my physical")
    old = await h.note(ticket.id)
    h.api.delete(old.channel, old.ts)
    await h.click(CLAIM, ticket.id, user="U0OWNER")
    new = await h.note(ticket.id)
    assert new.ts != old.ts and new.channel == FRONT
    assert "Claimed* by <@U0OWNER>" in shown(await h.message(ticket.id))
    [relayed] = h.api.posts(thread=new.ts)
    assert "I need to move my physical" in relayed["text"]
    assert await h.slack.sync.ticket_for_thread(FRONT, new.ts) == ticket.id
    assert await h.sweep() == 0


async def test_an_unusable_lane_channel_falls_back_to_the_default_channel(
        make_harness, clock: Clock) -> None:
    h = await make_harness()
    h.api.archived.add(CLINIC)
    ticket = await ticket_with(h.runtime, clock, lane="clinical")
    with capture_logs() as logs:
        await h.sweep()
    record = await h.note(ticket.id)
    assert record.channel == FRONT and ticket.id in h.api.message(FRONT, record.ts)["text"]
    [warning] = [e for e in logs if e["log_level"] == "warning"]
    assert (warning["event"], warning["code"], warning["lane"]) == (
        "slack lane channel unusable; note posted in the default channel", "is_archived",
        "clinical")
    await h.click(CLAIM, ticket.id, user="U0AGENT1")  # and it keeps working there
    assert "Claimed* by <@U0AGENT1>" in shown(await h.message(ticket.id))


async def test_a_ticket_that_keeps_failing_backs_off_and_does_not_hold_up_the_others(
        make_harness, clock: Clock) -> None:
    h = await make_harness()
    h.api.archived.add(FRONT)  # the default channel: nowhere to fall back to
    stuck = await hand_off(h.runtime)
    other = await ticket_with(h.runtime, clock, lane="scheduling", patient="P1002")

    def tries() -> int:
        return len(h.api.calls_of("chat.postMessage", ok_only=False)) - len(h.api.posts())

    with capture_logs() as logs:
        await h.sweep()
        assert (await h.note(other.id)).channel == SCHED and tries() == 1
        for _ in range(3):
            await h.sweep()
        assert tries() == 1  # not every round: backing off
        for delay, expected in ((10, 2), (19, 2), (1, 3), (40, 4)):
            clock.now += timedelta(seconds=delay)
            await h.sweep()
            assert tries() == expected, delay
    warnings = [e for e in logs if e["event"] == "slack sync failed; retrying later"]
    assert [(e["code"], e["failures"], e["retry_in"]) for e in warnings] == [
        ("is_archived", 1, 10.0), ("is_archived", 2, 20.0), ("is_archived", 3, 40.0),
        ("is_archived", 4, 80.0)]
    assert not [e for e in logs if e["log_level"] in ("error", "critical")]
    h.api.archived.clear()
    clock.now += timedelta(seconds=80)
    await h.sweep()
    assert (await h.note(stuck.id)).channel == FRONT
    state = await h.runtime.store.kv_get(LIVE_NS, LIVE_ITEM)
    assert state["retry"] == {} and set(state["ids"]) == {stuck.id, other.id}


async def test_a_note_posted_in_a_round_cut_short_still_gets_its_final_update(
        make_harness, clock: Clock) -> None:
    h = await make_harness()
    first = await hand_off(h.runtime)
    second = await ticket_with(h.runtime, clock, lane="scheduling", patient="P1002")
    h.api.hold("chat.postMessage", after=1)
    sweep = asyncio.create_task(h.sweep())
    await h.api.held("chat.postMessage")
    sweep.cancel()  # the worker's deadline
    with pytest.raises(asyncio.CancelledError):
        await sweep
    h.api.release("chat.postMessage")
    assert await live_ids(h) == [first.id]
    await h.runtime.desk.resolve(first.id, "U0AGENT1", "resolved")
    await h.sweep()
    assert "Closed*: Resolved by <@U0AGENT1>" in shown(await h.message(first.id))
    assert (await h.note(second.id)).channel == SCHED
    assert await live_ids(h) == [second.id]


async def test_a_round_stops_at_its_time_budget_and_the_next_one_resumes_there(
        make_harness) -> None:
    h = await make_harness()
    tickets = [await hand_off(h.runtime, patient=patient)
               for patient in ("P1001", "P1002", "P1003")]
    h.slack.sync.round_budget = 0  # every round stops after its first ticket
    for done in range(1, 4):
        assert await h.sweep() == 1
        posted = [t.id for t in tickets if await h.slack.sync.record(t.id) is not None]
        assert len(posted) == done
    assert await h.sweep() == 0
    assert sorted(await live_ids(h)) == sorted(t.id for t in tickets)


async def test_an_escalation_notice_for_a_deleted_note_goes_to_the_lanes_channel(
        make_harness, clock: Clock, config: Config) -> None:
    h = await make_harness()
    ticket = await posted_ticket(h)
    record = await h.note(ticket.id)
    h.api.delete(record.channel, record.ts)
    h.api.fail("chat.postMessage", "thread_not_found")  # the thread went with its note
    sla = timedelta(minutes=config.queues["front_desk"].ack_sla_minutes)
    assert await sweep_at(h.runtime, clock, START + sla) == 1
    notice = h.api.posts(FRONT, top_level=True)[-1]
    assert "<@U0LEAD>" in notice["text"] and ticket.id in notice["text"]
