"""SMS through Twilio Programmable Messaging.

Inbound: `POST /webhooks/twilio/sms`. The X-Twilio-Signature is checked first, against the
configured public URL (`public_base_url` + path, so it holds behind a proxy), before any
field is read; then the sender is normalised to E.164 and the message goes through `Intake`
(rate limit, durable queue). Twilio gets empty TwiML only once the envelope is queued.

Carrier keywords (CTIA) are answered here, not by the pipeline, and never queued: STOP and
its synonyms record an opt-out (keyed hash of the number, kept for years) and are confirmed
once; START resumes; HELP answers. An opt-out is honoured by every send. Keyword replies go
straight to the Messages API; if that fails, the same text is returned as TwiML `<Message>`
so the patient still gets it.

MMS: media is never fetched. The envelope carries the content types only, and the patient
is told once per message (a direct send, deduplicated by MessageSid) that attachments are
not accepted; the text part goes to the pipeline as usual.

Outbound: `send` posts to the Messages API. Replies are measured in SMS segments (GSM-7 or
UCS-2) and cut with a portal pointer past `max_segments`; one request carries up to Twilio's
1600 characters (Twilio concatenates), longer replies leave as several messages in order.

Delivery receipts: `POST /webhooks/twilio/status` (same signature check) records the status of
our messages and counts it in `patientbot_sms_status_total`.

Logs carry codes only: never the number or the text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

import httpx
import phonenumbers
import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

from bot.config.loader import Config
from bot.core.crypto import Hasher
from bot.core.envelopes import AttachmentMeta, Inbound, Outbound, utcnow
from bot.core.errors import ConfigError, SecretsError
from bot.core.http import Refused, read_body
from bot.messaging.delivery import ChannelSendError, channel_text, portal_url
from bot.messaging.intake import Intake, IntakeResult, reject
from bot.ops import metrics
from bot.store import Store

log = structlog.get_logger("patientbot.sms")

CHANNEL = "sms"
SMS_PATH = "/webhooks/twilio/sms"
STATUS_PATH = "/webhooks/twilio/status"
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
TWILIO_MAX_CHARS = 1600  # one Messages API request; Twilio splits and concatenates segments
MAX_MEDIA = 10
OPT_OUT_TTL = 20 * 365 * 86400.0  # "forever": an opt-out ends only with START
SENT_TTL = 30 * 86400.0  # how long our message sids are known to the status webhook
FINAL_STATUSES = frozenset({"delivered", "undelivered", "failed", "canceled", "read"})
KNOWN_STATUSES = FINAL_STATUSES | {"accepted", "scheduled", "queued", "sending", "sent"}
UNSUBSCRIBED = 21610  # Twilio: the recipient replied STOP at the carrier/Twilio level
RETRYABLE_STATUS = frozenset({401, 403, 408, 409, 425, 429})  # credentials may be rotating

_SID = re.compile(r"^[A-Z]{2}[0-9a-fA-F]{32}$")
_MIME = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$")

# Kv namespaces (key names: keyed hashes and Twilio sids only).
NS_OPT_OUT = "sms-optout"
NS_KEYWORD = "sms-keyword"
NS_MEDIA_NOTICE = "sms-media-notice"
NS_SENT = "sms-sent"
NS_STATUS = "sms-status"
NS_PROGRESS = "sms-out"

# Short pointer appended to a reply cut at max_segments (GSM-7 only, so it does not force
# the whole reply into UCS-2).
TRUNCATION_POINTER = {
    "en": "... Read the rest in the patient portal: {url}",
    "es": "... Lea el resto en el portal del paciente: {url}",
}


# --------------------------------------------------------------------------------------
# Keywords
# --------------------------------------------------------------------------------------
class Keyword(StrEnum):
    STOP = "stop"
    START = "start"
    HELP = "help"


_KEYWORDS: dict[str, tuple[Keyword, str]] = {
    **{word: (Keyword.STOP, "en") for word in (
        "stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "revoke")},
    **{word: (Keyword.STOP, "es") for word in ("alto", "parar", "detener", "cancelar", "baja")},
    **{word: (Keyword.START, "en") for word in ("start", "unstop")},
    **{word: (Keyword.START, "es") for word in ("alta", "iniciar", "comenzar")},
    **{word: (Keyword.HELP, "en") for word in ("help", "info")},
    "ayuda": (Keyword.HELP, "es"),
}
# YES resumes only a number that opted out; otherwise it is an answer for the conversation.
_OPT_IN_IF_STOPPED = {"yes": "en"}

# Letters that look Latin but are not (Cyrillic, Greek), after casefolding; NFKC already
# folds full-width and compatibility forms.
_CONFUSABLES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ѕ": "s", "і": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ԁ": "d",
    "ӏ": "l", "ԛ": "q", "ԝ": "w", "ɡ": "g", "ı": "i",
    "α": "a", "β": "b", "ε": "e", "η": "h", "ι": "i", "κ": "k", "μ": "m", "ν": "n",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "y", "χ": "x", "ζ": "z",
})


def keyword_form(text: str) -> str:
    """The message reduced for keyword matching: NFKC (full-width), casefold, look-alike
    letters mapped, accents stripped, and everything but letters and digits removed."""
    if len(text) > 64:
        return ""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(_CONFUSABLES)
    stripped = "".join(c for c in unicodedata.normalize("NFKD", folded)
                       if not unicodedata.combining(c))
    return "".join(c for c in stripped if c.isalnum())


def match_keyword(text: str, *, opted_out: bool = False) -> tuple[Keyword, str] | None:
    """(keyword, language) when the whole message is a carrier keyword, else None."""
    form = keyword_form(text)
    if form in _KEYWORDS:
        return _KEYWORDS[form]
    if opted_out and form in _OPT_IN_IF_STOPPED:
        return Keyword.START, _OPT_IN_IF_STOPPED[form]
    return None


# --------------------------------------------------------------------------------------
# Segments
# --------------------------------------------------------------------------------------
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")  # escape + char: two septets each


@dataclass(frozen=True, slots=True)
class Encoding:
    name: str
    single: int  # units in a message of one segment
    part: int  # units per segment of a concatenated message (the rest is the UDH)


GSM7 = Encoding("GSM-7", 160, 153)
UCS2 = Encoding("UCS-2", 70, 67)


def encoding_of(text: str) -> Encoding:
    return GSM7 if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text) else UCS2


def _units(char: str, encoding: Encoding) -> int:
    if encoding is GSM7:
        return 2 if char in GSM7_EXTENSION else 1
    return 2 if ord(char) > 0xFFFF else 1  # UTF-16: a surrogate pair is two code units


def _joins_previous(char: str) -> bool:
    """Characters that must stay with the one before (a cut before them breaks a glyph)."""
    return bool(unicodedata.combining(char)) or char in "\u200d\ufe0f\ufe0e" \
        or 0x1F3FB <= ord(char) <= 0x1F3FF


def segment_spans(text: str) -> list[tuple[int, int]]:
    """Where the segments of `text` are, as (start, end) indices, cut at word boundaries
    where possible. A text that fits one segment is one span."""
    if not text:
        return []
    encoding = encoding_of(text)
    units = [_units(c, encoding) for c in text]
    if sum(units) <= encoding.single:
        return [(0, len(text))]
    spans: list[tuple[int, int]] = []
    start, n = 0, len(text)
    while start < n:
        while start < n and text[start].isspace():
            start += 1
        if start >= n:
            break
        used, end = 0, start
        while end < n and used + units[end] <= encoding.part:
            used += units[end]
            end += 1
        if end < n:
            # Cut at the last whitespace that fits; else (one very long word) mid-word,
            # but never inside a glyph.
            cut = next((i for i in range(end, start, -1) if text[i].isspace()), None)
            if cut is None:
                cut = end
                while cut > start + 1 and (_joins_previous(text[cut])
                                           or text[cut - 1] == "\u200d"):
                    cut -= 1
            end = cut
        piece_end = end
        while piece_end > start and text[piece_end - 1].isspace():
            piece_end -= 1
        spans.append((start, piece_end))
        start = end
    return spans


def segments(text: str) -> list[str]:
    """The SMS segments `text` takes (as cut at word boundaries)."""
    return [text[a:b] for a, b in segment_spans(text)]


def fit_segments(text: str, max_segments: int, pointer: str) -> str:
    """`text` if it fits `max_segments` segments; else the longest word-boundary prefix
    that fits together with `pointer` (a short portal link)."""
    spans = segment_spans(text)
    if len(spans) <= max_segments:
        return text
    if len(segment_spans(f"x{pointer}")) > max_segments:
        pointer = "..."  # a pointer that cannot fit at all (one segment, a long URL)
    limit = spans[max_segments - 1][1]
    cuts = [i for i in range(limit, 0, -1) if text[i - 1].isspace() or text[i].isspace()]
    for cut in [*cuts, *range(limit, 0, -1)]:
        candidate = f"{text[:cut].rstrip()}{pointer}"
        if len(segment_spans(candidate)) <= max_segments:
            return candidate
    return pointer.strip()


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def message_bodies(text: str) -> list[str]:
    """One body when Twilio can carry it in one request (it concatenates the segments);
    otherwise consecutive segments grouped into bodies of at most 1600 characters."""
    if _utf16_len(text) <= TWILIO_MAX_CHARS:
        return [text] if text.strip() else []
    bodies: list[str] = []
    group: tuple[int, int] | None = None
    for start, end in segment_spans(text):
        if group is not None and _utf16_len(text[group[0]:end]) <= TWILIO_MAX_CHARS:
            group = (group[0], end)
            continue
        if group is not None:
            bodies.append(text[group[0]:group[1]])
        group = (start, end)
    if group is not None:
        bodies.append(text[group[0]:group[1]])
    return bodies


# --------------------------------------------------------------------------------------
# The channel
# --------------------------------------------------------------------------------------
def e164(raw: str, region: str) -> str | None:
    """The number in E.164, or None when it is not a possible phone number."""
    if not raw or len(raw) > 32:
        return None
    try:
        number = phonenumbers.parse(raw.strip(), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _twiml_message(text: str) -> str:
    return ('<?xml version="1.0" encoding="UTF-8"?><Response><Message>'
            f"{escape(text)}</Message></Response>")


class SmsChannel:
    """Twilio SMS: webhooks in, Messages API out. See the module docstring."""

    name = CHANNEL
    phi_allowed: bool

    def __init__(self, config: Config, *, intake: Intake, store: Store, hasher: Hasher,
                 secrets: Mapping[str, str]) -> None:
        sms = config.channels.sms
        if not sms.account_sid:
            raise ConfigError("channels.yml", "sms.account_sid", "required when sms is enabled")
        if not sms.from_number:
            raise ConfigError("channels.yml", "sms.from_number", "required when sms is enabled")
        token = secrets.get("TWILIO_AUTH_TOKEN")
        if not token:
            raise SecretsError("TWILIO_AUTH_TOKEN is not set (channels.yml sms is enabled)")
        self._config = config
        self._sms = sms
        self.phi_allowed = self._sms.phi_allowed
        self._intake = intake
        self._store = store
        self._hasher = hasher
        self._validator = RequestValidator(token)
        self._public = config.app.public_base_url.rstrip("/")
        self._status_url = self._public + STATUS_PATH
        self._messages_url = (f"{sms.api_base_url.rstrip('/')}/2010-04-01/Accounts/"
                              f"{sms.account_sid}/Messages.json")
        self._dedupe_ttl = config.app.limits.dedupe_ttl_hours * 3600.0
        self._http = httpx.AsyncClient(auth=(sms.account_sid, token),
                                       timeout=sms.timeout_seconds,
                                       headers={"accept": "application/json"})

    # PatientChannel ---------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [Route(SMS_PATH, self.inbound, methods=["POST"]),
                Route(STATUS_PATH, self.status, methods=["POST"])]

    async def start(self) -> None:
        """Webhooks only: nothing to listen on."""

    async def stop(self) -> None:
        if not self._http.is_closed:
            await self._http.aclose()

    # opt-out ----------------------------------------------------------------------------
    def _opt_out_ref(self, number: str) -> str:
        return self._hasher.digest(number, purpose="sms-optout")

    async def opted_out(self, number: str) -> bool:
        return await self._store.kv_get(NS_OPT_OUT, self._opt_out_ref(number)) is not None

    async def delivery_status(self, message_sid: str) -> str | None:
        """The last delivery status Twilio reported for one of our messages."""
        record = await self._store.kv_get(NS_STATUS, message_sid)
        return None if record is None else record.get("status")

    # webhooks ---------------------------------------------------------------------------
    async def _verified_form(self, request: Request, path: str) -> dict[str, str]:
        """The request's form fields, once its Twilio signature is proven; raise Refused."""
        signature = request.headers.get("x-twilio-signature", "")
        if not signature:
            raise Refused(403, "bad_signature", "Forbidden.")
        media_type, _, options = request.headers.get("content-type", "").partition(";")
        charset = options.strip().lower().removeprefix("charset=").strip('"') or "utf-8"
        if media_type.strip().lower() != "application/x-www-form-urlencoded" \
                or charset not in ("utf-8", "utf8"):
            raise Refused(415, "unsupported_media_type",
                          "Expected application/x-www-form-urlencoded.")
        body = await read_body(request, self._sms.max_request_bytes)
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True,
                              strict_parsing=bool(body), encoding="utf-8", errors="strict",
                              max_num_fields=200)
        except ValueError:  # UnicodeDecodeError included
            raise Refused(400, "malformed", "Malformed form data.") from None
        params = dict(pairs)
        if len(params) != len(pairs):
            raise Refused(400, "malformed", "Repeated form fields.")
        # The URL Twilio was configured with (behind a proxy, not the request's own host).
        url = self._public + path + (f"?{request.url.query}" if request.url.query else "")
        if not self._validator.validate(url, params, signature):  # constant-time compare
            raise Refused(403, "bad_signature", "Forbidden.")
        return params

    def _refuse(self, err: Refused) -> Response:
        reject(CHANNEL, err.reason)
        return JSONResponse({"error": err.error}, status_code=err.status)

    def _inbound_from(self, params: dict[str, str]) -> Inbound:
        sid = params.get("MessageSid", "")
        raw_from = params.get("From", "")
        if not sid or not raw_from:
            raise Refused(400, "malformed", "Missing From or MessageSid.")
        if not _SID.match(sid):
            raise Refused(400, "malformed", "Malformed MessageSid.")
        sender = e164(raw_from, self._sms.region)
        if sender is None:
            raise Refused(400, "malformed", "From is not a phone number.")
        text = params.get("Body", "")
        limit = self._config.app.limits.max_message_chars
        if len(text) > limit:
            raise Refused(413, "too_long", f"Message too long: the limit is {limit} characters.")
        count = params.get("NumMedia", "0") or "0"
        if not count.isdigit() or int(count) > MAX_MEDIA:
            raise Refused(400, "malformed", "Malformed NumMedia.")
        attachments = tuple(
            AttachmentMeta(content_type=self._media_type(params.get(f"MediaContentType{i}")))
            for i in range(int(count)))
        return Inbound(channel=CHANNEL, sender=sender, provider_message_id=sid, text=text,
                       attachments=attachments)

    @staticmethod
    def _media_type(value: str | None) -> str:
        media_type = (value or "").split(";")[0].strip().lower()
        return media_type if _MIME.match(media_type) else "application/octet-stream"

    async def inbound(self, request: Request) -> Response:
        """POST /webhooks/twilio/sms."""
        try:
            inbound = self._inbound_from(await self._verified_form(request, SMS_PATH))
        except Refused as err:
            return self._refuse(err)
        opted_out = await self.opted_out(inbound.sender)
        keyword = match_keyword(inbound.text, opted_out=opted_out)
        if keyword is not None:
            return await self._keyword(inbound, *keyword)
        if await self._intake.accept(inbound) is IntakeResult.RATE_LIMITED:
            return JSONResponse({"error": "Too many messages; slow down."}, status_code=429)
        twiml = EMPTY_TWIML
        if inbound.attachments and not opted_out:
            twiml = await self._attachment_notice(inbound)
        return Response(twiml, media_type="text/xml")

    async def _attachment_notice(self, inbound: Inbound) -> str:
        """Tell the patient once per message (replays included) that media is not read."""
        if not await self._store.kv_create_all(NS_MEDIA_NOTICE, [inbound.provider_message_id],
                                               {"at": utcnow().isoformat()},
                                               ttl=self._dedupe_ttl):
            return EMPTY_TWIML
        log.info("sms attachments refused", attachments=len(inbound.attachments))
        text = channel_text(self._config, "attachments_not_accepted")
        return await self._direct_reply(inbound.sender, text, purpose="attachment_notice")

    async def _keyword(self, inbound: Inbound, keyword: Keyword, language: str) -> Response:
        """Answer a carrier keyword here: nothing is queued for it."""
        ref = self._opt_out_ref(inbound.sender)
        sid = inbound.provider_message_id
        confirm = True
        if keyword is Keyword.STOP:
            # Recorded before the rate limit: an opt-out is never lost, even in a flood.
            # Only the STOP that opted the number out is confirmed (once, even if replayed
            # or raced by another STOP); a number already opted out hears nothing more.
            created = await self._store.kv_create_all(
                NS_OPT_OUT, [ref], {"since": utcnow().isoformat(), "by": sid}, ttl=OPT_OUT_TTL)
            if not created:
                state = await self._store.kv_get(NS_OPT_OUT, ref)
                confirm = state is not None and state.get("by") == sid
        if await self._intake.admit(inbound) is IntakeResult.RATE_LIMITED:
            return JSONResponse({"error": "Too many messages; slow down."}, status_code=429)
        if keyword is Keyword.START:
            await self._store.kv_delete(NS_OPT_OUT, ref)
        log.info("sms keyword", keyword=keyword.value)
        # One answer per MessageSid: a replayed webhook is acknowledged, not answered again.
        if not confirm or not await self._store.kv_create_all(
                NS_KEYWORD, [sid], {"keyword": keyword.value}, ttl=self._dedupe_ttl):
            return Response(EMPTY_TWIML, media_type="text/xml")
        template = {Keyword.STOP: "sms_stopped", Keyword.START: "sms_started",
                    Keyword.HELP: "sms_help"}[keyword]
        twiml = await self._direct_reply(inbound.sender, channel_text(
            self._config, template, language), purpose=f"keyword_{keyword.value}")
        return Response(twiml, media_type="text/xml")

    async def _direct_reply(self, number: str, text: str, *, purpose: str) -> str:
        """Send a channel-level reply now; when the API fails, hand it back to Twilio as
        TwiML `<Message>` instead (the webhook's answer), so it is not lost."""
        try:
            sid = await self._post_message(number, text)
        except ChannelSendError:
            log.warning("sms direct reply via TwiML", purpose=purpose)
            return _twiml_message(text)
        if sid:
            await self._store.kv_set(NS_SENT, sid, {"outbound": purpose}, ttl=SENT_TTL)
        return EMPTY_TWIML

    async def status(self, request: Request) -> Response:
        """POST /webhooks/twilio/status: a delivery receipt for one of our messages."""
        try:
            params = await self._verified_form(request, STATUS_PATH)
            sid, status = params.get("MessageSid", ""), params.get("MessageStatus", "")
            if not _SID.match(sid) or not status:
                raise Refused(400, "malformed", "Missing MessageSid or MessageStatus.")
        except Refused as err:
            return self._refuse(err)
        sent = await self._store.kv_get(NS_SENT, sid)
        if sent is None:
            log.info("sms status for an unknown message")
            return Response(status_code=200)
        status = status.strip().lower()
        label = status if status in KNOWN_STATUSES else "other"
        metrics.SMS_STATUS.labels(status=label).inc()
        previous = await self._store.kv_get(NS_STATUS, sid)
        if previous is None or previous.get("status") not in FINAL_STATUSES \
                or label in FINAL_STATUSES:
            code = params.get("ErrorCode", "")
            await self._store.kv_set(NS_STATUS, sid, {
                "status": label, "error_code": int(code) if code.isdigit() else None,
                "outbound": sent.get("outbound"), "at": utcnow().isoformat()}, ttl=SENT_TTL)
        log.info("sms status", status=label, outbound=sent.get("outbound"))
        return Response(status_code=200)

    # outbound ---------------------------------------------------------------------------
    async def send(self, message: Outbound) -> str | None:
        """Deliver one reply (see the module docstring); returns the first message sid."""
        if await self.opted_out(message.recipient):
            log.info("sms send refused", reason="opted_out", outbound=message.id)
            raise ChannelSendError("recipient opted out of SMS", retryable=False)
        text = message.text
        pointer = " " + TRUNCATION_POINTER.get(message.language, TRUNCATION_POINTER["en"]) \
            .format(url=portal_url(self._config))
        bodies = message_bodies(fit_segments(text, self._sms.max_segments, pointer))
        if not bodies:
            raise ChannelSendError("empty reply", retryable=False)
        # Parts already accepted by Twilio on an earlier attempt are not sent again.
        progress = (await self._store.kv_get(NS_PROGRESS, message.id) or {}) \
            if len(bodies) > 1 else {}
        sids: list[str | None] = list(progress.get("sids", []))
        for body in bodies[len(sids):]:
            sid = await self._post_message(message.recipient, body)
            sids.append(sid)
            if sid:
                await self._store.kv_set(NS_SENT, sid, {"outbound": message.id}, ttl=SENT_TTL)
            if len(bodies) > 1:
                await self._store.kv_set(NS_PROGRESS, message.id, {"sids": sids}, ttl=SENT_TTL)
        log.info("sms sent", outbound=message.id, messages=len(bodies),
                 segments=sum(len(segment_spans(b)) for b in bodies))
        return sids[0]

    async def _post_message(self, number: str, body: str) -> str | None:
        """One Messages API request; the message sid, or raise ChannelSendError."""
        form = {"To": number, "From": self._sms.from_number, "Body": body}
        if self._sms.status_callbacks:
            form["StatusCallback"] = self._status_url
        if self._http.is_closed:
            raise ChannelSendError("sms client closed", retryable=True)
        try:
            response = await self._http.post(self._messages_url, data=form)
        except httpx.TimeoutException as err:
            log.warning("twilio send failed", error="timeout")
            raise ChannelSendError("twilio timeout", retryable=True) from err
        except httpx.HTTPError as err:
            log.warning("twilio send failed", error=type(err).__name__)
            raise ChannelSendError("twilio unreachable", retryable=True) from err
        data = self._json(response)
        if response.is_success:
            sid = data.get("sid")
            if isinstance(sid, str) and _SID.match(sid):
                return sid
            log.warning("twilio reply without a message sid", status=response.status_code)
            return None
        code = data.get("code") if isinstance(data.get("code"), int) else None
        retryable = response.status_code >= 500 or response.status_code in RETRYABLE_STATUS \
            or response.status_code < 400
        log.warning("twilio send failed", status=response.status_code, twilio_code=code,
                    retryable=retryable)
        if code == UNSUBSCRIBED:
            # Twilio knows the number opted out (e.g. STOP to another of our numbers).
            await self._store.kv_set(NS_OPT_OUT, self._opt_out_ref(number),
                                     {"since": utcnow().isoformat(), "by": "twilio"},
                                     ttl=OPT_OUT_TTL)
        raise ChannelSendError(f"twilio http {response.status_code} code {code}",
                               retryable=retryable)

    @staticmethod
    def _json(response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}
