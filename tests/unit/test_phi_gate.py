"""The outbox's PHI gate: one place decides what a channel may carry, not each adapter."""

from __future__ import annotations

from bot.config.loader import Config
from bot.core.envelopes import Outbound
from bot.messaging.delivery import channel_text, phi_gate

APPOINTMENT = "Your appointment with Dr. Chen is on Tuesday at 9:30."


class Adapter:
    def __init__(self, name: str, phi_allowed: bool | None) -> None:
        self.name = name
        if phi_allowed is not None:
            self.phi_allowed = phi_allowed

    async def send(self, message: Outbound) -> str | None:
        return None


def reply(*, phi: bool, language: str = "en") -> Outbound:
    return Outbound(conversation_id="c1", channel="sms", recipient="+16175550142",
                    text=APPOINTMENT, phi=phi, language=language)


def test_a_phi_reply_to_a_channel_without_phi_becomes_the_portal_pointer(config: Config) -> None:
    sent = phi_gate(config)(reply(phi=True, language="es"), Adapter("sms", phi_allowed=False))
    assert sent.text == channel_text(config, "phi_redirect", "es")
    assert APPOINTMENT not in sent.text and not sent.phi
    assert sent.recipient == "+16175550142" and sent.channel == "sms"


def test_a_channel_that_does_not_say_is_treated_as_not_phi_capable(config: Config) -> None:
    sent = phi_gate(config)(reply(phi=True), Adapter("pager", phi_allowed=None))
    assert sent.text == channel_text(config, "phi_redirect", "en")


def test_phi_capable_channels_and_non_phi_replies_pass_unchanged(config: Config) -> None:
    gate = phi_gate(config)
    message = reply(phi=True)
    assert gate(message, Adapter("portal", phi_allowed=True)) is message
    plain = reply(phi=False)
    assert gate(plain, Adapter("sms", phi_allowed=False)) is plain
