"""The email channel over real SMTP both ways, real Redis and real workers.

Patients' mail reaches our listener from aiosmtplib; our replies go through the configured
relay, here an aiosmtpd sink on a free port. IMAP mode polls a real Dovecot (Debian's
dovecot-imapd, run as a subprocess with a private config).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from email import message_from_bytes, policy
from email.message import EmailMessage, Message
from pathlib import Path

import aioimaplib
import aiosmtplib
import pytest
import yaml
from aiosmtpd.smtp import SMTP

from bot.app.runtime import Runtime
from bot.app.web import create_app
from bot.config.loader import load_config
from bot.config.settings import Settings
from bot.core.envelopes import Inbound, Outbound
from bot.core.session import Direction
from bot.engine.decision import FrontDeskHandoff
from bot.messaging.delivery import ChannelSendError
from bot.ops import metrics
from bot.ops.logs import configure_logging
from channels.email.adapter import EmailChannel, Outcome
from tests.conftest import free_port, run_workers_until

HELP = "help@clinic.example"
OURS = "mx.clinic.example"
RECORDED: list[Inbound] = []
FOLLOW_UP = "Thanks, we have added this to your request."


@pytest.fixture
def backend() -> str:
    return "redis"  # the email channel's state (threads, rate limits) lives in the store


@pytest.fixture(autouse=True)
def _clear_recorded() -> None:
    RECORDED.clear()


class RecordingStep:
    """The foundation step (front-desk handoff) that remembers what it was given and answers
    every message, so each patient message gets a reply to check threading on."""

    def __init__(self, config) -> None:
        self._inner = FrontDeskHandoff(config)

    async def decide(self, inbound, session, *, now):
        RECORDED.append(inbound)
        decision = await self._inner.decide(inbound, session, now=now)
        return decision if decision.replies else replace(decision, replies=(FOLLOW_UP,))


# --- the relay sink ------------------------------------------------------------------------
@dataclass
class Sink:
    """The SMTP relay our replies go to: aiosmtpd on a free port, keeping what it got."""

    port: int = 0
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    rcpt_reply: str | None = None  # to refuse recipients

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos),
                              bytes(envelope.original_content or envelope.content)))
        return "250 OK"

    def message(self, index: int) -> Message:
        return message_from_bytes(self.received[index][2], policy=policy.default)

    def count(self, n: int) -> Callable[[], Awaitable[bool]]:
        async def done() -> bool:
            return len(self.received) >= n
        return done


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    handler = Sink(port=free_port())
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="relay.test", loop=loop, enable_SMTPUTF8=True),
        "127.0.0.1", handler.port)
    yield handler
    server.close()
    await server.wait_closed()


# --- our bot -------------------------------------------------------------------------------
@dataclass
class Bot:
    runtime: Runtime
    channel: EmailChannel
    port: int

    def conversation(self, sender: str) -> str:
        return self.runtime.ingress.conversation_key("email", sender).id

    async def inbound_texts(self, sender: str) -> list[str]:
        return [e.text for e in await self.runtime.store.transcript(self.conversation(sender))
                if e.direction is Direction.IN]

    def transcript_has(self, sender: str, count: int) -> Callable[[], Awaitable[bool]]:
        async def done() -> bool:
            return len(await self.inbound_texts(sender)) >= count
        return done


def write_channels(config_dir: Path, email: dict, limits: dict | None = None) -> None:
    path = config_dir / "channels.yml"
    data = yaml.safe_load(path.read_text())
    data["email"] = email
    if limits:
        data["limits"] = {**data.get("limits", {}), **limits}
    path.write_text(yaml.safe_dump(data))


@pytest.fixture
async def make_bot(config_dir: Path, settings: Settings,
                   sink: Sink) -> AsyncIterator[Callable[..., Awaitable[Bot]]]:
    async with AsyncExitStack() as stack:
        async def make(*, start: bool = True, limits: dict | None = None,
                       secrets: dict[str, str] | None = None, **overrides) -> Bot:
            port = free_port()
            email = {"enabled": True, "listen_port": port, "recipients": [HELP],
                     "from_address": HELP, "from_name": "Riverside Family Clinic",
                     "hostname": "clinic.example", "authserv_id": OURS,
                     "relay_host": "127.0.0.1", "relay_port": sink.port,
                     "relay_security": "none", "relay_timeout_seconds": 5, **overrides}
            write_channels(config_dir, email, limits)
            runtime = Runtime.build(load_config(config_dir),
                                    replace(settings, secrets=secrets or {}),
                                    decision_step=RecordingStep)
            stack.push_async_callback(runtime.close)
            [channel] = [c for c in runtime.patient_channels if c.name == "email"]
            assert isinstance(channel, EmailChannel)
            if start:
                await channel.start()
            return Bot(runtime, channel, port)

        yield make


@pytest.fixture
async def bot(make_bot) -> Bot:
    return await make_bot()


# --- mail -----------------------------------------------------------------------------------
def mail(body: str = "Can I move my visit to Friday?", *, subject: str = "Question about my visit",
         sender: str = "Anna Example <anna@example.org>", message_id: str = "<m1@example.org>",
         extra: dict[str, str] | None = None, subtype: str = "plain") -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = HELP
    message["Subject"] = subject
    if message_id:
        message["Message-ID"] = message_id
    for name, value in (extra or {}).items():
        message[name] = value
    message.set_content(body, subtype=subtype)
    return message


async def deliver(port: int, message: EmailMessage | bytes, *, sender: str = "anna@example.org",
                  recipients: tuple[str, ...] = (HELP,)) -> int:
    """Send like an MTA would; the SMTP code of the outcome."""
    try:
        await aiosmtplib.send(message, sender=sender, recipients=list(recipients),
                              hostname="127.0.0.1", port=port, start_tls=False,
                              local_hostname="mta.test", timeout=10)
    except aiosmtplib.SMTPRecipientsRefused as err:
        return err.recipients[0].code
    except aiosmtplib.SMTPResponseException as err:
        return err.code
    return 250


def counter(metric, **labels) -> float:
    return metric.labels(**labels)._value.get()


# --- the conversation ------------------------------------------------------------------------
async def test_reply_is_threaded_and_the_patients_answer_continues_the_conversation(
        bot: Bot, sink: Sink) -> None:
    config = bot.runtime.config
    assert await deliver(bot.port, mail()) == 250
    await run_workers_until(bot.runtime, sink.count(1))

    mail_from, recipients, _ = sink.received[0]
    assert (mail_from, recipients) == (HELP, ["anna@example.org"])
    reply = sink.message(0)
    assert reply["From"] == f"Riverside Family Clinic <{HELP}>"
    assert reply["To"] == "anna@example.org"
    assert reply["Subject"] == "Re: Question about my visit"
    assert reply["In-Reply-To"] == "<m1@example.org>"
    assert reply["References"] == "<m1@example.org>"
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["Message-ID"].endswith("@clinic.example>")
    assert not reply.is_multipart()
    assert reply.get_content().strip() == config.text("handoff_ack").strip()

    # The patient answers our reply, quoting it, from the same address.
    answer = mail(f"Friday morning please.\n\nOn Mon, 5 Jan 2026, Riverside Family Clinic "
                  f"<{HELP}> wrote:\n> {config.text('handoff_ack')}",
                  subject="Re: Question about my visit", message_id="<m2@example.org>",
                  extra={"In-Reply-To": reply["Message-ID"],
                         "References": f"<m1@example.org> {reply['Message-ID']}"})
    assert await deliver(bot.port, answer) == 250
    await run_workers_until(bot.runtime, sink.count(2))

    sender = "unverified:anna@example.org"  # no Authentication-Results from our MTA
    texts = await bot.inbound_texts(sender)
    assert texts[0] == "Question about my visit\n\nCan I move my visit to Friday?"
    assert texts[1].startswith("Friday morning please.") and "> " in texts[1]
    assert [i.sender for i in RECORDED] == [sender, sender]
    assert len(await bot.runtime.store.tickets_in_lane("front_desk")) == 1  # one handoff

    second = sink.message(1)
    assert second["Subject"] == "Re: Question about my visit"
    assert second["In-Reply-To"] == "<m2@example.org>"
    assert second["References"] == f"<m1@example.org> {reply['Message-ID']} <m2@example.org>"
    assert second.get_content().strip() == FOLLOW_UP


async def test_the_listener_runs_under_the_app_lifespan(config_dir: Path, settings: Settings,
                                                        sink: Sink) -> None:
    port = free_port()
    write_channels(config_dir, {"enabled": True, "listen_port": port, "recipients": [HELP],
                                "from_address": HELP, "relay_port": sink.port,
                                "relay_security": "none"})
    runtime = Runtime.build(load_config(config_dir), settings, decision_step=RecordingStep)
    app = create_app(runtime, workers=1)
    async with app.router.lifespan_context(app):
        assert await deliver(port, mail()) == 250
        for _ in range(300):
            if sink.received:
                break
            await asyncio.sleep(0.02)
        assert sink.message(0)["In-Reply-To"] == "<m1@example.org>"
    with pytest.raises(OSError):  # stopped with the app
        await asyncio.open_connection("127.0.0.1", port)
    await runtime.channels.get("email").stop()  # idempotent


# --- what the listener refuses ----------------------------------------------------------------
async def test_size_limit_and_unknown_recipients_are_refused(make_bot) -> None:
    bot = await make_bot(max_message_bytes=20_000)
    queued = counter(metrics.MESSAGES_IN, channel="email")
    assert await deliver(bot.port, mail("x" * 40_000)) == 552
    assert await deliver(bot.port, mail(), recipients=("someone@else.example",)) == 550
    assert await deliver(bot.port, mail(message_id="<ok@example.org>"),
                         recipients=("HELP@Clinic.Example",)) == 250
    assert counter(metrics.MESSAGES_IN, channel="email") == queued + 1


def nested(depth: int) -> bytes:
    head = (b"From: anna@example.org\r\nTo: help@clinic.example\r\nSubject: x\r\n"
            b"Message-ID: <deep@example.org>\r\nMIME-Version: 1.0\r\n")
    body = b"Content-Type: text/plain\r\n\r\ndeep\r\n"
    for level in range(depth):
        boundary = f"b{level}".encode()
        body = (b"Content-Type: multipart/mixed; boundary=" + boundary + b"\r\n\r\n--" +
                boundary + b"\r\n" + body + b"\r\n--" + boundary + b"--\r\n")
    return head + body


async def test_too_deep_or_too_many_parts_is_refused(make_bot) -> None:
    bot = await make_bot(max_depth=3, max_parts=10)
    queued = counter(metrics.MESSAGES_IN, channel="email")
    assert await deliver(bot.port, nested(4)) == 554
    many = mail(message_id="<many@example.org>")
    for index in range(10):
        many.add_attachment(b"x", maintype="application", subtype="octet-stream",
                            filename=f"f{index}.bin")
    assert await deliver(bot.port, many) == 554
    assert await deliver(bot.port, b"\x00\x01 not a message\r\n") == 550
    assert await deliver(bot.port, nested(3)) == 250  # at the limit: fine
    assert counter(metrics.MESSAGES_IN, channel="email") == queued + 1


async def test_automated_mail_is_accepted_but_never_answered(bot: Bot, sink: Sink) -> None:
    ignored = counter(metrics.MESSAGES_REJECTED, channel="email", reason="auto_submitted")
    automated = [
        (mail(message_id="<a1@x>", extra={"Auto-Submitted": "auto-replied"}), "anna@example.org"),
        (mail(message_id="<a2@x>", extra={"Precedence": "bulk"}), "anna@example.org"),
        (mail(message_id="<a3@x>", extra={"List-Id": "<news.example.org>"}), "list@x.org"),
        (mail(message_id="<a4@x>", sender="MAILER-DAEMON@example.org"), "mailer-daemon@x.org"),
        (mail(message_id="<a5@x>"), ""),  # MAIL FROM:<> - a bounce
        (mail(message_id="<a6@x>", sender=f"Clinic <{HELP}>"), HELP),  # our own reply
    ]
    for message, envelope_sender in automated:
        assert await deliver(bot.port, message, sender=envelope_sender) == 250
    assert counter(metrics.MESSAGES_REJECTED, channel="email",
                   reason="auto_submitted") == ignored + len(automated)
    # A person's message afterwards is the only thing the workers see and answer.
    assert await deliver(bot.port, mail(message_id="<person@x>",
                                        extra={"Auto-Submitted": "no"})) == 250
    await run_workers_until(bot.runtime, sink.count(1))
    await asyncio.sleep(0.2)
    assert [i.provider_message_id for i in RECORDED] == ["<person@x>"]
    assert len(sink.received) == 1


# --- content ----------------------------------------------------------------------------------
async def test_html_only_mail_is_read_as_text(bot: Bot, sink: Sink) -> None:
    html = ("<html><head><style>p{color:red}</style><script>steal()</script></head><body>"
            "<p>I need a refill &amp; a callback</p><div>Thanks<br>Anna</div>"
            "<img src='http://tracker.example/pixel.gif'></body></html>")
    assert await deliver(bot.port, mail(html, subject="Re: refill", subtype="html")) == 250
    await run_workers_until(bot.runtime, sink.count(1))
    [text] = await bot.inbound_texts("unverified:anna@example.org")
    assert text == "I need a refill & a callback\n\nThanks\nAnna"


async def test_attachments_are_never_forwarded_and_the_note_mentions_them(bot: Bot,
                                                                          sink: Sink) -> None:
    message = mail("Here is my referral letter.", subject="Referral")
    message.add_attachment(b"%PDF-1.4 ATTACHED-SECRET " * 40, maintype="application",
                           subtype="pdf", filename="referral.pdf")
    message.add_attachment(b"\x89PNG ATTACHED-SECRET" + bytes(80), maintype="image",
                           subtype="png", filename="photo.png")
    assert await deliver(bot.port, message) == 250
    await run_workers_until(bot.runtime, sink.count(1))

    _, _, raw = sink.received[0]
    reply = sink.message(0)
    assert not reply.is_multipart() and reply.get_content_type() == "text/plain"
    assert b"ATTACHED-SECRET" not in raw and b"referral.pdf" not in raw
    [inbound] = RECORDED
    assert [(a.content_type, a.size) for a in inbound.attachments] == [
        ("application/pdf", 25 * 40), ("image/png", 100)]
    assert "ATTACHED-SECRET" not in inbound.text
    [ticket] = await bot.runtime.store.tickets_in_lane("front_desk")
    assert ticket.note.action_taken.endswith(
        "; 2 attachments not opened (application/pdf 1000 bytes, image/png 100 bytes)")
    events = [e.text for e in await bot.runtime.store.transcript(
        bot.conversation("unverified:anna@example.org")) if e.direction is Direction.EVENT]
    assert "attachments_not_opened:2" in events


async def test_invalid_charset_bytes_are_replaced_not_refused(bot: Bot, sink: Sink) -> None:
    raw = (b"From: anna@example.org\r\nTo: help@clinic.example\r\nSubject: Re: x\r\n"
           b"Message-ID: <cs1@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           b"bad \xff\xfe bytes\r\n")
    unknown = (b"From: anna@example.org\r\nTo: help@clinic.example\r\nSubject: Re: x\r\n"
               b"Message-ID: <cs2@example.org>\r\nMIME-Version: 1.0\r\n"
               b"Content-Type: text/plain; charset=x-no-such-charset\r\n"
               b"Content-Transfer-Encoding: 8bit\r\n\r\ncaf\xc3\xa9 ok\r\n")
    assert await deliver(bot.port, raw) == 250
    assert await deliver(bot.port, unknown) == 250
    sender = "unverified:anna@example.org"
    await run_workers_until(bot.runtime, bot.transcript_has(sender, 2))
    assert await bot.inbound_texts(sender) == ["bad \ufffd\ufffd bytes", "caf\u00e9 ok"]


async def test_line_breaks_in_names_and_subjects_cannot_inject_headers(bot: Bot,
                                                                       sink: Sink) -> None:
    raw = (b"From: =?utf-8?q?Anna=0D=0ABcc:_x@evil.example?= <anna@example.org>\r\n"
           b"To: help@clinic.example\r\n"
           b"Subject: =?utf-8?q?Hello=0D=0ABcc:_victim@evil.example=E2=80=A8X-Evil:_1?=\r\n"
           b"Message-ID: <inj@example.org>\r\n\r\nhello\r\n")
    assert await deliver(bot.port, raw) == 250  # the name is never used; the address is
    await run_workers_until(bot.runtime, sink.count(1))
    _, recipients, data = sink.received[0]
    assert recipients == ["anna@example.org"]
    reply = sink.message(0)
    assert reply.get_all("Bcc") is None and reply.get_all("X-Evil") is None
    assert reply["Subject"] == "Re: Hello Bcc: victim@evil.example X-Evil: 1"
    assert reply["To"] == "anna@example.org"
    header_lines = data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert all(line[:1] in (b" ", b"\t") or b":" in line for line in header_lines)
    assert not any(line.lower().startswith((b"bcc", b"x-evil")) for line in header_lines)


# --- identity ---------------------------------------------------------------------------------
async def test_only_our_own_authentication_results_verify_a_sender(bot: Bot, sink: Sink) -> None:
    forged = mail(message_id="<f1@example.org>", extra={
        "Authentication-Results": "mx.attacker.example; dkim=pass header.d=example.org; "
                                  "dmarc=pass header.from=example.org"})
    genuine = mail(message_id="<g1@example.org>", sender="Bob <bob@example.org>", extra={
        "Authentication-Results": f"{OURS}; dkim=pass header.d=example.org; spf=pass "
                                  "smtp.mailfrom=example.org; dmarc=pass header.from=example.org"})
    assert await deliver(bot.port, forged) == 250
    assert await deliver(bot.port, genuine, sender="bob@example.org") == 250
    await run_workers_until(bot.runtime, sink.count(2))
    by_id = {i.provider_message_id: i for i in RECORDED}
    assert by_id["<f1@example.org>"].sender == "unverified:anna@example.org"
    assert by_id["<f1@example.org>"].auth_results == ""
    assert by_id["<g1@example.org>"].sender == "bob@example.org"
    assert by_id["<g1@example.org>"].auth_results == "dkim=pass spf=pass dmarc=pass"
    assert sorted(r for _, rcpts, _ in sink.received for r in rcpts) == [
        "anna@example.org", "bob@example.org"]


# --- flood and failures -----------------------------------------------------------------------
async def test_a_flood_from_one_address_is_limited(bot: Bot) -> None:
    per_minute = bot.runtime.config.channels.limits.per_sender_per_minute
    started = time.monotonic()
    codes = [await deliver(bot.port, mail(f"message {n}", message_id=f"<flood{n}@example.org>"))
             for n in range(100)]
    accepted, refused = codes.count(250), codes.count(451)
    assert accepted + refused == 100
    assert accepted == per_minute
    assert codes[per_minute:] == [451] * (100 - per_minute)  # 451: the sender retries later
    assert time.monotonic() - started < 15


async def test_no_queue_no_acknowledgement(bot: Bot) -> None:
    class BrokenStore:
        def __getattr__(self, name):
            async def fail(*args, **kwargs):
                raise ConnectionError("store down")
            return fail

    broken = EmailChannel(bot.runtime.config, intake=bot.runtime.intake, store=BrokenStore(),
                          hasher=bot.runtime.settings.keys.hasher, secrets={})
    received = await broken.receive(mail().as_bytes(), envelope_sender="anna@example.org")
    assert received.outcome is Outcome.FAILED and received.reply.startswith("451 4.")


async def test_send_errors_say_whether_to_retry(bot: Bot, sink: Sink) -> None:
    outbound = Outbound(conversation_id="email:x", channel="email",
                        recipient="unverified:anna@example.org", text="hello")
    sink.rcpt_reply = "550 5.1.1 No such user"
    with pytest.raises(ChannelSendError) as refused:
        await bot.channel.send(outbound)
    assert refused.value.retryable is False and "anna" not in str(refused.value)
    sink.rcpt_reply = "451 4.3.0 Try again later"
    with pytest.raises(ChannelSendError) as later:
        await bot.channel.send(outbound)
    assert later.value.retryable is True
    sink.rcpt_reply = None
    message_id = await bot.channel.send(outbound)
    assert message_id == sink.message(0)["Message-ID"]
    assert sink.message(0)["Subject"] == f"Your message to {bot.runtime.config.app.organisation}"
    with pytest.raises(ChannelSendError) as bad:
        await bot.channel.send(replace(outbound, recipient="anna@example.org\r\nBcc: x@y.org"))
    assert bad.value.retryable is False


async def test_an_unreachable_relay_is_retryable(make_bot) -> None:
    bot = await make_bot(relay_port=free_port())  # nothing listens there
    outbound = Outbound(conversation_id="email:x", channel="email",
                        recipient="anna@example.org", text="hello")
    with pytest.raises(ChannelSendError) as caught:
        await bot.channel.send(outbound)
    assert caught.value.retryable is True


# --- PHI in logs ------------------------------------------------------------------------------
async def test_no_addresses_or_text_in_logs(bot: Bot, sink: Sink, capsys,
                                            caplog: pytest.LogCaptureFixture) -> None:
    configure_logging(production=True)
    caplog.set_level(logging.DEBUG)
    canary = mail("CANARY-5521 my knee still hurts", subject="CANARY-SUBJECT",
                  sender="Zebedee Quillfeather <zebedee.quill@example.org>",
                  message_id="<canary-id@example.org>")
    assert await deliver(bot.port, canary, sender="zebedee.quill@example.org") == 250
    assert await deliver(bot.port, canary, sender="zebedee.quill@example.org",
                         recipients=("zebedee.quill@else.example",)) == 550
    await run_workers_until(bot.runtime, sink.count(1))
    out = capsys.readouterr()
    logs = (out.err + out.out + caplog.text).lower()
    assert "email" in logs  # the channel did log (codes)
    for needle in ("zebedee", "quill", "canary", "knee"):
        assert needle not in logs, needle


# --- IMAP mode against a real Dovecot ---------------------------------------------------------
DOVECOT = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/sbin")


@dataclass
class Imap:
    port: int
    user: str = "bot"
    password: str = "imap-test-password"

    async def client(self) -> aioimaplib.IMAP4:
        client = aioimaplib.IMAP4("127.0.0.1", self.port, timeout=5)
        await client.wait_hello_from_server()
        assert (await client.login(self.user, self.password)).result == "OK"
        return client

    async def append(self, *messages: EmailMessage | bytes) -> None:
        client = await self.client()
        for message in messages:
            raw = message if isinstance(message, bytes) else message.as_bytes()
            assert (await client.append(raw, mailbox="INBOX")).result == "OK"
        await client.logout()

    async def search(self, criterion: str) -> list[int]:
        client = await self.client()
        await client.select("INBOX")
        found = await client.uid_search(criterion, charset=None)
        await client.logout()
        return [int(uid) for uid in found.lines[0].split()]


def _dovecot_users() -> tuple[int, int] | None:
    try:
        pwd.getpwnam("dovenull")
        user = pwd.getpwnam("dovecot")
    except KeyError:
        return None
    return user.pw_uid, user.pw_gid


@pytest.fixture
def dovecot() -> Iterator[Imap]:
    users = _dovecot_users()
    if DOVECOT is None or users is None or os.geteuid() != 0:
        message = "needs Debian's dovecot-imapd and root (scripts/ensure-dovecot.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    uid, gid = users
    imap = Imap(port=free_port())
    root = Path(tempfile.mkdtemp(prefix="pb-dovecot-", dir="/tmp"))
    root.chmod(0o755)
    (root / "run").mkdir()
    (root / "mail").mkdir()
    os.chown(root / "mail", uid, gid)
    (root / "passwd").write_text(
        f"{imap.user}:{{PLAIN}}{imap.password}:{uid}:{gid}::{root}/mail\n")
    (root / "dovecot.conf").write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/run
instance_name = pb-dovecot-{imap.port}
log_path = {root}/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{root}/mail/Maildir
default_internal_user = dovecot
default_internal_group = dovecot
default_login_user = dovenull
first_valid_uid = {uid}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")
    process = subprocess.Popen([DOVECOT, "-F", "-c", str(root / "dovecot.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", imap.port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = root / "dovecot.log"
                    raise RuntimeError("dovecot did not start: " +
                                       (log.read_text()[-2000:] if log.exists() else "")) from None
                time.sleep(0.05)
        yield imap
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(root, ignore_errors=True)


async def test_imap_polling_marks_seen_only_what_was_queued(make_bot, dovecot: Imap,
                                                            sink: Sink) -> None:
    bot = await make_bot(start=False, mode="imap", recipients=[], imap_host="127.0.0.1",
                         imap_port=dovecot.port, imap_security="none",
                         imap_username=dovecot.user, imap_poll_seconds=1,
                         limits={"per_sender_per_minute": 1},
                         secrets={"IMAP_PASSWORD": dovecot.password})
    await dovecot.append(
        mail(message_id="<i1@example.org>"),                                          # uid 1
        mail(message_id="<i2@example.org>", extra={"Auto-Submitted": "auto-replied"}),  # 2
        b"Subject: no sender\r\n\r\nhello\r\n",                                       # 3
        mail("second", message_id="<i4@example.org>"),  # 4: over anna's limit
    )
    counts = await bot.channel.poll_once()
    assert counts == {"accepted": 1, "ignored": 1, "refused": 1, "rate_limited": 1}
    assert await dovecot.search("UNSEEN") == [4]  # left for a later poll, nothing lost
    assert await dovecot.search("FLAGGED") == [3]  # refused: flagged for a person

    # A store outage: nothing is marked, everything is read again later.
    await dovecot.append(mail("third", sender="carl@example.org",
                              message_id="<i5@example.org>"))                      # uid 5

    class BrokenStore:
        def __getattr__(self, name):
            async def fail(*args, **kwargs):
                raise ConnectionError("store down")
            return fail

    broken = EmailChannel(bot.runtime.config, intake=bot.runtime.intake, store=BrokenStore(),
                          hasher=bot.runtime.settings.keys.hasher,
                          secrets={"IMAP_PASSWORD": dovecot.password})
    assert (await broken.poll_once()).get("failed") == 2
    assert await dovecot.search("UNSEEN") == [4, 5]

    # The polling loop picks up carl's message; the reply to anna is threaded.
    await bot.channel.start()
    await run_workers_until(bot.runtime, sink.count(2), timeout=15)
    await bot.channel.stop()
    assert await dovecot.search("UNSEEN") == [4]
    replies = {tuple(rcpts): message_from_bytes(raw, policy=policy.default)
               for _, rcpts, raw in sink.received}
    assert replies[("anna@example.org",)]["In-Reply-To"] == "<i1@example.org>"
    assert ("carl@example.org",) in replies
