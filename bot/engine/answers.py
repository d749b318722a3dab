"""Validation of a patient's answer to a script question, per slot kind.

`read_answer` returns the fields to store (the slot's value, plus derived display values such
as `visit_type_name`) or None when the answer does not fit, so the runner re-prompts.
Structured kinds lean on the NLU's entities (dates, medications, pharmacies, phones,
account numbers), which already handle both languages and common formats.
"""

from __future__ import annotations

import json
import re
from datetime import date

from bot.config.scheduling import SchedulingFile
from bot.config.scripts import Ask
from nlu.base import ParseResult
from nlu.text import fold_words

YES = {"yes", "y", "yeah", "yep", "yup", "sure", "ok", "okay", "correct", "right", "confirm",
       "si", "claro", "vale", "correcto", "confirmo", "afirmativo", "dale"}
YES_PHRASES = {"esta bien", "de acuerdo", "por supuesto", "go ahead", "of course", "that works"}
NO = {"no", "n", "nope", "nah", "negative", "cancel", "keep", "never", "nunca", "negativo"}
ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "primero": 1,
            "primera": 1, "segundo": 2, "segunda": 2, "tercero": 3, "tercera": 3,
            "cuarto": 4, "cuarta": 4, "quinto": 5, "quinta": 5}
NUMBER_WORDS = {"zero": 0, "none": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5,
                "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10, "cero": 0,
                "ninguno": 0, "uno": 1, "una": 1, "dos": 2, "tres": 3, "cuatro": 4,
                "cinco": 5, "seis": 6, "siete": 7, "ocho": 8, "nueve": 9, "diez": 10}
OPTIONS_FIELD = "_options"
PREFILLED_KINDS = frozenset({"visit_type", "medication", "pharmacy"})
_EMAIL = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[a-z]{2,}", re.IGNORECASE)
_ACCOUNT = re.compile(r"\b[A-Za-z]{0,4}-?\d{4,14}\b")
_INTEGER = re.compile(r"\b\d{1,4}\b")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", fold_words(text))


def _entity(parse: ParseResult, *names: str) -> str | None:
    return next((e.value for e in parse.entities if e.entity in names), None)


def _date_value(parse: ParseResult, kinds: tuple[str, ...] = ("date", "date_of_birth")
                ) -> str | None:
    value = _entity(parse, *kinds)
    if value and "-W" in value:  # "next week": the Monday of that ISO week
        year, week = value.split("-W")
        return date.fromisocalendar(int(year), int(week), 1).isoformat()
    return value


def match_visit_type(text: str, scheduling: SchedulingFile) -> str | None:
    """The visit type whose longest alias or name appears in the text; None if none or if
    two different visit types match equally well."""
    folded = " " + " ".join(_words(text)) + " "
    best: tuple[int, str] | None = None
    tie = False
    for visit_id, visit in scheduling.visit_types.items():
        names = [visit.name.en, visit.name.es, visit_id.replace("_", " "), *visit.aliases]
        for name in names:
            alias = " ".join(_words(name))
            if alias and f" {alias} " in folded:
                if best is None or len(alias) > best[0]:
                    best, tie = (len(alias), visit_id), False
                elif len(alias) == best[0] and best[1] != visit_id:
                    tie = True
    return None if best is None or tie else best[1]


def _option(text: str, fields: dict[str, str]) -> str | None:
    options = json.loads(fields.get(OPTIONS_FIELD) or "[]")
    words = _words(text)
    choice = next((int(w) for w in words if w.isdigit()), None)
    if choice is None:
        choice = next((ORDINALS[w] for w in words if w in ORDINALS), None)
    if choice is None and len(options) == 1 and words and words[0] in YES:
        choice = 1
    if choice is None or not 1 <= choice <= len(options):
        return None
    return str(choice - 1)


def _number(text: str) -> str | None:
    match = _INTEGER.search(text)
    if match:
        return str(int(match.group(0)))
    return next((str(NUMBER_WORDS[w]) for w in _words(text) if w in NUMBER_WORDS), None)


def read_answer(ask: Ask, text: str, parse: ParseResult, fields: dict[str, str], *,
                scheduling: SchedulingFile) -> dict[str, str] | None:
    text = " ".join(text.split())
    if not text or len(text) > ask.max_chars:
        return None
    value: str | None
    extra: dict[str, str] = {}
    match ask.kind:
        case "text":
            value = text if any(c.isalnum() for c in text) else None
        case "yes_no":
            words = _words(text)
            first = words[0] if words else ""
            if " ".join(words[:2]) in YES_PHRASES:
                first = "yes"
            value = "yes" if first in YES else "no" if first in NO else None
        case "number":
            value = _number(text)
        case "date":
            value = _date_value(parse)
        case "visit_type":
            value = match_visit_type(text, scheduling)
            if value:
                extra["visit_type_name"] = scheduling.visit_types[value].name.get(
                    parse.language if parse.language in ("en", "es") else "en")
        case "option":
            value = _option(text, fields)
        case "medication" | "pharmacy":
            # The whole answer: the dose on the label and the pharmacy's street or town
            # (which the question asks for) are what staff need, not just the known name.
            value = text if _entity(parse, ask.kind) or sum(
                c.isalpha() for c in text) >= 3 else None
        case "account":
            value = _entity(parse, "account", "mrn")
            if value is None:
                found = _ACCOUNT.search(text)
                value = found.group(0) if found else None
        case "phone":
            value = _entity(parse, "phone")
        case "email":
            found = _EMAIL.search(text)
            value = found.group(0) if found else None
        case _:
            value = None
    if value is None:
        return None
    return {ask.slot: value, **extra}


def prefill(ask: Ask, parse: ParseResult, *, scheduling: SchedulingFile) -> dict[str, str]:
    """Fields the opening message already gives ("refill my lisinopril at CVS", "book a flu
    shot next friday"): by default only kinds that are unambiguous in an opening message."""
    wanted = ask.prefill if ask.prefill is not None else ask.kind in PREFILLED_KINDS
    if not wanted:
        return {}
    if ask.kind == "visit_type":
        found = match_visit_type(parse.text, scheduling)
        if found:
            language = parse.language if parse.language in ("en", "es") else "en"
            return {ask.slot: found,
                    "visit_type_name": scheduling.visit_types[found].name.get(language)}
        return {}
    if ask.kind in ("medication", "pharmacy"):
        value = _entity(parse, ask.kind)
        return {ask.slot: value} if value else {}
    if ask.kind == "date":
        value = _date_value(parse, ("date",))  # never a date of birth
        return {ask.slot: value} if value else {}
    return {}
