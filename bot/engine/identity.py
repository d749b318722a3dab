"""Patient directory look-ups for identity checks.

Matching tolerates case, accents, punctuation, spacing and common date formats. Callers
answer the same way whether or not a record exists. The embedded directory keeps every record
sealed (AEAD) and finds candidates by a keyed hash of the date of birth, so neither names
nor dates sit in memory or in a dump in clear.
"""

from __future__ import annotations

import hmac
import json
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol

import phonenumbers

from bot.config.patients import PatientRecord
from bot.core.crypto import Hasher, Sealer

_DATE_FORMATS = ("%Y-%m-%d", "%m/%d/%Y", "%m-%d-%Y", "%Y/%m/%d", "%m/%d/%y")
_PURPOSE = "patient-dob"


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


def normalise_phone(value: str, region: str = "US") -> str | None:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_email(value: str) -> str:
    return value.strip().casefold()


@dataclass(frozen=True, slots=True)
class PatientMatch:
    """A verified record: its id and the contact points on file (for the strong check)."""

    patient_id: str
    phone: str | None = None
    email: str | None = None

    def owns_address(self, channel: str, address: str, *, region: str = "US") -> bool:
        """True when `address` (the channel sender) is the phone or email on file."""
        if channel == "sms" and self.phone:
            return normalise_phone(address, region) == normalise_phone(self.phone, region)
        if channel == "email" and self.email:
            return hmac.compare_digest(normalise_email(address).encode(),
                                       normalise_email(self.email).encode())
        return False


class PatientDirectory(Protocol):
    async def match(self, name: str, dob: date) -> PatientMatch | None:
        """The record whose name and date of birth both match, else None. Implementations
        must not reveal (by error or timing) whether a date of birth alone matched."""

    async def get(self, patient_id: str) -> PatientMatch | None:
        """The record for a patient id already verified elsewhere (a portal session)."""


class EncryptedPatientDirectory:
    """The sample directory from config/patients.yml, held sealed in memory.

    A real deployment puts its EHR's patient look-up behind the same protocol.
    """

    def __init__(self, patients: list[PatientRecord], sealer: Sealer, hasher: Hasher) -> None:
        self._sealer = sealer
        self._hasher = hasher
        self._by_dob: dict[str, list[str]] = {}
        self._by_id: dict[str, str] = {}
        for patient in patients:
            sealed = self._seal(patient)
            self._by_dob.setdefault(self._dob_key(patient.dob), []).append(sealed)
            self._by_id[hasher.digest(patient.id, purpose="patient-id")] = sealed

    def _dob_key(self, dob: date) -> str:
        return self._hasher.digest(dob.isoformat(), purpose=_PURPOSE)

    def _seal(self, patient: PatientRecord) -> str:
        body = json.dumps({"id": patient.id, "name": normalise_name(patient.name),
                           "phone": patient.phone, "email": patient.email})
        return self._sealer.seal(body, record="directory", field="patient")

    def _open(self, sealed: str) -> dict[str, str | None]:
        return json.loads(self._sealer.open(sealed, record="directory", field="patient"))

    async def match(self, name: str, dob: date) -> PatientMatch | None:
        wanted = normalise_name(name).encode()
        found = None
        # Every candidate is compared in constant time, so timing does not tell which part
        # of a name matched.
        for sealed in self._by_dob.get(self._dob_key(dob), []):
            record = self._open(sealed)
            if hmac.compare_digest(str(record["name"]).encode(), wanted):
                found = record
        return _as_match(found)

    async def get(self, patient_id: str) -> PatientMatch | None:
        sealed = self._by_id.get(self._hasher.digest(patient_id, purpose="patient-id"))
        return _as_match(self._open(sealed)) if sealed else None


def _as_match(record: dict[str, str | None] | None) -> PatientMatch | None:
    if record is None:
        return None
    return PatientMatch(patient_id=str(record["id"]), phone=record.get("phone"),
                        email=record.get("email"))
