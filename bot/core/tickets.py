"""Handoff tickets: a conversation placed in a human queue with a structured note."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bot.core.envelopes import utcnow


class Priority(StrEnum):
    NORMAL = "normal"
    URGENT = "urgent"  # clinical after hours, upset patients: ahead of normal work
    EMERGENCY = "emergency"  # emergency script sent: first in the lane, on-call paged

    @property
    def rank(self) -> int:
        """Lower is served first."""
        return {"emergency": 0, "urgent": 1, "normal": 2}[self.value]


class TicketStatus(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class HandoffNote:
    """The structured note an agent reads first: factual, what the patient said and which
    approved action followed, no interpretation (template from the domain notes).

    `summary` (the patient's words) and `collected` (fields the bot captured) are PHI and
    sealed at rest; every other field is a code or a configured name.
    """

    contact_reason: str  # intent
    checks_done: str  # identity checks and their result
    action_taken: str
    queue: str
    callback_window: str  # as promised to the patient, e.g. "1 business day"
    unresolved: str
    summary: str = ""
    # What the NLU decided and why, as codes (intent, confidence, safety level and cue
    # categories, language, classifier backend); never patient text.
    triage: str = ""
    confidence: float | None = None
    safety: str = "none"
    safety_cues: tuple[str, ...] = ()
    identity: str = "not_required"  # not_required | verified | portal_session | failed | ...
    owner: str = ""  # who answers for this handoff now (on-call owner after hours)
    escalation: tuple[str, ...] = ()  # backup owner, then supervisor
    callback_due: str = ""  # ISO time the callback window ends
    after_hours: bool = False
    page: str = ""  # who was paged at once (emergencies)
    language: str = ""
    channel: str = ""
    nlu_backend: str = ""
    script: str = ""  # id@version of the approved script that ran
    transcript_ref: str = ""
    collected: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TicketEvent:
    """One line of a ticket's history: what changed, who did it, when, and a detail code.

    `actor` is ``agent:<staff id>`` or ``system`` (escalation timers); `detail` is a code
    (an outcome, ``lane>lane``, an intent, an outbound id, a staff role), never patient text.
    """

    action: str
    actor: str
    at: datetime
    detail: str = ""


@dataclass(slots=True)
class HandoffTicket:
    """A handoff in a lane. The fields after `updated_at` are kept by the agent desk
    (handoff/desk.py) and the escalation timers (handoff/escalation.py).

    `revision` counts stored changes: `Store.update_ticket` writes a ticket only if nobody
    changed it since it was read (compare-and-set), which is what makes a claim atomic.
    `escalation_stage` is how far the unclaimed-ticket escalation has gone (0 none, 1
    re-notified, 2 backup owner, 3 supervisor); `escalation_round` starts a fresh series of
    timers when the ticket is re-queued (moved), so timers of an earlier round are ignored.
    """

    conversation_id: str
    channel: str
    lane: str
    reason: str
    note: HandoffNote
    priority: Priority = Priority.NORMAL
    status: TicketStatus = TicketStatus.OPEN
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    revision: int = 0
    claimed_by: str = ""  # staff id of the owner (status CLAIMED; kept once RESOLVED)
    claimed_at: datetime | None = None
    outcome: str = ""  # outcome code once RESOLVED
    corrected_intent: str = ""  # the contact reason an agent relabelled it to
    escalation_stage: int = 0
    escalation_round: int = 0
    callback_alerted: bool = False
    history: list[TicketEvent] = field(default_factory=list)

    @property
    def queue_score(self) -> float:
        """Order within a lane: emergency, then urgent, then normal; oldest first in each."""
        return self.priority.rank * 1e10 + self.created_at.timestamp()


class TimerKind(StrEnum):
    """Escalation timers. The first three escalate an unclaimed ticket one step each; the
    last warns the owner that the callback promised to the patient is about to be missed."""

    RENOTIFY = "renotify"
    BACKUP = "backup"
    SUPERVISOR = "supervisor"
    CALLBACK_DUE_SOON = "callback_due_soon"

    @property
    def stage(self) -> int:
        """The `HandoffTicket.escalation_stage` this timer moves an unclaimed ticket to."""
        return {"renotify": 1, "backup": 2, "supervisor": 3}.get(self.value, 0)


UNCLAIMED_KINDS = (TimerKind.RENOTIFY, TimerKind.BACKUP, TimerKind.SUPERVISOR)


@dataclass(frozen=True, slots=True)
class TicketTimer:
    """A durable timer for one ticket (stored sealed, due time in a sorted set).

    The id is ``<ticket id>.<kind>.<round>``: opaque ids only, so it may name store keys.
    """

    ticket_id: str
    kind: TimerKind
    due: datetime
    round: int = 0

    @property
    def id(self) -> str:
        return timer_id(self.ticket_id, self.kind, self.round)


def timer_id(ticket_id: str, kind: TimerKind | str, round_: int) -> str:
    return f"{ticket_id}.{TimerKind(kind).value}.{round_}"
