"""config/patients.yml: the sample patient records identity checks use in demos."""

from __future__ import annotations

from datetime import date

from pydantic import (
    Field,
)

from bot.core.models import ConfigModel


class PatientRecord(ConfigModel):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$")
    name: str = Field(min_length=1)
    dob: date
    phone: str | None = None
    email: str | None = None


class PatientsFile(ConfigModel):
    patients: list[PatientRecord] = []
