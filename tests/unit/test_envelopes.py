"""Envelopes survive their JSON form exactly (they travel sealed through the ingress)."""

from __future__ import annotations

from bot.core.envelopes import AttachmentMeta, ConversationKey, Inbound, Outbound


def test_inbound_round_trip_with_attachments() -> None:
    inbound = Inbound(channel="email", sender="a@example.org", provider_message_id="<m1@x>",
                      text="héllo\nworld", attachments=(AttachmentMeta("image/png", 1234),
                                                        AttachmentMeta("text/plain")),
                      verified_patient=None)
    assert Inbound.from_json(inbound.to_json()) == inbound


def test_outbound_round_trip() -> None:
    message = Outbound(conversation_id="sms:abc", channel="sms", recipient="+16175550100",
                       text="Your visit is at 9:00", in_reply_to="SM1")
    assert Outbound.from_json(message.to_json()) == message


def test_conversation_ids_parse_back() -> None:
    key = ConversationKey("portal", "0123abcd")
    assert ConversationKey.parse(key.id) == key
