"""`patientbot simulate SCENARIO.yml`: a scripted conversation through the real pipeline.

Each turn is a patient message (channel, sender, text, optional clock time, optional signed-in
portal patient). The run uses the operator's config, the real NLU, engine, store and
pipeline (in memory unless REDIS_URL is set) and reports the transcript, handoffs with their
notes, and bookings. Optional `expect` blocks make a scenario a regression check.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.app.runtime import Runtime
from bot.config.loader import Config
from bot.config.settings import Settings
from bot.core.envelopes import Inbound
from bot.core.errors import ConfigError
from bot.core.tickets import HandoffTicket
from bot.engine.engine import Engine


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnExpectation(_Model):
    decision: str | None = None  # the engine's decision code
    state: str | None = None  # session state after the turn
    reply_contains: list[str] = []  # case-insensitive substrings of the bot's replies
    handoff: str | None = None  # lane of a handoff created in this turn
    priority: str | None = None
    no_reply: bool = False


class ScenarioTurn(_Model):
    text: str = Field(min_length=1)
    channel: Literal["sms", "email", "portal", "telegram"] = "sms"
    sender: str = "+16175550101"
    at: datetime | None = None  # clock time (default: one minute after the previous turn)
    portal_patient: str | None = None  # a signed-in portal session for this patient id
    expect: TurnExpectation | None = None


class Scenario(_Model):
    name: str
    description: str = ""
    start: datetime  # the clock at the first turn (with a UTC offset)
    turns: list[ScenarioTurn] = Field(min_length=1)
    expect_bookings: int | None = None


@dataclass
class TurnReport:
    index: int
    at: str
    channel: str
    patient: str
    decision: str
    state: str
    replies: list[str]
    handoff: dict[str, Any] | None = None
    failures: list[str] = field(default_factory=list)


@dataclass
class SimulationReport:
    scenario: str
    turns: list[TurnReport]
    handoffs: list[dict[str, Any]]
    bookings: list[dict[str, Any]]
    failures: list[str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False)


def load_scenario(path: Path) -> Scenario:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Scenario.model_validate(data)
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(str(path), "", f"cannot read scenario: {type(err).__name__}") from None
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ConfigError(str(path), where, first["msg"]) from None


_MINUTE = timedelta(minutes=1)


class _Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def ticket_summary(ticket: HandoffTicket) -> dict[str, Any]:
    note = asdict(ticket.note)
    note["safety_cues"] = list(ticket.note.safety_cues)
    note["escalation"] = list(ticket.note.escalation)
    return {"ticket": ticket.id, "lane": ticket.lane, "reason": ticket.reason,
            "priority": ticket.priority.value, "note": note}


async def simulate(scenario: Scenario, config: Config, settings: Settings) -> SimulationReport:
    if scenario.start.tzinfo is None:
        raise ConfigError("scenario", "start", "needs a UTC offset, e.g. 2026-12-07T10:00-05:00")
    clock = _Clock(scenario.start)
    runtime = Runtime.build(config, settings, clock=clock)
    engine = runtime.decision_step
    assert isinstance(engine, Engine)
    reports: list[TurnReport] = []
    handoffs: list[dict[str, Any]] = []
    patients: set[str] = set()
    run_id = uuid.uuid4().hex[:8]
    try:
        for index, turn in enumerate(scenario.turns, 1):
            if turn.at is not None:
                clock.now = turn.at.astimezone(UTC) if turn.at.tzinfo else \
                    turn.at.replace(tzinfo=scenario.start.tzinfo)
            elif index > 1:
                clock.now = clock.now + _MINUTE
            reports.append(await _run_turn(runtime, turn, index, clock.now, run_id, handoffs,
                                           patients))
        bookings = []
        for patient in sorted(patients):
            for booking in await engine.scheduler.appointments(patient, now=clock.now):
                bookings.append({"provider": booking.provider, "visit_type": booking.visit_type,
                                 "start": booking.start.isoformat(),
                                 "location": booking.location})
    finally:
        await runtime.close()
    failures = [f"turn {r.index}: {f}" for r in reports for f in r.failures]
    if scenario.expect_bookings is not None and len(bookings) != scenario.expect_bookings:
        failures.append(f"expected {scenario.expect_bookings} bookings, found {len(bookings)}")
    return SimulationReport(scenario.name, reports, handoffs, bookings, failures)


async def _run_turn(runtime: Runtime, turn: ScenarioTurn, index: int, now: datetime,
                    run_id: str, handoffs: list[dict[str, Any]],
                    patients: set[str]) -> TurnReport:
    sender = turn.portal_patient or turn.sender if turn.channel == "portal" else turn.sender
    inbound = Inbound(channel=turn.channel, sender=sender,
                      provider_message_id=f"sim-{run_id}-{index}", text=turn.text,
                      received_at=now, verified_patient=turn.portal_patient)
    entry = await runtime.ingress.submit(inbound)
    result = await runtime.pipeline.handle(entry)
    key = runtime.ingress.conversation_key(inbound.channel, inbound.sender)
    session = await runtime.store.get_session(key)
    assert session is not None
    if session.patient_id:
        patients.add(session.patient_id)
    handoff = None
    if session.open_ticket_id and not any(h["ticket"] == session.open_ticket_id
                                          for h in handoffs):
        ticket = await runtime.store.get_ticket(session.open_ticket_id)
        if ticket is not None:
            handoff = ticket_summary(ticket)
            handoffs.append(handoff)
    report = TurnReport(index=index, at=now.isoformat(), channel=turn.channel, patient=turn.text,
                        decision=result.decision, state=session.state.value,
                        replies=[message.text for message in result.outbox], handoff=handoff)
    if turn.expect:
        report.failures = _check(turn.expect, report)
    return report


def _check(expect: TurnExpectation, report: TurnReport) -> list[str]:
    failures = []
    replies = " ".join(report.replies).casefold()
    if expect.decision and report.decision != expect.decision:
        failures.append(f"decision {report.decision!r}, expected {expect.decision!r}")
    if expect.state and report.state != expect.state:
        failures.append(f"state {report.state!r}, expected {expect.state!r}")
    for wanted in expect.reply_contains:
        if wanted.casefold() not in replies:
            failures.append(f"no reply contains {wanted!r}")
    if expect.handoff and (report.handoff or {}).get("lane") != expect.handoff:
        failures.append(f"handoff {(report.handoff or {}).get('lane')!r}, "
                        f"expected {expect.handoff!r}")
    if expect.priority and (report.handoff or {}).get("priority") != expect.priority:
        failures.append(f"priority {(report.handoff or {}).get('priority')!r}, "
                        f"expected {expect.priority!r}")
    if expect.no_reply and report.replies:
        failures.append("expected no reply")
    return failures


def format_report(report: SimulationReport) -> str:
    """The transcript, then handoffs with their notes, then bookings: for people."""
    lines = [f"Scenario: {report.scenario}", ""]
    for turn in report.turns:
        lines.append(f"[{turn.index}] {turn.at} {turn.channel}")
        lines.append(f"  patient: {turn.patient}")
        for reply in turn.replies:
            lines.append("  bot:     " + reply.replace("\n", "\n           "))
        lines.append(f"  -> {turn.decision} (conversation {turn.state})")
        lines.extend(f"  !! {failure}" for failure in turn.failures)
    lines += ["", f"Handoffs: {len(report.handoffs)}"]
    for handoff in report.handoffs:
        note = handoff["note"]
        lines.append(f"- {handoff['lane']} [{handoff['priority']}] {handoff['reason']}")
        for name in ("contact_reason", "confidence", "safety", "safety_cues", "checks_done",
                     "action_taken", "owner", "escalation", "callback_window", "callback_due",
                     "after_hours", "page", "unresolved", "language", "channel", "nlu_backend",
                     "script", "transcript_ref", "collected"):
            lines.append(f"    {name}: {note[name]}")
    lines += ["", f"Bookings: {len(report.bookings)}"]
    lines += [f"- {b['visit_type']} {b['start']} {b['provider']} ({b['location']})"
              for b in report.bookings]
    if report.failures:
        lines += ["", "FAILED expectations:"] + [f"- {f}" for f in report.failures]
    return "\n".join(lines)
