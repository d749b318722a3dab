"""The outbound SMTP relay of channels.yml `email`: patient replies and staff escalation notices
both leave through it."""

from __future__ import annotations

from email.message import EmailMessage

import aiosmtplib

from bot.config.channels import EmailConfig


async def relay_send(email: EmailConfig, message: EmailMessage, *, sender: str,
                     recipients: list[str], password: str | None, local_hostname: str) -> None:
    """Hand one message to channels.yml `email`'s outbound relay (raises aiosmtplib's
    errors). Patient replies and staff escalation notices both leave this way."""
    await aiosmtplib.send(message, sender=sender, recipients=recipients,
                          hostname=email.relay_host, port=email.relay_port,
                          username=email.relay_username or None,
                          password=password if email.relay_username else None,
                          use_tls=email.relay_security == "tls",
                          start_tls=email.relay_security == "starttls",
                          local_hostname=local_hostname, timeout=email.relay_timeout_seconds)
