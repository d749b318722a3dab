"""The Telegram channel through our real HTTP app (uvicorn), real Redis and real workers, with
aiogram talking to a local Bot API (tests/support/telegram_api.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as redis

from bot.app.runtime import DecisionFactory, Runtime
from bot.config.loader import Config, load_config
from bot.config.settings import Settings, load_settings
from bot.core.crypto import KeyMaterial
from bot.core.envelopes import AttachmentMeta, Outbound, utcnow
from bot.core.errors import ConfigError, SecretsError
from bot.engine.decision import FrontDeskHandoff
from bot.messaging.delivery import ChannelSendError, channel_text
from bot.ops.logs import configure_logging
from channels.telegram.adapter import TelegramChannel, register_webhook, split_text
from tests.conftest import free_port, key_env, redis_url, run_workers_until, serve_app
from tests.support.telegram_api import TOKEN, FakeTelegramAPI

SECRET = "tg-webhook-secret_4Hq9ZxP0"
PUBLIC_URL = "https://patients.example.org"
CHAT = 731904226  # a patient's chat id: must never appear in logs
WEBHOOK = "/webhooks/telegram"
_update_ids = itertools.count(880_000)


@pytest.fixture
def backend() -> str:
    return "redis"  # our stores are always real here


def message_update(text: str | None = "Hello, can someone call me back?", *, chat: int = CHAT,
                   update_id: int | None = None, chat_type: str = "private",
                   language: str = "en", kind: str = "message", **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "message_id": next(_update_ids) % 10_000, "date": int(utcnow().timestamp()),
        "chat": {"id": chat, "type": chat_type, "first_name": "Zebedee"},
        "from": {"id": chat, "is_bot": False, "first_name": "Zebedee",
                 "language_code": language}, **fields}
    if text is not None:
        message["text"] = text
    return {"update_id": next(_update_ids) if update_id is None else update_id, kind: message}


@dataclass
class Tg:
    runtime: Runtime
    client: httpx.AsyncClient
    api: FakeTelegramAPI
    redis: redis.Redis
    prefix: str

    @property
    def config(self) -> Config:
        return self.runtime.config

    @property
    def channel(self) -> TelegramChannel:
        [channel] = [c for c in self.runtime.patient_channels if c.name == "telegram"]
        assert isinstance(channel, TelegramChannel)
        return channel

    async def post(self, update: dict[str, Any], *, secret: str | None = SECRET,
                   **kwargs: Any) -> httpx.Response:
        headers = {"x-telegram-bot-api-secret-token": secret} if secret is not None else {}
        headers.update(kwargs.pop("headers", {}))
        if "content" not in kwargs:
            kwargs["json"] = update
        return await self.client.post(WEBHOOK, headers=headers, **kwargs)

    async def queued(self) -> int:
        """Ingress entries not yet processed (acknowledged entries are deleted)."""
        return await self.redis.xlen(f"{self.prefix}:ingress")

    async def metric(self, name: str, **labels: str) -> float:
        text = (await self.client.get("/metrics")).text
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        match = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    async def deliver(self, count: int) -> list[str]:
        """Run real workers until `count` replies reached the Bot API and the queue is empty."""
        async def done() -> bool:
            return len(self.api.sent()) >= count and await self.queued() == 0
        await run_workers_until(self.runtime, done)
        return self.api.sent_texts()

    async def run_workers_for(self, seconds: float) -> None:
        end = asyncio.get_running_loop().time() + seconds

        async def done() -> bool:
            return asyncio.get_running_loop().time() >= end
        await run_workers_until(self.runtime, done, timeout=seconds + 5)


def enable_telegram(config_dir: Path, api_url: str, *, mode: str = "webhook") -> None:
    channels = config_dir / "channels.yml"
    text = channels.read_text()
    block = text[text.index("telegram:"):]
    channels.write_text(text.replace(block, (
        f"telegram:\n  enabled: true\n  mode: {mode}\n  api_base_url: {api_url}\n"
        "  phi_allowed: false\n  polling_timeout_seconds: 1\n")))
    app = config_dir / "app.yml"
    app.write_text(app.read_text().replace("public_base_url: http://127.0.0.1:8000",
                                           f"public_base_url: {PUBLIC_URL}"))


@pytest.fixture
async def telegram_api() -> AsyncIterator[FakeTelegramAPI]:
    api = await FakeTelegramAPI().start()
    yield api
    await api.stop()


StartTg = Callable[..., Awaitable[Tg]]
_ENGINE = None  # decision_step=None: the real engine


@pytest.fixture
async def start_tg(config_dir: Path, telegram_api: FakeTelegramAPI, keys: KeyMaterial,
                   prefix: str, redis_client: redis.Redis) -> AsyncIterator[StartTg]:
    """Start our app (no in-process workers: tests run them) with Telegram enabled."""
    async with AsyncExitStack() as stack:
        async def start(*, mode: str = "webhook",
                        decision_step: DecisionFactory | None = FrontDeskHandoff,
                        clock: Callable[[], datetime] = utcnow,
                        secrets: dict[str, str] | None = None) -> Tg:
            enable_telegram(config_dir, telegram_api.url, mode=mode)
            settings = Settings(redis_url=redis_url(), redis_prefix=prefix, keys=keys,
                                secrets={"TELEGRAM_BOT_TOKEN": TOKEN,
                                         "TELEGRAM_WEBHOOK_SECRET": SECRET}
                                if secrets is None else secrets)
            runtime = Runtime.build(load_config(config_dir), settings,
                                    decision_step=decision_step, clock=clock)
            url = await stack.enter_async_context(serve_app(runtime))
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=10))
            return Tg(runtime, client, telegram_api, redis_client, prefix)

        yield start


@pytest.fixture
async def tg(start_tg: StartTg) -> Tg:
    return await start_tg()


def log_text(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    captured = capsys.readouterr()
    return captured.out + captured.err + caplog.text


# --- the webhook -------------------------------------------------------------------------

async def test_a_verified_message_is_queued_then_answered_through_send_message(
        tg: Tg, capsys, caplog) -> None:
    configure_logging(production=True)
    caplog.set_level(logging.DEBUG)
    response = await tg.post(message_update("CANARY-TG-5521 please call me back"))
    assert response.status_code == 200
    assert await tg.queued() == 1  # acknowledged only once durably queued
    assert await tg.deliver(1) == [tg.config.text("handoff_ack")]
    [call] = tg.api.sent()
    assert int(call.params["chat_id"]) == CHAT
    assert call.params["link_preview_options"] == {"is_disabled": True}
    assert "parse_mode" not in call.params  # plain text: nothing is interpreted as markup
    assert await tg.metric("patientbot_messages_out_total", channel="telegram") >= 1
    logs = log_text(capsys, caplog)
    assert "message queued" in logs and "reply sent" in logs
    assert str(CHAT) not in logs and "CANARY-TG-5521" not in logs and TOKEN not in logs


async def test_requests_without_the_secret_token_are_refused_before_parsing(tg: Tg) -> None:
    before = await tg.metric("patientbot_messages_rejected_total", channel="telegram",
                             reason="bad_secret")
    secrets = [None, "", "wrong-secret", SECRET + "x", SECRET[:-1], SECRET.upper()]
    for secret in secrets:
        valid = await tg.post(message_update(), secret=secret)
        garbage = await tg.post({}, secret=secret, content=b"\xff not json",
                                headers={"content-type": "text/plain"})
        # Verified before anything else: the garbage is not even looked at.
        assert (secret, valid.status_code, garbage.status_code) == (secret, 401, 401)
    assert await tg.queued() == 0
    assert await tg.metric("patientbot_messages_rejected_total", channel="telegram",
                           reason="bad_secret") == before + 2 * len(secrets)
    await tg.run_workers_for(0.3)
    assert tg.api.sent() == []


async def test_a_redelivered_update_is_answered_once(tg: Tg) -> None:
    update = message_update("I'd like to talk to someone about my bill")
    for _ in range(3):  # Telegram redelivers when it did not see our 200 in time
        assert (await tg.post(update)).status_code == 200
    assert await tg.deliver(1) == [tg.config.text("handoff_ack")]
    await tg.run_workers_for(1.2)  # one more outbox sweep
    assert len(tg.api.sent()) == 1


async def test_start_and_help_are_answered_directly_with_the_privacy_notice(tg: Tg) -> None:
    first = message_update("/start")
    for update in [first, first, message_update("/start from-website"),
                   message_update("/help@clinic_test_bot"),
                   message_update("/start", chat=CHAT + 1, language="es")]:
        assert (await tg.post(update)).status_code == 200
    english = channel_text(tg.config, "telegram_start", "en")
    assert "Riverside Family Clinic" in english and f"{PUBLIC_URL}/portal/" in english
    assert tg.api.sent_texts() == [english] * 3 + [channel_text(tg.config, "telegram_start",
                                                                "es")]
    assert await tg.queued() == 0  # not a patient request
    # Telegram down: answer 503 so that Telegram redelivers, and answer the redelivery.
    tg.api.fail("sendMessage", 502, "Bad Gateway")
    again = message_update("/start", chat=CHAT + 3)
    assert (await tg.post(again)).status_code == 503
    assert (await tg.post(again)).status_code == 200
    assert tg.api.sent_texts()[-1] == english and len(tg.api.sent()) == 5


async def test_attachments_are_never_downloaded_and_the_patient_is_told(tg: Tg) -> None:
    photo = message_update(None, caption="Here is my insurance card", photo=[
        {"file_id": "AgADsmall", "file_unique_id": "s1", "width": 90, "height": 67,
         "file_size": 1_200},
        {"file_id": "AgADlarge", "file_unique_id": "l1", "width": 1280, "height": 960,
         "file_size": 98_304}])
    document = message_update(None, document={"file_id": "BQAD", "file_unique_id": "d1",
                                              "file_name": "lab results.pdf",
                                              "mime_type": "application/pdf",
                                              "file_size": 40_000})
    voice = message_update(None, voice={"file_id": "AwAD", "file_unique_id": "v1",
                                        "duration": 4, "mime_type": "audio/ogg",
                                        "file_size": 9_000})
    for update in [photo, photo, document, voice]:
        assert (await tg.post(update)).status_code == 200
    notice = channel_text(tg.config, "attachments_not_accepted", "en")
    assert tg.api.sent_texts() == [notice] * 3  # the redelivered photo is not answered again
    # Only the caption is a patient message, with the attachment's type and size.
    # (The redelivered photo is queued again; the pipeline drops it by provider id.)
    entries = await tg.runtime.ingress.queue.read("probe", count=10, block=0.1)
    inbounds = [tg.runtime.ingress.open(entry) for entry in entries]
    assert {inbound.provider_message_id for inbound in inbounds} == {str(photo["update_id"])}
    inbound = inbounds[0]
    assert inbound.text == "Here is my insurance card"
    assert inbound.attachments == (AttachmentMeta("image/jpeg", 98_304),)
    assert tg.api.calls_of("getFile") == [] and tg.api.file_requests == []


async def test_other_updates_are_acknowledged_and_ignored(tg: Tg) -> None:
    sticker = {"file_id": "CAAD", "file_unique_id": "k1", "type": "regular", "width": 512,
               "height": 512, "is_animated": False, "is_video": False}
    callback = {"id": "4382", "chat_instance": "-81", "data": "x",
                "from": {"id": CHAT, "is_bot": False, "first_name": "Zebedee"}}
    cases = [
        (message_update(kind="edited_message"), "edited_message"),
        (message_update(kind="channel_post"), "channel_post"),
        (message_update(chat=-100123, chat_type="group"), "not_private_chat"),
        (message_update(None, sticker=sticker), "unsupported_content"),
        ({"update_id": next(_update_ids), "callback_query": callback}, "callback_query"),
    ]
    for update, reason in cases:
        before = await tg.metric("patientbot_messages_rejected_total", channel="telegram",
                                 reason=reason)
        assert (await tg.post(update)).status_code == 200
        assert await tg.metric("patientbot_messages_rejected_total", channel="telegram",
                               reason=reason) == before + 1, reason
    assert await tg.queued() == 0 and tg.api.sent() == []


async def test_bad_input_is_refused_and_leaves_no_trace(tg: Tg, capsys, caplog) -> None:
    configure_logging(production=True)
    caplog.set_level(logging.DEBUG)
    canary = "CANARY-TG-9034 chest results"
    valid = json.dumps(message_update(canary)).encode()
    limit = tg.config.app.limits.max_message_chars
    cases = [
        ("text/plain", valid, 415),
        ("application/x-www-form-urlencoded", b"update_id=1&text=" + canary.encode(), 415),
        ("application/json", valid[:-1] + b" " * 300_000 + b"}", 413),
        ("application/json", valid.replace(b"CANARY", b"CANARY\xff\xfe"), 400),
        ("application/json", valid[:40], 400),
        ("application/json", b"[" + valid + b"]", 400),
        ("application/json", json.dumps({"message": {"text": canary,
                                                     "chat": {"id": CHAT}}}).encode(), 400),
        ("application/json", json.dumps({"update_id": "one", "message": {
            "text": canary, "chat": {"id": CHAT, "type": "private"}}}).encode(), 400),
        ("application/json", json.dumps(message_update(canary + " " + "x" * limit)).encode(),
         413),
        ("application/json", json.dumps(message_update(canary + " \ud800")).encode(), 400),
    ]
    statuses = []
    for content_type, body, _ in cases:
        response = await tg.post({}, content=body, headers={"content-type": content_type})
        statuses.append(response.status_code)
        assert set(response.json()) == {"error"}
        assert canary not in response.text and "Traceback" not in response.text
    assert statuses == [status for _, _, status in cases]
    assert await tg.queued() == 0
    await tg.run_workers_for(0.3)
    assert tg.api.sent() == []
    logs = log_text(capsys, caplog)
    assert "inbound refused" in logs
    assert str(CHAT) not in logs and "CANARY-TG-9034" not in logs


async def test_a_flood_from_one_chat_is_limited_per_minute(tg: Tg) -> None:
    before = await tg.metric("patientbot_messages_rejected_total", channel="telegram",
                             reason="rate_limited")
    responses = await asyncio.gather(*(tg.post(message_update(f"message {n}"))
                                       for n in range(100)))
    statuses = [response.status_code for response in responses]
    accepted, refused = statuses.count(200), statuses.count(429)
    assert accepted == tg.config.channels.limits.per_sender_per_minute
    assert accepted + refused == 100
    assert await tg.queued() == accepted
    assert await tg.metric("patientbot_messages_rejected_total", channel="telegram",
                           reason="rate_limited") == before + refused
    # Another patient is not affected.
    assert (await tg.post(message_update(chat=CHAT + 7))).status_code == 200


# --- replies -----------------------------------------------------------------------------

class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


async def test_a_phi_reply_reaches_telegram_only_as_the_portal_link(start_tg: StartTg) -> None:
    """Booking by Telegram through the real engine: questions and offered times arrive as
    themselves; the confirmation (the patient's appointment) only as the portal link."""
    clock = Clock(datetime.fromisoformat("2026-12-07T10:00:00-05:00"))
    tg = await start_tg(decision_step=_ENGINE, clock=clock)
    turns = ["Hi, I need to book my annual physical", "Maria Lopez", "03/12/1984",
             "next Tuesday", "2"]
    for text in turns:
        sent_before = len(tg.api.sent())
        assert (await tg.post(message_update(text))).status_code == 200
        await tg.deliver(sent_before + 1)
        clock.now += timedelta(minutes=1)
    sent = tg.api.sent_texts()
    assert any("From which day" in text for text in sent)
    assert any("These times are open" in text for text in sent)
    assert sent[-1] == channel_text(tg.config, "phi_redirect", "en")
    assert f"{PUBLIC_URL}/portal/" in sent[-1]
    assert not any("booked" in text or "River Street" in text for text in sent)
    # The confirmation itself exists (transcript), it just never went out on Telegram.
    conversation = tg.runtime.ingress.conversation_key("telegram", str(CHAT)).id
    last = (await tg.runtime.store.transcript(conversation))[-1]
    assert "You're booked" in last.text


async def test_a_blocked_bot_is_not_retried_but_flood_control_is(tg: Tg) -> None:
    tg.api.fail("sendMessage", 403, "Forbidden: bot was blocked by the user")
    assert (await tg.post(message_update())).status_code == 200

    async def attempted() -> bool:
        return len(tg.api.sent(ok_only=False)) >= 1 and await tg.queued() == 0
    await run_workers_until(tg.runtime, attempted)
    await tg.run_workers_for(2.2)  # two outbox sweeps: a retryable failure would be resent
    assert [call.ok for call in tg.api.sent(ok_only=False)] == [False]

    tg.api.fail("sendMessage", 429, "Too Many Requests: retry after 1", retry_after=1)
    assert (await tg.post(message_update(chat=CHAT + 2))).status_code == 200
    await tg.deliver(1)
    assert [call.ok for call in tg.api.sent(ok_only=False)] == [False, False, True]


async def test_send_errors_say_whether_to_retry(tg: Tg) -> None:
    reply = Outbound(conversation_id="telegram:x", channel="telegram", recipient=str(CHAT),
                     text="Your message was passed on.")
    cases = [(403, "Forbidden: bot was blocked by the user", None, False),
             (400, "Bad Request: chat not found", None, False),
             (429, "Too Many Requests: retry after 5", 5, True),
             (500, "Internal Server Error", None, True),
             (502, "Bad Gateway", None, True)]
    for status, description, retry_after, retryable in cases:
        tg.api.fail("sendMessage", status, description, retry_after=retry_after)
        with pytest.raises(ChannelSendError) as caught:
            await tg.channel.send(reply)
        assert (status, caught.value.retryable) == (status, retryable)
        assert str(CHAT) not in str(caught.value) and caught.value.__cause__ is None
    assert await tg.channel.send(reply) == "1001"  # the next attempt goes through
    assert tg.api.sent_texts() == [reply.text]


async def test_an_unreachable_bot_api_is_a_retryable_failure(tg: Tg) -> None:
    telegram = tg.config.channels.telegram.model_copy(
        update={"api_base_url": f"http://127.0.0.1:{free_port()}"})
    config = tg.config.model_copy(update={"channels": tg.config.channels.model_copy(
        update={"telegram": telegram})})
    channel = TelegramChannel(config, intake=tg.runtime.intake, store=tg.runtime.store,
                              hasher=tg.runtime.settings.keys.hasher,
                              secrets={"TELEGRAM_BOT_TOKEN": TOKEN})
    try:
        with pytest.raises(ChannelSendError) as caught:
            await channel.send(Outbound(conversation_id="telegram:x", channel="telegram",
                                        recipient=str(CHAT), text="hello"))
        assert caught.value.retryable
    finally:
        await channel.stop()
        await channel.stop()  # idempotent


async def test_long_replies_are_split_on_line_and_word_boundaries(tg: Tg) -> None:
    lines = [f"Line {n}: " + "word " * 30 for n in range(120)]  # ~19 000 characters
    text = "\n".join(line.strip() for line in lines)
    provider_id = await tg.channel.send(Outbound(conversation_id="telegram:x",
                                                 channel="telegram", recipient=str(CHAT),
                                                 text=text))
    parts = tg.api.sent_texts()
    assert len(parts) == 5 and all(len(part) <= 4096 for part in parts)
    assert all(part.startswith("Line ") and part.endswith("word") for part in parts)
    assert "\n".join(parts) == text
    assert provider_id == ",".join(str(1001 + n) for n in range(5))


def test_split_text_counts_utf16_units_and_cuts_words_only_when_it_must() -> None:
    assert split_text("short") == ["short"]
    emoji = "\U0001f600" * 3000  # 6000 UTF-16 units, no spaces
    parts = split_text(emoji)
    assert [len(p.encode("utf-16-le")) // 2 for p in parts] == [4096, 6000 - 4096]
    assert "".join(parts) == emoji
    words = "a" * 4000 + " " + "b" * 200
    assert split_text(words) == ["a" * 4000, "b" * 200]


# --- registration, modes, secrets ----------------------------------------------------------

async def test_register_webhook_sets_url_secret_and_update_types(tg: Tg) -> None:
    assert await tg.channel.register_webhook() == f"{PUBLIC_URL}/webhooks/telegram"
    assert await register_webhook(tg.config, {"TELEGRAM_BOT_TOKEN": TOKEN,
                                              "TELEGRAM_WEBHOOK_SECRET": SECRET}) \
        == f"{PUBLIC_URL}/webhooks/telegram"
    calls = tg.api.calls_of("setWebhook")
    assert len(calls) == 2
    for call in calls:
        assert call.params["url"] == f"{PUBLIC_URL}/webhooks/telegram"
        assert call.params["secret_token"] == SECRET
        assert call.params["allowed_updates"] == ["message"]
        assert call.params.get("drop_pending_updates") in (None, "false")  # keep pending ones
    plain = tg.config.model_copy(update={"app": tg.config.app.model_copy(
        update={"public_base_url": "http://127.0.0.1:8000"})})
    with pytest.raises(ConfigError, match="https"):
        await register_webhook(plain, {"TELEGRAM_BOT_TOKEN": TOKEN,
                                       "TELEGRAM_WEBHOOK_SECRET": SECRET})


async def test_polling_mode_receives_updates_from_get_updates_and_replies(
        start_tg: StartTg) -> None:
    tg = await start_tg(mode="polling", secrets={"TELEGRAM_BOT_TOKEN": TOKEN})
    await tg.api.push_update(message_update("hello from polling"))
    last = message_update("/start")
    await tg.api.push_update(last)
    assert await tg.deliver(2) == [channel_text(tg.config, "telegram_start", "en"),
                                   tg.config.text("handoff_ack")]
    polls = tg.api.calls_of("getUpdates")
    assert polls[0].params["allowed_updates"] == ["message"]
    for _ in range(100):  # the next poll confirms both updates
        if any(int(p.params.get("offset", 0)) == last["update_id"] + 1
               for p in tg.api.calls_of("getUpdates")):
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("updates were never confirmed")
    # No secret in polling mode: the webhook accepts nothing.
    assert (await tg.post(message_update(), secret="")).status_code == 401
    await tg.channel.stop()
    await tg.channel.stop()


def enabled_config(config_dir: Path, *, mode: str) -> Config:
    enable_telegram(config_dir, "http://127.0.0.1:9", mode=mode)
    return load_config(config_dir)


def test_webhook_mode_without_the_secret_refuses_to_start(config_dir: Path) -> None:
    env = {**key_env(), "TELEGRAM_BOT_TOKEN": TOKEN}
    with pytest.raises(SecretsError, match="TELEGRAM_WEBHOOK_SECRET") as caught:
        load_settings(enabled_config(config_dir, mode="webhook"), env)
    assert TOKEN not in str(caught.value)
    # Polling needs no webhook secret.
    assert load_settings(enabled_config(config_dir, mode="polling"), env).secrets == {
        "TELEGRAM_BOT_TOKEN": TOKEN}
    # And `patientbot serve` itself exits naming the variable.
    enable_telegram(config_dir, "http://127.0.0.1:9", mode="webhook")
    proc_env = {key: value for key, value in os.environ.items()
                if not key.startswith("TELEGRAM_")}
    result = subprocess.run(
        [sys.executable, "-m", "bot.app.cli", "serve", "--config", str(config_dir),
         "--port", str(free_port())], env={**proc_env, **env}, cwd=config_dir.parent,
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "TELEGRAM_WEBHOOK_SECRET" in result.stderr and TOKEN not in result.stderr


async def test_a_malformed_token_or_secret_is_refused_without_echoing_it(tg: Tg) -> None:
    options = {"intake": tg.runtime.intake, "store": tg.runtime.store,
               "hasher": tg.runtime.settings.keys.hasher}
    with pytest.raises(SecretsError, match="TELEGRAM_BOT_TOKEN") as bad_token:
        TelegramChannel(tg.config, **options, secrets={"TELEGRAM_BOT_TOKEN": "not a token",
                                                       "TELEGRAM_WEBHOOK_SECRET": SECRET})
    assert "not a token" not in str(bad_token.value)
    with pytest.raises(SecretsError, match="TELEGRAM_WEBHOOK_SECRET") as bad_secret:
        TelegramChannel(tg.config, **options, secrets={"TELEGRAM_BOT_TOKEN": TOKEN,
                                                       "TELEGRAM_WEBHOOK_SECRET": "has space"})
    assert "has space" not in str(bad_secret.value)
