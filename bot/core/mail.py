"""Outbound mail building blocks shared by the email channel, staff notices and config checks:
address validation, safe one-line headers, reply subjects and a threaded plain-text reply."""

from __future__ import annotations

import re
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

MAX_SUBJECT_CHARS = 200


MAX_REFERENCES = 20  # ids carried forward in References


MSGID = re.compile(r"<([^<>\s\x00-\x1f\x7f]{1,250})>")


_REPLY_PREFIX = re.compile(r"^\s*((re|aw|sv|vs|antw|rv|r|fw|fwd|tr|wg)\s*(\[\d+\])?\s*:\s*)+",
                           re.IGNORECASE)


# addr-spec as we accept it: one dot-atom-ish local part (no quotes, spaces, commas, angle
# brackets or controls: nothing that could add a recipient or a header) and a domain.
_LOCAL = r"[^\s@<>()\[\],;:\"\\\x00-\x1f\x7f]{1,64}"


_DOMAIN = r"[^\s@<>()\[\],;:\"\\\x00-\x1f\x7f.]{1,63}(\.[^\s@<>()\[\],;:\"\\\x00-\x1f\x7f.]{1,63})+"


_ADDRESS = re.compile(rf"^{_LOCAL}@{_DOMAIN}$")


# --- header helpers ---------------------------------------------------------------------
def one_line(value: str, *, max_chars: int = MAX_SUBJECT_CHARS) -> str:
    """A header-safe single line: every line break or control (CR, LF, NEL, U+2028 ...)
    becomes a space, lone surrogates are replaced, runs of spaces collapse."""
    value = value.encode("utf-8", "replace").decode("utf-8")
    value = "".join(ch if ch.isprintable() else " " for ch in value)
    return " ".join(value.split())[:max_chars].strip()


def valid_address(address: str) -> bool:
    return len(address) <= 254 and bool(_ADDRESS.match(address))


def base_subject(subject: str) -> str:
    """The subject without reply/forward prefixes ("Re: AW: x" -> "x")."""
    return one_line(_REPLY_PREFIX.sub("", subject))


# --- the reply ------------------------------------------------------------------------------
def reply_subject(original: str) -> str:
    base = base_subject(original)
    return f"Re: {base}" if base else ""


def build_reply(*, from_address: str, from_name: str, to: str, subject: str, text: str,
                domain: str, in_reply_to: str | None = None,
                references: tuple[str, ...] = ()) -> EmailMessage:
    """A plain-text, threaded, auto-submitted reply. Raises ValueError for an address that
    is not one plain addr-spec; every other header value is reduced to one safe line."""
    if not valid_address(to) or not valid_address(from_address):
        raise ValueError("not a single plain email address")
    message = EmailMessage(policy=policy.SMTP)
    local, _, host = from_address.partition("@")
    message["From"] = Address(display_name=one_line(from_name), username=local, domain=host)
    recipient_local, _, recipient_host = to.partition("@")
    message["To"] = Address(username=recipient_local, domain=recipient_host)
    message["Subject"] = one_line(subject) or "Re: your message"
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid(domain=one_line(domain, max_chars=253) or "localhost")
    thread = [ref for ref in references if MSGID.fullmatch(ref)]
    if in_reply_to and MSGID.fullmatch(in_reply_to):
        message["In-Reply-To"] = in_reply_to
        if not thread or thread[-1] != in_reply_to:
            thread.append(in_reply_to)
    if thread:
        message["References"] = " ".join(thread[-MAX_REFERENCES:])
    # RFC 3834: an automatic answer, so that other robots do not answer it in turn; the
    # second asks Exchange not to send out-of-office replies to it.
    message["Auto-Submitted"] = "auto-replied"
    message["X-Auto-Response-Suppress"] = "All"
    message.set_content(text.replace("\r\n", "\n"), charset="utf-8")
    return message
