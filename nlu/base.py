"""What the NLU produces, and the protocol every intent-classifier backend implements.

The safety screen and the entity extractors are the same whatever the backend; only the
contact-reason classifier is pluggable (`embedded`, trained here from nlu/data, or `rasa`, a
Rasa server's /model/parse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

OUT_OF_SCOPE = "out_of_scope"


class SafetyLevel(StrEnum):
    NONE = "none"
    CLINICAL = "clinical"
    EMERGENCY = "emergency"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def at_least(self, other: SafetyLevel) -> SafetyLevel:
        return self if self.rank >= other.rank else other


_RANKS = {SafetyLevel.NONE: 0, SafetyLevel.CLINICAL: 1, SafetyLevel.EMERGENCY: 2}


@dataclass(frozen=True, slots=True)
class Entity:
    """`value` is normalised (ISO date, E.164 phone, canonical medication name); `start` and
    `end` index the text the NLU saw."""

    entity: str
    value: str
    text: str
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        return {"entity": self.entity, "value": self.value, "text": self.text,
                "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class IntentPrediction:
    """One backend's answer. `degraded` is set when the configured backend could not answer
    and another one did (the handoff note says so)."""

    intent: str
    confidence: float
    ranking: tuple[tuple[str, float], ...] = ()
    backend: str = "embedded"
    degraded: bool = False


@dataclass(frozen=True, slots=True)
class SafetyResult:
    level: SafetyLevel
    cues: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParseResult:
    """The NLU's verdict on one message: the `patientbot nlu parse` contract plus details
    the engine uses (backend, degraded, raw intent before the confidence threshold)."""

    text: str
    intent: str
    confidence: float
    safety: SafetyLevel
    safety_cues: tuple[str, ...]
    language: str
    entities: tuple[Entity, ...]
    lane: str | None
    predicted_intent: str = ""
    backend: str = "embedded"
    degraded: bool = False
    truncated: bool = False
    notes: tuple[str, ...] = field(default=())

    def contract(self) -> dict[str, Any]:
        """The JSON object `patientbot nlu parse` writes (DESIGN.md section 4)."""
        return {
            "text": self.text,
            "intent": self.intent,
            "confidence": round(self.confidence, 4),
            "safety": self.safety.value,
            "safety_cues": list(self.safety_cues),
            "language": self.language,
            "entities": [entity.as_dict() for entity in self.entities],
            "lane": self.lane,
        }


class IntentClassifier(Protocol):
    """A contact-reason classifier.

    `classify` gets text already prepared by `nlu.text.prepare` (normalised, quoted replies
    and signatures removed, capped in length) and returns the best intent with a confidence
    in 0..1. It must not raise for any text; a backend that cannot answer (a Rasa server that
    is down) answers through its fallback and sets `degraded`.
    """

    name: str

    async def classify(self, text: str) -> IntentPrediction: ...

    async def aclose(self) -> None: ...
