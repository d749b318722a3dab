"""Every example scenario as a regression check, through the real NLU, engine and pipeline.

Each file in examples/scenarios/ is one conversation with per-turn expectations; it runs
in-process over both stores (memory and real Redis). The `patientbot simulate` command itself
is run as a subprocess for its JSON output and its exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app.simulate import format_report, load_scenario, simulate
from bot.config.loader import Config
from bot.config.settings import Settings
from tests.conftest import CONFIG_DIR, REPO, key_env, redis_url

SCENARIOS = sorted((REPO / "examples" / "scenarios").glob("*.yml"))


def run_cli(*args: str, prefix: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **key_env(), "REDIS_URL": redis_url(),
           "PATIENTBOT_REDIS_PREFIX": prefix}
    return subprocess.run([sys.executable, "-m", "bot.app.cli", "simulate", *args,
                           "--config", str(CONFIG_DIR)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_every_flow_has_a_scenario_in_both_languages() -> None:
    names = {path.stem for path in SCENARIOS}
    flows = ["schedule", "schedule_review", "reschedule", "cancel", "appointment_info",
             "refill", "billing", "records", "referral", "order_status", "portal_access",
             "complaint", "care_navigation", "clinical_mid_script", "emergency",
             "human_request", "out_of_scope", "identity_failed", "after_hours",
             "after_hours_clinical", "language_assistance", "duplicate", "upset"]
    missing = [f"{flow}_{language}" for flow in flows for language in ("en", "es")
               if f"{flow}_{language}" not in names]
    assert missing == []
    assert "records_telegram_en" in names


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
async def test_scenario(path: Path, config: Config, settings: Settings) -> None:
    scenario = load_scenario(path)
    report = await simulate(scenario, config, settings)
    assert report.failures == [], format_report(report)


@pytest.mark.parametrize("language", ["en", "es"])
async def test_identity_retries_read_the_same_for_known_and_unknown_names(
        language: str, config: Config, settings: Settings) -> None:
    """Turn 3 follows a wrong date of birth for a patient on file, turn 5 one for a name with
    no record: the patient cannot tell them apart."""
    path = REPO / "examples" / "scenarios" / f"identity_failed_{language}.yml"
    report = await simulate(load_scenario(path), config, settings)
    known, unknown = report.turns[2], report.turns[4]
    assert known.decision == unknown.decision == "identity_retry", format_report(report)
    assert known.replies == unknown.replies
    [handoff] = report.handoffs
    assert handoff["reason"] == "identity_failed"
    assert handoff["note"]["identity"] == "failed"


# What the agent reads first: the last handoff of a scenario and the note fields that matter.
NOTES = {
    "refill_en": ({"lane": "pharmacy", "reason": "refill_request", "priority": "normal"},
                  {"owner": "Refill nurse", "identity": "strong", "script": "refill@1",
                   "collected": {"medication": "Lisinopril 10mg",
                                 "pharmacy": "CVS on Main Street", "days_left": "5"}}),
    "records_en": ({"lane": "records", "reason": "records_request"},
                   {"identity": "strong", "callback_window": "3 business days"}),
    "records_telegram_en": ({"lane": "front_desk", "reason": "identity_strong_unavailable"},
                            {"identity": "strong_unavailable", "collected": {},
                             "contact_reason": "records_request"}),
    "clinical_mid_script_en": ({"lane": "clinical", "reason": "clinical"},
                               {"owner": "Triage nurse", "script": "schedule@1",
                                "collected": {"visit_type": "follow_up"}}),
    "emergency_en": ({"lane": "clinical", "reason": "emergency", "priority": "emergency"},
                     {"page": "On-call clinician", "safety": "emergency"}),
    "after_hours_en": ({"lane": "billing", "reason": "billing_question"},
                       {"owner": "Billing specialist", "after_hours": True,
                        "callback_window": "2 business days",
                        "callback_due": "2026-12-09T17:00:00-05:00"}),
    "after_hours_clinical_en": ({"lane": "clinical", "priority": "urgent"},
                                {"owner": "On-call clinician", "after_hours": True,
                                 "callback_window": "1 hours"}),
    "upset_es": ({"lane": "patient_experience", "reason": "upset_patient",
                  "priority": "urgent"}, {"owner": "Patient experience lead", "language": "es"}),
}


@pytest.mark.parametrize("name", sorted(NOTES))
async def test_handoff_notes(name: str, config: Config, settings: Settings) -> None:
    report = await simulate(load_scenario(REPO / "examples" / "scenarios" / f"{name}.yml"),
                            config, settings)
    ticket, fields = NOTES[name]
    handoff = report.handoffs[-1]
    assert {key: handoff[key] for key in ticket} == ticket, format_report(report)
    assert {key: handoff["note"][key] for key in fields} == fields, format_report(report)
    assert handoff["note"]["owner"] and handoff["note"]["callback_due"]


BOOK_THEN_REFILL = """\
name: Book a flu shot, then ask for a refill
start: 2026-12-07T10:00:00-05:00
turns:
  - text: Hi, I'd like to book a flu shot
  - text: Maria Lopez
  - text: 03/12/1984
  - text: next wednesday
  - text: "1"
    expect: {decision: script_completed}
  - text: I also need a refill of my lisinopril
    expect: {decision: script_started, reply_contains: ["Which pharmacy"]}
  - text: CVS on Main Street
  - text: "5"
    expect: {decision: script_handoff, handoff: pharmacy}
expect_bookings: 1
"""


async def test_cli_json_report(tmp_path: Path, prefix: str, redis_client) -> None:
    scenario = tmp_path / "book_then_refill.yml"
    scenario.write_text(BOOK_THEN_REFILL, encoding="utf-8")
    result = run_cli(str(scenario), "--json", prefix=prefix, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["failures"] == []
    assert [turn["decision"] for turn in report["turns"]][-3:] == [
        "script_started", "script_step", "script_handoff"]
    assert all(turn["replies"] for turn in report["turns"])
    [handoff] = report["handoffs"]
    assert handoff["lane"] == "pharmacy" and handoff["reason"] == "refill_request"
    note = handoff["note"]
    assert note["owner"] == "Refill nurse"
    assert note["callback_window"] == "2 business days"
    assert note["identity"] == "strong"
    assert note["collected"] == {"medication": "lisinopril", "pharmacy": "CVS on Main Street",
                                 "days_left": "5"}
    [booking] = report["bookings"]
    assert booking["visit_type"] == "flu_shot"
    assert booking["start"] == "2026-12-09T09:00:00-05:00"
    # The simulation ran in Redis under a private prefix, removed afterwards: nothing it
    # booked occupies the deployment's calendar.
    leftovers = [key async for key in redis_client.scan_iter(match=f"{prefix}*")]
    assert leftovers == []


def test_cli_exits_1_when_an_expectation_fails(tmp_path: Path, prefix: str,
                                              redis_client) -> None:
    scenario = tmp_path / "wrong.yml"
    scenario.write_text("name: wrong expectation\nstart: 2026-12-07T10:00:00-05:00\n"
                        "turns:\n  - text: Can I talk to a real person please?\n"
                        "    expect: {decision: verify_identity, handoff: billing}\n",
                        encoding="utf-8")
    result = run_cli(str(scenario), prefix=prefix, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "turn 1: decision 'human_request', expected 'verify_identity'" in result.stdout
    assert "turn 1: handoff 'front_desk', expected 'billing'" in result.stdout
    assert "expectation(s) failed" in result.stderr


def test_cli_exits_2_naming_the_file_and_key_of_an_invalid_scenario(
        tmp_path: Path, prefix: str, redis_client) -> None:
    scenario = tmp_path / "invalid.yml"
    scenario.write_text("name: invalid\nstart: 2026-12-07T10:00:00-05:00\n"
                        "turns:\n  - text: hello\n    channel: fax\n", encoding="utf-8")
    result = run_cli(str(scenario), prefix=prefix, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert str(scenario) in result.stderr
    assert "turns.0.channel" in result.stderr
    assert result.stdout == ""
