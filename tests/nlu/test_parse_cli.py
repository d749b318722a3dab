"""`patientbot nlu parse`: the JSON Lines contract of DESIGN.md section 4."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import CONFIG_DIR, REPO

CONTRACT_KEYS = ["text", "intent", "confidence", "safety", "safety_cues", "language", "entities",
                 "lane"]


def parse(lines: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bot.app.cli", "nlu", "parse", "--config",
                           str(CONFIG_DIR)], input="\n".join(lines) + "\n", cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def test_one_verdict_per_line_in_order_with_exactly_the_contract_fields() -> None:
    requests = [
        {"text": "my dad is slurring his words", "channel": "sms"},
        {"text": "Hola, necesito cambiar mi cita del lunes"},
        {"text": "can I get a refill of lisinopril at CVS? call me at 202-555-0143"},
        {"text": "what's the weather like"},
        {"text": "Здравствуйте, мне нужно записаться к врачу"},
    ]
    done = parse([json.dumps(r, ensure_ascii=False) for r in requests])

    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in results] == [r["text"] for r in requests]
    assert all(list(r) == CONTRACT_KEYS for r in results)
    emergency, spanish, refill, weather, russian = results
    assert (emergency["safety"], emergency["lane"]) == ("emergency", "clinical")
    assert emergency["safety_cues"]
    assert (spanish["intent"], spanish["language"], spanish["lane"]) == (
        "reschedule_appointment", "es", "scheduling")
    assert spanish["entities"][0]["entity"] == "date"
    assert refill["intent"] == "refill_request" and refill["safety"] == "none"
    assert {(e["entity"], e["value"]) for e in refill["entities"]} >= {
        ("medication", "lisinopril"), ("pharmacy", "CVS"), ("phone", "+12025550143")}
    assert weather["intent"] == "out_of_scope" and 0 <= weather["confidence"] <= 1
    assert (russian["language"], russian["lane"]) == ("ru", "interpreter")


def test_bad_lines_get_an_error_line_in_place_and_exit_code_1() -> None:
    done = parse(['{"text": "hi"}', "not json", '{"no_text": 1}', '{"text": "thanks!"}'])

    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line.get("intent") for line in lines] == ["greeting", None, None, "thanks"]
    assert lines[1] == {"error": "line 2: invalid JSON"}
    assert "2 input line(s)" in done.stderr
