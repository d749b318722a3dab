"""Config validation: every broken file gives exit code 2 and one line naming file and key."""

from __future__ import annotations

import io
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from bot.app.cli.main import main
from bot.config.loader import load_config
from bot.core.errors import ConfigError


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"fixture text {old!r} not in {path.name}"
    path.write_text(text.replace(old, new, 1))


def check(config_dir: Path) -> subprocess.CompletedProcess[str]:
    """`patientbot config check` in this process: the same entry point and output as the
    command, without a Python start-up per broken file."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["config", "check", "--config", str(config_dir)])
    return subprocess.CompletedProcess([], code, out.getvalue(), err.getvalue())


def test_shipped_config_is_valid(config_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bot.app.cli", "config", "check", "--config",
                             str(config_dir)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "config OK" in result.stdout and "10 queues" in result.stdout


# agents.yml has two `staff: {}` lines (slack's and email_notices'): this is the second.
NOTICES_STAFF = "  staff: {}                       # staff role from queues.yml -> address"
BROKEN = [
    pytest.param("app.yml", "timezone: America/New_York", "timezone: America/New_Yrok",
                 "app.yml: timezone: ", "unknown time zone", id="invalid-time-zone"),
    pytest.param("app.yml", "workers:\n", "workers:\n  colour: blue\n",
                 "app.yml: workers.colour: ", "unknown key", id="unknown-key"),
    pytest.param("app.yml", "  in_process: 1", "  in_process: lots",
                 "app.yml: workers.in_process: ", "integer", id="wrong-type"),
    pytest.param("app.yml", "organisation: Riverside Family Clinic\n", "",
                 "app.yml: organisation: ", "required", id="missing-required-key"),
    pytest.param("intents.yml", "billing_question: {lane: billing,",
                 "billing_question: {lane: billling,",
                 "intents.yml: intents.billing_question.lane: ", "unknown queue 'billling'",
                 id="intent-names-unknown-queue"),
    pytest.param("queues.yml", "  billing:\n", "  billing\n",
                 "queues.yml: line ", "YAML syntax error", id="yaml-syntax-error"),
    pytest.param("messages.yml", "    portal_welcome: >-\n      Welcome.",
                 "    portal_welcom: >-\n      Welcome.",
                 "messages.yml: messages.en.", "", id="missing-template"),
    pytest.param("queues.yml", "  front_desk:\n", "  front_office:\n",
                 "queues.yml: queues.front_desk: ", "required", id="front-desk-required"),
    pytest.param("patients.yml", "dob: 1984-03-12", "dob: 1984-13-12",
                 "patients.yml: patients.0.dob: ", "", id="invalid-date"),
    pytest.param("intents.yml", "script: billing}", "script: bills}",
                 "intents.yml: intents.billing_question.script: ", "unknown script 'bills'",
                 id="intent-names-unknown-script"),
    pytest.param("queues.yml", "callback_window: 2 business days",
                 "callback_window: soon", "queues.yml: queues.pharmacy.callback_window: ",
                 "expected a window", id="bad-callback-window"),
    pytest.param("queues.yml", "    hours: pharmacy\n", "    hours: pharmcy\n",
                 "queues.yml: queues.pharmacy.hours: ", "unknown schedule 'pharmcy'",
                 id="queue-names-unknown-schedule"),
    pytest.param("coverage.yml", "    monday: 08:00-17:00", "    monday: 17:00-08:00",
                 "coverage.yml: schedules.office.monday: ", "ends before it starts",
                 id="hours-end-before-start"),
    pytest.param("coverage.yml", "  subdivision: MA", "  subdivision: MA\n  region: x",
                 "coverage.yml: holidays.region: ", "unknown key", id="coverage-unknown-key"),
    pytest.param("scripts/refill.yml", "id: refill", "id: refills",
                 "scripts/refill.yml: id: ", "must match the file name", id="script-id-file"),
    pytest.param("scripts/cancel.yml", "outcomes: {cancelled:", "outcomes: {cancelled: nowhere, x:",
                 "scripts/cancel.yml: ", "unknown step", id="script-jumps-to-missing-step"),
    pytest.param("scheduling.yml", "    template: clinic_days", "    template: clinic_dayz",
                 "scheduling.yml: ", "unknown template", id="provider-unknown-template"),
    pytest.param("policy.yml", "    - fed up\n", "    - fed (up\n",
                 "policy.yml: upset.en: ", "parenthesis", id="bad-upset-pattern"),
    pytest.param("agents.yml", "  lane_channels: {}", "  lane_channels: {billling: C0BILL}",
                 "agents.yml: slack.lane_channels.billling: ", "unknown queue",
                 id="slack-channel-for-unknown-lane"),
    pytest.param("agents.yml", "  lane_channels: {}", "  lane_channels: {billing: '#billing'}",
                 "agents.yml: slack.lane_channels: ", "not a Slack channel id",
                 id="slack-channel-name-not-id"),
    pytest.param("agents.yml", "  phi_capable: false", "  phi_capable: false\n  colour: red",
                 "agents.yml: slack.colour: ", "unknown key", id="agents-unknown-key"),
    pytest.param("agents.yml", "  note_fields: [reason,", "  note_fields: [summary, reason,",
                 "agents.yml: slack: ", "carries PHI", id="phi-field-without-phi-workspace"),
    pytest.param("agents.yml", "  enabled: false\n  mode: http",
                 "  enabled: true\n  mode: http",
                 "agents.yml: slack.lane_channels.front_desk: ", "every lane needs a channel",
                 id="slack-enabled-without-channels"),
    pytest.param("agents.yml", "  staff: {}", "  staff: {Front dsk lead: U0123ABC}",
                 "agents.yml: slack.staff.Front dsk lead: ", "unknown staff role",
                 id="slack-unknown-staff-role"),
    pytest.param("agents.yml", NOTICES_STAFF,
                 "  staff: {Front dsk lead: lead@clinic.example}  # a",
                 "agents.yml: email_notices.staff.Front dsk lead: ", "unknown staff role",
                 id="email-notices-unknown-staff-role"),
    pytest.param("agents.yml", NOTICES_STAFF,
                 "  staff: {Practice manager: 'manager@clinic.example, x@evil.example'}  # a",
                 "agents.yml: email_notices.staff.Practice manager: ",
                 "not a plain email address", id="email-notices-bad-address"),
    pytest.param("agents.yml", "email_notices:\n  enabled: false",
                 "email_notices:\n  enabled: true",
                 "agents.yml: email_notices.from_address: ", "from_address",
                 id="email-notices-enabled-without-from-address"),
    pytest.param("agents.yml", '  from_address: ""                # required when enabled',
                 "  from_address: patientbot at clinic  # required when enabled",
                 "agents.yml: email_notices.from_address: ", "not a plain email address",
                 id="email-notices-bad-from-address"),
    pytest.param("agents.yml", "password_hash: $argon2id$", "password_hash: plain$argon2id$",
                 "agents.yml: desk.accounts.0.password_hash: ", "",
                 id="desk-password-not-an-argon2-hash"),
]


@pytest.mark.parametrize(("file", "old", "new", "where", "problem"), BROKEN)
def test_broken_config_exits_2_with_one_clear_line(config_dir: Path, file: str, old: str,
                                                   new: str, where: str, problem: str) -> None:
    edit(config_dir / file, old, new)
    result = check(config_dir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"patientbot: config error: {where}"), lines[0]
    assert problem in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_required_file(config_dir: Path) -> None:
    (config_dir / "intents.yml").unlink()
    with pytest.raises(ConfigError, match=r"^intents\.yml: required file is missing$"):
        load_config(config_dir)


def test_unknown_file_is_refused(config_dir: Path) -> None:
    (config_dir / "secrets.yml").write_text("twilio_auth_token: abc\n")
    with pytest.raises(ConfigError, match=r"^secrets\.yml: unknown config file"):
        load_config(config_dir)


def test_top_level_must_be_a_mapping(config_dir: Path) -> None:
    (config_dir / "queues.yml").write_text("- front_desk\n")
    with pytest.raises(ConfigError, match=r"^queues\.yml: \(top level\): expected a mapping"):
        load_config(config_dir)


def test_duplicate_patient_ids(config_dir: Path) -> None:
    edit(config_dir / "patients.yml", "id: P1002", "id: P1001")
    with pytest.raises(ConfigError, match=r"^patients\.yml: patients\.1\.id: duplicate"):
        load_config(config_dir)


def test_missing_directory(tmp_path: Path) -> None:
    result = check(tmp_path / "nowhere")
    assert result.returncode == 2
    assert "config directory not found" in result.stderr


def test_templates_fall_back_to_the_default_language(config_dir: Path) -> None:
    config = load_config(config_dir)
    assert config.text("handoff_ack", "es").startswith("Gracias")
    assert config.text("handoff_ack", "fr") == config.text("handoff_ack", "en")
