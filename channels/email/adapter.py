"""Email: patients write to the organisation's address; replies go out through an SMTP relay.

Inbound comes either from our own SMTP listener (aiosmtpd's protocol on the app's event loop,
behind the organisation's MTA) or, in `imap` mode, from polling an existing mailbox. Either
way a message is checked (size, recipients, MIME limits: `channels.email.mime`), automated
mail (auto-replies, bounces, lists) is accepted but never answered, and the rest goes to
`Intake`; the SMTP client gets its 250 (or the IMAP message its \\Seen flag) only once the
envelope is durably queued. A flood from one address gets 451, so the sender's MTA retries.

Identity: the From header alone proves nothing. The conversation's sender is the From
address only when our own MTA (the Authentication-Results header with our authserv-id)
reports DMARC pass or an aligned DKIM pass; otherwise it is `unverified:<address>`, which
replies still reach but which can never equal the email on a patient's record, so the
engine's strong identity check cannot pass on a forgeable header. (An authenticated and an
unauthenticated message from the same address are therefore separate conversations: forged
mail never joins a conversation whose identity was checked.)

Threading: each accepted message's subject and References are kept (sealed, keyed by a hash
of its Message-ID, no PHI in key names) so the reply carries "Re: <subject>", In-Reply-To
and References, and the patient's reply to it lands in the same conversation (same sender).

Logs carry outcome codes only: aiosmtpd's and aioimaplib's own loggers, which print
addresses and message lines, are silenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import aioimaplib
import aiosmtplib
import structlog
from aiosmtpd.smtp import SMTP, Envelope, Session
from starlette.routing import BaseRoute

from bot.config.loader import Config
from bot.core.crypto import Hasher
from bot.core.envelopes import Inbound, Outbound
from bot.core.errors import ConfigError
from bot.core.mail import build_reply, reply_subject, valid_address
from bot.messaging.delivery import ChannelSendError
from bot.messaging.intake import Intake, IntakeResult, reject
from bot.messaging.relay import relay_send
from bot.store import Store
from channels.email.mime import MailRefused, MimeLimits, parse_mail

log = structlog.get_logger("patientbot.email")


CHANNEL = "email"


UNVERIFIED = "unverified:"


THREAD_NAMESPACE = "email-thread"


INTAKE_TIMEOUT_SECONDS = 10.0


MAX_RECIPIENTS = 10


RATE_LIMIT_HOLD_SECONDS = 600.0  # IMAP: a limited sender's mail waits this long in the box


_QUIET_LOGGERS = ("mail.log", "aioimaplib")


ACCEPTED_REPLY = "250 2.0.0 Message accepted"


RATE_LIMITED_REPLY = "451 4.7.1 Too many messages from this sender, try again later"


TEMPORARY_REPLY = "451 4.3.0 Temporarily unable to accept the message, try again later"


TOO_LARGE_REPLY = "552 5.3.4 Message too large"


_RFC822_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


def conversation_sender(address: str, *, verified: bool) -> str:
    """The conversation's sender: the address itself only when our MTA authenticated it."""
    return address if verified else UNVERIFIED + address


def reply_address(sender: str) -> str:
    """Where replies to a conversation's sender go."""
    return sender.removeprefix(UNVERIFIED)


def _quiet_library_logs() -> None:
    """aiosmtpd logs envelope addresses and DATA lines, aioimaplib whole responses."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


class Outcome(StrEnum):
    ACCEPTED = "accepted"  # queued
    IGNORED = "ignored"  # automated mail: accepted, never answered
    RATE_LIMITED = "rate_limited"
    REFUSED = "refused"  # permanently: malformed, too large, too complex
    FAILED = "failed"  # temporarily: the queue could not be reached


@dataclass(frozen=True, slots=True)
class Received:
    outcome: Outcome
    reply: str  # the SMTP answer
    sender_ref: str = ""  # keyed hash of the sender (IMAP hold-off), never the address


class _SmtpProtocol(SMTP):
    """aiosmtpd's SMTP protocol, remembering its connections so `stop` can close them."""

    def __init__(self, *args: Any, connections: set[_SmtpProtocol], **options: Any) -> None:
        super().__init__(*args, **options)
        self._connections = connections

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        super().connection_lost(exc)


class _SmtpHandler:
    """aiosmtpd hooks: runs on the app's loop, so it awaits the intake directly."""

    def __init__(self, channel: EmailChannel) -> None:
        self._channel = channel

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.strip().lower() not in self._channel.recipients:
            reject(CHANNEL, "unknown_recipient")
            return "550 5.1.1 Recipient address rejected"
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            received = await self._channel.receive(bytes(raw),
                                                   envelope_sender=envelope.mail_from)
        except Exception as err:  # aiosmtpd would put the exception text in its answer
            log.error("email intake failed", error_type=type(err).__name__)
            return TEMPORARY_REPLY
        return received.reply


class EmailChannel:
    """The email patient channel (PatientChannel): listener or IMAP poller, and the relay."""

    name = CHANNEL
    phi_allowed: bool

    def __init__(self, config: Config, *, intake: Intake, store: Store, hasher: Hasher,
                 secrets: Mapping[str, str]) -> None:
        self._config = config
        self._email = email = config.channels.email
        self.phi_allowed = self._email.phi_allowed
        if not valid_address(email.from_address.lower()):
            raise ConfigError("channels.yml", "email.from_address",
                              "not a plain email address (replies come from it)")
        self._intake = intake
        self._store = store
        self._hasher = hasher
        self._smtp_password = secrets.get("SMTP_PASSWORD") or None
        self._imap_password = secrets.get("IMAP_PASSWORD", "")
        self.recipients = frozenset(address.lower() for address in email.recipients)
        self._own = frozenset({email.from_address.lower(), *self.recipients} - {""})
        self._limits = MimeLimits(max_parts=email.max_parts, max_depth=email.max_depth,
                                  max_decoded_bytes=email.max_decoded_bytes)
        self._hostname = (email.hostname or email.from_address.rpartition("@")[2]
                          or "localhost")
        self._thread_ttl = config.app.limits.retention_days * 86400.0
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_SmtpProtocol] = set()
        self._poller: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._held: dict[str, float] = {}  # IMAP: sender ref -> loop time its hold ends
        _quiet_library_logs()

    def routes(self) -> list[BaseRoute]:
        return []

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        if self._server is not None or self._poller is not None:
            return
        self._stopping.clear()
        if self._email.mode == "imap":
            self._poller = asyncio.create_task(self._poll_forever(), name="email-imap-poller")
            log.info("email imap polling started")
            return
        loop = asyncio.get_running_loop()
        handler = _SmtpHandler(self)
        self._server = await loop.create_server(
            lambda: _SmtpProtocol(handler, connections=self._connections, loop=loop,
                                  data_size_limit=self._email.max_message_bytes,
                                  enable_SMTPUTF8=True, decode_data=False,
                                  hostname=self._hostname, ident="patientbot",
                                  timeout=60, command_call_limit={"MAIL": 100, "RCPT": 1000,
                                                                  "DATA": 100, "*": 100}),
            host=self._email.listen_host, port=self._email.listen_port)
        log.info("email smtp listener started", port=self._email.listen_port)

    async def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.close()
            for connection in list(self._connections):
                if connection.transport is not None:
                    connection.transport.close()
            await server.wait_closed()
            log.info("email smtp listener stopped")
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)

    # --- inbound ----------------------------------------------------------------------------
    def _thread_key(self, kind: str, value: str) -> str:
        return kind + self._hasher.digest(value, purpose="email-thread")

    async def receive(self, raw: bytes, *, envelope_sender: str | None = None,
                      held: Callable[[str], bool] | None = None) -> Received:
        """Check one raw message and queue it. Never raises: bad mail is refused (5xx),
        a queue or store failure is temporary (451) so the message is not lost."""
        if len(raw) > self._email.max_message_bytes:
            reject(CHANNEL, "too_large")
            return Received(Outcome.REFUSED, TOO_LARGE_REPLY)
        try:
            parsed = await asyncio.to_thread(
                parse_mail, raw, limits=self._limits, authserv_id=self._email.authserv_id,
                envelope_sender=envelope_sender, own_addresses=self._own)
        except MailRefused as refused:
            reject(CHANNEL, refused.reason)
            return Received(Outcome.REFUSED, refused.reply)
        if parsed.automated:
            # Accepted so the sender's robot stops retrying, but never answered: no loops.
            reject(CHANNEL, "auto_submitted")
            return Received(Outcome.IGNORED, ACCEPTED_REPLY)
        sender = conversation_sender(parsed.sender, verified=parsed.auth.verified)
        sender_ref = self._hasher.digest(sender, purpose="email-sender")
        if held is not None and held(sender_ref):
            return Received(Outcome.RATE_LIMITED, RATE_LIMITED_REPLY, sender_ref)
        message_id = parsed.message_id or "<{}@patientbot.invalid>".format(self._hasher.digest(
            hashlib.sha256(raw).hexdigest(), purpose="email-message-id"))
        inbound = Inbound(channel=CHANNEL, sender=sender, provider_message_id=message_id,
                          text=parsed.text, attachments=parsed.attachments,
                          auth_results=parsed.auth.summary)
        thread = {"subject": parsed.subject, "message_id": message_id,
                  "references": [*parsed.references, message_id]}
        message_key = self._thread_key("m", message_id)
        try:
            async with asyncio.timeout(INTAKE_TIMEOUT_SECONDS):
                # Written before queueing: the reply may be sent before this call returns.
                await self._store.kv_set(THREAD_NAMESPACE, message_key, thread,
                                         ttl=self._thread_ttl)
                result = await self._intake.accept(inbound)
                if result is IntakeResult.RATE_LIMITED:
                    await self._store.kv_delete(THREAD_NAMESPACE, message_key)
                    return Received(Outcome.RATE_LIMITED, RATE_LIMITED_REPLY, sender_ref)
                await self._store.kv_set(THREAD_NAMESPACE, self._thread_key("c", sender),
                                         thread, ttl=self._thread_ttl)
        except Exception as err:
            log.warning("email not queued; sender asked to retry",
                        error_type=type(err).__name__)
            return Received(Outcome.FAILED, TEMPORARY_REPLY, sender_ref)
        return Received(Outcome.ACCEPTED, ACCEPTED_REPLY, sender_ref)

    # --- IMAP polling -----------------------------------------------------------------------
    async def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as err:
                log.warning("email imap poll failed", error_type=type(err).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._email.imap_poll_seconds)

    def _is_held(self, sender_ref: str) -> bool:
        until = self._held.get(sender_ref)
        if until is None:
            return False
        if asyncio.get_running_loop().time() >= until:
            del self._held[sender_ref]
            return False
        return True

    def _imap_client(self) -> aioimaplib.IMAP4:
        email = self._email
        timeout = email.relay_timeout_seconds
        if email.imap_security == "tls":
            return aioimaplib.IMAP4_SSL(email.imap_host, email.imap_port, timeout=timeout,
                                        ssl_context=ssl.create_default_context())
        return aioimaplib.IMAP4(email.imap_host, email.imap_port, timeout=timeout)

    async def poll_once(self) -> dict[str, int]:
        """Read the mailbox's unseen messages (at most `imap_batch`); a message is marked
        \\Seen only once queued (or deliberately ignored or refused), so nothing is lost.
        Returns counts per outcome."""
        counts: dict[str, int] = {}
        client = self._imap_client()
        try:
            await client.wait_hello_from_server()
            _expect_ok(await client.login(self._email.imap_username, self._imap_password),
                       "login")
            _expect_ok(await client.select(self._email.imap_mailbox), "select")
            found = await client.uid_search("UNSEEN", charset=None)
            _expect_ok(found, "search")
            uids = [uid.decode() for uid in (found.lines[0] if found.lines else b"").split()
                    if uid.isdigit()][: self._email.imap_batch]
            for uid in uids:
                outcome = await self._poll_message(client, uid)
                counts[outcome] = counts.get(outcome, 0) + 1
        finally:
            with contextlib.suppress(Exception):
                await client.logout()
        return counts

    async def _poll_message(self, client: aioimaplib.IMAP4, uid: str) -> str:
        sized = await client.uid("fetch", uid, "(RFC822.SIZE)")
        _expect_ok(sized, "fetch")
        size = next((int(m.group(1)) for line in sized.lines
                     if isinstance(line, bytes | bytearray)
                     and (m := _RFC822_SIZE.search(bytes(line)))), None)
        if size is None:
            return "vanished"
        if size > self._email.max_message_bytes:
            reject(CHANNEL, "too_large")
            received = Received(Outcome.REFUSED, TOO_LARGE_REPLY)
        else:
            fetched = await client.uid("fetch", uid, "(BODY.PEEK[])")
            _expect_ok(fetched, "fetch")
            raw = next((bytes(line) for line in fetched.lines if isinstance(line, bytearray)),
                       None)
            if raw is None:
                return "vanished"
            received = await self.receive(raw, held=self._is_held)
        if received.outcome is Outcome.RATE_LIMITED:
            # Left unseen for a later poll; the sender's other mail waits too, so that
            # re-reading a backlog does not keep the sender's counters above the limit.
            self._held[received.sender_ref] = (asyncio.get_running_loop().time()
                                               + RATE_LIMIT_HOLD_SECONDS)
        elif received.outcome is not Outcome.FAILED:
            # Queued, ignored (automated) or permanently refused (flagged for a person).
            flags = "(\\Seen \\Flagged)" if received.outcome is Outcome.REFUSED else "(\\Seen)"
            _expect_ok(await client.uid("store", uid, "+FLAGS.SILENT", flags), "store")
        return received.outcome.value

    # --- outbound ---------------------------------------------------------------------------
    async def _thread_for(self, message: Outbound) -> dict[str, Any] | None:
        if message.in_reply_to:
            found = await self._store.kv_get(THREAD_NAMESPACE,
                                             self._thread_key("m", message.in_reply_to))
            if found:
                return found
        return await self._store.kv_get(THREAD_NAMESPACE,
                                        self._thread_key("c", message.recipient))

    async def send(self, message: Outbound) -> str | None:
        """Send one reply through the relay; returns its Message-ID."""
        email = self._email
        to = reply_address(message.recipient)
        if not valid_address(to):
            raise ChannelSendError("recipient is not a plain email address", retryable=False)
        thread = await self._thread_for(message) or {}
        in_reply_to = thread.get("message_id") or message.in_reply_to
        subject = reply_subject(thread.get("subject", "")) or \
            f"Your message to {self._config.app.organisation}"
        try:
            reply = build_reply(from_address=email.from_address, from_name=email.from_name,
                                to=to, subject=subject,
                                text=message.text,
                                domain=self._hostname, in_reply_to=in_reply_to,
                                references=tuple(thread.get("references", ())))
        except ValueError:
            raise ChannelSendError("reply could not be composed", retryable=False) from None
        try:
            await relay_send(email, reply, sender=email.from_address, recipients=[to],
                             password=self._smtp_password, local_hostname=self._hostname)
        except aiosmtplib.SMTPRecipientsRefused as err:
            codes = [refused.code for refused in err.recipients]
            permanent = bool(codes) and all(500 <= code < 600 for code in codes)
            raise ChannelSendError(f"relay refused the recipient ({codes[0] if codes else '?'})",
                                   retryable=not permanent) from None
        except aiosmtplib.SMTPResponseException as err:
            permanent = (500 <= err.code < 600 and isinstance(
                err, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError))
            raise ChannelSendError(f"relay answered {err.code}",
                                   retryable=not permanent) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as err:
            raise ChannelSendError(f"relay unreachable ({type(err).__name__})") from None
        return str(reply["Message-ID"])


def _expect_ok(response: Any, step: str) -> None:
    if getattr(response, "result", None) != "OK":
        raise ConnectionError(f"imap {step} failed")
