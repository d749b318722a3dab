"""Conversation session and transcript entries: what the pipeline remembers per conversation."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bot.core.envelopes import ConversationKey, utcnow


class SessionState(StrEnum):
    ACTIVE = "active"
    AWAITING_IDENTITY = "awaiting_identity"
    IN_SCRIPT = "in_script"
    HANDED_OFF = "handed_off"
    CLOSED = "closed"


class IdentityStatus(StrEnum):
    UNVERIFIED = "unverified"
    VERIFIED = "verified"
    FAILED = "failed"


@dataclass(slots=True)
class Session:
    """State of one conversation. `sender`, `patient_id` and `slots` are PHI (sealed at rest).

    `last_seq` is the ingress sequence number of the last message processed; it keeps
    per-conversation order across workers and makes redelivered entries harmless.
    The transcript is stored separately under `transcript_ref`.
    """

    key: ConversationKey
    sender: str
    state: SessionState = SessionState.ACTIVE
    language: str = "en"
    identity: IdentityStatus = IdentityStatus.UNVERIFIED
    identity_verified_at: datetime | None = None
    patient_id: str | None = None
    open_ticket_id: str | None = None
    last_seq: int = 0
    last_ack_at: datetime | None = None
    slots: dict[str, str] = field(default_factory=dict)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)

    @property
    def conversation_id(self) -> str:
        return self.key.id

    @property
    def transcript_ref(self) -> str:
        return self.key.id


class Direction(StrEnum):
    IN = "in"
    OUT = "out"
    EVENT = "event"


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    """One line of the conversation record. `text` is PHI (sealed at rest).

    `actor` says who produced it: patient, bot, agent:<id> or system. Events (handoff,
    errors) carry a code in `text` that is safe to show to staff.
    """

    direction: Direction
    actor: str
    text: str
    message_id: str
    at: datetime = field(default_factory=utcnow)
