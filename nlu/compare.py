"""Embedded NLU vs Rasa servers on the held-out sets, as one markdown table.

    python -m nlu.compare --rasa diet=http://127.0.0.1:5005 --rasa logreg=http://...

`make test-rasa` runs it. The held-out files are nlu/data/test/{en,es}_{emergency,clinical,
non_clinical}.yml (Rasa YAML); the file name gives each example's safety level. Intent accuracy
and macro-F1 are over the non-clinical examples; the safety columns ask whether a message would
reach the clinical lane. A Rasa server has no safety screen and no emergency level: it counts
as flagging clinical when its intent's lane is `clinical`.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import math
import re
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from bot.config import load_config
from nlu.base import IntentPrediction, SafetyLevel
from nlu.rasa.client import RasaClassifier

TEST_DIR = Path(__file__).resolve().parent / "data" / "test"
INTENTS_FILE = Path(__file__).resolve().parent.parent / "config" / "intents.yml"
LEVELS = {"emergency": SafetyLevel.EMERGENCY, "clinical": SafetyLevel.CLINICAL,
          "non_clinical": SafetyLevel.NONE}
_ANNOTATION = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\{[^}]*\})")

Predict = Callable[[str], Awaitable[tuple[str, SafetyLevel | None]]]


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    intent: str
    level: SafetyLevel


@dataclass(frozen=True, slots=True)
class Outcome:
    example: Example
    intent: str
    level: SafetyLevel | None  # None: the system has no emergency level
    seconds: float


def load_examples(directory: Path = TEST_DIR) -> list[Example]:
    examples = []
    for path in sorted(directory.glob("*.yml")):
        level = LEVELS[path.stem.split("_", 1)[1]]  # en_non_clinical -> non_clinical
        for block in yaml.safe_load(path.read_text(encoding="utf-8")).get("nlu") or []:
            for line in str(block.get("examples", "")).splitlines():
                if line.strip().startswith("- "):
                    text = _ANNOTATION.sub(r"\1", line.strip()[2:].strip())
                    examples.append(Example(text, block["intent"], level))
    return examples


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
    labels = sorted(set(truth))
    try:
        from sklearn.metrics import f1_score
    except ImportError:
        scores = []
        for label in labels:
            tp = sum(t == p == label for t, p in zip(truth, predicted, strict=True))
            support, guessed = truth.count(label), predicted.count(label)
            scores.append(2 * tp / (support + guessed) if support + guessed else 0.0)
        return sum(scores) / len(scores)
    return float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))


def _rate(hits: list[bool]) -> str:
    return f"{sum(hits) / len(hits):.3f}" if hits else "—"


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def row(name: str, outcomes: list[Outcome], lanes: dict[str, str | None]) -> str:
    plain = [o for o in outcomes if o.example.level is SafetyLevel.NONE]
    urgent = [o for o in outcomes if o.example.level is not SafetyLevel.NONE]
    emergencies = [o for o in urgent if o.example.level is SafetyLevel.EMERGENCY]
    truth, predicted = [o.example.intent for o in plain], [o.intent for o in plain]
    accuracy = sum(t == p for t, p in zip(truth, predicted, strict=True)) / len(plain)
    has_levels = all(o.level is not None for o in outcomes)
    latencies = [o.seconds * 1000 for o in outcomes]
    cells = [
        name, f"{accuracy:.3f}", f"{macro_f1(truth, predicted):.3f}",
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


async def _rasa_row(name: str, url: str, examples: list[Example],
                    lanes: dict[str, str | None]) -> str:
    classifier = RasaClassifier(fallback=_NoAnswer(), base_url=url, timeout=30.0,
                                total_timeout=30.0, retries=0)

    async def predict(text: str) -> tuple[str, SafetyLevel | None]:
        prediction = await classifier.classify(text)
        if prediction.degraded:
            raise SystemExit(f"compare: the Rasa server {name} at {url} did not answer")
        return prediction.intent, None

    try:
        return row(f"rasa {name}", await run(predict, examples), lanes)
    finally:
        await classifier.aclose()


async def _embedded_row(examples: list[Example], lanes: dict[str, str | None]) -> str:
    from nlu.service import NluService  # being built alongside; optional here

    service = NluService.from_config(load_config())
    if inspect.isawaitable(service):
        service = await service

    async def predict(text: str) -> tuple[str, SafetyLevel | None]:
        result = await service.parse(text)
        return result.intent, result.safety

    try:
        return row("embedded (full NLU)", await run(predict, examples), lanes)
    finally:
        close = getattr(service, "aclose", None)
        if close is not None:
            await close()


async def compare(rasa: list[tuple[str, str]], test_dir: Path) -> str:
    examples = load_examples(test_dir)
    # Only the intent -> lane map is needed for the Rasa rows, so read just that file.
    intents = yaml.safe_load(INTENTS_FILE.read_text(encoding="utf-8"))["intents"]
    lanes = {name: (entry or {}).get("lane") for name, entry in intents.items()}
    counts = {level: sum(e.level is level for e in examples) for level in SafetyLevel}
    lines = [
        "| system | intent accuracy | intent macro-F1 | emergency recall "
        "| clinical-or-emergency recall | non-clinical sent to clinical | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    notes = [f"Held-out examples: {counts[SafetyLevel.EMERGENCY]} emergency, "
             f"{counts[SafetyLevel.CLINICAL]} clinical, {counts[SafetyLevel.NONE]} non-clinical "
             f"(en + es). Intent scores are over the non-clinical examples."]
    try:
        lines.append(await _embedded_row(examples, lanes))
    except ImportError as err:
        notes.append(f"Embedded NLU not compared: nlu.service could not be imported ({err}).")
    except Exception as err:  # a half-built service must not hide the Rasa rows
        notes.append(f"Embedded NLU not compared: {type(err).__name__}: {err}")
    for name, url in rasa:
        lines.append(await _rasa_row(name, url, examples, lanes))
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
    parser = argparse.ArgumentParser(prog="python -m nlu.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rasa", action="append", type=_name_url, default=[],
                        metavar="NAME=URL", help="a Rasa server to compare (repeatable)")
    parser.add_argument("--test-dir", type=Path, default=TEST_DIR)
    args = parser.parse_args(argv)
    print(asyncio.run(compare(args.rasa, args.test_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
