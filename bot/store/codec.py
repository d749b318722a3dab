"""Serialisation of stored records, with every PHI field sealed before it leaves the app.

Both store implementations keep only what this module produces, so the in-memory twin holds
ciphertext exactly like Redis does. Each sealed field is bound to its record and field name.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from bot.core.crypto import Sealer
from bot.core.envelopes import ConversationKey, Outbound
from bot.core.session import Direction, IdentityStatus, Session, SessionState, TranscriptEntry
from bot.core.tickets import (
    HandoffNote,
    HandoffTicket,
    Priority,
    TicketEvent,
    TicketStatus,
    TicketTimer,
    TimerKind,
)
from bot.store.base import MailboxItem, ReviewItem


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _when(value: str) -> datetime:
    """A timestamp every record of its kind has (a missing one is a KeyError/ValueError)."""
    return datetime.fromisoformat(value)


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
            created_at=_when(data["created_at"]),
            updated_at=_when(data["updated_at"]),
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
            at=_when(data["at"]),
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
            # Desk and escalation state: codes and staff ids only (not PHI).
            "revision": ticket.revision,
            "claimed_by": ticket.claimed_by,
            "claimed_at": _dt(ticket.claimed_at),
            "outcome": ticket.outcome,
            "corrected_intent": ticket.corrected_intent,
            "escalation_stage": ticket.escalation_stage,
            "escalation_round": ticket.escalation_round,
            "callback_alerted": ticket.callback_alerted,
            "history": [[e.action, e.actor, _dt(e.at), e.detail] for e in ticket.history],
        })

    @staticmethod
    def ticket_header(raw: str | bytes) -> tuple[int, str]:
        """(revision, lane) of a stored ticket, without opening its sealed fields."""
        data = json.loads(raw)
        return data.get("revision", 0), data["lane"]

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
            created_at=_when(data["created_at"]),
            updated_at=_when(data["updated_at"]),
            note=HandoffNote(**note),
            # Tickets stored before the agent desk existed have none of these.
            revision=data.get("revision", 0),
            claimed_by=data.get("claimed_by", ""),
            claimed_at=_parse_dt(data.get("claimed_at")),
            outcome=data.get("outcome", ""),
            corrected_intent=data.get("corrected_intent", ""),
            escalation_stage=data.get("escalation_stage", 0),
            escalation_round=data.get("escalation_round", 0),
            callback_alerted=data.get("callback_alerted", False),
            history=[TicketEvent(action, actor, _when(at), detail)
                     for action, actor, at, detail in data.get("history", ())],
        )

    # escalation timers ----------------------------------------------------------------
    def timer(self, timer: TicketTimer) -> str:
        return self.value("timer", timer.id, {"ticket": timer.ticket_id, "kind": timer.kind.value,
                                               "due": _dt(timer.due), "round": timer.round})

    def parse_timer(self, timer_id: str, raw: str | bytes) -> TicketTimer:
        data = self.parse_value("timer", timer_id, raw)
        return TicketTimer(ticket_id=data["ticket"], kind=TimerKind(data["kind"]),
                           due=_when(data["due"]), round=data["round"])

    # review queues (e.g. relabelled messages) --------------------------------------------
    def review(self, item: ReviewItem) -> str:
        return self.value(f"review:{item.queue}", item.item_id,
                          {"record": item.record, "at": _dt(item.at)})

    def parse_review(self, queue: str, item_id: str, raw: str | bytes) -> ReviewItem:
        data = self.parse_value(f"review:{queue}", item_id, raw)
        return ReviewItem(queue=queue, item_id=item_id, record=data["record"],
                          at=_when(data["at"]))

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
