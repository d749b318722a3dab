"""Handoff tickets: a conversation placed in a human queue with a structured note."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bot.envelopes import utcnow


class Priority(StrEnum):
    NORMAL = "normal"
    URGENT = "urgent"


class TicketStatus(StrEnum):
    OPEN = "open"
    CLAIMED = "claimed"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class HandoffNote:
    """The structured note an agent reads first (template from the domain notes).

    `summary` may quote the patient and is PHI (sealed at rest); the other fields are codes.
    """

    contact_reason: str
    checks_done: str
    action_taken: str
    queue: str
    callback_window: str
    unresolved: str
    summary: str = ""
    # What the NLU decided and why, as codes (intent, confidence, safety level and cue
    # categories, language, classifier backend); never patient text.
    triage: str = ""


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
