"""config/messages.yml: every patient-facing template, per language."""

from __future__ import annotations

from typing import Literal

from bot.core.models import ConfigModel


class Templates(ConfigModel):
    """Patient-facing texts outside scripts; each language must have every one.

    Placeholders: {team} the queue's name for patients, {window} the callback window
    ("within 1 business day"), {opens} when a closed team opens again, {organisation}.
    """

    handoff_ack: str
    handoff_followup: str
    error_fallback: str
    portal_welcome: str
    bot_intro: str  # prefixed to the first reply of a conversation
    emergency_script: str
    clinical_ack: str
    on_call_ack: str  # clinical message after hours, to the on-call owner
    lane_ack: str
    lane_ack_after_hours: str
    closed_until: str  # added to other handoff replies while the team is closed
    human_ack: str
    upset_ack: str
    greeting_reply: str
    thanks_reply: str
    goodbye_reply: str
    out_of_scope_reply: str
    identity_ask_name: str
    identity_ask_dob: str
    identity_retry: str
    identity_failed: str
    identity_needs_portal: str
    # Channels. {portal_url}: the portal's address (app.yml public_base_url + /portal/).
    phi_redirect: str  # replaces a reply with PHI on a channel that must not carry PHI
    attachments_not_accepted: str  # files are never fetched or forwarded
    sms_help: str  # the HELP keyword (carrier requirement)
    sms_stopped: str  # STOP: the last message before opting out
    sms_started: str  # START / UNSTOP
    telegram_start: str  # /start: what the bot can do and the privacy notice
    # "singular|plural" with {n}
    window_hours: str
    window_business_hours: str
    window_days: str
    window_business_days: str
    # Agent desk (handoff/desk.py): sent when an agent resolves the handoff, or gives the
    # conversation back to the bot.
    resolved_closing: str
    returned_to_bot: str


class MessagesFile(ConfigModel):
    messages: dict[Literal["en", "es"], Templates]
