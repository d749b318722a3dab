"""`patientbot readiness`: the pre-launch check of the operator's workflow.

Runs the common requests of the domain's readiness check (new scheduling request, refill,
billing question, failed identity check, after-hours contact, emergency, a clinical message
in the middle of scheduling, a Spanish request) through the real pipeline with the operator's
config, in a private in-memory store with throw-away keys, and checks for each: the queue,
the record fields captured, the callback window, the escalation owner and the handoff note.
Any case whose route, owner, window or note is missing or unsafe fails the check.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from bot.app.runtime import Runtime
from bot.config.loader import Config
from bot.config.settings import Settings
from bot.core.crypto import load_key_material, new_key
from bot.core.envelopes import Inbound
from bot.core.tickets import HandoffTicket, Priority
from bot.engine.coverage import Coverage
from bot.engine.routing import window_text

READINESS_PATIENT = "READINESS-CHECK"  # a signed-in portal session; no real record is used
REQUIRED_NOTE_FIELDS = ("contact_reason", "checks_done", "action_taken", "queue",
                        "callback_window", "unresolved", "owner", "callback_due", "language",
                        "channel", "nlu_backend", "transcript_ref", "identity")


@dataclass(frozen=True)
class Case:
    name: str
    lane: str  # where the handoff must go
    messages: tuple[str, ...]
    channel: str = "portal"  # a signed-in portal session unless the case tests identity
    closed: bool = False  # run while the lane is closed (after hours)
    priority: Priority | None = None
    language: str = "en"
    fields: tuple[str, ...] = ()  # record fields the note must carry
    clinical: bool = False  # the bot must not have answered with a script


CASES = (
    Case("new scheduling request", "scheduling",
         ("I'm a new patient and would like to schedule my first visit",)),
    Case("refill message", "pharmacy",
         ("I need a refill of my lisinopril", "CVS on Main Street", "about 5 days"),
         fields=("medication", "pharmacy", "days_left")),
    Case("billing question", "billing",
         ("I have a question about my bill", "my account number is 88412345",
          "I was charged twice for the same visit"), fields=("account", "question")),
    Case("failed identity check", "front_desk",
         ("I need to reschedule my appointment", "Readiness Check", "01/01/1901",
          "Readiness Check", "02/02/1902", "Readiness Check", "03/03/1903"), channel="sms"),
    Case("after-hours contact", "billing",
         ("I have a question about my bill", "my account number is 88412345",
          "I was charged twice for the same visit"), closed=True,
         fields=("account", "question")),
    Case("emergency message", "clinical",
         ("my husband has crushing chest pain and can't breathe",),
         priority=Priority.EMERGENCY, clinical=True),
    Case("clinical question during scheduling", "clinical",
         ("I'd like to book a follow-up visit",
          "actually I've had a cough and a sore throat for three days, what should I take?"),
         clinical=True),
    Case("Spanish-language request", "pharmacy",
         ("Necesito un resurtido de mi receta de metformina", "Farmacia CVS de la calle Main",
          "unos 4 días"), language="es", fields=("medication", "pharmacy", "days_left")),
)


@dataclass
class CaseResult:
    case: Case
    ticket: HandoffTicket | None
    replies: list[str]
    at: datetime
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _isolated_settings(directory: Path) -> Settings:
    env = {"PATIENTBOT_DATA_KEYS": f"ready:{new_key()}", "PATIENTBOT_LOOKUP_KEY": new_key(),
           "PATIENTBOT_SESSION_SECRET": new_key()}
    return Settings(redis_url=None, redis_prefix="readiness",
                    keys=load_key_material(env, directory))


def _case_time(coverage: Coverage, config: Config, case: Case, start: datetime) -> datetime:
    """An hour the case's lane is open (or closed, for the after-hours case)."""
    schedule = config.queues[case.lane].hours
    at = start
    for _ in range(24 * 21):
        # well inside the opening, so a multi-message case stays within it
        if coverage.is_open(schedule, at) != case.closed and (
                case.closed or coverage.is_open(schedule, at + timedelta(minutes=30))):
            return at
        at += timedelta(hours=1)
    return start


class _Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def run_case(config: Config, case: Case, index: int, start: datetime) -> CaseResult:
    coverage = Coverage.from_config(config)
    clock = _Clock(_case_time(coverage, config, case, start))
    at = clock.now
    with tempfile.TemporaryDirectory() as directory:
        runtime = Runtime.build(config, _isolated_settings(Path(directory)), clock=clock)
        replies: list[str] = []
        try:
            sender = READINESS_PATIENT if case.channel == "portal" else "+15555550199"
            for number, text in enumerate(case.messages, 1):
                inbound = Inbound(channel=case.channel, sender=sender,
                                  provider_message_id=f"readiness-{index}-{number}", text=text,
                                  received_at=clock.now,
                                  verified_patient=READINESS_PATIENT
                                  if case.channel == "portal" else None)
                result = await runtime.pipeline.handle(await runtime.ingress.submit(inbound))
                replies += [message.text for message in result.outbox]
                clock.now += timedelta(seconds=30)
            key = runtime.ingress.conversation_key(case.channel, sender)
            session = await runtime.store.get_session(key)
            ticket = await runtime.store.get_ticket(session.open_ticket_id) \
                if session and session.open_ticket_id else None
        finally:
            await runtime.close()
    outcome = CaseResult(case, ticket, replies, at)
    outcome.problems = check(config, outcome)
    return outcome


def check(config: Config, result: CaseResult) -> list[str]:
    """What is missing or unsafe in one case's outcome."""
    case, ticket = result.case, result.ticket
    if ticket is None:
        return [f"no handoff was made (expected the {case.lane} queue)"]
    note = ticket.note
    problems = []
    if ticket.lane != case.lane:
        problems.append(f"routed to {ticket.lane}, expected {case.lane}")
    queue = config.queues.get(ticket.lane)
    if queue is None or not queue.owner:
        problems.append(f"queue {ticket.lane} has no owner")
    if queue is not None and not (queue.backup_owner or queue.supervisor):
        problems.append(f"queue {ticket.lane} has no backup owner or supervisor to escalate to")
    for name in REQUIRED_NOTE_FIELDS:
        if getattr(note, name) in ("", None):
            problems.append(f"note field {name} is empty")
    for name in case.fields:
        if not note.collected.get(name):
            problems.append(f"record field {name} was not captured")
    if case.priority and ticket.priority is not case.priority:
        problems.append(f"priority {ticket.priority.value}, expected {case.priority.value}")
    if case.priority is Priority.EMERGENCY:
        if not note.page:
            problems.append("nobody was paged for the emergency")
        if config.text("emergency_script", case.language) not in result.replies:
            problems.append("the emergency script was not sent")
    if case.clinical and note.script and "clinical" not in ticket.reason \
            and ticket.reason != "emergency":
        problems.append("a clinical message got a script answer")
    if case.closed and not note.after_hours:
        problems.append("not marked after hours")
    if case.closed and note.after_hours and not note.owner.startswith("On-call"):
        opens = Coverage.from_config(config).next_open(config.queues[ticket.lane].hours,
                                                       result.at)
        when = Coverage.from_config(config).format_when(opens, case.language)
        if not any(when in reply for reply in result.replies):
            problems.append("after hours, the patient was not told when the team opens")
    if note.language != case.language:
        problems.append(f"handled in {note.language or '?'}, expected {case.language}")
    final = result.replies[-1] if result.replies else ""
    promised = window_text(config, note.callback_window, case.language) \
        if note.callback_window else ""
    if case.priority is not Priority.EMERGENCY and (not promised or promised not in final):
        problems.append("the patient was not told the callback window")
    if any("{" in reply or "}" in reply for reply in result.replies):
        problems.append("a reply has an unfilled placeholder")
    return problems


def _next_monday(config: Config, now: datetime) -> datetime:
    """Cases start from next Monday 09:00 local, a normal working time; each case then moves
    to the nearest hour its lane is open (or closed), so holidays cannot skew the result."""
    local = now.astimezone(ZoneInfo(config.app.timezone))
    return (local + timedelta(days=7 - local.weekday())).replace(
        hour=9, minute=0, second=0, microsecond=0)


async def run_readiness(config: Config, *, now: datetime) -> list[CaseResult]:
    start = _next_monday(config, now)
    return [await run_case(config, case, index, start) for index, case in enumerate(CASES, 1)]


def format_table(config: Config, results: list[CaseResult]) -> str:
    headers = ("case", "queue", "record fields captured", "callback window",
               "escalation owner", "result")
    rows = []
    for result in results:
        ticket = result.ticket
        note = ticket.note if ticket else None
        owner = ""
        if note:
            owner = " -> ".join(name for name in (note.owner, *note.escalation) if name)
        fields = ", ".join(sorted(note.collected)) if note else ""
        rows.append((result.case.name, ticket.lane if ticket else "-", fields or "-",
                     note.callback_window if note and note.callback_window else "-",
                     owner or "-", "ok" if result.ok else "FAIL"))
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in (headers, *rows)]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("")
    for result in results:
        lines.append(f"{result.case.name} ({result.at.isoformat()}):")
        if result.ticket:
            note = result.ticket.note
            lines.append(f"  note: reason {note.contact_reason}; safety {note.safety}; "
                         f"identity {note.identity}; action: {note.action_taken}; "
                         f"unresolved: {note.unresolved}; after hours {note.after_hours}; "
                         f"priority {result.ticket.priority.value}"
                         + (f"; paged {note.page}" if note.page else ""))
        lines += [f"  PROBLEM: {problem}" for problem in result.problems]
    return "\n".join(lines)
