"""The held-out targets: the NLU trained on nlu/data, scored on messages it never saw.

Missing an emergency is the worst failure this product can have, so it is a test of its own
that names every missed message (the held-out messages are fictitious test data).
"""

from __future__ import annotations

import pytest

from bot.config.loader import load_config
from nlu.base import SafetyLevel
from nlu.evaluate import (
    Outcome,
    heldout_examples,
    heldout_language,
    heldout_metrics,
    score,
    targets_met,
)
from nlu.service import NluService
from tests.conftest import CONFIG_DIR


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    config = load_config(CONFIG_DIR)
    service = NluService.from_config(config)
    examples = heldout_examples(config)
    results = service.parse_batch([example.text for example in examples])
    return score(examples, results, language=heldout_language)


def test_heldout_sets_cover_both_languages_and_every_level(outcomes: list[Outcome]) -> None:
    assert {(o.language, o.example.safety) for o in outcomes} == {
        (language, level) for language in ("en", "es") for level in SafetyLevel}


def test_no_emergency_is_missed(outcomes: list[Outcome]) -> None:
    missed = [o for o in outcomes if o.example.safety is SafetyLevel.EMERGENCY
              and o.safety is not SafetyLevel.EMERGENCY]
    assert not missed, f"{len(missed)} emergency message(s) not flagged emergency:\n" + "\n".join(
        f"  [{o.example.source}] got {o.safety.value} {list(o.cues)}: {o.example.text!r}"
        for o in missed)


def test_heldout_targets_are_met(outcomes: list[Outcome]) -> None:
    failed = targets_met(heldout_metrics(outcomes))
    assert not failed, "held-out targets failed:\n  " + "\n  ".join(failed)
