"""The NLU's own config models: config/nlu.yml (thresholds, Rasa, entities) and
config/safety.yml (the safety lexicon). `bot.config.loader` validates the files into these."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, Protocol

from pydantic import (
    AfterValidator,
    Field,
)

from bot.core.models import ConfigModel

Language = Literal["en", "es"]


def _check_regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"invalid regular expression: {err.msg}") from None
    return value


class NluThresholds(ConfigModel):
    # Below this confidence the contact reason is out_of_scope: no script runs on a guess.
    intent_confidence: float = Field(0.35, ge=0, le=1)
    # The trained safety component raises the level at these probabilities (recall first).
    safety_emergency: float = Field(0.3, gt=0, le=1)
    safety_clinical: float = Field(0.5, gt=0, le=1)


class RasaConfig(ConfigModel):
    url: str = "http://127.0.0.1:5005"
    timeout_seconds: float = Field(1.5, gt=0, le=30)
    retries: int = Field(1, ge=0, le=5)
    breaker_failures: int = Field(5, ge=1, le=1000)
    breaker_reset_seconds: float = Field(30.0, gt=0)


class EntityConfig(ConfigModel):
    phone_region: str = Field("US", pattern=r"^[A-Z]{2}$")
    # How an English all-numeric date is read (Spanish is always day first).
    date_order: Literal["MDY", "DMY"] = "MDY"
    mrn_patterns: list[Annotated[str, AfterValidator(_check_regex)]] = []
    account_patterns: list[Annotated[str, AfterValidator(_check_regex)]] = []


class NluConfig(ConfigModel):
    backend: Literal["embedded", "rasa"] = "embedded"
    # Paths are relative to the project root (the directory above config/).
    training_data: str = "nlu/data/nlu.yml"
    heldout_dir: str = "nlu/data/test"
    languages: list[Language] = ["en", "es"]
    max_classifier_chars: int = Field(1000, ge=100, le=100_000)
    thresholds: NluThresholds = NluThresholds()
    rasa: RasaConfig = RasaConfig()
    entities: EntityConfig = EntityConfig()


def check_patterns(patterns: list[str]) -> list[str]:
    from nlu.lexicon import PatternError, compile_pattern, normalise_patterns

    normalised = normalise_patterns(patterns)
    for index, pattern in enumerate(normalised):
        try:
            compile_pattern(pattern)
        except PatternError as err:
            raise ValueError(f"pattern {index} ({pattern[:60]!r}): {err}") from None
    return normalised


Patterns = Annotated[list[str], AfterValidator(check_patterns)]


class LexiconCategory(ConfigModel):
    description: str = ""
    en: Patterns = []
    es: Patterns = []


class NegationRules(ConfigModel):
    triggers: Patterns
    pseudo: Patterns = []


class SafetyLexicon(ConfigModel):
    """config/safety.yml: the safety screen's lexicon (see nlu/lexicon.py for the syntax)."""

    emergency: dict[str, LexiconCategory]
    clinical: dict[str, LexiconCategory]
    negation: dict[Language, NegationRules]
    terminators: dict[Language, Patterns] = {}
    third_party: dict[Language, Patterns] = {}
    historical: dict[Language, Patterns] = {}


class IntentSpec(Protocol):
    @property
    def lane(self) -> str | None: ...


class AppSpec(Protocol):
    @property
    def data_dir(self) -> str: ...

    @property
    def default_language(self) -> str: ...


class NluSite(Protocol):
    """What the NLU reads of a site's whole config; `bot.config.loader.Config` is one. A
    protocol, so that the NLU sits below the config loader that validates its files."""

    @property
    def directory(self) -> str: ...

    @property
    def project_root(self) -> Path: ...

    @property
    def intents(self) -> Mapping[str, IntentSpec]: ...

    @property
    def app(self) -> AppSpec: ...

    @property
    def nlu(self) -> NluConfig: ...

    @property
    def safety(self) -> SafetyLexicon | None: ...

    def lane_of(self, intent: str) -> str | None: ...

    def model_dump_json(self, *, include: set[str]) -> str: ...
