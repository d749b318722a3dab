"""`patientbot readiness`: passes with the shipped config, names every case a gap breaks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from bot.app.readiness import CASES, run_readiness
from bot.config.loader import Config, load_config
from bot.core.envelopes import utcnow
from bot.core.tickets import Priority
from tests.conftest import CONFIG_DIR, key_env

REQUIRED = {"new scheduling request", "refill message", "billing question",
            "failed identity check", "after-hours contact", "emergency message",
            "clinical question during scheduling", "Spanish-language request"}


def readiness_cli(config_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **key_env()}
    env.pop("REDIS_URL", None)  # readiness never touches the deployment's store
    return subprocess.run([sys.executable, "-m", "bot.app.cli", "readiness", "--config",
                           str(config_dir)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def edit_queues(config_dir: Path, edit: Callable[[dict], None]) -> Path:
    path = config_dir / "queues.yml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(data["queues"])
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return config_dir


async def test_the_shipped_config_is_ready_and_every_case_is_checked(config: Config) -> None:
    results = await run_readiness(config, now=utcnow())
    assert {result.case.name for result in results} == REQUIRED == {c.name for c in CASES}
    assert [(r.case.name, r.problems) for r in results if r.problems] == []
    by_name = {result.case.name: result for result in results}
    emergency = by_name["emergency message"].ticket
    assert emergency.priority is Priority.EMERGENCY and emergency.note.page
    assert by_name["after-hours contact"].ticket.note.after_hours
    assert by_name["failed identity check"].ticket.note.identity == "failed"
    assert by_name["Spanish-language request"].ticket.note.language == "es"
    refill = by_name["refill message"].ticket.note
    assert refill.owner == config.queues["pharmacy"].owner
    assert set(refill.collected) >= {"medication", "pharmacy", "days_left"}


def test_cli_exits_0_and_prints_the_table(tmp_path: Path) -> None:
    result = readiness_cli(CONFIG_DIR, tmp_path)
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0]
    for column in ("queue", "record fields captured", "callback window", "escalation owner"):
        assert column in header
    assert "readiness OK: 8 cases" in result.stdout


def test_a_billing_lane_without_owner_fails_naming_each_case(config_dir: Path,
                                                             tmp_path: Path) -> None:
    def drop_owner(queues: dict) -> None:
        del queues["billing"]["owner"]

    directory = edit_queues(config_dir, drop_owner)
    load_config(directory)  # a missing owner loads: readiness is where it is reported
    result = readiness_cli(directory, tmp_path)
    assert result.returncode == 1
    assert "readiness FAILED for: billing question; after-hours contact" in result.stderr
    assert "queue billing has no owner" in result.stdout


def test_a_lane_nobody_can_escalate_to_is_reported(config_dir: Path, tmp_path: Path) -> None:
    def no_escalation(queues: dict) -> None:
        queues["pharmacy"].pop("backup_owner")
        queues["pharmacy"].pop("supervisor")

    result = readiness_cli(edit_queues(config_dir, no_escalation), tmp_path)
    assert result.returncode == 1
    assert "refill message" in result.stderr and "Spanish-language request" in result.stderr
    assert "no backup owner or supervisor" in result.stdout
