"""The SMS channel against our real HTTP app (uvicorn), real Redis, real workers, and a local
stand-in for Twilio's Messages API (tests/support/twilio_api.py). Webhooks are signed with
twilio's own RequestValidator, for the configured public URL."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY
from twilio.request_validator import RequestValidator

from bot.app.runtime import Runtime
from bot.config.loader import load_config
from bot.config.settings import Settings
from bot.core.crypto import KeyMaterial
from bot.core.envelopes import AttachmentMeta, Inbound, Outbound
from bot.core.session import Session
from bot.engine.decision import Decision
from bot.messaging.delivery import ChannelSendError, channel_text
from bot.ops.logs import configure_logging
from channels.sms.adapter import (
    EMPTY_TWIML,
    SmsChannel,
    encoding_of,
    fit_segments,
    match_keyword,
    message_bodies,
    segments,
)
from tests.conftest import redis_url, run_workers_until, serve_app
from tests.support.twilio_api import FakeTwilio

TOKEN = "twilio-test-auth-token-0123456789"
ACCOUNT = "AC" + "5a" * 16
OUR_NUMBER = "+16175550100"
PATIENT = "+16175550142"
PUBLIC = "https://bot.clinic.example"  # what Twilio calls; the app itself is on 127.0.0.1
SMS_URL = PUBLIC + "/webhooks/twilio/sms"
STATUS_URL = PUBLIC + "/webhooks/twilio/status"
ECHO_REPLY = "Thanks, we got your message."
PHI_REPLY = "Your visit with Dr Quill is on Tuesday at 9:00."


def new_sid(prefix: str = "SM") -> str:
    return prefix + uuid.uuid4().hex


def sign(url: str, params: dict[str, str]) -> str:
    return RequestValidator(TOKEN).compute_signature(url, params)


def sms_params(body: str, *, sid: str | None = None, sender: str = PATIENT,
               media: tuple[tuple[str, str], ...] = ()) -> dict[str, str]:
    """A webhook as Twilio sends it for an incoming SMS/MMS."""
    sid = sid or new_sid("MM" if media else "SM")
    params = {"ToCountry": "US", "ToState": "MA", "SmsMessageSid": sid,
              "NumMedia": str(len(media)), "ToCity": "BOSTON", "FromZip": "02108",
              "SmsSid": sid, "FromState": "MA", "SmsStatus": "received", "FromCity": "BOSTON",
              "Body": body, "FromCountry": "US", "To": OUR_NUMBER, "ToZip": "02108",
              "NumSegments": "1", "MessageSid": sid, "AccountSid": ACCOUNT, "From": sender,
              "ApiVersion": "2010-04-01"}
    for i, (content_type, url) in enumerate(media):
        params[f"MediaContentType{i}"] = content_type
        params[f"MediaUrl{i}"] = url
    return params


class EchoStep:
    """A decision step that answers every message (and remembers what it saw):
    "phi ..." gets a reply that discloses PHI, "long N" a reply of N words."""

    def __init__(self, config) -> None:
        self.seen: list[Inbound] = []

    async def decide(self, inbound: Inbound, session: Session, *, now: datetime) -> Decision:
        self.seen.append(inbound)
        if inbound.text.startswith("phi "):
            return Decision(code="echo", replies=(PHI_REPLY,), phi=True)
        if inbound.text.startswith("long "):
            words = int(inbound.text.split()[1])
            return Decision(code="echo", replies=(" ".join(f"w{i}" for i in range(words)),))
        return Decision(code="echo", replies=(ECHO_REPLY,))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@dataclass
class SmsLive:
    url: str
    runtime: Runtime
    client: httpx.AsyncClient
    twilio: FakeTwilio

    @property
    def channel(self) -> SmsChannel:
        [channel] = [c for c in self.runtime.patient_channels if c.name == "sms"]
        assert isinstance(channel, SmsChannel)
        return channel

    async def post(self, path: str, params: dict[str, str], *, signature: str | None = "auto",
                   signed_url: str | None = None, **headers: str) -> httpx.Response:
        if signature == "auto":
            signature = sign(signed_url or PUBLIC + path, params)
        if signature is not None:
            headers["x-twilio-signature"] = signature
        headers.setdefault("content-type", "application/x-www-form-urlencoded")
        return await self.client.post(path, content=urlencode(params), headers=headers)

    async def sms(self, body: str, **kwargs: Any) -> httpx.Response:
        signature = kwargs.pop("signature", "auto")
        return await self.post("/webhooks/twilio/sms", sms_params(body, **kwargs),
                               signature=signature)

    def conversation(self, sender: str = PATIENT):
        return self.runtime.ingress.conversation_key("sms", sender)

    async def queued(self) -> list[Inbound]:
        """What is waiting in the ingress queue (taken out of it: use at the end)."""
        entries = await self.runtime.ingress.queue.read("probe", count=500, block=0.05)
        return [self.runtime.ingress.open(entry) for entry in entries]

    async def process(self, messages: int, *, sent: int = 0, sender: str = PATIENT) -> None:
        """Run real workers until `messages` messages of the conversation are done and the
        fake has received at least `sent` messages."""
        key = self.conversation(sender)

        async def done() -> bool:
            session = await self.runtime.store.get_session(key)
            return (session is not None and session.last_seq >= messages
                    and len(self.twilio.messages) >= sent
                    and await self.runtime.ingress.queue.pending() == 0)

        await run_workers_until(self.runtime, done)

    async def wait_for_messages(self, count: int, timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.twilio.messages) < count:
            assert asyncio.get_running_loop().time() < deadline, "no message reached Twilio"
            await asyncio.sleep(0.02)


def configure(config_dir: Path, twilio_url: str, *, limits: dict[str, int],
              sms: dict[str, Any]) -> None:
    path = config_dir / "channels.yml"
    channels = yaml.safe_load(path.read_text())
    channels["limits"].update(limits)
    channels["sms"].update({"enabled": True, "account_sid": ACCOUNT, "from_number": OUR_NUMBER,
                            "api_base_url": twilio_url, **sms})
    path.write_text(yaml.safe_dump(channels))
    app = config_dir / "app.yml"
    text = app.read_text()
    assert "public_base_url: http://127.0.0.1:8000" in text
    app.write_text(text.replace("public_base_url: http://127.0.0.1:8000",
                                f"public_base_url: {PUBLIC}"))


@asynccontextmanager
async def serve(config_dir: Path, settings: Settings, twilio: FakeTwilio, *,
                engine: bool = False, limits: dict[str, int] | None = None,
                sms: dict[str, Any] | None = None) -> AsyncIterator[SmsLive]:
    """Our real app under uvicorn with SMS enabled; no in-process workers (tests run them)."""
    configure(config_dir, twilio.url, limits=limits or {}, sms=sms or {})
    runtime = Runtime.build(load_config(config_dir), settings,
                            decision_step=None if engine else EchoStep)
    async with serve_app(runtime) as url, \
            httpx.AsyncClient(base_url=url, timeout=10) as client:
        yield SmsLive(url, runtime, client, twilio)


@pytest.fixture(params=["redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Redis by default; cheap tests parametrise memory too."""
    return request.param


@pytest.fixture
def settings(backend: str, keys: KeyMaterial, prefix: str, redis_client) -> Settings:
    return Settings(redis_url=redis_url() if backend == "redis" else None, redis_prefix=prefix,
                    keys=keys, secrets={"TWILIO_AUTH_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def twilio_server() -> Iterator[FakeTwilio]:
    with FakeTwilio(ACCOUNT, TOKEN) as fake:
        yield fake


@pytest.fixture
def twilio(twilio_server: FakeTwilio) -> FakeTwilio:
    twilio_server.reset()
    return twilio_server


@pytest.fixture
async def live(config_dir: Path, settings: Settings, twilio: FakeTwilio
               ) -> AsyncIterator[SmsLive]:
    async with serve(config_dir, settings, twilio) as running:
        yield running


# --- the full path ----------------------------------------------------------------------
async def test_a_signed_webhook_gets_the_engines_reply_through_the_messages_api(
        config_dir, settings, twilio) -> None:
    async with serve(config_dir, settings, twilio, engine=True) as live:
        response = await live.sms("hi")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/xml")
        assert response.text == EMPTY_TWIML
        await live.process(1, sent=1)
        [message] = twilio.messages
        assert message["To"] == PATIENT and message["From"] == OUR_NUMBER
        assert message["StatusCallback"] == STATUS_URL
        assert "How can we help you today?" in message["Body"]
        assert all(r.authorized for r in twilio.requests)
        assert twilio.requests[0].path == f"/2010-04-01/Accounts/{ACCOUNT}/Messages.json"

        # A refill request starts the identity check, on the same conversation.
        assert (await live.sms("I need a refill of my prescription")).status_code == 200
        await live.process(2, sent=2)
        assert "confirm who you are" in twilio.messages[1]["Body"]
        session = await live.runtime.store.get_session(live.conversation())
        assert session is not None and session.sender == PATIENT


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_national_number_is_normalised_to_e164(live, backend) -> None:
    assert (await live.sms("hello", sender="(617) 555-0142")).status_code == 200
    await live.process(1, sent=1)
    assert [m["To"] for m in live.twilio.messages] == [PATIENT]


async def test_webhooks_without_a_valid_signature_are_refused(live) -> None:
    params = sms_params("please call me")
    cases: dict[str, str | None] = {
        "unsigned": None,
        "empty": "",
        "bad": "c2lnbmF0dXJlIHRoYXQgaXMgbm90IHZhbGlk",
        # Signed for the URL the app really listens on: not what Twilio was configured with.
        "own_host": sign(live.url + "/webhooks/twilio/sms", params),
        "other_path": sign(PUBLIC + "/webhooks/twilio/status", params),
        "tampered": sign(SMS_URL, {**params, "Body": "something else"}),
        "other_token": RequestValidator("another-token").compute_signature(SMS_URL, params),
    }
    before = metric("patientbot_messages_rejected_total", channel="sms", reason="bad_signature")
    for case, signature in cases.items():
        response = await live.post("/webhooks/twilio/sms", params, signature=signature)
        assert (response.status_code, response.json()) == (403, {"error": "Forbidden."}), case
    assert metric("patientbot_messages_rejected_total", channel="sms",
                  reason="bad_signature") == before + len(cases)
    assert await live.queued() == []
    assert await live.runtime.store.get_session(live.conversation()) is None
    assert live.twilio.requests == []
    # The same request, signed for the configured public URL, is accepted.
    assert (await live.post("/webhooks/twilio/sms", params)).status_code == 200
    assert len(await live.queued()) == 1


async def test_a_replayed_message_sid_gets_one_reply(live) -> None:
    params = sms_params("can someone call me back")
    for _ in range(3):
        response = await live.post("/webhooks/twilio/sms", params)
        assert response.status_code == 200 and response.text == EMPTY_TWIML
    await live.process(3, sent=1)
    await asyncio.sleep(0.2)
    assert live.twilio.bodies() == [ECHO_REPLY]


async def test_phi_replies_point_to_the_portal(live) -> None:
    await live.sms("phi when is my visit")
    await live.process(1, sent=1)
    [body] = live.twilio.bodies()
    assert "Quill" not in body
    assert body == channel_text(live.runtime.config, "phi_redirect")
    assert f"{PUBLIC}/portal/" in body


# --- keywords ------------------------------------------------------------------------
async def test_stop_keywords_in_any_form_opt_out_with_one_confirmation(live) -> None:
    variants = [("STOP", "en"), ("ALTO", "es"), ("ＳＴＯＰ", "en"), (" stop! ", "en"),
                ("Unsubscribe.", "en"), ("ЅТОР", "en"), ("¡Cancelar!", "es"), ("end", "en"),
                ("Opt-Out", "en"), ("parar", "es"), ("baja", "es"), ("quit", "en")]
    for i, (word, language) in enumerate(variants):
        number = f"+1617555{1000 + i}"
        response = await live.sms(word, sender=number)
        assert (response.status_code, response.text) == (200, EMPTY_TWIML), word
        stopped = channel_text(live.runtime.config, "sms_stopped", language)
        assert live.twilio.bodies(number) == [stopped], word
        assert await live.channel.opted_out(number), word
    assert await live.queued() == []
    # Replayed, or raced by another STOP: still one confirmation.
    racer = "+16175551999"
    first = sms_params("STOP", sender=racer)
    responses = await asyncio.gather(
        *(live.post("/webhooks/twilio/sms", params)
          for params in (first, first, sms_params("stop", sender=racer), first)))
    assert [r.status_code for r in responses] == [200] * 4
    assert live.twilio.bodies(racer) == [channel_text(live.runtime.config, "sms_stopped")]


async def test_stop_opts_out_confirms_once_and_later_replies_are_refused(live) -> None:
    assert (await live.sms("STOP")).status_code == 200
    stopped = channel_text(live.runtime.config, "sms_stopped")
    assert live.twilio.bodies() == [stopped]
    assert await live.channel.opted_out(PATIENT)
    # Another STOP is not confirmed again; nothing of either is queued.
    assert (await live.sms("stop")).status_code == 200
    assert live.twilio.bodies() == [stopped]

    # A later message still reaches the pipeline (nothing is lost), but its reply is refused
    # and closed at once rather than retried forever.
    assert (await live.sms("I have a question about my bill")).status_code == 200
    await live.process(1)
    await asyncio.sleep(0.1)
    assert live.twilio.bodies() == [stopped]
    [entry] = [e for e in await live.runtime.audit.entries()
               if e.event.action == "reply.undeliverable"]
    outbound_id = entry.event.ref.split(":", 1)[1]
    assert await live.runtime.store.outbox_status(outbound_id) == "undeliverable"  # closed
    assert await live.runtime.store.claim_outbox(limit=10, lease_seconds=1) == []
    with pytest.raises(ChannelSendError) as refused:
        await live.channel.send(Outbound(conversation_id=live.conversation().id, channel="sms",
                                         recipient=PATIENT, text="agent reply"))
    assert refused.value.retryable is False


async def test_start_resumes_help_answers_and_yes_is_an_ordinary_answer(live) -> None:
    config = live.runtime.config
    await live.sms("yes")  # not opted out: an answer for the conversation
    await live.process(1, sent=1)
    assert live.twilio.bodies() == [ECHO_REPLY]

    await live.sms("STOP")
    await live.sms("Start")
    await live.sms("help")
    await live.sms("AYUDA")
    assert live.twilio.bodies()[1:] == [
        channel_text(config, "sms_stopped"), channel_text(config, "sms_started"),
        channel_text(config, "sms_help"), channel_text(config, "sms_help", "es")]
    assert not await live.channel.opted_out(PATIENT)
    assert "Riverside Family Clinic" in live.twilio.bodies()[-1]

    # YES re-subscribes a number that opted out.
    await live.sms("stop")
    await live.sms("Yes!")
    assert live.twilio.bodies()[-1] == channel_text(config, "sms_started")
    await live.sms("thanks")
    await live.process(2, sent=8)
    assert live.twilio.bodies()[-1] == ECHO_REPLY
    assert [i.text for i in live.runtime.decision_step.seen] == ["yes", "thanks"]


async def test_a_replayed_keyword_is_answered_once(live) -> None:
    params = sms_params("HELP")
    for _ in range(3):
        assert (await live.post("/webhooks/twilio/sms", params)).status_code == 200
    assert live.twilio.bodies() == [channel_text(live.runtime.config, "sms_help")]
    assert await live.queued() == []


async def test_a_keyword_reply_falls_back_to_twiml_when_the_api_fails(live) -> None:
    live.twilio.fail_next(503, times=3)
    response = await live.sms("STOP")
    assert response.status_code == 200
    stopped = channel_text(live.runtime.config, "sms_stopped")
    assert response.text == ('<?xml version="1.0" encoding="UTF-8"?><Response><Message>'
                             f"{stopped}</Message></Response>")
    assert await live.channel.opted_out(PATIENT)


def test_keywords_match_only_whole_messages() -> None:
    assert match_keyword("Stop sending me these") is None
    assert match_keyword("cancel my appointment") is None
    assert match_keyword("stop2") is None
    assert match_keyword("ＨＥＬＰ") == ("help", "en")
    assert match_keyword("opt-out") == ("stop", "en")
    assert match_keyword("  Parar.  ") == ("stop", "es")
    assert match_keyword("Comenzar") == ("start", "es")
    assert match_keyword("YES") is None and match_keyword("YES", opted_out=True)[0] == "start"


# --- MMS -------------------------------------------------------------------------------
async def test_mms_media_is_never_fetched_the_patient_is_told_and_the_text_goes_on(
        live) -> None:
    sid = new_sid("MM")
    media_base = f"{live.twilio.url}/2010-04-01/Accounts/{ACCOUNT}/Messages/{sid}/Media"
    params = sms_params("here is my insurance card", sid=sid, media=(
        ("image/jpeg", f"{media_base}/ME{uuid.uuid4().hex}"),
        ("application/pdf; name=x", f"{media_base}/ME{uuid.uuid4().hex}")))
    for _ in range(2):  # a replay does not repeat the notice
        response = await live.post("/webhooks/twilio/sms", params)
        assert response.status_code == 200 and response.text == EMPTY_TWIML
    await live.process(2, sent=2)
    await asyncio.sleep(0.1)
    notice = channel_text(live.runtime.config, "attachments_not_accepted")
    assert sorted(live.twilio.bodies()) == sorted([notice, ECHO_REPLY])
    assert [r.method for r in live.twilio.requests] == ["POST", "POST"]
    assert not any("/Media" in r.path for r in live.twilio.requests)
    [seen] = live.runtime.decision_step.seen
    assert seen.text == "here is my insurance card"
    assert seen.attachments == (AttachmentMeta("image/jpeg", None),
                                AttachmentMeta("application/pdf", None))


# --- outbound --------------------------------------------------------------------------
def test_gsm7_and_ucs2_segments() -> None:
    assert encoding_of("Hello @ £5 ¿qué?").name == "GSM-7"
    assert len(segments("a" * 160)) == 1
    assert [len(s) for s in segments("a" * 161)] == [153, 8]
    # Extension characters take two septets: 80 of them fill one segment, 81 need two.
    for char in "€[]{}^~|\\":
        assert encoding_of(char * 10).name == "GSM-7"
        assert len(segments(char * 80)) == 1
        assert len(segments(char * 81)) == 2
    assert [len(s) for s in segments("€" * 81)] == [76, 5]  # 153 septets: no split escape
    # Anything outside GSM-7 (an emoji, most accents) makes the whole message UCS-2.
    assert encoding_of("ok 😀").name == "UCS-2" and encoding_of("está").name == "UCS-2"
    assert len(segments("á" * 70)) == 1 and len(segments("á" * 71)) == 2
    assert [len(s) for s in segments("😀" * 40)] == [33, 7]  # 66 + 14 UTF-16 units
    assert len(segments("x" * 69 + "😀")) == 2  # 71 UTF-16 units


def test_segments_are_cut_at_word_boundaries() -> None:
    text = " ".join(["appointment"] * 40)
    parts = segments(text)
    assert len(parts) > 1
    assert all(p.split() == ["appointment"] * len(p.split()) for p in parts)
    assert all(len(p) <= 153 for p in parts)
    assert " ".join(parts) == text


def test_replies_over_max_segments_are_cut_with_a_portal_pointer() -> None:
    pointer = " ... Read the rest in the patient portal: https://bot.clinic.example/portal/"
    text = " ".join(f"word{i}" for i in range(400))
    cut = fit_segments(text, 3, pointer)
    assert len(segments(cut)) == 3
    assert cut.endswith(pointer) and text.startswith(cut[:-len(pointer)])
    assert cut[:-len(pointer)].split()[-1].startswith("word")  # whole words only
    assert fit_segments("short", 1, pointer) == "short"
    # UCS-2 text is cut in 67-unit segments.
    assert len(segments(fit_segments("día " * 200, 2, pointer))) == 2


def test_long_replies_leave_in_as_few_requests_as_twilio_allows() -> None:
    assert message_bodies("word " * 300) == ["word " * 300]  # 1500 chars: one request
    text = " ".join(f"w{i:04d}" for i in range(500))  # 2999 chars
    bodies = message_bodies(text)
    assert len(bodies) == 2 and all(len(b) <= 1600 for b in bodies)
    assert " ".join(bodies) == text


async def test_send_splits_truncates_and_sends_in_order(config_dir, settings, twilio) -> None:
    async with serve(config_dir, settings, twilio, sms={"max_segments": 20}) as live:
        words = " ".join(f"w{i:04d}" for i in range(600))  # 24 segments
        sid = await live.channel.send(Outbound(conversation_id=live.conversation().id,
                                               channel="sms", recipient=PATIENT, text=words))
        assert sid == twilio.messages[0]["sid"] and sid.startswith("SM")
        bodies = twilio.bodies()
        assert len(bodies) == 2 and all(len(b) <= 1600 for b in bodies)
        assert bodies[0].startswith("w0000 w0001")
        assert bodies[1].endswith(f"{PUBLIC}/portal/")
        assert sum(len(segments(b)) for b in bodies) <= 20


async def test_messages_api_errors_map_to_retryable_or_not(live, capsys) -> None:
    configure_logging(production=True)
    cases = [(429, 20429, True), (500, None, True), (503, None, True), (401, 20003, True),
             (400, 21211, False), (400, 21610, False), (404, 20404, False)]
    for i, (status, code, retryable) in enumerate(cases):
        number = f"+1617555{2000 + i}"
        live.twilio.fail_next(status, code)
        with pytest.raises(ChannelSendError) as failed:
            await live.channel.send(Outbound(conversation_id=live.conversation(number).id,
                                             channel="sms", recipient=number,
                                             text="CANARY-OUT-771 your reply"))
        assert failed.value.retryable is retryable, (status, code)
        # Twilio says the number unsubscribed: we stop sending to it too.
        assert await live.channel.opted_out(number) is (code == 21610), (status, code)
    assert live.twilio.messages == []
    logs = capsys.readouterr()
    for needle in ("617555", "CANARY-OUT-771"):
        assert needle not in logs.err + logs.out


async def test_a_timeout_is_retryable(config_dir, settings, twilio) -> None:
    async with serve(config_dir, settings, twilio, sms={"timeout_seconds": 0.3}) as live:
        twilio.fail_next(500, delay=1.0)
        with pytest.raises(ChannelSendError) as failed:
            await live.channel.send(Outbound(conversation_id=live.conversation().id,
                                             channel="sms", recipient=PATIENT, text="hello"))
        assert failed.value.retryable is True


async def test_a_failed_send_is_retried_by_the_outbox(live) -> None:
    live.twilio.fail_next(503)
    await live.sms("hello")
    await live.process(1)
    assert live.twilio.bodies() == []
    await asyncio.sleep(1.1)  # the first retry delay
    assert await live.runtime.dispatcher.sweep() == 1
    assert live.twilio.bodies() == [ECHO_REPLY]


# --- delivery receipts -------------------------------------------------------------------
async def test_status_callbacks_are_recorded_and_forged_ones_refused(live) -> None:
    sid = await live.channel.send(Outbound(conversation_id=live.conversation().id,
                                           channel="sms", recipient=PATIENT, text="hello"))
    before = metric("patientbot_sms_status_total", status="delivered")

    async def status(value: str, *, message_sid: str = sid, **kwargs: Any) -> httpx.Response:
        params = {"AccountSid": ACCOUNT, "MessageSid": message_sid, "SmsSid": message_sid,
                  "MessageStatus": value, "SmsStatus": value, "To": PATIENT,
                  "From": OUR_NUMBER, "ApiVersion": "2010-04-01"}
        return await live.post("/webhooks/twilio/status", params, **kwargs)

    for value in ("sent", "delivered"):
        response = await status(value)
        assert response.status_code == 200 and response.content == b""
    assert await live.channel.delivery_status(sid) == "delivered"
    assert metric("patientbot_sms_status_total", status="delivered") == before + 1
    await status("sent")  # late and out of order: the final status stays
    assert await live.channel.delivery_status(sid) == "delivered"

    forged = await status("undelivered", signature="Zm9yZ2Vk")
    assert forged.status_code == 403
    unsigned = await status("failed", signature=None)
    assert unsigned.status_code == 403
    wrong_url = await status("failed", signed_url=SMS_URL)
    assert wrong_url.status_code == 403
    assert await live.channel.delivery_status(sid) == "delivered"

    unknown = new_sid()
    assert (await status("failed", message_sid=unknown)).status_code == 200
    assert await live.channel.delivery_status(unknown) is None
    metrics_text = (await live.client.get("/metrics")).text
    assert 'patientbot_sms_status_total{status="delivered"}' in metrics_text


# --- bad input ---------------------------------------------------------------------------
CANARY_NUMBER = "+16175550177"
CANARY_TEXT = "CANARY-SMS-3141 my rash is spreading"


def _bad_requests(limit: int) -> list[tuple[str, dict[str, str], bytes, int]]:
    form = "application/x-www-form-urlencoded"
    valid = sms_params(CANARY_TEXT, sender=CANARY_NUMBER)
    no_from = {k: v for k, v in valid.items() if k != "From"}
    no_sid = {k: v for k, v in valid.items() if k != "MessageSid"}
    too_long = sms_params(CANARY_TEXT + " " + "x" * limit, sender=CANARY_NUMBER)
    bogus = sign(SMS_URL, valid)
    return [
        ("json", {"content-type": "application/json", "x-twilio-signature": bogus},
         json.dumps(valid).encode(), 415),
        ("multipart", {"content-type": "multipart/form-data; boundary=x",
                       "x-twilio-signature": bogus}, b"--x--", 415),
        ("oversized", {"content-type": form, "x-twilio-signature": bogus},
         urlencode({**valid, "Body": "y" * 70_000}).encode(), 413),
        ("invalid_utf8", {"content-type": form, "x-twilio-signature": bogus},
         urlencode(valid).encode() + b"&Extra=%FF%FE", 400),
        ("raw_invalid_utf8", {"content-type": form, "x-twilio-signature": bogus},
         b"Body=\xff\xfe&" + urlencode(valid).encode(), 400),
        ("malformed", {"content-type": form, "x-twilio-signature": bogus},
         urlencode(valid).encode() + b"&&novalue", 400),
        ("repeated", {"content-type": form, "x-twilio-signature": bogus},
         urlencode(valid).encode() + b"&Body=again", 400),
        ("missing_from", {"content-type": form, "x-twilio-signature": sign(SMS_URL, no_from)},
         urlencode(no_from).encode(), 400),
        ("missing_sid", {"content-type": form, "x-twilio-signature": sign(SMS_URL, no_sid)},
         urlencode(no_sid).encode(), 400),
        ("bad_from", {"content-type": form, "x-twilio-signature": sign(
            SMS_URL, {**valid, "From": "not-a-number"})},
         urlencode({**valid, "From": "not-a-number"}).encode(), 400),
        ("too_long", {"content-type": form, "x-twilio-signature": sign(SMS_URL, too_long)},
         urlencode(too_long).encode(), 413),
    ]


async def test_bad_requests_are_refused_clearly_and_leak_nothing(live, capsys) -> None:
    configure_logging(production=True)
    limit = live.runtime.config.app.limits.max_message_chars
    errors = []
    for case, headers, body, status in _bad_requests(limit):
        response = await live.client.post("/webhooks/twilio/sms", content=body,
                                          headers=headers)
        assert response.status_code == status, case
        error = response.json()["error"]
        assert 0 < len(error) < 80 and "Traceback" not in response.text, case
        if case == "too_long":
            assert str(limit) in error
        errors.append(error)
    assert await live.queued() == []
    assert await live.runtime.store.get_session(live.conversation(CANARY_NUMBER)) is None
    assert live.twilio.requests == []
    logs = capsys.readouterr()
    events = [json.loads(line) for line in logs.err.splitlines() if line.startswith("{")]
    assert {e.get("reason") for e in events if e.get("event") == "inbound refused"} == {
        "unsupported_media_type", "too_large", "malformed", "too_long"}
    for needle in ("6175550177", "CANARY-SMS-3141", "rash"):
        assert needle not in logs.err + logs.out + " ".join(errors)


async def test_a_message_at_the_limit_is_accepted(live) -> None:
    limit = live.runtime.config.app.limits.max_message_chars
    assert (await live.sms("a" * limit)).status_code == 200
    [queued] = await live.queued()
    assert len(queued.text) == limit


# --- floods ------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_flood_from_one_number_is_cut_at_the_rate_limit_and_counted(live,
                                                                            backend) -> None:
    per_minute = live.runtime.config.channels.limits.per_sender_per_minute
    before = metric("patientbot_messages_rejected_total", channel="sms", reason="rate_limited")
    statuses = [(await live.sms(f"message {i}")).status_code for i in range(100)]
    accepted, refused = statuses.count(200), statuses.count(429)
    assert accepted == per_minute and accepted + refused == 100
    assert statuses[:per_minute] == [200] * per_minute
    assert metric("patientbot_messages_rejected_total", channel="sms",
                  reason="rate_limited") == before + refused
    assert len(await live.queued()) == per_minute
    # Another number is not affected; keywords share the sender's budget.
    assert (await live.sms("hello", sender="+16175550143")).status_code == 200
    assert (await live.sms("HELP")).status_code == 429
    # STOP is recorded even in a flood (it is the one thing never to lose).
    assert (await live.sms("STOP")).status_code == 429
    assert await live.channel.opted_out(PATIENT)


async def test_the_reply_cap_stops_replies_to_a_conversation(config_dir, settings,
                                                             twilio) -> None:
    async with serve(config_dir, settings, twilio,
                     limits={"replies_per_conversation_per_hour": 2}) as live:
        before = metric("patientbot_replies_suppressed_total", channel="sms")
        for i in range(5):
            assert (await live.sms(f"auto-reply {i}")).status_code == 200
        await live.process(5, sent=2)
        await asyncio.sleep(0.1)
        assert twilio.bodies() == [ECHO_REPLY, ECHO_REPLY]
        assert metric("patientbot_replies_suppressed_total", channel="sms") == before + 3
        [ticket] = await live.runtime.store.tickets_in_lane("front_desk")
        assert ticket.reason == "reply_cap"


async def test_stop_is_idempotent_and_the_client_closes_once(live) -> None:
    await live.channel.stop()
    await live.channel.stop()
    with pytest.raises(ChannelSendError) as closed:
        await live.channel.send(Outbound(conversation_id=live.conversation().id,
                                         channel="sms", recipient=PATIENT, text="hello"))
    assert closed.value.retryable is True
