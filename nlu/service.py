"""The NLU as one object: text preparation, safety screen, classifier, entities, language.

`NluService.from_config` loads (or trains, when the cached model is stale) the embedded model
and builds the configured classifier backend. `parse` answers one message; `parse_batch` is
the embedded backend's fast path for `patientbot nlu parse` and evaluation.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from nlu.base import (
    OUT_OF_SCOPE,
    IntentClassifier,
    IntentPrediction,
    ParseResult,
    SafetyLevel,
    SafetyResult,
)
from nlu.config import NluSite
from nlu.data import TrainingData, read_file
from nlu.embedded import EmbeddedModel, ModelCache, fingerprint
from nlu.entities import CALENDAR_WORDS, EntityExtractor, today_in
from nlu.language import LanguageDetector
from nlu.lexicon import sentences
from nlu.safety import LexiconScreen, ModelScores, combine
from nlu.text import PreparedText, prepare

log = logging.getLogger("patientbot.nlu")
CLINICAL_LANE = "clinical"
INTERPRETER_INTENT = "language_assistance"
# The trained components (safety model, clinical intents) raise the safety level only for
# messages of at least this many words: on "no" or "está bien" their verdict is noise, and
# such short replies are answers to the bot's questions. The lexicon judges every message;
# no held-out emergency or clinical message shorter than this relies on the models.
MIN_MODEL_WORDS = 4
# A clinical contact reason makes a message clinical from this length: shorter answers such
# as "todo el año 2025" or "lisinopril 10mg" look like symptoms or medicine questions to a
# classifier trained on requests. (Held-out clinical messages caught only this way are all
# much longer.)
MIN_INTENT_WORDS = 6
_SHARED: dict[str, NluService] = {}
_INSTALL_ROOT = Path(__file__).resolve().parent.parent


def word_count(text: str) -> int:
    return sum(1 for tokens in sentences(text) for token in tokens if token != ",")


def clinical_intents(config: NluSite) -> set[str]:
    return {name for name, spec in config.intents.items() if spec.lane == CLINICAL_LANE}


def project_path(config: NluSite, relative: str) -> Path:
    """A path from config/nlu.yml: relative to the project root (the directory above the
    config directory), else to this installation's root (a copied config directory, as in
    tests and containers, still finds the shipped training data)."""
    path = Path(relative)
    if path.is_absolute():
        return path
    for root in (config.project_root, _INSTALL_ROOT):
        if (root / path).exists():
            return root / path
    return config.project_root / path


def training_data_path(config: NluSite) -> Path:
    return project_path(config, config.nlu.training_data)


def load_training_data(config: NluSite) -> TrainingData:
    return read_file(training_data_path(config), clinical_intents=clinical_intents(config))


def model_key(config: NluSite) -> str:
    settings = {"intents": sorted(config.intents), "languages": config.nlu.languages,
                "max_chars": config.nlu.max_classifier_chars}
    return fingerprint(training_data_path(config), settings)


def train_model(config: NluSite, data: TrainingData | None = None) -> EmbeddedModel:
    data = data or load_training_data(config)
    limit = config.nlu.max_classifier_chars
    prepared = TrainingData(
        examples=[replace(e, text=prepare(e.text, max_chars=limit).classify)
                  for e in data.examples],
        lookups=data.lookups, synonyms=data.synonyms, regexes=data.regexes)
    return EmbeddedModel.train(prepared, fingerprint=model_key(config))


def load_or_train(config: NluSite, *, cache_dir: Path | None = None) -> tuple[EmbeddedModel, bool]:
    """The cached model for the current data and config, training it when stale.
    Returns (model, trained_now). The cache is `cache_dir`, else PATIENTBOT_NLU_CACHE (one
    directory several processes share: a test run, or models trained into an image), else
    the data directory's nlu/."""
    shared = os.environ.get("PATIENTBOT_NLU_CACHE")
    cache = ModelCache(cache_dir or (Path(shared) if shared else Path(config.app.data_dir) / "nlu"))
    key = model_key(config)
    model = cache.load(key)
    if model is not None:
        return model, False
    started = time.perf_counter()
    model = train_model(config)
    cache.save(model)
    log.info("nlu model trained", extra={"seconds": round(time.perf_counter() - started, 2)})
    return model, True


class EmbeddedClassifier:
    name = "embedded"

    def __init__(self, model: EmbeddedModel) -> None:
        self._model = model

    async def classify(self, text: str) -> IntentPrediction:
        return self._model.predict([text])[0][0]

    async def aclose(self) -> None:
        return None


class NluService:
    def __init__(self, config: NluSite, model: EmbeddedModel, *,
                 classifier: IntentClassifier | None = None) -> None:
        self._config = config
        self._nlu = config.nlu
        self.model = model
        self.classifier: IntentClassifier = classifier or EmbeddedClassifier(model)
        self._screen = LexiconScreen(config.safety,
                                     known_words=[*model.known_words, *CALENDAR_WORDS])
        entities = config.nlu.entities
        self._entities = EntityExtractor(
            phone_region=entities.phone_region, date_order=entities.date_order,
            mrn_patterns=entities.mrn_patterns, account_patterns=entities.account_patterns,
            lookups=model.lookups)
        self._language = LanguageDetector(list(config.nlu.languages),
                                          vocabulary=model.vocabulary)
        self._clinical = clinical_intents(config)

    @classmethod
    def from_config(cls, config: NluSite, *, cache_dir: Path | None = None,
                    http_client: Any = None) -> NluService:
        model, _ = load_or_train(config, cache_dir=cache_dir)
        classifier: IntentClassifier | None = None
        if config.nlu.backend == "rasa":
            from nlu.rasa.client import RasaClassifier

            rasa = config.nlu.rasa
            classifier = RasaClassifier(
                rasa.url, fallback=EmbeddedClassifier(model), client=http_client,
                token=os.environ.get("RASA_AUTH_TOKEN") or None,  # a secret: environment only
                timeout=rasa.timeout_seconds, retries=rasa.retries,
                breaker_failures=rasa.breaker_failures,
                breaker_reset_seconds=rasa.breaker_reset_seconds)
        return cls(config, model, classifier=classifier)

    @classmethod
    def shared(cls, config: NluSite) -> NluService:
        """One service per distinct NLU-relevant configuration in this process: the web app,
        its workers and the CLI share the loaded model and detectors."""
        key = config.model_dump_json(include={"intents", "nlu", "safety", "app", "queues"}) \
            + config.directory
        service = _SHARED.get(key)
        if service is None:
            service = _SHARED[key] = cls.from_config(config)
        return service

    async def aclose(self) -> None:
        await self.classifier.aclose()

    async def parse(self, text: str, *, now: datetime | None = None,
                    conversation_language: str | None = None) -> ParseResult:
        """`conversation_language` is kept when the text is too short to tell its language."""
        prepared = prepare(text, max_chars=self._nlu.max_classifier_chars)
        prediction, scores = self.model.predict([prepared.classify])[0]
        if not isinstance(self.classifier, EmbeddedClassifier):
            prediction = await self.classifier.classify(prepared.classify)
        return self._verdict(text, prepared, prediction, scores, now, conversation_language)

    def parse_batch(self, texts: Sequence[str], *, now: datetime | None = None
                    ) -> list[ParseResult]:
        """Many messages at once with the embedded model (vectorised)."""
        limit = self._nlu.max_classifier_chars
        prepared = [prepare(text, max_chars=limit) for text in texts]
        predictions = self.model.predict([p.classify for p in prepared]) if prepared else []
        return [self._verdict(text, p, prediction, scores, now, None)
                for text, p, (prediction, scores) in zip(texts, prepared, predictions,
                                                         strict=True)]

    def screen(self, text: str, scores: ModelScores | None = None) -> SafetyResult:
        if word_count(text) < MIN_MODEL_WORDS:
            scores = None  # the lexicon alone judges a one-to-three-word message
        thresholds = self._nlu.thresholds
        return combine(self._screen.screen(text), scores,
                       emergency_threshold=thresholds.safety_emergency,
                       clinical_threshold=thresholds.safety_clinical)

    def _verdict(self, text: str, prepared: PreparedText, prediction: IntentPrediction,
                 scores: ModelScores, now: datetime | None,
                 conversation_language: str | None) -> ParseResult:
        safety = self.screen(prepared.full, scores)
        level, cues = safety.level, list(safety.cues)
        default_language = conversation_language or self._config.app.default_language
        detected = self._language.detect(prepared.classify, default=default_language)
        supported = detected in self._nlu.languages
        confident = prediction.confidence >= self._nlu.thresholds.intent_confidence
        intent = prediction.intent if confident else OUT_OF_SCOPE
        notes = []
        if not supported:
            # The classifier knows English and Spanish only: an interpreter is the way in.
            notes.append("unsupported_language")
            intent = INTERPRETER_INTENT
        elif (intent in self._clinical and level is SafetyLevel.NONE
              and word_count(prepared.full) >= MIN_INTENT_WORDS):
            level = SafetyLevel.CLINICAL
            cues.append(f"intent:{intent}")
        if prediction.degraded:
            notes.append("classifier_fallback")
        if prepared.truncated:
            notes.append("truncated_for_classifier")
        lane = CLINICAL_LANE if level is not SafetyLevel.NONE else self._config.lane_of(intent)
        entity_language = detected if detected in ("en", "es") else default_language
        entities = self._entities.extract(prepared.classify, today=today_in(now),
                                          language=entity_language)
        return ParseResult(
            text=text, intent=intent, confidence=prediction.confidence, safety=level,
            safety_cues=tuple(cues), language=detected, entities=tuple(entities), lane=lane,
            predicted_intent=prediction.intent, backend=prediction.backend,
            degraded=prediction.degraded, truncated=prepared.truncated, notes=tuple(notes))
