"""Embedded NLU vs Rasa servers on the held-out sets, as one markdown table.

    python -m bot.app.nlu_compare --rasa diet=http://127.0.0.1:5005 --rasa logreg=http://...

`make test-rasa` runs it. The held-out files are nlu/data/test/{en,es}_{emergency,clinical,
non_clinical}.yml (Rasa YAML; `*_blind_*` files are reported as a separate set); the file name
gives each example's safety level. Rasa gets the text a backend gets in production (the newest
reply, capped; nlu.text.prepare). Intent accuracy and macro-F1 are over the non-clinical
examples; the safety columns ask whether a message would reach the clinical lane. A Rasa server
has no safety screen and no emergency level: it counts as flagging clinical when its intent's
lane is `clinical`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from sklearn.metrics import f1_score

from bot.config.loader import Config, load_config
from nlu.base import IntentPrediction, SafetyLevel
from nlu.data import Example, read_heldout
from nlu.rasa.client import RasaClassifier
from nlu.service import NluService, project_path
from nlu.text import prepare

GROUPS = ("held-out", "blind")

Predict = Callable[[str], Awaitable[tuple[str, SafetyLevel | None]]]


@dataclass(frozen=True, slots=True)
class Outcome:
    example: Example
    intent: str
    level: SafetyLevel | None  # None: the system has no emergency level
    seconds: float

    @property
    def group(self) -> str:
        return "blind" if "_blind_" in self.example.source else "held-out"


async def run(predict: Predict, examples: list[Example]) -> list[Outcome]:
    await predict("hello")  # warm-up: the first parse loads lazily in every backend
    outcomes = []
    for example in examples:
        started = time.perf_counter()
        intent, level = await predict(example.text)
        outcomes.append(Outcome(example, intent, level, time.perf_counter() - started))
    return outcomes


def _flagged(outcome: Outcome, lanes: dict[str, str | None]) -> bool:
    if outcome.level is not None:
        return outcome.level.rank >= SafetyLevel.CLINICAL.rank
    return lanes.get(outcome.intent) == "clinical"


def macro_f1(truth: list[str], predicted: list[str]) -> float:
    """Macro-F1 over the intents present in `truth`."""
    return float(f1_score(truth, predicted, labels=sorted(set(truth)), average="macro",
                          zero_division=0))


def _rate(hits: list[bool]) -> str:
    return f"{sum(hits) / len(hits):.3f}" if hits else "—"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def row(name: str, group: str, outcomes: list[Outcome], lanes: dict[str, str | None]) -> str:
    plain = [o for o in outcomes if o.example.safety is SafetyLevel.NONE]
    urgent = [o for o in outcomes if o.example.safety is not SafetyLevel.NONE]
    emergencies = [o for o in urgent if o.example.safety is SafetyLevel.EMERGENCY]
    truth, predicted = [o.example.intent for o in plain], [o.intent for o in plain]
    accuracy = sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(plain)
    has_levels = all(o.level is not None for o in outcomes)
    latencies = [o.seconds * 1000 for o in outcomes]
    cells = [
        name, group, f"{accuracy:.3f}", f"{macro_f1(truth, predicted):.3f}",
        _rate([o.level is SafetyLevel.EMERGENCY for o in emergencies]) if has_levels else "n/a",
        _rate([_flagged(o, lanes) for o in urgent]),
        _rate([_flagged(o, lanes) for o in plain]),
        f"{_percentile(latencies, 0.5):.1f}", f"{_percentile(latencies, 0.99):.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


class _NoAnswer:
    """Fallback for the Rasa systems: a comparison must not quietly score another backend."""

    name = "none"

    async def classify(self, text: str) -> IntentPrediction:
        return IntentPrediction(intent="", confidence=0.0)

    async def aclose(self) -> None:
        return None


async def _rasa(name: str, url: str, examples: list[Example], config: Config
                ) -> list[Outcome]:
    classifier = RasaClassifier(url, fallback=_NoAnswer(), timeout=30.0, total_timeout=30.0,
                                retries=0)
    max_chars = config.nlu.max_classifier_chars

    async def predict(text: str) -> tuple[str, SafetyLevel | None]:
        # What NluService hands a backend in production: the newest reply, capped.
        prediction = await classifier.classify(prepare(text, max_chars=max_chars).classify)
        if prediction.degraded:
            raise SystemExit(f"compare: the Rasa server {name} at {url} did not answer")
        return prediction.intent, None

    try:
        return await run(predict, examples)
    finally:
        await classifier.aclose()


async def _embedded(examples: list[Example], config: Config) -> list[Outcome]:
    service = NluService.from_config(config)

    async def predict(text: str) -> tuple[str, SafetyLevel | None]:
        result = await service.parse(text)
        return result.intent, result.safety

    try:
        return await run(predict, examples)
    finally:
        await service.aclose()


async def compare(rasa: list[tuple[str, str]], test_dir: Path | None) -> str:
    config = load_config()
    examples = read_heldout(test_dir or project_path(config, config.nlu.heldout_dir))
    lanes = {name: spec.lane for name, spec in config.intents.items()}
    systems = [("embedded (full NLU)", await _embedded(examples, config))]
    for name, url in rasa:
        systems.append((f"rasa {name}", await _rasa(name, url, examples, config)))

    lines = [
        "| system | set | intent accuracy | intent macro-F1 | emergency recall "
        "| clinical-or-emergency recall | non-clinical sent to clinical | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for group in GROUPS:
        subset = [o.example for o in systems[0][1] if o.group == group]
        if not subset:
            continue
        counts = {level: sum(e.safety is level for e in subset) for level in SafetyLevel}
        notes.append(f"{group}: {counts[SafetyLevel.EMERGENCY]} emergency, "
                     f"{counts[SafetyLevel.CLINICAL]} clinical, "
                     f"{counts[SafetyLevel.NONE]} non-clinical examples (en + es).")
        for name, outcomes in systems:
            lines.append(row(name, group, [o for o in outcomes if o.group == group], lanes))
    notes.append("Intent accuracy and macro-F1 are over the non-clinical examples.")
    if rasa:
        notes.append("Rasa has no safety screen: a Rasa row flags clinical when the intent's "
                     "lane is clinical, and has no emergency level (n/a).")
    return "\n".join(lines + [""] + notes)


def _name_url(value: str) -> tuple[str, str]:
    name, sep, url = value.partition("=")
    if not sep or not name or not url:
        raise argparse.ArgumentTypeError("expected NAME=URL")
    return name, url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot.app.nlu_compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rasa", action="append", type=_name_url, default=[],
                        metavar="NAME=URL", help="a Rasa server to compare (repeatable)")
    parser.add_argument("--test-dir", type=Path, default=None,
                        help="held-out files (default: heldout_dir of config/nlu.yml)")
    args = parser.parse_args(argv)
    print(asyncio.run(compare(args.rasa, args.test_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
