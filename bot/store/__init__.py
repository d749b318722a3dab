"""Conversation storage: one protocol, an in-memory twin and Redis."""

from bot.store.base import Lease, MailboxItem, ReviewItem, Store, Turn, TurnStart

__all__ = ["Lease", "MailboxItem", "ReviewItem", "Store", "Turn", "TurnStart"]
