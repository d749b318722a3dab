"""`patientbot nlu check`: problems in the training data that an admin should fix.

Errors (exit status 1): the same text under two intents (the model is taught both answers),
intents of config/intents.yml with no examples (the bot could never recognise them) and
intents in the data that config/intents.yml does not know (no lane to route them to).
Warnings: duplicates and near-duplicates within an intent (they only weigh an example
twice), intents with fewer than MIN_PER_LANGUAGE examples in a language, and examples that
cross-validation assigns to another intent (often mislabelled or ambiguous).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from nlu.base import SafetyLevel
from nlu.config import NluSite
from nlu.data import Example, TrainingData, TrainingDataError
from nlu.evaluate import Outcome, cross_validate
from nlu.language import LanguageDetector
from nlu.safety import LexiconScreen
from nlu.service import load_training_data, training_data_path
from nlu.text import fold

ERROR, WARNING = "error", "warning"
MIN_PER_LANGUAGE = 40
# Short social replies need few examples.
THIN_EXEMPT = frozenset({"greeting", "thanks", "goodbye"})
NEAR_DUPLICATE_SCORE = 95
# token_set_ratio scores 100 when one text's words are a subset of the other's ("cancel" vs
# "cancel my appointment tomorrow"), so near-duplicates must also be of similar length.
NEAR_DUPLICATE_LENGTH = 0.8


@dataclass(frozen=True, slots=True)
class Finding:
    level: str
    check: str
    message: str
    lines: tuple[str, ...] = ()  # shown under the message, one per line


def normalise(text: str) -> str:
    return " ".join(fold(text).split())


def duplicates(examples: Sequence[Example]) -> list[Finding]:
    intents: dict[str, Counter[str]] = defaultdict(Counter)
    first: dict[str, str] = {}
    for example in examples:
        key = normalise(example.text)
        intents[key][example.intent] += 1
        first.setdefault(key, example.text)
    findings = []
    for key, counts in intents.items():
        if len(counts) > 1:
            findings.append(Finding(ERROR, "conflict", "same text under intents "
                                    + ", ".join(sorted(counts)), (repr(first[key]),)))
        for intent, count in counts.items():
            if count > 1:
                findings.append(Finding(WARNING, "duplicate",
                                        f"{count} times under {intent}", (repr(first[key]),)))
    return findings


def near_duplicates(examples: Sequence[Example]) -> list[Finding]:
    from rapidfuzz import fuzz, process

    by_intent: dict[str, list[str]] = defaultdict(list)
    for example in examples:
        text = normalise(example.text)
        if text not in by_intent[example.intent]:
            by_intent[example.intent].append(text)
    findings = []
    for intent, texts in sorted(by_intent.items()):
        scores = process.cdist(texts, texts, scorer=fuzz.token_set_ratio,
                               score_cutoff=NEAR_DUPLICATE_SCORE)
        for i, j in zip(*scores.nonzero(), strict=True):
            short, long = sorted((len(texts[i]), len(texts[j])))
            if i < j and short >= NEAR_DUPLICATE_LENGTH * long:
                findings.append(Finding(WARNING, "near-duplicate",
                                        f"under {intent} (score {scores[i, j]:.0f})",
                                        (repr(texts[i]), repr(texts[j]))))
    return findings


def language_counts(examples: Sequence[Example], languages: Sequence[str]
                    ) -> dict[str, Counter[str]]:
    detector = LanguageDetector(list(languages))
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for example in examples:
        counts[example.intent][detector.detect(example.text)] += 1
    return counts


def thin_intents(counts: dict[str, Counter[str]], languages: Sequence[str]) -> list[Finding]:
    return [Finding(WARNING, "thin", f"{intent} has {counts[intent][language]} {language} "
                    f"examples (fewer than {MIN_PER_LANGUAGE})")
            for intent in sorted(counts) if intent not in THIN_EXEMPT
            for language in languages if counts[intent][language] < MIN_PER_LANGUAGE]


def intent_coverage(intents: Iterable[str], data: TrainingData) -> list[Finding]:
    configured, present = set(intents), set(data.intents)
    return [
        *(Finding(ERROR, "missing", f"{name} is in config/intents.yml but has no examples")
          for name in sorted(configured - present)),
        *(Finding(ERROR, "unknown", f"{name} has examples but is not in config/intents.yml")
          for name in sorted(present - configured)),
    ]


def cv_disagreements(config: NluSite, data: TrainingData, folds: int) -> list[Finding]:
    """Examples that a model trained without them puts under another intent (the model's
    best guess, before the confidence threshold)."""
    wrong: dict[str, list[Outcome]] = defaultdict(list)
    for outcome in cross_validate(config, data, folds):
        if outcome.predicted_intent != outcome.example.intent:
            wrong[outcome.example.intent].append(outcome)
    return [Finding(WARNING, "cross-validation",
                    f"{len(outcomes)} {intent} example(s) assigned to another intent "
                    f"(most confident first)",
                    tuple(f"-> {o.predicted_intent} ({o.confidence:.2f}): {o.example.text!r}"
                          for o in sorted(outcomes, key=lambda o: -o.confidence)))
            for intent, outcomes in sorted(wrong.items())]


def lexicon_gaps(config: NluSite, data: TrainingData) -> list[Finding]:
    """Emergency examples the safety lexicon alone does not flag: each is caught only by the
    trained component, which may not generalise; add a pattern to config/safety.yml."""
    screen = LexiconScreen(config.safety)
    missed = [example.text for example in data.examples
              if example.safety is SafetyLevel.EMERGENCY
              and screen.screen(example.text).level is not SafetyLevel.EMERGENCY]
    if not missed:
        return []
    return [Finding(WARNING, "safety lexicon",
                    f"{len(missed)} emergency example(s) not flagged by config/safety.yml alone",
                    tuple(repr(text) for text in missed))]


def report(findings: Sequence[Finding], counts: dict[str, Counter[str]],
           languages: Sequence[str]) -> str:
    lines = ["examples per intent and language:",
             f"  {'intent':<24}" + "".join(f"{lang:>6}" for lang in languages)
             + f"{'other':>7}"]
    for intent in sorted(counts):
        other = sum(n for lang, n in counts[intent].items() if lang not in languages)
        lines.append(f"  {intent:<24}" + "".join(f"{counts[intent][lang]:>6}"
                                                  for lang in languages) + f"{other:>7}")
    for level in (ERROR, WARNING):
        for finding in (f for f in findings if f.level == level):
            lines.append(f"{level.upper():<8}{finding.check}: {finding.message}")
            lines.extend(f"          {line}" for line in finding.lines)
    errors = sum(f.level == ERROR for f in findings)
    lines.append(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return "\n".join(lines)


def run_checks(config: NluSite, *, folds: int) -> int:
    """Lint the training data; exit status 1 on errors. `folds` < 2 skips cross-validation."""
    path = training_data_path(config)
    try:
        data = load_training_data(config)
    except (OSError, TrainingDataError) as err:
        print(f"ERROR   cannot read {path}: {err}")
        return 1
    languages = list(config.nlu.languages)
    counts = language_counts(data.examples, languages)
    findings = [*duplicates(data.examples), *near_duplicates(data.examples),
                *intent_coverage(config.intents, data), *thin_intents(counts, languages),
                *lexicon_gaps(config, data)]
    if folds >= 2:
        try:
            findings += cv_disagreements(config, data, folds)
        except ValueError as err:  # too few examples or intents to split and train on
            findings.append(Finding(WARNING, "cross-validation", f"not run: {err}"))
    print(f"{path}: {len(data.examples)} examples, {len(data.intents)} intents")
    print(report(findings, counts, languages))
    return 1 if any(f.level == ERROR for f in findings) else 0
