"""RasaClassifier against a real Rasa server trained on nlu/data (run by `make test-rasa`).

Skipped unless RASA_URL points at `rasa run --enable-api` serving an NLU model.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator

import pytest
import yaml

from nlu.base import IntentPrediction
from nlu.rasa.client import DEGRADED_BACKEND, RasaClassifier
from tests.conftest import CONFIG_DIR

RASA_URL = os.environ.get("RASA_URL", "")

pytestmark = [
    pytest.mark.rasa,
    pytest.mark.skipif(not RASA_URL, reason="RASA_URL is not set (run `make test-rasa`)"),
]

# intents.yml directly: this suite needs only the intent names, not a full, valid config.
KNOWN_INTENTS = set(yaml.safe_load((CONFIG_DIR / "intents.yml").read_text())["intents"])


class Unreachable:
    """The fallback must not be used while Rasa answers; if it is, the intent says so."""

    name = "unreachable"

    async def classify(self, text: str) -> IntentPrediction:
        return IntentPrediction(intent="fallback_used", confidence=0.0)

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def classifier() -> AsyncIterator[RasaClassifier]:
    # The first parse after loading can be slow (graph warm-up), hence the generous timeout.
    rasa = RasaClassifier(fallback=Unreachable(), base_url=RASA_URL, timeout=30.0,
                          total_timeout=30.0)
    yield rasa
    await rasa.aclose()


@pytest.mark.parametrize(("text", "intent"), [
    ("I would like to book an appointment with my doctor", "schedule_appointment"),
    ("I have a question about my bill", "billing_question"),
    ("hello", "greeting"),
    ("thank you so much", "thanks"),
    ("quiero hacer una cita con el médico", "schedule_appointment"),
])
async def test_obvious_messages_get_their_intent(classifier: RasaClassifier, text: str,
                                                 intent: str) -> None:
    prediction = await classifier.classify(text)
    assert not prediction.degraded
    assert prediction.backend == "rasa"
    assert prediction.intent == intent
    assert 0.0 <= prediction.confidence <= 1.0


async def test_every_answer_is_a_known_intent_with_a_ranking(
        classifier: RasaClassifier) -> None:
    for text in ("asdfgh qwerty", "can I get a copy of my records", "my chest hurts", ""):
        prediction = await classifier.classify(text)
        assert not prediction.degraded
        assert prediction.intent in KNOWN_INTENTS
        assert 0.0 <= prediction.confidence <= 1.0
        assert all(name in KNOWN_INTENTS and 0.0 <= score <= 1.0
                   for name, score in prediction.ranking)


async def test_a_dead_server_falls_back() -> None:
    # The running server can't be stopped from here; a second classifier at a closed port
    # stands for it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fallback = Unreachable()
    dead = RasaClassifier(fallback=fallback, base_url=f"http://127.0.0.1:{port}",
                          timeout=1.0, total_timeout=2.0)
    prediction = await dead.classify("I would like to book an appointment")
    await dead.aclose()
    assert prediction.degraded
    assert prediction.backend == DEGRADED_BACKEND
    assert prediction.intent == "fallback_used"
