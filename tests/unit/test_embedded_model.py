"""The embedded model's fast probability path equals sklearn's."""

from __future__ import annotations

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import LinearSVC

from nlu.embedded import CalibratedLinear, Features

TEXTS = [f"{word} {n}" for n in range(12) for word in (
    "refill my lisinopril please", "reschedule my appointment to friday",
    "my chest hurts a lot", "question about my bill", "copy of my medical records")]
LABELS = [label for _ in range(12) for label in (
    "refill", "reschedule", "symptom", "billing", "records")]


def test_flattened_calibrated_svm_matches_sklearn_predict_proba() -> None:
    features = Features()
    matrix = features.fit_transform(TEXTS)
    sklearn_model = CalibratedClassifierCV(LinearSVC(C=1.0, class_weight="balanced"), cv=3,
                                           method="sigmoid").fit(matrix, LABELS)
    fast = CalibratedLinear.from_sklearn(sklearn_model)
    probe = features.transform(["can you refill my lisinopril", "my chest hurts", "hello"])

    assert list(fast.classes_) == list(sklearn_model.classes_)
    np.testing.assert_allclose(fast.predict_proba(probe), sklearn_model.predict_proba(probe),
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fast.predict_proba(probe).sum(axis=1), 1.0)
