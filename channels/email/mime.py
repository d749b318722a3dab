"""Email parsing and composing for the email channel: pure functions, no I/O.

Inbound: a raw RFC 5322 message -> `ParsedMail` (sender, ids, subject, body text, attachment
metadata, automated-mail verdict, our MTA's authentication verdict), within limits on part
count, nesting depth and decoded text size; anything outside them raises `MailRefused` with
the SMTP reply to give. Nothing here logs, and no exception text carries message content.

Outbound: `build_reply` writes a threaded, auto-submitted reply whose header values cannot
carry line breaks (header injection) whatever the patient's subject or address held.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses
from html.parser import HTMLParser

from bot.core.envelopes import AttachmentMeta
from bot.core.errors import PatientbotError
from bot.core.mail import MAX_REFERENCES, MSGID, one_line, valid_address

# Only the headers we read are parsed; these bound what the parser is asked to do.
MAX_HEADER_CHARS = 16_384  # one header value we parse (From, Subject, Content-*)


MAX_HEADERS_PER_PART = 500


_BARE_MSGID = re.compile(r"^[^<>\s\x00-\x1f\x7f]{1,250}@[^<>\s\x00-\x1f\x7f]{1,250}$")


_FORWARD_OR_REPLY = re.compile(r"^\s*(re|aw|sv|vs|antw|rv|fw|fwd|tr|wg)\s*(\[\d+\])?\s*:",
                               re.IGNORECASE)


_CONTENT_TYPE = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,40}/[a-z0-9][a-z0-9.+_-]{0,80}$")


_AUTOMATED_LOCAL = frozenset({"mailer-daemon", "postmaster", "noreply", "no-reply",
                              "donotreply", "do-not-reply", "bounce", "bounces"})


_BULK_PRECEDENCE = frozenset({"bulk", "list", "junk", "auto_reply"})


class MailRefused(PatientbotError):
    """The message is refused: `reply` is the SMTP answer, `reason` the metric label."""

    def __init__(self, reply: str, reason: str) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason

    @property
    def permanent(self) -> bool:
        return self.reply.startswith("5")


def malformed(what: str = "Malformed message") -> MailRefused:
    return MailRefused(f"550 5.6.0 {what}", "malformed")


@dataclass(frozen=True, slots=True)
class MimeLimits:
    max_parts: int = 50
    max_depth: int = 5
    max_decoded_bytes: int = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    """Our MTA's verdict. `verified`: DMARC passed, or DKIM passed for the From domain."""

    summary: str = ""  # codes only: "dkim=pass dmarc=pass spf=none"
    verified: bool = False


@dataclass(frozen=True, slots=True)
class ParsedMail:
    sender: str  # the From addr-spec, lowercased
    message_id: str | None  # "<id>" as the sender wrote it, or None when absent/unusable
    references: tuple[str, ...]  # the thread so far ("<id>" each), oldest first
    subject: str  # one line, no controls
    text: str  # what the patient wrote (subject line first for a new request)
    attachments: tuple[AttachmentMeta, ...] = ()
    automated: str | None = None  # why it must not be answered (auto_submitted, bulk, bounce)
    auth: AuthVerdict = field(default_factory=AuthVerdict)


def message_ids(value: str) -> list[str]:
    return [f"<{found}>" for found in MSGID.findall(value)]


def _first_message_id(value: str | None) -> str | None:
    if not value:
        return None
    found = message_ids(value)
    if found:
        return found[0]
    bare = value.strip()
    return f"<{bare}>" if _BARE_MSGID.match(bare) else None


def _raw_header(part: Message, name: str) -> str | None:
    """A header's raw value (no policy parsing), unfolded."""
    for key, value in part.raw_items():
        if key.lower() == name:
            return " ".join(str(value).split())
    return None


def _raw_headers(part: Message, name: str) -> list[str]:
    return [" ".join(str(value).split()) for key, value in part.raw_items()
            if key.lower() == name]


def _parsed_header(part: Message, name: str) -> object | None:
    raw = _raw_header(part, name.lower())
    if raw is None:
        return None
    if len(raw) > MAX_HEADER_CHARS:
        raise malformed("Header too long")
    return part[name]


# --- automated mail ---------------------------------------------------------------------
def automated_reason(message: Message, *, envelope_sender: str | None, sender: str,
                     own_addresses: frozenset[str]) -> str | None:
    """Why this message must not be answered (RFC 3834 and common practice), or None."""
    auto = _raw_header(message, "auto-submitted")
    if auto is not None and auto.split(";")[0].strip().lower() not in ("", "no"):
        return "auto_submitted"
    if any((_raw_header(message, name) or "").strip()
           for name in ("x-autoreply", "x-autorespond")):
        return "auto_submitted"
    precedence = (_raw_header(message, "precedence") or "").strip().lower()
    if precedence in _BULK_PRECEDENCE:
        return "bulk"
    if _raw_header(message, "list-id") is not None or \
            _raw_header(message, "list-unsubscribe") is not None:
        return "bulk"
    if message.get_content_type() == "multipart/report":
        return "bounce"
    if envelope_sender is not None and envelope_sender.strip() in ("", "<>"):
        return "bounce"
    return_path = _raw_header(message, "return-path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        return "bounce"
    for address in (sender, (envelope_sender or "").strip("<> ").lower()):
        if address and address.split("@")[0] in _AUTOMATED_LOCAL:
            return "bounce"
        if address in own_addresses:
            return "own_address"  # our own reply coming back: never answer it
    return None


# --- Authentication-Results (RFC 8601) ----------------------------------------------------
def _strip_comments(value: str) -> str:
    out, depth, quoted = [], 0, False
    for ch in value:
        if ch == '"' and depth == 0:
            quoted = not quoted
        elif not quoted and ch == "(":
            depth += 1
            continue
        elif not quoted and ch == ")" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(ch)
    return "".join(out)


def _aligned(domain: str, from_domain: str) -> bool:
    domain = domain.strip().strip('"').lower().rstrip(".")
    return bool(domain) and (from_domain == domain or from_domain.endswith("." + domain))


def authentication_verdict(message: Message, *, authserv_id: str,
                           from_domain: str) -> AuthVerdict:
    """Read the topmost Authentication-Results header written by our own MTA.

    Headers naming another authserv-id are ignored: anyone can write them. Only the first
    (topmost, i.e. most recently added) one with our id counts, since our border MTA adds
    its own on top. DMARC pass, or DKIM pass with a signing domain aligned to the From
    domain, verify the sender; SPF alone says nothing about the From header.
    """
    if not authserv_id:
        return AuthVerdict()
    ours = authserv_id.strip().lower()
    for raw in _raw_headers(message, "authentication-results"):
        if len(raw) > MAX_HEADER_CHARS:
            continue
        pieces = [p.strip() for p in _strip_comments(raw).split(";")]
        if not pieces or not pieces[0] or pieces[0].split()[0].lower() != ours:
            continue
        results: dict[str, str] = {}
        verified = False
        for resinfo in pieces[1:]:
            tokens = resinfo.split()
            if not tokens or "=" not in tokens[0]:
                continue
            method, _, result = tokens[0].partition("=")
            method = method.split("/")[0].lower()
            result = result.lower()
            props = {}
            for token in tokens[1:]:
                name, eq, value = token.partition("=")
                if eq:
                    props[name.lower()] = value.strip('"').lower()
            if method in ("dkim", "spf", "dmarc") and method not in results:
                results[method] = result
            elif method in results and result == "pass":
                results[method] = result  # several signatures: any that passed
            if result != "pass":
                continue
            if method == "dmarc":
                header_from = props.get("header.from")
                verified = verified or header_from is None or _aligned(header_from, from_domain)
            elif method == "dkim":
                signer = props.get("header.d") or props.get("header.i", "").partition("@")[2]
                verified = verified or (bool(signer) and _aligned(signer, from_domain))
        summary = " ".join(f"{m}={results[m]}" for m in ("dkim", "spf", "dmarc")
                           if m in results and re.fullmatch(r"[a-z]{1,16}", results[m]))
        return AuthVerdict(summary=summary, verified=verified)
    return AuthVerdict()


# --- body text ----------------------------------------------------------------------------
def decode_text(payload: bytes, charset: str | None) -> str:
    """Bytes of a text part -> str. A declared charset is decoded with errors="replace";
    an unknown or missing one is read as UTF-8 (or Windows-1252 when that fails)."""
    name = (charset or "").strip().strip('"').lower()
    if name and name not in ("us-ascii", "ascii", "utf-8", "utf8"):
        try:
            if codecs.lookup(name).name not in ("base64", "bz2", "hex", "quopri", "rot-13",
                                                "uu", "zlib"):
                return payload.decode(name, "replace").replace("\x00", "")
        except (LookupError, ValueError, TypeError):
            pass
    try:
        return payload.decode("utf-8").replace("\x00", "")
    except UnicodeDecodeError:
        if name in ("utf-8", "utf8"):
            return payload.decode("utf-8", "replace").replace("\x00", "")
        return payload.decode("cp1252", "replace").replace("\x00", "")


class _HtmlToText(HTMLParser):
    """HTML -> plain text for reading only: nothing is rendered or fetched. Scripts, styles
    and the head are dropped, block elements become line breaks (paragraphs a blank line),
    blockquotes become "> " quoted lines (so the NLU strips quoted replies as it does in
    plain text), entities are unescaped."""

    SKIP = frozenset({"script", "style", "head", "title", "noscript", "template", "svg",
                      "math", "object", "iframe", "xml"})
    PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "table",
                           "pre", "hr", "section", "article", "header", "footer", "dl",
                           "center", "form", "address"})
    LINE = frozenset({"div", "li", "tr", "dd", "dt", "blockquote"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._lines: list[tuple[int, str]] = []
        self._line: list[str] = []
        self._skip = 0
        self._quote = 0
        self._pre = 0
        self._gap = False  # a paragraph ended: a blank line before the next text

    def _flush(self, *, hard: bool = False) -> None:
        text = "".join(self._line)
        if not self._pre:
            text = " ".join(text.split())
        if text or hard:
            if self._gap and self._lines and self._lines[-1][1]:
                self._lines.append((self._quote, ""))
            self._lines.append((self._quote, text))
            self._gap = False
        self._line = []

    def _paragraph(self) -> None:
        self._flush()
        self._gap = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self._skip = 0  # a head left open does not hide the body
        if tag in self.SKIP:
            self._skip += 1
            return
        if tag == "br":
            self._flush(hard=True)
        elif tag in self.PARAGRAPH:
            self._paragraph()
        elif tag in self.LINE:
            self._flush()
        if tag == "li":
            self._line.append("- ")
        elif tag == "blockquote":
            self._quote += 1
        elif tag == "pre":
            self._pre += 1
        elif tag in ("td", "th"):
            self._line.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
            return
        if tag in self.PARAGRAPH:
            self._paragraph()
        elif tag in self.LINE:
            self._flush()
        if tag == "blockquote":
            self._quote = max(0, self._quote - 1)
        elif tag == "pre":
            self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            for index, piece in enumerate(data.split("\n")):
                if index:
                    self._flush(hard=True)
                self._line.append(piece)
        else:
            self._line.append(data)

    def text(self) -> str:
        self._flush()
        return "\n".join(("> " * depth + line) if line else ""
                         for depth, line in self._lines).strip()


def html_to_text(html: str) -> str:
    parser = _HtmlToText()
    try:
        parser.feed(html)
        parser.close()
    except Exception:  # html.parser is lenient; anything left over is just not read
        pass
    return parser.text()


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _attachment(content_type: str, size: int | None) -> AttachmentMeta:
    """Metadata only; a type outside the plain token form is not repeated to staff."""
    if not _CONTENT_TYPE.match(content_type):
        content_type = "application/octet-stream"
    return AttachmentMeta(content_type, size)


def _encoded_size(part: Message) -> int | None:
    """An attachment's size without decoding it (it is never opened)."""
    payload = part.get_payload()
    if not isinstance(payload, str):
        return None
    cte = (_raw_header(part, "content-transfer-encoding") or "").strip().lower()
    if cte == "base64":
        data = "".join(payload.split())
        return max(0, len(data) * 3 // 4 - data[-2:].count("="))
    return len(payload)


# --- the parser -----------------------------------------------------------------------------
def _precheck(raw: bytes, limits: MimeLimits) -> None:
    """Refuse absurd structures before the stdlib parser recurses into them."""
    content_types = len(re.findall(rb"(?im)^content-type[ \t]*:", raw))
    if content_types > limits.max_parts + 1:
        raise MailRefused("554 5.6.0 Too many message parts", "too_many_parts")


def _walk(message: Message, limits: MimeLimits) -> tuple[list[Message], list[Message],
                                                           list[AttachmentMeta]]:
    """(plain parts, html parts, attachment metadata) of the message body, within limits."""
    plain: list[Message] = []
    html: list[Message] = []
    attachments: list[AttachmentMeta] = []
    stack: list[tuple[Message, int, bool]] = [(message, 0, False)]
    count = 0
    while stack:
        part, depth, inside_attachment = stack.pop()
        count += 1
        if count > limits.max_parts:
            raise MailRefused("554 5.6.0 Too many message parts", "too_many_parts")
        if depth > limits.max_depth:
            raise MailRefused("554 5.6.0 Message nested too deeply", "too_deep")
        if len(part) > MAX_HEADERS_PER_PART:
            raise malformed("Too many headers")
        for name in ("content-type", "content-disposition"):
            value = _raw_header(part, name)
            if value is not None and len(value) > MAX_HEADER_CHARS:
                raise malformed("Header too long")
        content_type = part.get_content_type()
        if part.is_multipart():
            payload = part.get_payload()
            if not isinstance(payload, list):
                raise malformed()
            children = [child for child in payload if isinstance(child, Message)]
            if content_type.startswith("message/") and not inside_attachment:
                attachments.append(_attachment(content_type, None))
                inside_attachment = True  # a forwarded message: counted, never read
            stack.extend((child, depth + 1, inside_attachment) for child in reversed(children))
            continue
        disposition = part.get_content_disposition()
        try:
            filename = part.get_filename()
        except Exception:  # an undecodable file name is still a file
            filename = "?"
        if (not inside_attachment and disposition != "attachment" and not filename
                and content_type in ("text/plain", "text/html")):
            (plain if content_type == "text/plain" else html).append(part)
        elif not inside_attachment:
            attachments.append(_attachment(content_type, _encoded_size(part)))
    return plain, html, attachments


def _body_text(plain: list[Message], html: list[Message], limits: MimeLimits) -> str:
    """text/plain parts, or the text of the HTML parts when there is no plain one."""
    chosen, decoded = (plain, False) if plain else (html, True)
    texts: list[str] = []
    total = 0
    for part in chosen:
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        total += len(payload)
        if total > limits.max_decoded_bytes:
            raise MailRefused("552 5.3.4 Message text too large", "too_large")
        text = decode_text(payload, part.get_content_charset())
        texts.append(html_to_text(text) if decoded else text)
    return _tidy("\n\n".join(t for t in texts if t.strip()))


def parse_mail(raw: bytes, *, limits: MimeLimits, authserv_id: str = "",
               envelope_sender: str | None = None,
               own_addresses: frozenset[str] = frozenset()) -> ParsedMail:
    """Parse and check one message. Raises `MailRefused`; never anything else."""
    try:
        return _parse(raw, limits=limits, authserv_id=authserv_id,
                      envelope_sender=envelope_sender, own_addresses=own_addresses)
    except MailRefused:
        raise
    except RecursionError:
        raise MailRefused("554 5.6.0 Message nested too deeply", "too_deep") from None
    except Exception:  # the stdlib parser on hostile input: refuse, never crash
        raise malformed() from None


def _sender(message: Message) -> str:
    """The one From addr-spec. The display name is never used (replies go to the bare
    address), so a name the stdlib refuses (an encoded CR/LF) falls back to the plain
    address parser rather than refusing the mail."""
    try:
        header = _parsed_header(message, "From")
        found = [a.addr_spec for a in getattr(header, "addresses", ())] if header is not None \
            else []
    except MailRefused:
        raise
    except Exception:
        raw = _raw_header(message, "from") or ""
        angle = re.findall(r"<([^<>\s]+)>", raw)
        found = angle if len(angle) == 1 else [addr for _, addr in getaddresses([raw])]
    if len(found) != 1:
        raise MailRefused("550 5.1.7 Exactly one From address is required", "bad_sender")
    address = found[0].strip().lower()
    if not valid_address(address):
        raise MailRefused("550 5.1.7 Invalid From address", "bad_sender")
    return address


def _parse(raw: bytes, *, limits: MimeLimits, authserv_id: str, envelope_sender: str | None,
           own_addresses: frozenset[str]) -> ParsedMail:
    _precheck(raw, limits)
    message = BytesParser(policy=policy.default).parsebytes(raw)
    if not message.keys():
        raise malformed("No message headers")
    sender = _sender(message)
    subject_header = _parsed_header(message, "Subject")
    subject = one_line(str(subject_header), max_chars=1000) if subject_header is not None \
        else ""
    plain, html, attachments = _walk(message, limits)  # checks Content-* before reading
    automated = automated_reason(message, envelope_sender=envelope_sender, sender=sender,
                                 own_addresses=own_addresses)
    body = _body_text(plain, html, limits)
    # A new request often says what it is about in the subject only ("Refill", "Chest pain
    # since this morning"): the safety screen and classifier read it as the first line.
    # A reply's subject is our own thread subject and would only add noise.
    text = body
    if subject and not _FORWARD_OR_REPLY.match(subject) and \
            not body.lower().startswith(subject.lower()):
        text = f"{subject}\n\n{body}" if body else subject
    return ParsedMail(
        sender=sender,
        message_id=_first_message_id(_raw_header(message, "message-id")),
        references=tuple(message_ids(_raw_header(message, "references") or ""))[-MAX_REFERENCES:],
        subject=subject,
        text=text,
        attachments=tuple(attachments),
        automated=automated,
        auth=authentication_verdict(message, authserv_id=authserv_id,
                                    from_domain=sender.rpartition("@")[2]),
    )
