"""Entity extraction: dates (relative too), times, phones, identifiers, lookups."""

from __future__ import annotations

from datetime import date

import pytest

from nlu.entities import EntityExtractor

TODAY = date(2026, 11, 30)  # a Monday


@pytest.fixture(scope="module")
def extractor() -> EntityExtractor:
    return EntityExtractor(
        phone_region="US", date_order="MDY",
        mrn_patterns=[r"(?i)\bmrn\s*#?:?\s*([A-Z]{0,2}\d{6,10})\b"],
        account_patterns=[r"(?i)\b(?:account|acct|cuenta)\s*(?:number|no\.?|#)?\s*:?\s*(\d{5,12})\b"],
        lookups={"medication": ["lisinopril", "Metformina", "vitamin D"],
                 "pharmacy": ["CVS", "Farmacias del Ahorro"]})


def values(extractor: EntityExtractor, text: str, language: str = "en") -> list[tuple[str, str]]:
    return [(e.entity, e.value) for e in extractor.extract(text, today=TODAY, language=language)]


@pytest.mark.parametrize(("text", "language", "expected"), [
    ("can i come tmrw", "en", ("date", "2026-12-01")),
    ("move it to next tues", "en", ("date", "2026-12-01")),
    ("el lunes", "es", ("date", "2026-12-07")),
    ("pasado mañana por favor", "es", ("date", "2026-12-02")),
    ("on 3/14 please", "en", ("date", "2027-03-14")),
    ("el 3/4", "es", ("date", "2027-04-03")),
    ("December 12th", "en", ("date", "2026-12-12")),
    ("el 14 de marzo", "es", ("date", "2027-03-14")),
    ("sometime next week", "en", ("date", "2026-W50")),
    ("my dob is 03/12/1984", "en", ("date_of_birth", "1984-03-12")),
    ("nací el 25 de julio de 1992", "es", ("date_of_birth", "1992-07-25")),
])
def test_dates(extractor: EntityExtractor, text: str, language: str,
               expected: tuple[str, str]) -> None:
    assert expected in values(extractor, text, language)


def test_morning_is_not_tomorrow(extractor: EntityExtractor) -> None:
    assert ("date", "2026-12-01") not in values(extractor, "prefiero en la mañana", "es")


def test_times(extractor: EntityExtractor) -> None:
    found = values(extractor, "after 4pm or at 10:30, a las 9")
    assert [v for e, v in found if e == "time"] == ["16:00", "10:30", "09:00"]


def test_phone_numbers_come_out_in_e164(extractor: EntityExtractor) -> None:
    assert ("phone", "+12025550143") in values(extractor, "call me at (202) 555-0143")


def test_identifiers_and_lookups(extractor: EntityExtractor) -> None:
    found = values(extractor, "MRN 00123456, acct #778899, refill lisinopril and Vitamin D "
                              "at cvs")
    assert ("mrn", "00123456") in found
    assert ("account", "778899") in found
    assert ("medication", "lisinopril") in found
    assert ("medication", "vitamin D") in found
    assert ("pharmacy", "CVS") in found
    spanish = values(extractor, "necesito mi metformina en Farmacias del Ahorro", "es")
    assert ("medication", "Metformina") in spanish
    assert ("pharmacy", "Farmacias del Ahorro") in spanish


def test_offsets_point_into_the_original_text(extractor: EntityExtractor) -> None:
    text = "Mañana a las 3 en CVS"
    for entity in extractor.extract(text, today=TODAY, language="es"):
        assert text[entity.start:entity.end] == entity.text
