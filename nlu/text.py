"""Text preparation: what the safety screen and the classifier read.

The conversation record keeps the patient's original text; these functions only shape what
the NLU sees:
- `clean`: Unicode NFKC, zero-width and bidi control characters removed (they hide words from
  matching and can reorder what a reader sees), whitespace tidied.
- `latest_reply`: an email's newest reply without quoted earlier messages, signatures and
  disclaimers (mail-parser-reply), so the classifier is not swayed by our own quoted text.
- `prepare`: both, plus the length policy: the classifier reads at most `max_chars` of the
  reply; the safety screen always reads the whole cleaned message, quoted parts included.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from mailparser_reply.parser import EmailMessage

# Zero-width, bidi embedding/override/isolate marks, soft hyphen, BOM, word joiners.
_INVISIBLE = re.compile("[\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
# mail-parser-reply's Spanish "El <date>, <name> escribió:" header expects two blanks before
# "escribió"; Gmail writes one. Doubling the blank lets the library recognise the header.
_ES_WROTE = re.compile(r"(?m)^(\s*(?:>\s*)*El\s.+?\S) (escribi[oó]:)\s*$")
_EMAIL_LIKE = re.compile(
    r"(?im)^\s*>|wrote:\s*$|escribi[oó]:\s*$|^-{2,}\s*$|^sent from my|^enviado desde mi|"
    r"^(?:from|de):\s")


@dataclass(frozen=True, slots=True)
class PreparedText:
    full: str  # cleaned whole message: what the safety screen reads
    classify: str  # newest reply, capped: what the classifier reads
    truncated: bool


def clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = _INVISIBLE.sub("", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _SPACES.sub(" ", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def latest_reply(text: str) -> str:
    """The newest reply of an email-shaped text; plain chat text comes back unchanged."""
    if "\n" not in text or not _EMAIL_LIKE.search(text):
        return text
    prepared = _ES_WROTE.sub(r"\1  \2", text)
    message = EmailMessage(text=prepared, languages=["en", "es"], keep_hyphen_lists=True).read()
    body = message.replies[0].body.strip() if message.replies else ""
    return body or text


def prepare(text: str, *, max_chars: int) -> PreparedText:
    full = clean(text)
    reply = latest_reply(full)
    truncated = len(reply) > max_chars
    if truncated:
        cut = reply.rfind(" ", 0, max_chars)
        reply = reply[: cut if cut > max_chars // 2 else max_chars]
    return PreparedText(full=full, classify=reply, truncated=truncated)


_APOSTROPHES = re.compile(r"['’`´ʼ]")


def fold_words(text: str) -> str:
    """`fold` without apostrophes ("Can't" -> "cant"): how lexicons and features read words."""
    return _APOSTROPHES.sub("", fold(text))


def fold(text: str) -> str:
    """Lowercase without accents: the form lexicons, lookups and features compare in."""
    if text.isascii():
        return text.lower()
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))
