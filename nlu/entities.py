"""Entities the scripts and handoff notes need, in English and Spanish.

- `date` (ISO date, or ISO week for "next week") and `time` (HH:MM), including relative and
  shorthand forms: "tmrw", "next tues", "el lunes", "pasado mañana", "3/14", "14 de marzo";
- `date_of_birth`: a date after a birth keyword, or a date too far back to be an appointment;
- `phone` (E.164, phonenumbers), `mrn` and `account` (patterns from config/nlu.yml);
- `medication` and `pharmacy` from the lookup tables in the training data (admins edit them
  like any Rasa lookup table).
Values are normalised; `start`/`end` index the text the NLU saw.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from datetime import date, datetime, timedelta

import phonenumbers

from nlu.base import Entity

_WEEKDAYS = {
    **dict.fromkeys(["monday", "mon", "lunes", "lun"], 0),
    **dict.fromkeys(["tuesday", "tue", "tues", "martes"], 1),
    **dict.fromkeys(["wednesday", "wed", "weds", "miercoles", "mier"], 2),
    **dict.fromkeys(["thursday", "thu", "thur", "thurs", "jueves"], 3),
    **dict.fromkeys(["friday", "fri", "viernes"], 4),
    **dict.fromkeys(["saturday", "sat", "sabado"], 5),
    **dict.fromkeys(["sunday", "sun", "domingo"], 6),
}
_MONTHS = {
    **dict.fromkeys(["january", "jan", "enero", "ene"], 1),
    **dict.fromkeys(["february", "feb", "febrero"], 2),
    **dict.fromkeys(["march", "mar", "marzo"], 3),
    **dict.fromkeys(["april", "apr", "abril", "abr"], 4),
    **dict.fromkeys(["may", "mayo"], 5),
    **dict.fromkeys(["june", "jun", "junio"], 6),
    **dict.fromkeys(["july", "jul", "julio"], 7),
    **dict.fromkeys(["august", "aug", "agosto", "ago"], 8),
    **dict.fromkeys(["september", "sept", "sep", "septiembre", "setiembre"], 9),
    **dict.fromkeys(["october", "oct", "octubre"], 10),
    **dict.fromkeys(["november", "nov", "noviembre"], 11),
    **dict.fromkeys(["december", "dec", "diciembre", "dic"], 12),
}
# Calendar words are never "corrected" into lexicon words by the safety screen ("marzo" is
# not a misspelt "mareo").
CALENDAR_WORDS = frozenset(word for word in (*_WEEKDAYS, *_MONTHS) if len(word) > 3)
_RELATIVE = {
    **dict.fromkeys(["today", "tonight", "hoy", "esta noche", "esta tarde"], 0),
    **dict.fromkeys(["tomorrow", "tmrw", "tmrow", "tmr", "tmw", "tomorow", "tommorow",
                     "tommorrow", "2morrow", "2moro", "manana"], 1),
    **dict.fromkeys(["day after tomorrow", "pasado manana"], 2),
    **dict.fromkeys(["yesterday", "ayer"], -1),
}


def _alternation(words: Iterable[str]) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


_WEEKDAY_RE = re.compile(
    r"\b(?:(?P<mod>next|this|coming|on|el proximo|el|este|proximo|el otro)\s+)?"
    rf"(?P<day>{_alternation(_WEEKDAYS)})\b\.?")
_RELATIVE_RE = re.compile(rf"\b(?P<word>{_alternation(_RELATIVE)})\b")
_MORNING = re.compile(r"(?:la|por|de|en|esta|temprano en la)\s+$")
_NEXT_WEEK_RE = re.compile(
    r"\b(?:next week|la (?:proxima|otra) semana|la semana (?:que viene|proxima|entrante))\b")
_NUMERIC_RE = re.compile(r"\b(?P<a>\d{1,2})[/.-](?P<b>\d{1,2})(?:[/.-](?P<y>\d{4}|\d{2}))?\b")
_ISO_RE = re.compile(r"\b(?P<y>\d{4})-(?P<m>\d{2})-(?P<d>\d{2})\b")
_MONTH_FIRST_RE = re.compile(
    rf"\b(?P<month>{_alternation(_MONTHS)})\.?\s+(?P<day>\d{{1,2}})(?:st|nd|rd|th)?"
    r"(?:,?\s+(?P<year>\d{4}))?\b")
_DAY_FIRST_RE = re.compile(
    rf"\b(?P<day>\d{{1,2}})(?:st|nd|rd|th|ro)?\s+(?:de\s+|of\s+)?(?P<month>{_alternation(_MONTHS)})"
    r"\b\.?(?:,?\s+(?:de\s+|del\s+)?(?P<year>\d{4}))?")
_TIME_RE = re.compile(
    r"\b(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<ampm>a\.?\s?m\.?|p\.?\s?m\.?)(?!\w)"
    r"|\b(?P<h24>[01]?\d|2[0-3]):(?P<m24>[0-5]\d)\b"
    r"|\ba las (?P<hes>\d{1,2})(?::(?P<mes>\d{2}))?\b"
    r"|\b(?P<noon>noon|mediodia)\b")
_BIRTH_CONTEXT = re.compile(
    r"(?:dob|d\.o\.b|birth|born|birthday|b-day|bday|nacimiento|naci|nacio|cumpleanos|"
    r"fecha de nac)\W{0,3}(?:\w+\W+){0,3}$")
_DOB_MIN_AGE_YEARS = 12
_MIN_PHONE_DIGITS = 7


def _fold_char(char: str) -> str:
    base = unicodedata.normalize("NFKD", char)[:1] or char
    lowered = base.lower()
    return lowered if len(lowered) == 1 else base


def fold_keep_offsets(text: str) -> str:
    """Lowercase without accents, one character for one, so offsets stay valid."""
    if text.isascii():
        return text.lower()
    return "".join(_fold_char(char) for char in text)


def _names_regex(names: Iterable[str]) -> re.Pattern[str] | None:
    folded = {fold_keep_offsets(name.strip()): name.strip() for name in names if name.strip()}
    if not folded:
        return None
    return re.compile(rf"(?<!\w)(?:{_alternation(folded)})(?!\w)")


class EntityExtractor:
    def __init__(self, *, phone_region: str, date_order: str, mrn_patterns: Iterable[str],
                 account_patterns: Iterable[str], lookups: dict[str, list[str]]) -> None:
        self._region = phone_region
        self._month_first = date_order == "MDY"
        self._ids = [("mrn", re.compile(p)) for p in mrn_patterns] + \
            [("account", re.compile(p)) for p in account_patterns]
        self._lookups: list[tuple[str, re.Pattern[str], dict[str, str]]] = []
        for entity in ("medication", "pharmacy"):
            names = lookups.get(entity, [])
            regex = _names_regex(names)
            if regex is not None:
                canonical = {fold_keep_offsets(n.strip()): n.strip() for n in names}
                self._lookups.append((entity, regex, canonical))

    def extract(self, text: str, *, today: date, language: str = "en") -> list[Entity]:
        folded = fold_keep_offsets(text)
        found: list[Entity] = []
        found += self._dates(text, folded, today, language)
        found += self._times(text, folded)
        found += self._phones(text)
        found += self._identifiers(text)
        for entity, regex, canonical in self._lookups:
            for match in regex.finditer(folded):
                found.append(Entity(entity, canonical.get(match.group(0), match.group(0)),
                                    text[match.start():match.end()], match.start(),
                                    match.end()))
        return _without_overlaps(found)

    def _dates(self, text: str, folded: str, today: date, language: str) -> list[Entity]:
        found: list[Entity] = []

        def add(match: re.Match[str], value: date | str | None, *, explicit_year: bool) -> None:
            if value is None:
                return
            start, end = match.start(), match.end()
            kind = "date"
            if isinstance(value, date):
                before = folded[max(0, start - 40):start]
                too_old = explicit_year and value.year <= today.year - _DOB_MIN_AGE_YEARS
                if _BIRTH_CONTEXT.search(before) or too_old:
                    kind = "date_of_birth"
                value = value.isoformat()
            found.append(Entity(kind, value, text[start:end], start, end))

        for match in _ISO_RE.finditer(folded):
            add(match, _safe_date(int(match["y"]), int(match["m"]), int(match["d"])),
                explicit_year=True)
        for match in _NUMERIC_RE.finditer(folded):
            first, second = int(match["a"]), int(match["b"])
            month, day = (first, second) if self._month_first and language == "en" \
                else (second, first)
            year = _full_year(match["y"], today)
            add(match, _resolve(today, month, day, year), explicit_year=year is not None)
        for regex in (_MONTH_FIRST_RE, _DAY_FIRST_RE):
            for match in regex.finditer(folded):
                year = int(match["year"]) if match["year"] else None
                add(match, _resolve(today, _MONTHS[match["month"]], int(match["day"]), year),
                    explicit_year=year is not None)
        for match in _RELATIVE_RE.finditer(folded):
            if match["word"] == "manana" and _MORNING.search(folded[:match.start()]):
                continue  # "por la mañana": in the morning, not tomorrow
            add(match, today + timedelta(days=_RELATIVE[match["word"]]), explicit_year=False)
        for match in _WEEKDAY_RE.finditer(folded):
            if match["day"] in {"mar", "sun", "sat", "wed"} and not match["mod"]:
                continue  # too ambiguous on their own ("mar" is also March)
            add(match, _next_weekday(today, _WEEKDAYS[match["day"]], match["mod"]),
                explicit_year=False)
        for match in _NEXT_WEEK_RE.finditer(folded):
            year, week, _ = (today + timedelta(days=7)).isocalendar()
            add(match, f"{year}-W{week:02d}", explicit_year=False)
        return found

    def _times(self, text: str, folded: str) -> list[Entity]:
        found = []
        for match in _TIME_RE.finditer(folded):
            if match["noon"]:
                hour, minute = 12, 0
            elif match["ampm"]:
                hour, minute = int(match["h"]), int(match["m"] or 0)
                if not 1 <= hour <= 12:
                    continue
                is_pm = match["ampm"].startswith("p")
                hour = (hour % 12) + (12 if is_pm else 0)
            elif match["h24"]:
                hour, minute = int(match["h24"]), int(match["m24"])
            else:
                hour, minute = int(match["hes"]), int(match["mes"] or 0)
                if not 1 <= hour <= 12:
                    continue
            if minute > 59:
                continue
            found.append(Entity("time", f"{hour:02d}:{minute:02d}",
                                text[match.start():match.end()], match.start(), match.end()))
        return found

    def _phones(self, text: str) -> list[Entity]:
        found: list[Entity] = []
        if sum(char.isdigit() for char in text) < _MIN_PHONE_DIGITS:
            return found  # the matcher is slow; most messages have no phone number
        for match in phonenumbers.PhoneNumberMatcher(text, self._region):
            value = phonenumbers.format_number(match.number,
                                               phonenumbers.PhoneNumberFormat.E164)
            found.append(Entity("phone", value, match.raw_string, match.start, match.end))
        return found

    def _identifiers(self, text: str) -> list[Entity]:
        found = []
        for entity, regex in self._ids:
            for match in regex.finditer(text):
                group = 1 if regex.groups else 0
                found.append(Entity(entity, match.group(group).upper(), match.group(group),
                                    match.start(group), match.end(group)))
        return found


def _safe_date(year: int, month: int, day: int) -> date | None:
    try:
        return date(year, month, day)
    except ValueError:
        return None


def _full_year(raw: str | None, today: date) -> int | None:
    if raw is None:
        return None
    year = int(raw)
    if len(raw) == 2:  # "3/4/84" is 1984, "3/4/27" is 2027
        year += 2000 if year <= (today.year % 100) + 5 else 1900
    return year


def _resolve(today: date, month: int, day: int, year: int | None) -> date | None:
    """A date without a year is the next one to come (appointments are in the future)."""
    if year is not None:
        return _safe_date(year, month, day)
    candidate = _safe_date(today.year, month, day)
    if candidate is None:
        return _safe_date(today.year + 1, month, day)
    return candidate if candidate >= today else _safe_date(today.year + 1, month, day)


def _next_weekday(today: date, weekday: int, modifier: str | None) -> date:
    ahead = (weekday - today.weekday()) % 7
    if ahead == 0 and modifier not in {"this", "este"}:
        ahead = 7
    return today + timedelta(days=ahead)


def _without_overlaps(entities: list[Entity]) -> list[Entity]:
    """Longest first wins where matches overlap ("March 3 2026" over "3"); text order out."""
    chosen: list[Entity] = []
    for entity in sorted(entities, key=lambda e: (-(e.end - e.start), e.start)):
        if all(entity.end <= other.start or entity.start >= other.end for other in chosen):
            chosen.append(entity)
    return sorted(chosen, key=lambda e: e.start)


def today_in(now: datetime | None) -> date:
    return (now or datetime.now()).date()
