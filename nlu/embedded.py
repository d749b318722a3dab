"""The embedded backend: trained here from nlu/data, runs offline, no downloads.

Features are TF-IDF word uni/bigrams plus character n-grams within words (robust to typos,
shorthand and missing accents). Two calibrated linear SVMs share them: the contact-reason classifier
and the trained safety component (emergency / clinical / none). The method was chosen by
cross-validation and held-out measurement (docs/nlu.md).

Trained models are cached under the data directory, keyed by a hash of the training data, the
NLU config and this module's version, so a change to any of them retrains at start-up.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np
import sklearn
from scipy import sparse
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.svm import LinearSVC

from nlu.base import IntentPrediction, SafetyLevel
from nlu.data import TrainingData
from nlu.lexicon import sentences
from nlu.safety import ModelScores
from nlu.text import fold_words

MODEL_VERSION = "4"  # bump whenever the features or the method change: old caches retrain
_DIGITS = re.compile(r"\d+")


def feature_text(text: str) -> str:
    """What the vectorizers read: folded case and accents, digits collapsed (a date or an
    amount should not be a feature), apostrophes dropped ("can't" == "cant")."""
    return _DIGITS.sub("0", fold_words(text))


def _as_is(text: str) -> str:
    return text


class Features:
    """Word and character TF-IDF side by side. (sklearn's FeatureUnion does the same with a
    per-call overhead that is most of the cost of classifying one message.)"""

    def __init__(self) -> None:
        # Texts are prepared once by `feature_text`, not by each vectorizer.
        self.words = TfidfVectorizer(preprocessor=_as_is, ngram_range=(1, 2),
                                     sublinear_tf=True, min_df=1, token_pattern=r"(?u)\b\w+\b")
        self.chars = TfidfVectorizer(preprocessor=_as_is, analyzer="char_wb",
                                     ngram_range=(2, 5), sublinear_tf=True, min_df=2)

    def fit_transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        prepared = [feature_text(text) for text in texts]
        return sparse.hstack([self.words.fit_transform(prepared),
                              self.chars.fit_transform(prepared)], format="csr")

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        prepared = [feature_text(text) for text in texts]
        with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
            return sparse.hstack([self.words.transform(prepared),
                                  self.chars.transform(prepared)], format="csr")


@dataclass(slots=True)
class CalibratedLinear:
    """Linear SVMs with sigmoid-calibrated probabilities, trained by sklearn's
    `CalibratedClassifierCV` (one SVM and calibration per fold) and kept as matrices, so
    that probabilities for a batch are one sparse product and one vectorised sigmoid. The
    result equals sklearn's `predict_proba` (tested); sklearn's own takes milliseconds per
    message.

    Chosen by measurement: as accurate as logistic regression on this data and several
    times faster to train (docs/nlu.md)."""

    classes_: np.ndarray
    weights: np.ndarray  # features x (folds * classes)
    bias: np.ndarray
    slope: np.ndarray  # sigmoid calibration: p = 1 / (1 + exp(slope * d + offset))
    offset: np.ndarray
    folds: int

    @classmethod
    def fit(cls, features: sparse.csr_matrix, labels: Sequence[str], *, folds: int = 5
            ) -> CalibratedLinear:
        if len(set(labels)) < 3:
            raise ValueError("at least three classes are needed")
        model = CalibratedClassifierCV(LinearSVC(C=1.0, class_weight="balanced"), cv=folds,
                                       method="sigmoid").fit(features, labels)
        return cls.from_sklearn(model)

    @classmethod
    def from_sklearn(cls, model: CalibratedClassifierCV) -> CalibratedLinear:
        parts = model.calibrated_classifiers_
        for part in parts:
            if list(part.estimator.classes_) != list(model.classes_):
                raise ValueError("every fold must see every class")
        return cls(
            classes_=model.classes_,
            weights=np.hstack([part.estimator.coef_.T for part in parts]),
            bias=np.concatenate([part.estimator.intercept_ for part in parts]),
            slope=np.array([c.a_ for part in parts for c in part.calibrators]),
            offset=np.array([c.b_ for part in parts for c in part.calibrators]),
            folds=len(parts))

    def predict_proba(self, features: sparse.csr_matrix) -> np.ndarray:
        decision = np.asarray(features @ self.weights) + self.bias
        probabilities = expit(-(self.slope * decision + self.offset))
        per_fold = probabilities.reshape(len(decision), self.folds, len(self.classes_))
        total = per_fold.sum(axis=2, keepdims=True)
        uniform = np.full_like(per_fold, 1 / len(self.classes_))
        normalised = np.divide(per_fold, total, out=uniform, where=total != 0)
        return normalised.mean(axis=1)


@dataclass(slots=True)
class EmbeddedModel:
    features: Features
    intents: CalibratedLinear
    safety: CalibratedLinear
    known_words: frozenset[str]
    lookups: dict[str, list[str]]
    fingerprint: str = ""

    @classmethod
    def train(cls, data: TrainingData, *, fingerprint: str = "") -> EmbeddedModel:
        features = Features()
        matrix = features.fit_transform([example.text for example in data.examples])
        intents = CalibratedLinear.fit(matrix, [example.intent for example in data.examples])
        safety = CalibratedLinear.fit(matrix, [e.safety.value for e in data.examples])
        known = frozenset(
            token for example in data.examples if example.safety is SafetyLevel.NONE
            for tokens in sentences(example.text) for token in tokens)
        return cls(features, intents, safety, known, dict(data.lookups), fingerprint)

    @property
    def vocabulary(self) -> frozenset[str]:
        """Single words the classifier knows (folded): the training data's vocabulary."""
        words = self.features.words.vocabulary_
        return frozenset(word for word in words if " " not in word)

    def predict(self, texts: Sequence[str]) -> list[tuple[IntentPrediction, ModelScores]]:
        features = self.features.transform(texts)
        intent_probs = self.intents.predict_proba(features)
        safety_probs = self.safety.predict_proba(features)
        classes = self.intents.classes_
        safety_index = {name: i for i, name in enumerate(self.safety.classes_)}
        results = []
        for row, safety_row in zip(intent_probs, safety_probs, strict=True):
            order = np.argsort(row)[::-1][:5]
            ranking = tuple((str(classes[i]), float(row[i])) for i in order)
            prediction = IntentPrediction(intent=ranking[0][0], confidence=ranking[0][1],
                                          ranking=ranking, backend="embedded")
            scores = ModelScores(
                emergency=float(safety_row[safety_index[SafetyLevel.EMERGENCY.value]])
                if SafetyLevel.EMERGENCY.value in safety_index else 0.0,
                clinical=float(safety_row[safety_index[SafetyLevel.CLINICAL.value]])
                if SafetyLevel.CLINICAL.value in safety_index else 0.0)
            results.append((prediction, scores))
        return results


def fingerprint(training_data: Path, settings: dict) -> str:
    digest = hashlib.sha256()
    digest.update(MODEL_VERSION.encode())
    digest.update(sklearn.__version__.encode())
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(training_data.read_bytes())
    return digest.hexdigest()[:20]


class ModelCache:
    """Trained models on disk, one file per fingerprint; stale ones are removed."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def path(self, key: str) -> Path:
        return self._directory / f"embedded-{key}.joblib"

    def load(self, key: str) -> EmbeddedModel | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            model = joblib.load(path)
        except Exception:  # noqa: BLE001 - a corrupt or foreign cache file is retrained
            return None
        return model if isinstance(model, EmbeddedModel) and model.fingerprint == key else None

    def save(self, model: EmbeddedModel) -> Path:
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self.path(model.fingerprint)
        handle, temporary = tempfile.mkstemp(dir=self._directory, suffix=".tmp")
        os.close(handle)
        joblib.dump(model, temporary)
        os.replace(temporary, target)
        for old in self._directory.glob("embedded-*.joblib"):
            if old != target:
                old.unlink(missing_ok=True)
        return target
