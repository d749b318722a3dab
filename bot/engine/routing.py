"""Where a handoff goes and what the patient is promised: owner, hours, callback window.

Pure functions of (config, coverage, clock). After hours a lane either waits for the next
business day (the patient is told when it opens) or passes to its on-call owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from bot.config.base import parse_window
from bot.config.loader import Config
from bot.core.tickets import Priority
from bot.engine.coverage import Coverage

EMERGENCY_LANE = "clinical"


@dataclass(frozen=True, slots=True)
class Route:
    lane: str
    owner: str  # empty when the config names nobody (readiness reports it)
    escalation: tuple[str, ...]  # backup owner, then supervisor
    window: str  # "1 business day"
    due: datetime
    after_hours: bool
    on_call: bool
    opens: datetime | None  # when a closed lane opens again (next_business_day mode)
    page: str = ""  # paged at once (emergencies)


def route(config: Config, coverage: Coverage, lane: str, *, now: datetime,
          intent: str | None = None, priority: Priority = Priority.NORMAL,
          supervisor_owns: bool = False) -> Route:
    queue = config.queues[lane]
    spec = config.intents.get(intent or "")
    window = (spec.callback_window if spec else None) or queue.callback_window
    owner = (spec.escalation_owner if spec else None) or queue.owner or ""
    if supervisor_owns:
        owner = queue.supervisor or owner
    escalation = tuple(name for name in (queue.backup_owner, queue.supervisor)
                       if name and name != owner)
    page = ""
    if priority is Priority.EMERGENCY:
        # The on-call owner is paged whatever the hour, and the callback is the on-call
        # window, not the lane's business-hours promise.
        page = queue.on_call_owner or queue.owner or ""
        window = queue.on_call_callback_window
    if coverage.is_open(queue.hours, now):
        return Route(lane, owner, escalation, window,
                     coverage.callback_due(queue.hours, now, window), after_hours=False,
                     on_call=False, opens=None, page=page)
    if queue.after_hours == "on_call" and queue.on_call_owner:
        window = queue.on_call_callback_window
        return Route(lane, queue.on_call_owner, (owner, *escalation), window,
                     coverage.callback_due(queue.hours, now, window), after_hours=True,
                     on_call=True, opens=None, page=page)
    return Route(lane, owner, escalation, window, coverage.callback_due(queue.hours, now, window),
                 after_hours=True, on_call=False, opens=coverage.next_open(queue.hours, now),
                 page=page)


def window_text(config: Config, window: str, language: str) -> str:
    """'2 business days' -> 'within 2 business days' in the patient's language."""
    count, business, unit = parse_window(window)
    template = config.text(f"window_{'business_' if business else ''}{unit}s", language)
    singular, _, plural = template.partition("|")
    return (singular if count == 1 or not plural else plural).replace("{n}", str(count))
