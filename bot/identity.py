"""Patient directory look-ups for identity checks (the portal demo sign-in uses it now).

Matching tolerates case, accents, punctuation, spacing and common date formats. Callers
must answer the same way whether or not a record exists.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from datetime import date, datetime
from typing import Protocol

from bot.config import PatientRecord

_DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%m-%d-%Y", "%Y/%m/%d", "%m/%d/%y")


def normalise_name(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name)
    letters = "".join(c for c in decomposed if not unicodedata.combining(c))
    letters = re.sub(r"[^\w\s]", "", letters.casefold())
    return " ".join(letters.split())


def parse_date(text: str) -> date | None:
    text = text.strip()
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    return None


class PatientDirectory(Protocol):
    async def match(self, name: str, dob: str) -> str | None:
        """The patient id whose name and date of birth both match, else None."""


class ConfigPatientDirectory:
    """The sample directory from config/patients.yml."""

    def __init__(self, patients: list[PatientRecord]) -> None:
        self._by_dob: dict[date, list[tuple[str, str]]] = {}
        for patient in patients:
            self._by_dob.setdefault(patient.dob, []).append(
                (normalise_name(patient.name), patient.id))

    async def match(self, name: str, dob: str) -> str | None:
        born = parse_date(dob)
        wanted = normalise_name(name)
        found = None
        # Compare against every candidate in constant time per name, so timing does not
        # tell which part of the name matched.
        for candidate, patient_id in self._by_dob.get(born, []) if born else []:
            if hmac.compare_digest(candidate.encode(), wanted.encode()):
                found = patient_id
        return found
