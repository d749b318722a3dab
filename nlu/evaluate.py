"""`patientbot nlu test`: how well the NLU does, measured two ways.

- Stratified k-fold cross-validation over the training data shows which intents the data does
  not separate and which examples sit under the wrong intent.
- The held-out sets (nlu/data/test, never trained on), parsed by the model trained on all the
  data, give the numbers the targets are about, overall and per language.

Safety is scored on every example. Intents are scored on the held-out non-clinical examples
only: a clinical message goes to the clinical lane whatever its intent, so only there is the
expected intent what the bot acts on. Intents are the final ones (after the confidence
threshold), as the bot would act on them.
"""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nlu.base import OUT_OF_SCOPE, ParseResult, SafetyLevel
from nlu.config import NluSite
from nlu.data import Example, TrainingData, read_heldout
from nlu.service import NluService, load_training_data, project_path, train_model

Metrics = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    section: str
    key: str
    threshold: float
    at_most: bool = False

    def value(self, metrics: Metrics) -> float | None:
        return metrics[self.section][self.key]

    def met(self, metrics: Metrics) -> bool:
        value = self.value(metrics)
        if value is None:
            return False
        return value <= self.threshold if self.at_most else value >= self.threshold

    def describe(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self.threshold:.2f}"


TARGETS = (
    Target("emergency recall", "safety", "emergency_recall", 1.0),
    Target("clinical-or-emergency recall", "safety", "clinical_or_emergency_recall", 0.98),
    Target("non-clinical sent to clinical", "safety", "non_clinical_flagged_rate", 0.05,
           at_most=True),
    Target("non-clinical intent macro-F1", "intent", "macro_f1", 0.92),
    Target("out_of_scope recall", "intent", "out_of_scope_recall", 0.8),
)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One example and what the NLU made of it."""

    example: Example
    language: str  # expected language ("" when the example does not say)
    intent: str
    predicted_intent: str  # the model's best intent before the confidence threshold
    confidence: float
    safety: SafetyLevel
    cues: tuple[str, ...]

    def row(self) -> dict[str, Any]:
        return {"text": self.example.text, "source": self.example.source,
                "language": self.language, "expected_intent": self.example.intent,
                "intent": self.intent, "predicted_intent": self.predicted_intent,
                "confidence": round(self.confidence, 4),
                "expected_safety": self.example.safety.value, "safety": self.safety.value,
                "cues": list(self.cues)}


def heldout_language(example: Example) -> str:
    """Held-out files are named <language>_<level>.yml."""
    return Path(example.source).stem.split("_", 1)[0]


def score(examples: Sequence[Example], results: Sequence[ParseResult], *,
          language: Callable[[Example], str] = lambda _: "") -> list[Outcome]:
    return [Outcome(e, language(e), r.intent, r.predicted_intent, r.confidence, r.safety,
                    r.safety_cues) for e, r in zip(examples, results, strict=True)]


# --- metrics ----------------------------------------------------------------------------------

def _rate(hits: list[bool]) -> float | None:
    return round(sum(hits) / len(hits), 4) if hits else None


def intent_metrics(outcomes: Sequence[Outcome]) -> Metrics:
    """Per-intent precision/recall/F1, accuracy, and macro-F1 over the expected intents (an
    intent predicted but never expected would add a meaningless zero)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    truth = [o.example.intent for o in outcomes]
    predicted = [o.intent for o in outcomes]
    if not truth:
        return {"examples": 0, "accuracy": None, "macro_f1": None, "out_of_scope_recall": None,
                "per_intent": {}, "labels": [], "confusion": []}
    labels = sorted(set(truth) | set(predicted))
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0)
    per_intent = {label: {"precision": round(float(p), 4), "recall": round(float(r), 4),
                          "f1": round(float(f), 4), "support": int(s)}
                  for label, p, r, f, s in zip(labels, precision, recall, f1, support,
                                               strict=True)}
    expected = sorted(set(truth))
    out_of_scope = per_intent.get(OUT_OF_SCOPE, {})
    return {
        "examples": len(truth),
        "accuracy": _rate([t == p for t, p in zip(truth, predicted, strict=True)]),
        "macro_f1": round(sum(per_intent[label]["f1"] for label in expected) / len(expected), 4),
        "out_of_scope_recall": out_of_scope["recall"] if out_of_scope.get("support") else None,
        "per_intent": per_intent,
        "labels": labels,
        "confusion": confusion_matrix(truth, predicted, labels=labels).tolist(),
    }


def safety_metrics(outcomes: Sequence[Outcome]) -> Metrics:
    """Recall per level (emergency must be flagged emergency; clinical anything but none)
    and the false-alarm rate on non-clinical messages."""
    by_level = {level: [o for o in outcomes if o.example.safety is level] for level in SafetyLevel}
    urgent = by_level[SafetyLevel.EMERGENCY] + by_level[SafetyLevel.CLINICAL]
    levels = Counter((o.example.safety.value, o.safety.value) for o in outcomes)
    return {
        "emergency_recall": _rate(
            [o.safety is SafetyLevel.EMERGENCY for o in by_level[SafetyLevel.EMERGENCY]]),
        "clinical_recall": _rate(
            [o.safety is not SafetyLevel.NONE for o in by_level[SafetyLevel.CLINICAL]]),
        "clinical_or_emergency_recall": _rate([o.safety is not SafetyLevel.NONE for o in urgent]),
        "non_clinical_flagged_rate": _rate(
            [o.safety is not SafetyLevel.NONE for o in by_level[SafetyLevel.NONE]]),
        "support": {level.value: len(items) for level, items in by_level.items()},
        "levels": {expected.value: {got.value: levels[expected.value, got.value]
                                    for got in SafetyLevel} for expected in SafetyLevel},
    }


def _lists(outcomes: Sequence[Outcome], intent_outcomes: Sequence[Outcome]) -> Metrics:
    emergency, none = SafetyLevel.EMERGENCY, SafetyLevel.NONE
    return {
        "missed_emergencies": [o.row() for o in outcomes
                               if o.example.safety is emergency and o.safety is not emergency],
        "missed_clinical": [o.row() for o in outcomes
                            if o.example.safety is not none and o.safety is none],
        "false_alarms": [o.row() for o in outcomes
                         if o.example.safety is none and o.safety is not none],
        "misclassified": [o.row() for o in intent_outcomes if o.intent != o.example.intent],
    }


def cv_metrics(outcomes: Sequence[Outcome]) -> Metrics:
    return {"examples": len(outcomes), "intent": intent_metrics(outcomes),
            "safety": safety_metrics(outcomes), **_lists(outcomes, outcomes)}


def heldout_metrics(outcomes: Sequence[Outcome], *, by_language: bool = True) -> Metrics:
    """Safety over every example, intents over the non-clinical ones; `by_language` adds the
    same block per language."""
    plain = [o for o in outcomes if o.example.safety is SafetyLevel.NONE]
    metrics = {"examples": len(outcomes), "intent": intent_metrics(plain),
               "safety": safety_metrics(outcomes), **_lists(outcomes, plain)}
    if by_language:
        languages = sorted({o.language for o in outcomes})
        metrics["by_language"] = {
            language: heldout_metrics([o for o in outcomes if o.language == language],
                                      by_language=False) for language in languages}
    return metrics


def targets_met(heldout: Metrics) -> list[str]:
    """The held-out targets that failed, as readable lines (empty: all met)."""
    failed = []
    for target in TARGETS:
        if not target.met(heldout):
            value = target.value(heldout)
            shown = "not measured (no examples)" if value is None else f"{value:.4f}"
            failed.append(f"{target.name}: {shown}, target {target.describe()}")
    return failed


# --- running the model --------------------------------------------------------------------------

def fold_indices(examples: Sequence[Example], folds: int) -> list[list[int]]:
    """Test indices of each fold, stratified by intent and safety level (so emergencies are
    spread over the folds); a rare intent/level pair falls back to its intent."""
    from sklearn.model_selection import StratifiedKFold

    pairs = [f"{e.intent}|{e.safety.value}" for e in examples]
    counts = Counter(pairs)
    strata = [p if counts[p] >= folds else e.intent for p, e in zip(pairs, examples, strict=True)]
    sizes = Counter(strata)
    strata = [s if sizes[s] >= folds else "rare" for s in strata]
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    return [test.tolist() for _, test in splitter.split(strata, strata)]


def cross_validate(config: NluSite, data: TrainingData, folds: int) -> list[Outcome]:
    """Every training example parsed by a model that did not see it, in data order.

    Folds run one after another in this process: with ~2-3 s of training per fold, worker
    processes cost as much as they save on two cores (start-up, and each one warming up the
    language detector), measured."""
    results: dict[int, ParseResult] = {}
    for held_back in fold_indices(data.examples, folds):
        skip = set(held_back)
        subset = TrainingData(
            examples=[e for i, e in enumerate(data.examples) if i not in skip],
            lookups=data.lookups, synonyms=data.synonyms, regexes=data.regexes)
        service = NluService(config, train_model(config, subset))
        parsed = service.parse_batch([data.examples[i].text for i in held_back])
        results.update(zip(held_back, parsed, strict=True))
    return score(data.examples, [results[i] for i in range(len(data.examples))])


def heldout_examples(config: NluSite) -> list[Example]:
    return read_heldout(project_path(config, config.nlu.heldout_dir))


def evaluate_heldout(service: NluService, examples: Sequence[Example]) -> list[Outcome]:
    results = service.parse_batch([e.text for e in examples])
    return score(examples, results, language=heldout_language)


# --- output ---------------------------------------------------------------------------------------

def plot_confusion(intent: Metrics, title: str, path: Path) -> None:
    """Row-normalised colours (recall per expected intent), counts written in the cells."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels, matrix = intent["labels"], np.array(intent["confusion"] or [[0]])
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    size = max(5.0, 0.42 * len(labels) + 2.5)
    figure = Figure(figsize=(size + 1, size), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.04, label="share of the expected intent")
    axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=8)
    axes.set_yticks(range(len(labels)), labels, fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("expected")
    axes.set_title(title)
    for (row, column), count in np.ndenumerate(matrix):
        if count:
            axes.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if shares[row, column] > 0.6 else "black")
    figure.tight_layout()
    figure.savefig(path, format="png")


def _number(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_number(cell))}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _rows_table(rows: list[dict[str, Any]], columns: Sequence[str], empty: str) -> str:
    if not rows:
        return f"<p>{html.escape(empty)}</p>"
    cells = [[", ".join(r[c]) if isinstance(r[c], list) else r[c] for c in columns]
             for r in rows]
    return _table(columns, cells)


def _section(title: str, metrics: Metrics, image: Path | None, *, intent_scope: str,
             lists: bool = True) -> str:
    safety, intent = metrics["safety"], metrics["intent"]
    levels = safety["levels"]
    parts = [
        f"<h2>{html.escape(title)}</h2>",
        "<h3>Safety</h3>",
        _table(["metric", "value", "examples"], [
            ["emergency recall (flagged emergency)", safety["emergency_recall"],
             safety["support"]["emergency"]],
            ["clinical recall (flagged clinical or emergency)", safety["clinical_recall"],
             safety["support"]["clinical"]],
            ["clinical-or-emergency recall", safety["clinical_or_emergency_recall"],
             safety["support"]["emergency"] + safety["support"]["clinical"]],
            ["non-clinical sent to clinical", safety["non_clinical_flagged_rate"],
             safety["support"]["none"]],
        ]),
        "<p>Expected level (rows) by the level the NLU gave (columns):</p>",
        _table(["expected \\ got", *levels], [[k, *v.values()] for k, v in levels.items()]),
        f"<h3>Intents ({html.escape(intent_scope)})</h3>",
        _table(["accuracy", "macro-F1", "out_of_scope recall", "examples"],
               [[intent["accuracy"], intent["macro_f1"], intent["out_of_scope_recall"],
                 intent["examples"]]]),
        _table(["intent", "precision", "recall", "F1", "support"],
               [[name, s["precision"], s["recall"], s["f1"], s["support"]]
                for name, s in intent["per_intent"].items()]),
    ]
    if image is not None:
        parts.append(_image(image))
    if not lists:
        return "\n".join(parts)
    parts += [
        "<h3>Clinical or emergency messages let through as non-clinical</h3>",
        _rows_table(metrics["missed_clinical"], ["text", "expected_safety", "intent", "source"],
                    "None."),
        "<h3>Non-clinical messages sent to clinical</h3>",
        _rows_table(metrics["false_alarms"], ["text", "safety", "cues", "source"], "None."),
        "<h3>Misclassified intents</h3>",
        _rows_table(metrics["misclassified"],
                    ["text", "expected_intent", "intent", "predicted_intent", "confidence"],
                    "None."),
    ]
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top;
         white-space: pre-wrap; }
th { background: #f2f2f2; }
.alarm { border: 3px solid #b00020; background: #fdecee; padding: 0.5em 1em; }
.alarm h2 { color: #b00020; }
.ok { color: #1b5e20; } .fail { color: #b00020; font-weight: bold; }
img { max-width: 100%; }
"""


def render_html(results: Metrics, images: dict[str, Path]) -> str:
    heldout, cv = results["heldout"], results["cross_validation"]
    missed = heldout["missed_emergencies"] + (cv["missed_emergencies"] if cv else [])
    if missed:
        alarm = ('<div class="alarm"><h2>Missed emergencies</h2><p>These emergency messages '
                 'were not flagged <b>emergency</b>: the patient would not get the emergency '
                 'script.</p>' + _rows_table(missed, ["text", "safety", "cues", "source"], "")
                 + "</div>")
    else:
        alarm = '<p class="ok">No emergency message missed (held-out and cross-validation).</p>'
    target_rows = "".join(
        f"<tr><td>{html.escape(t.name)}</td><td>{_number(t.value(heldout))}</td>"
        f"<td>{t.describe()}</td><td class=\"{'ok' if t.met(heldout) else 'fail'}\">"
        f"{'met' if t.met(heldout) else 'FAILED'}</td></tr>" for t in TARGETS)
    languages = heldout.get("by_language", {})
    counts = ", ".join(f"{language} {m['examples']}" for language, m in languages.items())
    parts = [
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>NLU evaluation</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>NLU evaluation</h1>",
        f"<p>{html.escape(results['generated_at'])}: {results['training_examples']} training "
        f"examples, {heldout['examples']} held-out examples "
        f"({html.escape(counts)}).</p>",
        alarm,
        "<h2>Held-out targets</h2>",
        f"<table><tr><th>target</th><th>value</th><th>goal</th><th>verdict</th></tr>"
        f"{target_rows}</table>",
        _section("Held-out sets", heldout, images.get("heldout"),
                 intent_scope="non-clinical held-out examples"),
    ]
    for language, metrics in languages.items():
        parts.append(_section(f"Held-out sets: {language}", metrics, None,
                              intent_scope=f"non-clinical {language} examples", lists=False))
    if cv:
        parts.append(_section(f"Cross-validation ({results['folds']} folds)", cv,
                              images.get("cv"), intent_scope="every training example"))
    else:
        parts.append("<h2>Cross-validation</h2><p>Not run (fewer than 2 folds).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def summary(results: Metrics) -> str:
    heldout, cv = results["heldout"], results["cross_validation"]
    columns = [("CV", cv), ("held-out", heldout),
               *[(language, m) for language, m in heldout.get("by_language", {}).items()]]
    columns = [(name, m) for name, m in columns if m]
    rows = [("emergency recall", "safety", "emergency_recall"),
            ("clinical-or-emergency recall", "safety", "clinical_or_emergency_recall"),
            ("non-clinical sent to clinical", "safety", "non_clinical_flagged_rate"),
            ("intent macro-F1", "intent", "macro_f1"),
            ("intent accuracy", "intent", "accuracy"),
            ("out_of_scope recall", "intent", "out_of_scope_recall")]
    lines = [f"{'':<30}" + "".join(f"{name:>10}" for name, _ in columns)]
    for label, section, key in rows:
        lines.append(f"{label:<30}" + "".join(f"{_number(m[section][key]):>10}"
                                              for _, m in columns))
    lines.append("(CV intents: every training example; held-out intents: non-clinical only)")
    for name, metrics in columns:
        if metrics["missed_emergencies"]:
            lines.append(f"MISSED EMERGENCIES ({name}): {len(metrics['missed_emergencies'])}")
    failed = results["targets"]["failed"]
    lines.append("held-out targets: " + ("all met" if not failed else
                                        "FAILED\n  " + "\n  ".join(failed)))
    return "\n".join(lines)


def run_evaluation(config: NluSite, *, folds: int, out_dir: Path) -> int:
    """Cross-validation and held-out report; exit status 1 when a held-out target fails."""
    data = load_training_data(config)
    cv = cv_metrics(cross_validate(config, data, folds)) if folds >= 2 else None
    service = NluService.from_config(config)
    heldout = heldout_metrics(evaluate_heldout(service, heldout_examples(config)))
    failed = targets_met(heldout)
    results = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
               "folds": folds, "training_examples": len(data.examples),
               "targets": {"failed": failed, "met": not failed,
                           "goals": {t.key: t.describe() for t in TARGETS}},
               "heldout": heldout, "cross_validation": cv}
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {"heldout": out_dir / "confusion.png"}
    plot_confusion(heldout["intent"], "Held-out non-clinical intents", images["heldout"])
    if cv:
        images["cv"] = out_dir / "confusion_cv.png"
        plot_confusion(cv["intent"], f"Cross-validation ({folds} folds)", images["cv"])
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False),
                                          encoding="utf-8")
    (out_dir / "report.html").write_text(render_html(results, images), encoding="utf-8")
    print(summary(results))
    print(f"report: {out_dir / 'report.html'}")
    return 1 if failed else 0
