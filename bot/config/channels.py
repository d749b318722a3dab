"""Typed model of config/channels.yml: which patient channels run and their limits.

Provider secrets (Twilio auth token, Telegram bot token and webhook secret, SMTP and IMAP
passwords) never live here: they come from the environment (`bot.config.settings.CHANNEL_SECRETS`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from bot.core.models import ConfigModel


class ChannelLimits(ConfigModel):
    """Flood protection for every channel, per sender address and per conversation."""

    per_sender_per_minute: int = Field(12, ge=1, le=10_000)
    per_sender_per_hour: int = Field(60, ge=1, le=100_000)
    # Loop breaker: at most this many bot replies per conversation per hour (an
    # auto-responder answering the bot would otherwise ping-pong forever).
    replies_per_conversation_per_hour: int = Field(30, ge=1, le=10_000)


class SmsConfig(ConfigModel):
    """Twilio Programmable Messaging."""

    enabled: bool = False
    account_sid: str = Field("", pattern=r"^(AC[0-9a-fA-F]{32})?$")
    from_number: str = Field("", pattern=r"^(\+[1-9]\d{6,14})?$")  # E.164
    api_base_url: str = "https://api.twilio.com"
    status_callbacks: bool = True
    max_segments: int = Field(10, ge=1, le=20)  # longer replies are cut with a portal pointer
    phi_allowed: bool = False  # False: replies that disclose PHI point to the portal instead
    region: str = Field("US", pattern=r"^[A-Z]{2}$")  # for numbers written without +country
    max_request_bytes: int = Field(64 * 1024, ge=4096, le=1024 * 1024)  # webhook body limit
    timeout_seconds: float = Field(5.0, gt=0, le=30)  # each Messages API request


class EmailConfig(ConfigModel):
    """Inbound SMTP listener (or IMAP polling of an existing mailbox) and outbound relay.

    The listener is meant to sit behind the organisation's MTA (the hop that checks DKIM,
    SPF and DMARC and writes Authentication-Results with `authserv_id`); it speaks plain SMTP
    on `listen_host`, by default the loopback interface.
    """

    enabled: bool = False
    mode: Literal["smtp", "imap"] = "smtp"
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(2525, ge=1, le=65535)
    recipients: list[str] = []  # accepted RCPT TO addresses (compared case-insensitively)
    max_message_bytes: int = Field(10 * 1024 * 1024, ge=1024, le=50 * 1024 * 1024)
    max_parts: int = Field(50, ge=1, le=1000)
    max_depth: int = Field(5, ge=1, le=20)
    max_decoded_bytes: int = Field(2 * 1024 * 1024, ge=1024, le=50 * 1024 * 1024)
    authserv_id: str = ""  # our own Authentication-Results authserv-id
    from_address: str = ""
    from_name: str = ""
    # Our name in the SMTP greeting and the domain of our Message-IDs (default: the domain
    # of from_address).
    hostname: str = Field("", pattern=r"^$|^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$")
    relay_host: str = "127.0.0.1"
    relay_port: int = Field(587, ge=1, le=65535)
    relay_security: Literal["starttls", "tls", "none"] = "starttls"
    relay_username: str = ""  # password: SMTP_PASSWORD in the environment
    relay_timeout_seconds: float = Field(10.0, ge=1, le=120)
    imap_host: str = ""
    imap_port: int = Field(993, ge=1, le=65535)
    imap_security: Literal["tls", "none"] = "tls"  # tls: implicit TLS (port 993)
    imap_mailbox: str = "INBOX"
    imap_username: str = ""  # password: IMAP_PASSWORD in the environment
    imap_poll_seconds: float = Field(30.0, ge=1, le=3600)
    imap_batch: int = Field(50, ge=1, le=1000)  # messages read per poll at most
    phi_allowed: bool = True

    @field_validator("recipients")
    @classmethod
    def _lowercase_recipients(cls, value: list[str]) -> list[str]:
        return [address.strip().lower() for address in value]

    @field_validator("from_address", "from_name", "relay_username", "imap_username",
                     "imap_mailbox", "authserv_id")
    @classmethod
    def _single_line(cls, value: str) -> str:
        # These end up in mail headers and protocol commands: no line breaks or controls.
        if any(not ch.isprintable() for ch in value):
            raise ValueError("must be one line without control characters")
        return value.strip()

    @model_validator(mode="after")
    def _complete_when_enabled(self) -> EmailConfig:
        if not self.enabled:
            return self
        if "@" not in self.from_address:
            raise ValueError("email is enabled: from_address (replies come from it) is required")
        if self.mode == "smtp" and not self.recipients:
            raise ValueError("email is enabled in smtp mode: list the accepted recipients")
        if self.mode == "imap" and not (self.imap_host and self.imap_username):
            raise ValueError("email is enabled in imap mode: imap_host and imap_username "
                             "are required")
        return self


class TelegramConfig(ConfigModel):
    """A Telegram bot (aiogram): webhook in production, long polling for development."""

    enabled: bool = False
    mode: Literal["webhook", "polling"] = "webhook"
    api_base_url: str = "https://api.telegram.org"
    phi_allowed: bool = False  # Telegram never gets PHI: a portal link is sent instead
    request_timeout_seconds: float = Field(10.0, gt=0, le=60)  # per Bot API call (sends)
    polling_timeout_seconds: int = Field(25, ge=1, le=50)  # getUpdates long-poll wait
    max_webhook_bytes: int = Field(256 * 1024, ge=16 * 1024, le=4 * 1024 * 1024)
    # /start, /help and the attachment notice are answered by the channel itself: at most
    # this many such replies per chat per minute (more are acknowledged and dropped).
    direct_replies_per_minute: int = Field(5, ge=1, le=60)


class ChannelsFile(ConfigModel):
    """config/channels.yml."""

    limits: ChannelLimits = ChannelLimits()
    sms: SmsConfig = SmsConfig()
    email: EmailConfig = EmailConfig()
    telegram: TelegramConfig = TelegramConfig()
