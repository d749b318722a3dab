"""Escalation notices by email over real SMTP (an aiosmtpd relay on a free port), real Redis
and the driven clock: who gets which step, what a notice may carry, and retries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
import yaml
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from structlog.testing import capture_logs

from bot.app.runtime import Runtime
from bot.config.loader import Config, load_config
from bot.config.settings import Settings
from bot.core.tickets import HandoffTicket, TimerKind
from bot.engine.decision import FrontDeskHandoff
from handoff.desk import desk_url
from handoff.email_notices import EmailNotifier, FanOutNotifier
from handoff.escalation import RecordingNotifier
from tests.conftest import free_port
from tests.integration.test_desk import hand_off
from tests.integration.test_email import Sink
from tests.integration.test_escalation import ticket_with
from tests.support.doubles import START, Clock

NOTICES_FROM = "patientbot@clinic.example"
STAFF = {"Front desk lead": "frontlead@clinic.example",
         "Practice administrator": "admin@clinic.example",
         "Practice manager": "manager@clinic.example"}
CANARY = "canary-Xq7 my knee hurts since the fall"
# The canary patient (tests/integration/conftest.py) and what must never leave in a notice.
PATIENT = "P9001"
PATIENT_DATA = ("Xq7", "knee", "Zebedee", "Quillfeather", "6175550199", "zebedee.quill",
                "1971-05-09")


@pytest.fixture
def backend() -> str:
    return "redis"


@pytest.fixture
def clock() -> Clock:
    return Clock(START)


@asynccontextmanager
async def relay(sink: Sink, **options) -> AsyncIterator[Sink]:
    """An aiosmtpd relay on `sink.port` for as long as the block runs."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(sink, hostname="relay.test", loop=loop, **options),
        "127.0.0.1", sink.port)
    try:
        yield sink
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    async with relay(Sink(port=free_port())) as running:
        yield running


def write_config(config_dir: Path, port: int, *, staff: dict[str, str] | None = None,
                 relay_username: str = "") -> Config:
    """Email notices on, through a relay at `port` (the patient email channel stays off)."""
    agents_path = config_dir / "agents.yml"
    agents = yaml.safe_load(agents_path.read_text())
    agents["email_notices"] = {"enabled": True, "from_address": NOTICES_FROM,
                               "staff": STAFF if staff is None else staff}
    agents_path.write_text(yaml.safe_dump(agents))
    channels_path = config_dir / "channels.yml"
    channels = yaml.safe_load(channels_path.read_text())
    channels["email"] = {**channels["email"], "relay_host": "127.0.0.1", "relay_port": port,
                         "relay_security": "none", "relay_timeout_seconds": 5,
                         "hostname": "clinic.example", "relay_username": relay_username}
    channels_path.write_text(yaml.safe_dump(channels))
    return load_config(config_dir)


@pytest.fixture
async def make_rt(config_dir: Path, settings: Settings, clock: Clock
                  ) -> AsyncIterator[Callable[..., Awaitable[Runtime]]]:
    async with AsyncExitStack() as stack:
        async def make(port: int, *, secrets: dict[str, str] | None = None,
                       **options) -> Runtime:
            runtime = Runtime.build(write_config(config_dir, port, **options),
                                    replace(settings, secrets=secrets or {}),
                                    decision_step=FrontDeskHandoff, clock=clock)
            stack.push_async_callback(runtime.close)
            return runtime

        yield make


async def sweep_at(runtime: Runtime, clock: Clock, at: datetime) -> int:
    clock.now = at
    return await runtime.escalations.sweep()


def mails(sink: Sink) -> list[tuple[list[str], EmailMessage, bytes]]:
    return [(rcpt, message_from_bytes(raw, policy=policy.default), raw)
            for _, rcpt, raw in sink.received]


def field(body: str, label: str) -> str:
    """One `Label: value` line of a notice."""
    [value] = [line.split(":", 1)[1].strip() for line in body.splitlines()
               if line.startswith(f"{label}:")]
    return value


def assert_minimum_necessary(raw: bytes, message: EmailMessage) -> None:
    text = raw.decode("utf-8", "replace") + message.get_content() + str(message["Subject"])
    for secret in PATIENT_DATA:
        assert secret.lower() not in text.lower(), secret


async def canary_ticket(runtime: Runtime) -> HandoffTicket:
    ticket = await hand_off(runtime, CANARY, patient=PATIENT)
    assert "Xq7" in ticket.note.summary  # the notifier had the patient's words at hand
    return ticket


async def test_an_unclaimed_ticket_mails_the_owner_then_the_backup_then_the_supervisor(
        make_rt, sink: Sink, clock: Clock) -> None:
    rt = await make_rt(sink.port)
    assert isinstance(rt.escalations.notifier, EmailNotifier)  # no Slack: email alone
    ticket = await canary_ticket(rt)
    queue = rt.config.queues["front_desk"]
    sla = timedelta(minutes=queue.ack_sla_minutes)
    for step in (1, 2, 3):
        assert await sweep_at(rt, clock, START + step * sla - timedelta(seconds=1)) == 0
        assert await sweep_at(rt, clock, START + step * sla) == 1
        assert await sweep_at(rt, clock, START + step * sla) == 0  # fired once
        assert len(sink.received) == step
    assert await sweep_at(rt, clock, START + timedelta(days=3)) == 0

    got = mails(sink)
    assert [rcpt for rcpt, _, _ in got] == [[STAFF[queue.owner]], [STAFF[queue.backup_owner]],
                                            [STAFF[queue.supervisor]]]
    assert {envelope_from for envelope_from, _, _ in sink.received} == {NOTICES_FROM}
    steps = ("lane owner re-notified (step 1 of 3)", "backup owner notified (step 2 of 3)",
             "supervisor notified (step 3 of 3)")
    for (_, message, raw), step, waited in zip(got, steps, ("30 min", "1 h 00 min",
                                                            "1 h 30 min"), strict=True):
        body = message.get_content()
        # (Python folds a long subject starting with "[" onto its own line: unfolded, the
        # value keeps a leading space.)
        assert str(message["Subject"]).strip().startswith("[patientbot] ")
        assert ticket.id in message["Subject"] and ticket.id in body
        assert desk_url(rt.config, ticket.id) in body
        assert field(body, "Escalation") == step and field(body, "Waiting") == waited
        assert field(body, "Lane") == "Front desk" and field(body, "Urgency") == "normal"
        assert field(body, "Open it") == desk_url(rt.config, ticket.id)
        assert message["Auto-Submitted"] == "auto-generated"
        assert message["Message-ID"].endswith("@clinic.example>")
        assert message.get_content_type() == "text/plain"
        assert_minimum_necessary(raw, message)
    assert len({message["Message-ID"] for _, message, _ in got}) == 3


async def test_a_role_without_an_address_is_skipped_and_the_step_still_recorded(
        make_rt, sink: Sink, clock: Clock) -> None:
    staff = {role: address for role, address in STAFF.items()
             if role != "Practice administrator"}
    rt = await make_rt(sink.port, staff=staff)
    ticket = await canary_ticket(rt)
    sla = timedelta(minutes=rt.config.queues["front_desk"].ack_sla_minutes)
    assert await sweep_at(rt, clock, START + sla) == 1
    with capture_logs() as logs:
        assert await sweep_at(rt, clock, START + 2 * sla) == 1  # no exception, no retry
    [skipped] = [e for e in logs if e["event"].startswith("email notice skipped")]
    assert (skipped["role"], skipped["ticket"]) == ("Practice administrator", ticket.id)
    assert await sweep_at(rt, clock, START + 3 * sla) == 1
    assert [rcpt for rcpt, _, _ in mails(sink)] == [[STAFF["Front desk lead"]],
                                                    [STAFF["Practice manager"]]]
    stored = await rt.store.get_ticket(ticket.id)
    assert [e.action for e in stored.history] == [
        "escalation.renotify", "escalation.backup", "escalation.supervisor"]


async def test_a_relay_that_is_down_leaves_the_step_to_fire_again_after_its_lease(
        make_rt, clock: Clock) -> None:
    down = Sink(port=free_port())  # nothing listens there yet
    rt = await make_rt(down.port)
    ticket = await canary_ticket(rt)
    due = START + timedelta(minutes=rt.config.queues["front_desk"].ack_sla_minutes)
    assert await sweep_at(rt, clock, due) == 0  # not fired: nothing recorded
    assert (await rt.store.get_ticket(ticket.id)).history == []
    async with relay(down):
        assert await sweep_at(rt, clock, due + timedelta(seconds=1)) == 0  # still leased
        lease = timedelta(seconds=rt.config.escalation.timer_lease_seconds)
        assert await sweep_at(rt, clock, due + lease) == 1
        assert await sweep_at(rt, clock, due + lease) == 0
    [(rcpt, message, _)] = mails(down)
    assert rcpt == [STAFF["Front desk lead"]] and ticket.id in message.get_content()
    assert [e.action for e in (await rt.store.get_ticket(ticket.id)).history] == \
        ["escalation.renotify"]


async def test_a_recipient_refused_for_good_is_not_retried(make_rt, sink: Sink,
                                                           clock: Clock) -> None:
    rt = await make_rt(sink.port)
    ticket = await canary_ticket(rt)
    sink.rcpt_reply = "550 5.1.1 No such user"
    due = START + timedelta(minutes=rt.config.queues["front_desk"].ack_sla_minutes)
    assert await sweep_at(rt, clock, due) == 1  # retrying would be refused again
    assert sink.received == []
    assert (await rt.store.get_ticket(ticket.id)).escalation_stage == 1


async def test_fan_out_gives_each_notifier_the_step_and_retries_all_if_one_failed(
        make_rt, clock: Clock) -> None:
    down = Sink(port=free_port())
    rt = await make_rt(down.port)
    recording = RecordingNotifier()
    rt.escalations.notifier = FanOutNotifier(recording, rt.escalations.notifier)
    ticket = await canary_ticket(rt)
    due = START + timedelta(minutes=rt.config.queues["front_desk"].ack_sla_minutes)
    assert await sweep_at(rt, clock, due) == 0  # email failed: the step is retried ...
    assert [n.kind for n in recording.sent] == [TimerKind.RENOTIFY]  # ... the other was told
    lease = timedelta(seconds=rt.config.escalation.timer_lease_seconds)
    async with relay(down):
        assert await sweep_at(rt, clock, due + lease) == 1
    # At least once: the notifier that had succeeded is called again with the retry.
    assert [(n.kind, n.ticket_id, n.to) for n in recording.sent] == \
        [(TimerKind.RENOTIFY, ticket.id, "Front desk lead")] * 2
    assert [rcpt for _, rcpt, _ in down.received] == [[STAFF["Front desk lead"]]]


async def test_the_callback_warning_for_a_claimed_ticket_goes_to_the_lane_owner_address(
        make_rt, sink: Sink, clock: Clock) -> None:
    rt = await make_rt(sink.port)
    ticket = await ticket_with(rt, clock, callback_in=timedelta(hours=4))
    clock.now = START + timedelta(minutes=10)
    assert (await rt.desk.claim(ticket.id, "amy")).ok  # a desk account: no address of its own
    assert await sweep_at(rt, clock, START + timedelta(hours=4)) == 1
    [(rcpt, message, _)] = mails(sink)
    assert rcpt == [STAFF["Front desk lead"]]
    body = message.get_content()
    assert str(message["Subject"]).strip() == \
        f"[patientbot] Callback due soon: ticket {ticket.id}"
    assert field(body, "Claimed by") == "amy"
    assert field(body, "Callback due") == "2025-03-11 14:00 (America/New_York)"
    assert (await rt.store.get_ticket(ticket.id)).history[-1].detail == "amy"


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
async def test_the_relay_login_uses_smtp_password(make_rt, clock: Clock) -> None:
    logins: list[tuple[bytes, bytes]] = []

    def authenticator(server, session, envelope, mechanism, auth_data) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"relay-secret")

    guarded = Sink(port=free_port())
    async with relay(guarded, authenticator=authenticator, auth_require_tls=False,
                     auth_required=True):
        rt = await make_rt(guarded.port, relay_username="notices",
                           secrets={"SMTP_PASSWORD": "relay-secret"})
        await canary_ticket(rt)
        due = START + timedelta(minutes=rt.config.queues["front_desk"].ack_sla_minutes)
        assert await sweep_at(rt, clock, due) == 1
    assert logins == [(b"notices", b"relay-secret")]
    assert len(guarded.received) == 1


async def test_runtime_wiring_picks_the_notifiers(make_rt, config_dir: Path,
                                                  settings: Settings, clock: Clock) -> None:
    assert isinstance(Runtime.build(load_config(config_dir), settings, clock=clock,
                                    decision_step=FrontDeskHandoff).escalations.notifier,
                      RecordingNotifier)  # neither Slack nor email: the default
    agents = config_dir / "agents.yml"
    data = yaml.safe_load(agents.read_text())
    data["slack"].update(enabled=True, default_channel="C0FRONT01")
    agents.write_text(yaml.safe_dump(data))
    rt = await make_rt(free_port(), secrets={"SLACK_BOT_TOKEN": "xoxb-1-2-abc",
                                             "SLACK_SIGNING_SECRET": "f" * 32})
    notifier = rt.escalations.notifier
    assert isinstance(notifier, FanOutNotifier)
    assert notifier.notifiers[0] is rt.slack.notifier
    assert isinstance(notifier.notifiers[1], EmailNotifier)
