"""Telegram: a bot (aiogram) as a patient channel; webhook in production, polling in development.

Inbound: `POST /webhooks/telegram` is verified first (the secret token Telegram echoes in
`X-Telegram-Bot-Api-Secret-Token`, compared in constant time), then parsed as an aiogram
`Update`. Only text in a private chat is a patient message; everything else is acknowledged
and counted. Attachments are never downloaded: their type and size ride on the `Inbound`, a
caption is the text, and the patient is told to use the portal. `/start` and `/help` are
answered by the channel itself (what the bot does and the privacy notice). The same handling
serves long polling (`mode: polling`), where `start()` runs a `getUpdates` loop.

Outbound: nothing with PHI goes out on Telegram: a reply flagged `phi` becomes the portal
link (unless `phi_allowed`, off by default). Long replies are split at Telegram's 4096
characters on line or word boundaries. Chat ids and texts are never logged; aiogram's
exception texts name the chat, so they are never chained or logged either.

Only this module imports aiogram.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from aiogram import Bot
from aiogram.client.session.aiohttp import AiohttpSession
from aiogram.client.telegram import TelegramAPIServer
from aiogram.exceptions import (
    AiogramError,
    TelegramBadRequest,
    TelegramConflictError,
    TelegramEntityTooLarge,
    TelegramForbiddenError,
    TelegramMigrateToChat,
    TelegramNotFound,
)
from aiogram.types import LinkPreviewOptions, Message, Update
from aiogram.utils.token import TokenValidationError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from bot.config.loader import Config
from bot.core.crypto import Hasher
from bot.core.envelopes import AttachmentMeta, Inbound, Outbound
from bot.core.errors import ConfigError, SecretsError
from bot.core.http import Refused, read_body
from bot.messaging.delivery import ChannelSendError, channel_text
from bot.messaging.intake import Intake, IntakeResult, reject
from bot.store import Store

log = structlog.get_logger("patientbot.telegram")

CHANNEL = "telegram"
WEBHOOK_PATH = "/webhooks/telegram"
SECRET_HEADER = "x-telegram-bot-api-secret-token"
ALLOWED_UPDATES = ["message"]
MAX_TEXT = 4096  # Telegram's limit for one message, in UTF-16 code units
DIRECT_COMMANDS = frozenset({"/start", "/help"})
_SECRET_FORMAT = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what setWebhook accepts
_CONTENT_TYPE = re.compile(r"^[\w.+-]{1,50}/[\w.+-]{1,80}$")
_NO_PREVIEW = LinkPreviewOptions(is_disabled=True)
# Attachment kinds -> content type when the client sent none. `animation` comes with a
# duplicate `document`, so it is listed first and the document is then skipped.
_MEDIA = (("animation", "video/mp4"), ("document", "application/octet-stream"),
          ("voice", "audio/ogg"), ("audio", "audio/mpeg"), ("video", "video/mp4"),
          ("video_note", "video/mp4"))
_POLL_BACKOFF_MAX = 30.0
# A direct reply is sent while Telegram waits for the webhook's answer (and inside the web
# app's request deadline): it gets less time than an outbox send.
DIRECT_REPLY_TIMEOUT = 5


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one update: the HTTP status the webhook answers, and why if not 200."""

    status: int = 200
    error: str | None = None


OK = Handled()


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """Parts of at most `limit` UTF-16 code units (how Telegram counts), cut at the last line
    break, else the last space, before the limit; a word longer than the limit is cut."""
    parts: list[str] = []
    rest = text
    while _utf16_len(rest) > limit:
        cut, used = 0, 0
        for char in rest:
            used += 2 if ord(char) > 0xFFFF else 1
            if used > limit:
                break
            cut += 1
        window = rest[:cut]
        at = window.rfind("\n")
        if at < cut // 2:  # a break near the start would leave a tiny part: prefer a space
            at = max(at, window.rfind(" "))
        if at <= 0:
            at = cut
        part = rest[:at].rstrip()
        if part:
            parts.append(part)
        rest = rest[at:].lstrip()
    if rest.strip():
        parts.append(rest)
    return parts


def _utf16_len(text: str) -> int:
    return len(text) + sum(1 for char in text if ord(char) > 0xFFFF)


def _update_kind(update: Update) -> str:
    """The update's kind (`edited_message`, `callback_query` ...): a bounded metric label."""
    for name in type(update).model_fields:
        if name != "update_id" and getattr(update, name, None) is not None:
            return name
    return "unknown"


def _command(text: str) -> str | None:
    """`/start`, `/start payload`, `/help@ClinicBot` -> the command, lowercased."""
    words = text.split(maxsplit=1)
    if not words or not words[0].startswith("/"):
        return None
    return words[0].split("@", 1)[0].lower()


def _content_type(value: str | None, default: str) -> str:
    """The client's MIME type if it looks like one (it is free text from the sender)."""
    return value.lower() if value and _CONTENT_TYPE.match(value) else default


def attachments_of(message: Message) -> tuple[AttachmentMeta, ...]:
    """Type and size of what the patient attached; nothing is fetched (no getFile)."""
    found: list[AttachmentMeta] = []
    if message.photo:
        largest = max(message.photo, key=lambda size: size.width * size.height)
        found.append(AttachmentMeta("image/jpeg", largest.file_size))
    for field, default in _MEDIA:
        if field == "document" and message.animation is not None:
            continue
        item = getattr(message, field, None)
        if item is not None:
            found.append(AttachmentMeta(_content_type(getattr(item, "mime_type", None), default),
                                        getattr(item, "file_size", None)))
    return tuple(found)


def _send_error(err: AiogramError) -> ChannelSendError:
    """Blocked by the user, unknown chat, malformed request: trying again cannot help.
    Flood control, network trouble and server errors pass."""
    permanent = isinstance(err, TelegramForbiddenError | TelegramBadRequest | TelegramNotFound
                           | TelegramMigrateToChat | TelegramEntityTooLarge)
    return ChannelSendError(f"telegram send failed: {type(err).__name__}",
                            retryable=not permanent)


def _new_bot(config: Config, token: str | None) -> Bot:
    if not token:
        raise SecretsError("TELEGRAM_BOT_TOKEN is not set (channels.yml telegram is enabled)")
    telegram = config.channels.telegram
    session = AiohttpSession(api=TelegramAPIServer.from_base(telegram.api_base_url),
                             timeout=telegram.request_timeout_seconds)
    try:
        return Bot(token=token, session=session)
    except TokenValidationError:
        raise SecretsError("TELEGRAM_BOT_TOKEN is malformed "
                           "(expected the <digits>:<characters> token from @BotFather)") from None


def _webhook_secret(secrets: Mapping[str, str]) -> str | None:
    secret = secrets.get("TELEGRAM_WEBHOOK_SECRET") or None
    if secret is not None and not _SECRET_FORMAT.match(secret):
        raise SecretsError("TELEGRAM_WEBHOOK_SECRET must be 1-256 characters of A-Z, a-z, "
                           "0-9, _ and - (Telegram's secret_token format)")
    return secret


def webhook_url(config: Config) -> str:
    return config.app.public_base_url.rstrip("/") + WEBHOOK_PATH


async def _set_webhook(bot: Bot, config: Config, secret: str | None) -> str:
    url = webhook_url(config)
    if not url.startswith("https://"):
        raise ConfigError("app.yml", "public_base_url",
                          "Telegram delivers webhooks only to an https:// address")
    if secret is None:
        raise SecretsError("TELEGRAM_WEBHOOK_SECRET is not set "
                           "(telegram webhook mode needs a secret)")
    try:
        await bot.set_webhook(url=url, secret_token=secret, allowed_updates=ALLOWED_UPDATES,
                              drop_pending_updates=False)
    except AiogramError as err:
        raise _send_error(err) from None
    log.info("telegram webhook registered", path=WEBHOOK_PATH)
    return url


async def register_webhook(config: Config, secrets: Mapping[str, str]) -> str:
    """Point the bot's webhook at `public_base_url` + /webhooks/telegram with our secret token
    (only `message` updates, pending updates kept). Returns the URL registered."""
    bot = _new_bot(config, secrets.get("TELEGRAM_BOT_TOKEN"))
    try:
        return await _set_webhook(bot, config, _webhook_secret(secrets))
    finally:
        await bot.session.close()


class TelegramChannel:
    """The Telegram patient channel (a `PatientChannel`)."""

    name = CHANNEL
    phi_allowed: bool

    def __init__(self, config: Config, *, intake: Intake, store: Store, hasher: Hasher,
                 secrets: Mapping[str, str]) -> None:
        self._config = config
        self._telegram = config.channels.telegram
        self.phi_allowed = self._telegram.phi_allowed
        self._intake = intake
        self._store = store
        self._hasher = hasher
        self._secret = _webhook_secret(secrets)
        self._bot = _new_bot(config, secrets.get("TELEGRAM_BOT_TOKEN"))
        self._dedupe_ttl = config.app.limits.dedupe_ttl_hours * 3600.0
        self._poller: asyncio.Task[None] | None = None
        self._closed = False

    # lifecycle --------------------------------------------------------------------------
    def routes(self) -> list[BaseRoute]:
        return [Route(WEBHOOK_PATH, self.webhook, methods=["POST"])]

    async def start(self) -> None:
        if self._telegram.mode == "polling" and self._poller is None and not self._closed:
            self._poller = asyncio.create_task(self._poll(), name="telegram-polling")
            log.info("telegram long polling started")

    async def stop(self) -> None:
        """Stop polling and close the Bot API session; safe to call more than once."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if not self._closed:
            self._closed = True
            await self._bot.session.close()

    async def register_webhook(self) -> str:
        """See the module-level `register_webhook`; uses this channel's bot and secret."""
        return await _set_webhook(self._bot, self._config, self._secret)

    # inbound ----------------------------------------------------------------------------
    async def webhook(self, request: Request) -> Response:
        if not self._authentic(request):
            reject(CHANNEL, "bad_secret")
            return JSONResponse({"error": "Unauthorized."}, status_code=401)
        try:
            update = await self._read_update(request)
        except Refused as err:
            reject(CHANNEL, err.reason)
            return JSONResponse({"error": err.error}, status_code=err.status)
        handled = await self.handle(update)
        if handled.status == 200:
            return JSONResponse({"ok": True})
        headers = {"retry-after": "60"} if handled.status == 429 else None
        return JSONResponse({"error": handled.error}, status_code=handled.status,
                            headers=headers)

    def _authentic(self, request: Request) -> bool:
        """Before anything is parsed, in constant time; without a configured secret
        (polling mode) every webhook request is refused."""
        given = request.headers.get(SECRET_HEADER, "").encode()
        expected = (self._secret or "").encode()
        return hmac.compare_digest(given, expected) and self._secret is not None

    async def _read_update(self, request: Request) -> Update:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            raise Refused(415, "unsupported_media_type", "Expected application/json.")
        body = await read_body(request, self._telegram.max_webhook_bytes)
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise Refused(400, "malformed", "Malformed JSON.") from None
        if not isinstance(data, dict):
            raise Refused(400, "malformed", "Expected a Telegram Update object.")
        try:
            # The error text would quote the payload: never logged or returned.
            return Update.model_validate(data)
        except ValidationError:
            raise Refused(400, "malformed", "Expected a Telegram Update object.") from None

    async def handle(self, update: Update) -> Handled:
        """One verified update, from the webhook or from polling."""
        message = update.message
        if message is None:
            reject(CHANNEL, _update_kind(update))
            return OK
        if message.chat.type != "private":
            reject(CHANNEL, "not_private_chat")
            return OK
        if message.from_user is not None and message.from_user.is_bot:
            reject(CHANNEL, "from_bot")
            return OK
        chat = str(message.chat.id)
        language = None
        if message.from_user is not None and message.from_user.language_code:
            language = message.from_user.language_code.split("-")[0].lower()
        if message.text is not None and _command(message.text) in DIRECT_COMMANDS:
            return await self._direct(update.update_id, chat, "telegram_start", language)
        text = message.text if message.text is not None else (message.caption or "")
        limit = self._config.app.limits.max_message_chars
        if len(text) > limit:
            reject(CHANNEL, "too_long")
            return Handled(413, f"Message too long: the limit is {limit} characters.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate sent as a JSON \ud800 escape
            reject(CHANNEL, "invalid_text")
            return Handled(400, "Message text is not valid text.")
        attachments = attachments_of(message)
        if not text.strip():
            reject(CHANNEL, "attachment" if attachments else "unsupported_content")
            if attachments:
                return await self._direct(update.update_id, chat, "attachments_not_accepted",
                                          language)
            return OK
        inbound = Inbound(channel=CHANNEL, sender=chat,
                          provider_message_id=f"{update.update_id}", text=text,
                          attachments=attachments)
        if await self._intake.accept(inbound) is IntakeResult.RATE_LIMITED:
            return Handled(429, "Too many messages; please retry later.")
        if attachments:
            return await self._direct(update.update_id, chat, "attachments_not_accepted",
                                      language)
        return OK

    async def _direct(self, update_id: int, chat: str, template: str,
                      language: str | None) -> Handled:
        """Answer from the channel itself, once per update_id (a redelivered update is not
        answered again) and at most `direct_replies_per_minute` per chat."""
        claim = self._hasher.digest(f"{update_id}", purpose="telegram-update")
        if not await self._store.kv_create_all("telegram-direct", [claim], {"answered": True},
                                               ttl=self._dedupe_ttl):
            return OK
        rate_key = self._hasher.digest(f"{CHANNEL}:{chat}", purpose="telegram-direct")
        if (await self._store.count_hit("telegram-direct-rate", rate_key, window=60)
                > self._telegram.direct_replies_per_minute):
            reject(CHANNEL, "rate_limited")
            return OK
        try:
            await self._send_text(int(chat), channel_text(self._config, template, language),
                                  timeout=DIRECT_REPLY_TIMEOUT)
        except ChannelSendError as err:
            log.warning("telegram direct reply failed", template=template,
                        retryable=err.retryable)
            if err.retryable:  # let Telegram redeliver the update; answer it then
                await self._store.kv_delete("telegram-direct", claim)
                return Handled(503, "Temporarily unavailable, please try again.")
            return OK
        log.info("telegram direct reply sent", template=template)
        return OK

    # long polling -----------------------------------------------------------------------
    async def _poll(self) -> None:
        """getUpdates -> handle, confirming each update (next offset) once it is handled.
        A failure keeps the update unconfirmed and backs off; a rate-limited update is
        dropped (counted), so one chat's flood cannot stall everyone else's messages."""
        timeout = self._telegram.polling_timeout_seconds
        offset: int | None = None
        failures = 0
        while True:
            error: str | None = None
            try:
                updates = await self._bot.get_updates(offset=offset, timeout=timeout,
                                                      allowed_updates=ALLOWED_UPDATES,
                                                      request_timeout=timeout + 10)
                for update in updates:
                    if (await self.handle(update)).status >= 500:
                        error = "DirectReplyFailed"
                        break
                    offset = update.update_id + 1
            except TelegramConflictError:
                error = "TelegramConflictError"
                log.error("telegram polling refused: a webhook is set for this bot "
                          "(use mode: webhook, or delete the webhook)")
            except Exception as err:  # store or network down: keep the update, back off
                error = type(err).__name__
            if error is None:
                failures = 0
                continue
            failures += 1
            delay = min(_POLL_BACKOFF_MAX, 0.5 * 2 ** min(failures, 6))
            log.warning("telegram polling failed", error_type=error, retry_in=delay)
            await asyncio.sleep(delay)

    # outbound ---------------------------------------------------------------------------
    async def send(self, message: Outbound) -> str | None:
        """Send one reply (PHI as the portal link); returns Telegram's message id, or the
        ids of every part joined by commas when the reply was split."""
        try:
            chat_id = int(message.recipient)
        except ValueError:
            raise ChannelSendError("telegram recipient is not a chat id", retryable=False) \
                from None
        text = message.text
        parts = split_text(text)
        if len(parts) == 1:
            return await self._send_text(chat_id, parts[0])
        # A retried send resumes after the parts already delivered.
        progress: dict[str, Any] = await self._store.kv_get("telegram-parts", message.id) or {}
        sent: list[str] = list(progress.get("ids", []))
        for part in parts[len(sent):]:
            sent.append(await self._send_text(chat_id, part))
            await self._store.kv_set("telegram-parts", message.id, {"ids": sent},
                                     ttl=self._dedupe_ttl)
        return ",".join(sent)

    async def _send_text(self, chat_id: int, text: str, *, timeout: int | None = None) -> str:
        if self._closed:  # stopped: the outbox sends it later (or another process does)
            raise ChannelSendError("telegram channel is stopped", retryable=True)
        try:
            sent = await self._bot.send_message(chat_id=chat_id, text=text,
                                                link_preview_options=_NO_PREVIEW,
                                                request_timeout=timeout)
        except AiogramError as err:
            raise _send_error(err) from None  # aiogram's text names the chat: not chained
        return str(sent.message_id)
