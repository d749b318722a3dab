"""Handoff tickets: a conversation placed in a human queue with a structured note."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bot.envelopes import utcnow


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


@dataclass(slots=True)
class HandoffTicket:
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

    @property
    def queue_score(self) -> float:
        """Order within a lane: emergency, then urgent, then normal; oldest first in each."""
        return self.priority.rank * 1e10 + self.created_at.timestamp()
