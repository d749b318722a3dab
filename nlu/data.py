"""Reading Rasa-format NLU training data (YAML, Rasa 3 `nlu:` section).

Supports what admins use with Rasa: intents with examples (block or list form, intent- or
example-level metadata), entity annotations (`[CVS](pharmacy)`, stripped here), lookup
tables, synonyms and regexes. An example's safety label comes from `metadata: {safety: ...}`
or, failing that, from its intent's lane (clinical intents are clinical).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bot.core.errors import PatientbotError
from nlu.base import SafetyLevel

# libyaml's safe loader where available: several times faster on the training data.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_ANNOTATION = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\{[^}]*\})")


class TrainingDataError(PatientbotError, ValueError):
    """Malformed training data; the message names the file and the item."""


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    intent: str
    safety: SafetyLevel
    source: str = ""  # file name, for reports


@dataclass(slots=True)
class TrainingData:
    examples: list[Example] = field(default_factory=list)
    lookups: dict[str, list[str]] = field(default_factory=dict)
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    regexes: dict[str, list[str]] = field(default_factory=dict)

    @property
    def intents(self) -> list[str]:
        return sorted({example.intent for example in self.examples})


def strip_annotations(text: str) -> str:
    return _ANNOTATION.sub(r"\1", text)


def _block_items(block: str) -> list[str]:
    items = []
    for line in block.splitlines():
        stripped = line.strip()
        if stripped.startswith("- "):
            items.append(stripped[2:].strip())
        elif stripped:
            raise TrainingDataError(f"example line does not start with '- ': {stripped[:40]!r}")
    return items


def _examples(raw: Any) -> list[tuple[str, dict[str, Any]]]:
    if isinstance(raw, str):
        return [(text, {}) for text in _block_items(raw)]
    if isinstance(raw, list):
        result = []
        for item in raw:
            if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                raise TrainingDataError("list-form examples need a 'text' string")
            result.append((item["text"].strip(), item.get("metadata") or {}))
        return result
    raise TrainingDataError("'examples' must be a block string or a list")


def _safety(metadata: dict[str, Any], intent: str, clinical_intents: set[str]) -> SafetyLevel:
    label = metadata.get("safety")
    if label is not None:
        try:
            return SafetyLevel(label)
        except ValueError:
            raise TrainingDataError(f"unknown safety label {label!r}") from None
    return SafetyLevel.CLINICAL if intent in clinical_intents else SafetyLevel.NONE


def read_file(path: Path, *, clinical_intents: Iterable[str] = (),
              default_safety: SafetyLevel | None = None) -> TrainingData:
    """One Rasa NLU YAML file. `default_safety` labels every example (held-out files carry
    their level in the file name)."""
    clinical = set(clinical_intents)
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER) or {}
    except yaml.YAMLError as err:
        raise TrainingDataError(f"{path.name}: YAML syntax error: {err}") from None
    data = TrainingData()
    for index, item in enumerate(document.get("nlu") or []):
        where = f"{path.name}: nlu item {index}"
        try:
            if "intent" in item:
                intent = str(item["intent"])
                block_meta = item.get("metadata") or {}
                for text, meta in _examples(item.get("examples")):
                    metadata = {**block_meta, **meta}
                    safety = default_safety or _safety(metadata, intent, clinical)
                    data.examples.append(
                        Example(strip_annotations(text), intent, safety, path.name))
            elif "lookup" in item:
                data.lookups.setdefault(item["lookup"], []).extend(
                    _block_items(item["examples"]))
            elif "synonym" in item:
                data.synonyms.setdefault(item["synonym"], []).extend(
                    _block_items(item["examples"]))
            elif "regex" in item:
                data.regexes.setdefault(item["regex"], []).extend(
                    _block_items(item["examples"]))
        except TrainingDataError as err:
            raise TrainingDataError(f"{where}: {err}") from None
        except (TypeError, KeyError, AttributeError):
            raise TrainingDataError(f"{where}: not a Rasa NLU item") from None
    return data


def safety_of_file(path: Path) -> SafetyLevel:
    """Held-out files are named <language>_<level>.yml: emergency, clinical, non_clinical."""
    stem = path.stem
    if stem.endswith("non_clinical"):
        return SafetyLevel.NONE
    if stem.endswith("clinical"):
        return SafetyLevel.CLINICAL
    if stem.endswith("emergency"):
        return SafetyLevel.EMERGENCY
    raise TrainingDataError(f"{path.name}: held-out file names end in _emergency, _clinical "
                            f"or _non_clinical")


def read_heldout(directory: Path) -> list[Example]:
    examples: list[Example] = []
    for path in sorted(directory.glob("*.yml")):
        examples.extend(read_file(path, default_safety=safety_of_file(path)).examples)
    return examples
