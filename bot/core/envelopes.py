"""Envelopes: the channel-neutral shape of every message in and out.

Channel adapters build `Inbound` from provider payloads; the pipeline emits `Outbound`.
`ConversationKey` names a conversation without carrying the sender's address: the sender is
reduced to a keyed hash, so the key can appear in store key names and logs.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ConversationKey:
    """One conversation = one channel + one sender. `sender_hash` is a keyed hash."""

    channel: str
    sender_hash: str

    @property
    def id(self) -> str:
        return f"{self.channel}:{self.sender_hash}"

    @classmethod
    def parse(cls, conversation_id: str) -> ConversationKey:
        channel, _, sender_hash = conversation_id.partition(":")
        if not channel or not sender_hash:
            raise ValueError("malformed conversation id")
        return cls(channel, sender_hash)


@dataclass(frozen=True, slots=True)
class AttachmentMeta:
    """What we know of an attachment; its content is never fetched or forwarded."""

    content_type: str
    size: int | None = None


@dataclass(frozen=True, slots=True)
class Inbound:
    """A patient's message as the pipeline sees it.

    `sender` is the channel address (phone number, email, portal patient reference): PHI,
    sealed whenever the envelope is stored. `provider_message_id` is the provider's own id,
    used for dedupe. `verified_patient` is set only by a channel that authenticated the patient
    itself (a signed-in portal session).
    """

    channel: str
    sender: str
    provider_message_id: str
    text: str
    received_at: datetime = field(default_factory=utcnow)
    attachments: tuple[AttachmentMeta, ...] = ()
    verified_patient: str | None = None
    # Email: what our own MTA's Authentication-Results said (codes only, e.g.
    # "dkim=pass dmarc=pass spf=none"); empty where the channel has no such check.
    auth_results: str = ""

    def to_json(self) -> str:
        return json.dumps({
            "channel": self.channel, "sender": self.sender,
            "provider_message_id": self.provider_message_id, "text": self.text,
            "received_at": self.received_at.isoformat(),
            "attachments": [{"content_type": a.content_type, "size": a.size}
                            for a in self.attachments],
            "verified_patient": self.verified_patient, "auth_results": self.auth_results,
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Inbound:
        data: dict[str, Any] = json.loads(raw)
        data["received_at"] = datetime.fromisoformat(data["received_at"])
        data["attachments"] = tuple(AttachmentMeta(**a) for a in data.get("attachments", ()))
        return cls(**data)


@dataclass(frozen=True, slots=True)
class Outbound:
    """A reply to send on the patient's channel. `id` makes a retried send idempotent."""

    conversation_id: str
    channel: str
    recipient: str
    text: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = field(default_factory=utcnow)
    in_reply_to: str | None = None
    # The text discloses PHI (appointment details, collected fields): channels configured
    # without PHI (Telegram; SMS by default) send a portal link instead.
    phi: bool = False
    language: str = "en"  # the conversation's language when the reply was written

    def to_json(self) -> str:
        return json.dumps({
            "conversation_id": self.conversation_id, "channel": self.channel,
            "recipient": self.recipient, "text": self.text, "id": self.id,
            "created_at": self.created_at.isoformat(), "in_reply_to": self.in_reply_to,
            "phi": self.phi, "language": self.language,
        }, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str) -> Outbound:
        data: dict[str, Any] = json.loads(raw)
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)
