"""Typed model of config/agents.yml: where agents work handoffs (Slack, the web desk)
and who is emailed about escalations.

Secrets never live here: the Slack signing secret and bot token (and the app-level token
for Socket Mode) and the SMTP relay password come from the environment (`bot.config.settings`).
Desk passwords are stored only as argon2 hashes (`patientbot desk hash-password` makes one).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bot.core.mail import valid_address
from bot.core.models import ConfigModel

# Fields a Slack note may show. The first five are the minimum-necessary note every
# workspace gets; the rest carry PHI and are shown only where `phi_capable` is true.
SAFE_NOTE_FIELDS = ("reason", "urgency", "verification", "ticket", "desk_link")
PHI_NOTE_FIELDS = ("summary", "collected", "checks_done", "action_taken", "unresolved",
                   "callback_due", "channel", "language", "owner", "transcript")
NOTE_FIELDS = SAFE_NOTE_FIELDS + ("queue", "waiting", "status") + PHI_NOTE_FIELDS

_SLACK_CHANNEL = r"^[CGD][A-Z0-9]{2,20}$"  # a channel id (C..., G... private, D... direct)
_SLACK_MENTION = r"^(U|W|S)[A-Z0-9]{2,20}$"  # a user (U/W) or a user group (S) id


class SlackConfig(ConfigModel):
    """A Slack workspace where agents claim and work handoffs (handoff/slack/)."""

    enabled: bool = False
    # http: Slack sends events to POST /slack/events (needs a public HTTPS URL);
    # socket: Socket Mode over a WebSocket the app opens (SLACK_APP_TOKEN), no public URL.
    mode: Literal["http", "socket"] = "http"
    api_base_url: str = "https://slack.com/api/"
    # False (the default): notes carry only the minimum necessary (reason category, urgency,
    # verification status, ticket id, desk link) and nothing of the conversation is relayed.
    # True only for a workspace covered by a BAA and configured for PHI.
    phi_capable: bool = False
    # What a note shows, in this order (a subset of NOTE_FIELDS); PHI fields need
    # phi_capable. Default: the minimum-necessary note.
    note_fields: list[str] = list(SAFE_NOTE_FIELDS)
    # lane (queues.yml) -> channel id; lanes not listed post to default_channel.
    lane_channels: dict[str, str] = {}
    default_channel: str = Field("", pattern=r"^$|" + _SLACK_CHANNEL[1:])
    # The on-call user group mentioned on urgent and emergency handoffs (S...).
    on_call_group: str = Field("", pattern=r"^$|^S[A-Z0-9]{2,20}$")
    # Staff role names from queues.yml (owner, backup_owner, supervisor, on_call_owner) ->
    # who to mention (a user U.../W... or a user group S...).
    staff: dict[str, str] = {}
    # Staff role -> the channel their escalation notices go to (default: the lane's channel).
    staff_channels: dict[str, str] = {}
    max_text_chars: int = Field(1500, ge=200, le=2900)  # patient text per message, then a link
    timeout_seconds: float = Field(10.0, gt=0, le=60)  # each Web API call
    sync_seconds: float = Field(2.0, ge=0.2, le=60)  # how often notes are brought up to date

    @field_validator("note_fields")
    @classmethod
    def _known_fields(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in NOTE_FIELDS]
        if unknown:
            raise ValueError(f"unknown note field {unknown[0]!r} (known: "
                             f"{', '.join(NOTE_FIELDS)})")
        if "ticket" not in value:
            raise ValueError("the ticket id is always shown: add 'ticket'")
        return value

    @field_validator("lane_channels", "staff_channels")
    @classmethod
    def _channel_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for name, channel in value.items():
            if not re.match(_SLACK_CHANNEL, channel):
                raise ValueError(f"{name}: {channel!r} is not a Slack channel id (C0123ABCD)")
        return value

    @field_validator("staff")
    @classmethod
    def _mention_ids(cls, value: dict[str, str]) -> dict[str, str]:
        for name, who in value.items():
            if not re.match(_SLACK_MENTION, who):
                raise ValueError(f"{name}: {who!r} is not a Slack user (U...) or user group "
                                 "(S...) id")
        return value

    @model_validator(mode="after")
    def _phi_fields_need_phi_workspace(self) -> SlackConfig:
        phi = [name for name in self.note_fields if name in PHI_NOTE_FIELDS]
        if phi and not self.phi_capable:
            raise ValueError(f"note field {phi[0]!r} carries PHI: only allowed with "
                             "phi_capable: true")
        return self

    def channel_for(self, lane: str) -> str:
        return self.lane_channels.get(lane) or self.default_channel


class DeskAccount(ConfigModel):
    """A web agent desk account. `id` is the staff id recorded on claims and replies."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{1,31}$")
    name: str = Field(min_length=1, max_length=80)
    password_hash: str = Field("", pattern=r"^$|^\$argon2(id|i|d)\$")  # empty: token only
    lanes: list[str] = []  # empty: every lane


class DeskConfig(ConfigModel):
    """The web agent desk at /agent/ (handoff/web/desk.py)."""

    enabled: bool = True
    idle_minutes: int = Field(15, ge=1, le=240)  # signed out after this long without use
    absolute_hours: int = Field(10, ge=1, le=24)  # signed out after a shift at most
    max_signin_attempts: int = Field(5, ge=1, le=100)  # per account, then locked out
    signin_lockout_minutes: int = Field(15, ge=1, le=1440)
    token_minutes: int = Field(10, ge=1, le=60)  # how long a signed sign-in link is valid
    accounts: list[DeskAccount] = []

    @field_validator("accounts")
    @classmethod
    def _unique_ids(cls, value: list[DeskAccount]) -> list[DeskAccount]:
        seen: set[str] = set()
        for account in value:
            if account.id in seen:
                raise ValueError(f"duplicate account id {account.id!r}")
            seen.add(account.id)
        return value

    def account(self, account_id: str) -> DeskAccount | None:
        return next((a for a in self.accounts if a.id == account_id), None)


def _plain_address(value: str) -> str:
    # One addr-spec, as the sender checks it: nothing that could add a recipient or a header.
    value = value.strip()
    if not valid_address(value.lower()):
        raise ValueError(f"{value!r} is not a plain email address")
    return value


_StaffAddress = Annotated[str, AfterValidator(_plain_address)]


class EmailNoticesConfig(ConfigModel):
    """Escalation notices by email (handoff/email_notices.py), for sites that work handoffs
    only in the web desk: re-notify, backup owner, supervisor and callback-due warnings go to
    the address of the staff role concerned.

    Mail goes out through the outbound relay of channels.yml `email` (relay_host, relay_port,
    relay_security, relay_username, relay_timeout_seconds, hostname) with SMTP_PASSWORD from
    the environment; the patient email channel itself may stay disabled. Notices carry only
    the minimum necessary (ticket id, lane, reason code, urgency, waiting time, step, desk
    link), never patient text or identifiers.
    """

    enabled: bool = False
    # Validated whatever its value (validate_default): required once enabled. Declared
    # after `enabled` so that the validator sees it.
    from_address: str = Field("", validate_default=True)
    subject_prefix: str = Field("[patientbot]", max_length=40)
    # Staff role names from queues.yml (owner, backup_owner, supervisor, on_call_owner) ->
    # the address their notices go to. A role not listed gets no email (a warning is logged).
    staff: dict[str, _StaffAddress] = {}

    @field_validator("from_address")
    @classmethod
    def _sender(cls, value: str, info: ValidationInfo) -> str:
        if value.strip():
            return _plain_address(value)
        if info.data.get("enabled"):
            raise ValueError("email notices are enabled: from_address (notices come from "
                             "it) is required")
        return ""

    @field_validator("subject_prefix")
    @classmethod
    def _one_line(cls, value: str) -> str:
        # Ends up in the Subject header: no line breaks or controls.
        if any(not ch.isprintable() for ch in value):
            raise ValueError("must be one line without control characters")
        return value.strip()



class AgentsFile(ConfigModel):
    """config/agents.yml."""

    slack: SlackConfig = SlackConfig()
    desk: DeskConfig = DeskConfig()
    email_notices: EmailNoticesConfig = EmailNoticesConfig()
