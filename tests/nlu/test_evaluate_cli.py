"""`patientbot nlu test` and `patientbot nlu check` end to end, through the CLI entry point.

Cross-validation runs with 2 folds to keep the suite fast; the full model comes from the
run's shared cache (PATIENTBOT_NLU_CACHE, set in tests/conftest.py).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from bot.app.cli.main import main
from bot.config.loader import load_config
from nlu.service import load_training_data, training_data_path
from tests.conftest import CONFIG_DIR


def test_nlu_test_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "report"
    code = main(["nlu", "test", "--folds", "2", "--out", str(out), "--config", str(CONFIG_DIR)])

    output = capsys.readouterr()
    assert code in (0, 1), output.err
    assert "held-out targets:" in output.out
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert code == (1 if results["targets"]["failed"] else 0)
    heldout, cv = results["heldout"], results["cross_validation"]
    assert results["folds"] == 2
    for block in (heldout, cv, heldout["by_language"]["en"], heldout["by_language"]["es"]):
        assert {"accuracy", "macro_f1", "out_of_scope_recall", "per_intent", "labels",
                "confusion"} <= set(block["intent"])
        assert {"emergency_recall", "clinical_recall", "clinical_or_emergency_recall",
                "non_clinical_flagged_rate", "support"} <= set(block["safety"])
        assert {"missed_emergencies", "missed_clinical", "false_alarms",
                "misclassified"} <= set(block)
    assert cv["examples"] == results["training_examples"]
    assert all({"text", "expected_intent", "intent", "confidence"} <= set(row)
               for row in cv["misclassified"])

    report = (out / "report.html").read_text(encoding="utf-8")
    images = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,([^"]+)"', report)
    assert [name for name, _ in images] == ["confusion", "confusion_cv"]
    assert base64.b64decode(images[0][1]) == (out / "confusion.png").read_bytes()
    assert (out / "confusion.png").read_bytes().startswith(b"\x89PNG")


def test_nlu_check_passes_on_the_training_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nlu", "check", "--folds", "2", "--config", str(CONFIG_DIR)]) == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_nlu_check_fails_on_a_text_under_two_intents(
        config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(CONFIG_DIR)
    billing = next(e.text for e in load_training_data(config).examples
                   if e.intent == "billing_question")
    data = tmp_path / "bad.yml"
    data.write_text(
        training_data_path(config).read_text(encoding="utf-8")
        + f"\n- intent: records_request\n  examples: |\n    - {billing.upper()}\n",
        encoding="utf-8")
    settings = config_dir / "nlu.yml"
    settings.write_text(re.sub(r"(?m)^training_data:.*$", f"training_data: {data}",
                               settings.read_text(encoding="utf-8")), encoding="utf-8")

    assert main(["nlu", "check", "--folds", "0", "--config", str(config_dir)]) == 1
    out = capsys.readouterr().out
    assert "conflict: same text under intents billing_question, records_request" in out
    assert "1 error(s)" in out
