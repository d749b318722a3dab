"""Serialisation of stored records, with every PHI field sealed before it leaves the app.

Both store implementations keep only what this module produces, so the in-memory twin holds
ciphertext exactly like Redis does. Each sealed field is bound to its record and field name.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from bot.crypto import Sealer
from bot.envelopes import ConversationKey, Outbound
from bot.session import Direction, IdentityStatus, Session, SessionState, TranscriptEntry
from bot.store.base import MailboxItem
from handoff.tickets import HandoffNote, HandoffTicket, Priority, TicketStatus


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


class Codec:
    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    # sessions -------------------------------------------------------------------------
    def session(self, session: Session) -> str:
        record = f"session:{session.conversation_id}"
        seal = self._sealer.seal
        return _dump({
            "key": session.conversation_id,
            "sender": seal(session.sender, record=record, field="sender"),
            "state": session.state.value,
            "language": session.language,
            "identity": session.identity.value,
            "identity_verified_at": _dt(session.identity_verified_at),
            "patient_id": self._sealer.seal_optional(session.patient_id, record=record,
                                                     field="patient_id"),
            "open_ticket_id": session.open_ticket_id,
            "last_seq": session.last_seq,
            "last_ack_at": _dt(session.last_ack_at),
            "slots": seal(_dump(session.slots), record=record, field="slots"),
            "created_at": _dt(session.created_at),
            "updated_at": _dt(session.updated_at),
        })

    def parse_session(self, raw: str | bytes) -> Session:
        data = json.loads(raw)
        record = f"session:{data['key']}"
        opened = self._sealer.open
        return Session(
            key=ConversationKey.parse(data["key"]),
            sender=opened(data["sender"], record=record, field="sender"),
            state=SessionState(data["state"]),
            language=data["language"],
            identity=IdentityStatus(data["identity"]),
            identity_verified_at=_parse_dt(data["identity_verified_at"]),
            patient_id=self._sealer.open_optional(data["patient_id"], record=record,
                                                  field="patient_id"),
            open_ticket_id=data["open_ticket_id"],
            last_seq=data["last_seq"],
            last_ack_at=_parse_dt(data["last_ack_at"]),
            slots=json.loads(opened(data["slots"], record=record, field="slots")),
            created_at=_parse_dt(data["created_at"]),
            updated_at=_parse_dt(data["updated_at"]),
        )

    # transcript -----------------------------------------------------------------------
    def entry(self, conversation_id: str, entry: TranscriptEntry) -> str:
        record = f"transcript:{conversation_id}:{entry.message_id}"
        return _dump({
            "direction": entry.direction.value,
            "actor": entry.actor,
            "message_id": entry.message_id,
            "at": _dt(entry.at),
            "text": self._sealer.seal(entry.text, record=record, field="text"),
        })

    def parse_entry(self, conversation_id: str, raw: str | bytes) -> TranscriptEntry:
        data = json.loads(raw)
        record = f"transcript:{conversation_id}:{data['message_id']}"
        return TranscriptEntry(
            direction=Direction(data["direction"]),
            actor=data["actor"],
            message_id=data["message_id"],
            at=_parse_dt(data["at"]),
            text=self._sealer.open(data["text"], record=record, field="text"),
        )

    # outbox ---------------------------------------------------------------------------
    def outbound(self, message: Outbound) -> str:
        return self._sealer.seal(message.to_json(), record=f"outbox:{message.id}", field="message")

    def parse_outbound(self, outbound_id: str, raw: str | bytes) -> Outbound:
        token = raw.decode() if isinstance(raw, bytes) else raw
        return Outbound.from_json(
            self._sealer.open(token, record=f"outbox:{outbound_id}", field="message"))

    # tickets --------------------------------------------------------------------------
    def ticket(self, ticket: HandoffTicket) -> str:
        record = f"ticket:{ticket.id}"
        note = asdict(ticket.note)
        note["summary"] = self._sealer.seal(note["summary"], record=record, field="summary")
        note["collected"] = self._sealer.seal(_dump(note["collected"]), record=record,
                                              field="collected")
        return _dump({
            "id": ticket.id,
            "conversation_id": ticket.conversation_id,
            "channel": ticket.channel,
            "lane": ticket.lane,
            "reason": ticket.reason,
            "priority": ticket.priority.value,
            "status": ticket.status.value,
            "created_at": _dt(ticket.created_at),
            "updated_at": _dt(ticket.updated_at),
            "note": note,
        })

    def parse_ticket(self, raw: str | bytes) -> HandoffTicket:
        data = json.loads(raw)
        note = data["note"]
        record = f"ticket:{data['id']}"
        note["summary"] = self._sealer.open(note["summary"], record=record, field="summary")
        note["collected"] = json.loads(self._sealer.open(note["collected"], record=record,
                                                         field="collected"))
        note["safety_cues"] = tuple(note["safety_cues"])
        note["escalation"] = tuple(note["escalation"])
        return HandoffTicket(
            id=data["id"],
            conversation_id=data["conversation_id"],
            channel=data["channel"],
            lane=data["lane"],
            reason=data["reason"],
            priority=Priority(data["priority"]),
            status=TicketStatus(data["status"]),
            created_at=_parse_dt(data["created_at"]),
            updated_at=_parse_dt(data["updated_at"]),
            note=HandoffNote(**note),
        )

    # small sealed values (portal sessions, mailbox items) -------------------------------
    def value(self, namespace: str, item_id: str, data: dict[str, Any]) -> str:
        return self._sealer.seal(_dump(data), record=f"{namespace}:{item_id}", field="value")

    def parse_value(self, namespace: str, item_id: str, raw: str | bytes) -> dict[str, Any]:
        token = raw.decode() if isinstance(raw, bytes) else raw
        return json.loads(self._sealer.open(token, record=f"{namespace}:{item_id}",
                                            field="value"))

    # portal mailbox ---------------------------------------------------------------------
    def mailbox_entry(self, conversation_id: str, message_id: str, text: str,
                      at: datetime) -> str:
        sealed = self.value(f"mailbox:{conversation_id}", message_id,
                            {"text": text, "at": at.isoformat()})
        return _dump({"id": message_id, "v": sealed})

    def parse_mailbox_entry(self, conversation_id: str, cursor: int,
                            raw: str | bytes) -> MailboxItem:
        wrapper = json.loads(raw)
        value = self.parse_value(f"mailbox:{conversation_id}", wrapper["id"], wrapper["v"])
        return MailboxItem(cursor=cursor, message_id=wrapper["id"], text=value["text"],
                           at=datetime.fromisoformat(value["at"]))
